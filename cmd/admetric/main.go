// Command admetric runs the AdMetric service: ad event intake, the aggregator
// and the analytics API, with an embedded NATS server and a private PostgreSQL
// when none is configured. Configuration is by environment; see .env.example.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	// The tz parameter of the analytics takes IANA names; a minimal container
	// image has no zoneinfo of its own.
	_ "time/tzdata"

	"github.com/KimMachineGun/automemlimit/memlimit"

	"github.com/admetric/admetric/config"
	"github.com/admetric/admetric/store"
)

const usage = `usage: admetric [serve | api | aggregator | rebuild --from T --to T | nats-config | loadgen [flags]]

  serve       the whole service in one process (the default)
  api         HTTP only: event intake, ads, analytics
  aggregator  the rollup writers and the archiver only (HTTP serves
              /healthz, /readyz and /metrics); run several to share the
              partitions
  rebuild     recompute the rollups of a time range from the archive
  nats-config print the accounts block an external nats-server needs
              (AdMetric's account, its mapping onto PARTITIONS partition
              streams, its users), for the configured PARTITIONS
  loadgen     send realistic ad traffic to a running AdMetric over HTTP
              (loadgen -h lists its flags)

Configuration is by environment variables (see .env.example); with none set
it runs an embedded NATS server and a private PostgreSQL under ./data and
serves HTTP on :8080.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is main without the process globals, so tests can drive it.
func run(ctx context.Context, args []string, lookup func(string) (string, bool), stdout, stderr io.Writer) int {
	tuneGC(lookup)
	cmd := "serve"
	if len(args) > 0 {
		cmd = args[0]
	}
	var r role
	switch cmd {
	case "serve":
		r = roleAll
	case "api":
		r = roleAPI
	case "aggregator":
		r = roleAggregator
	case "rebuild":
		return runRebuild(ctx, args[1:], lookup, stderr)
	case "loadgen":
		return runLoadgen(ctx, args[1:], lookup, stdout, stderr)
	case "nats-config":
		cfg, err := config.Load(lookup)
		if err != nil {
			fmt.Fprintf(stderr, "admetric: invalid configuration:\n%v\n", err)
			return 2
		}
		fmt.Fprint(stdout, store.ServerConfig(store.ServerConfigOptions{Partitions: cfg.Partitions, Users: true}))
		return 0
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stderr, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "admetric: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	cfg, logger, ok := loadConfig(lookup, stderr)
	if !ok {
		return 2
	}
	logger.Info("starting", "command", cmd, "config", cfg)
	limitMemory(logger)
	if err := serve(ctx, cfg, r, logger); err != nil {
		logger.Error("admetric stopped", "err", err)
		return 1
	}
	logger.Info("stopped cleanly")
	return 0
}

// defaultGOGC is the garbage collector's target when GOGC is not set: Go's
// own, 100. Releases before #12 set 400, chosen on the intake alone (POST
// /ads/click at 5,000/s: p99 22 ms at 100, 4 ms at 400). Measured on the
// whole service since: p99 8.3 ms at 100 and 5.5 ms at 400 at 5,000
// events/s (BenchmarkIngest), while over a 30-minute soak at 3,000 events/s
// the live heap grew to 1.9 GB with the stream's duplicate window and 400
// let the process reach 5 to 7.8 GB (BenchmarkSoak): the heap may grow to
// GOGC/100 + 1 times the live one.
const defaultGOGC = 100

// limitMemory sets GOMEMLIMIT to 90% of the memory limit of the process's
// cgroup (a container's limit) unless GOMEMLIMIT is set (AUTOMEMLIMIT=off
// turns it off): with GOGC at 400 the heap may grow to five times the live
// one, and a container's limit would kill the process long before the
// collector noticed. Without a cgroup limit nothing changes.
func limitMemory(logger *slog.Logger) {
	limit, err := memlimit.Set(memlimit.WithProvider(memlimit.FromCgroup))
	switch {
	case err != nil:
		logger.Warn("reading the cgroup memory limit failed; GOMEMLIMIT stays unset", "err", err)
	case limit != math.MaxInt64:
		logger.Info("memory limit", "gomemlimit_bytes", limit)
	}
}

// tuneGC applies defaultGOGC unless the GOGC variable says otherwise.
func tuneGC(lookup func(string) (string, bool)) {
	if _, set := lookup("GOGC"); !set {
		debug.SetGCPercent(defaultGOGC)
	}
}

// loadConfig reads the configuration and builds the logger; on a bad value it
// says what is wrong on stderr and returns false (exit code 2).
func loadConfig(lookup func(string) (string, bool), stderr io.Writer) (*config.Config, *slog.Logger, bool) {
	cfg, err := config.Load(lookup)
	if err != nil {
		fmt.Fprintf(stderr, "admetric: invalid configuration:\n%v\n", err)
		return nil, nil, false
	}
	return cfg, newLogger(cfg, stderr), true
}

func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// serve runs the daemon until ctx ends (a signal) or a part fails, then shuts
// it down within SHUTDOWN_TIMEOUT.
func serve(ctx context.Context, cfg *config.Config, r role, logger *slog.Logger) error {
	d, err := startDaemon(ctx, cfg, r, logger)
	if err != nil {
		return err
	}
	runErr := d.wait(ctx)
	logger.Info("shutting down", "timeout", cfg.ShutdownTimeout)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	return errors.Join(runErr, d.shutdown(sctx))
}
