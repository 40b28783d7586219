package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/admetric/admetric/aggregator"
	"github.com/admetric/admetric/config"
	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/postgres"
)

const rebuildUsage = `usage: admetric rebuild --from TIME --to TIME

Recomputes the rollups of [from, to), widened to whole UTC days, from the
PostgreSQL archive. TIME is RFC 3339 (2026-11-01T00:00:00Z) or a date
(2026-11-01). Idempotent; run it on ranges the aggregator has caught up on.
It uses the same configuration as the service; with the embedded NATS server
and private PostgreSQL, stop the service first.
`

// parseTime takes RFC 3339 or a bare date (UTC).
func parseTime(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	t, err := time.Parse(time.DateOnly, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither RFC 3339 nor YYYY-MM-DD", s)
	}
	return t, nil
}

// runRebuild is the rebuild subcommand; it returns the exit code.
func runRebuild(ctx context.Context, args []string, lookup func(string) (string, bool), stderr io.Writer) int {
	fs := flag.NewFlagSet("rebuild", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, rebuildUsage) }
	fromFlag := fs.String("from", "", "start of the range (inclusive)")
	toFlag := fs.String("to", "", "end of the range (exclusive)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	for _, f := range []struct{ name, value string }{{"--from", *fromFlag}, {"--to", *toFlag}} {
		if f.value == "" {
			fmt.Fprintf(stderr, "admetric rebuild: %s is required\n%s", f.name, rebuildUsage)
			return 2
		}
	}
	from, err := parseTime(*fromFlag)
	if err != nil {
		fmt.Fprintf(stderr, "admetric rebuild: --from: %v\n", err)
		return 2
	}
	to, err := parseTime(*toFlag)
	if err != nil {
		fmt.Fprintf(stderr, "admetric rebuild: --to: %v\n", err)
		return 2
	}
	if !from.Before(to) {
		fmt.Fprintln(stderr, "admetric rebuild: --from must be before --to")
		return 2
	}
	cfg, logger, ok := loadConfig(lookup, stderr)
	if !ok {
		return 2
	}
	if err := rebuild(ctx, cfg, logger, stderr, from, to); err != nil {
		logger.Error("rebuild failed", "err", err)
		return 1
	}
	return 0
}

// rebuild recomputes the rollups of [from, to) from the archive. It opens
// the backends as the service does and the rollup buckets, but leaves the
// event streams alone, and neither migrates nor seeds: it works on what the
// service made.
func rebuild(ctx context.Context, cfg *config.Config, logger *slog.Logger, out io.Writer, from, to time.Time) (err error) {
	b, err := openBackends(ctx, cfg, logger)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
		defer cancel()
		err = errors.Join(err, b.close(sctx))
	}()
	// The rollup buckets only (a deleted one is made again): the event
	// stream is the service's, and a rebuild run with other settings (say,
	// PARTITIONS) must not reconfigure it.
	rollups, err := store.CreateOrUpdateRollups(ctx, b.js, b.layout, cfg.NATSReplicas)
	if err != nil {
		return err
	}
	ads, err := postgres.NewAds(b.db).IDs(ctx)
	if err != nil {
		return err
	}
	bar := newStageBar(out)
	res, err := aggregator.Rebuild(ctx, rollups, postgres.NewArchive(b.db), aggregator.RebuildOptions{
		From: from, To: to, AdIDs: ads, VisitorSalt: b.salt,
		ArchiveFloor: aggregator.ArchiveFloor(b.js), Partitions: cfg.Partitions,
		Decisions: aggregator.ReadDecisions(b.js), Progress: bar.set,
	})
	bar.finish()
	if err != nil {
		return err
	}
	logger.Info("rebuild done", "from", res.From, "to", res.To, "events", res.Events, "keys_written", res.Keys)
	return nil
}

// stageBar shows a progress bar per stage of a rebuild on out.
type stageBar struct {
	out   io.Writer
	stage string
	bar   *progressbar.ProgressBar
}

func newStageBar(out io.Writer) *stageBar { return &stageBar{out: out} }

// set shows done of total for stage, finishing the previous stage's bar
// when the stage changes.
func (s *stageBar) set(stage string, done, total int) {
	if stage != s.stage {
		s.finish()
		s.stage = stage
		s.bar = progressbar.NewOptions(total, progressbar.OptionSetWriter(s.out), progressbar.OptionSetDescription(stage),
			progressbar.OptionShowCount(), progressbar.OptionThrottle(100*time.Millisecond))
	}
	_ = s.bar.Set(done)
}

// finish completes the current bar, if any.
func (s *stageBar) finish() {
	if s.bar != nil {
		_ = s.bar.Finish()
		fmt.Fprintln(s.out)
		s.bar = nil
	}
}
