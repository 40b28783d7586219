package aggregator

import (
	"context"
	"log/slog"
	"time"

	"github.com/admetric/admetric/store/postgres"
)

// PartitionKeeper keeps the monthly partitions of the events archive: it
// creates this month's and the next ones' ahead of the events (the archive
// also creates a missing month on demand, see postgres.Archive.Insert) and,
// with a Retention, drops the partitions that hold only events older than
// it, each in one DROP TABLE. It runs in the archiver's process; several at
// once take turns (an advisory lock).
//
// A drop removes archived rows only: the rollups already folded from them
// are unchanged, but a rebuild can re-fold no more than the archive still
// holds, and an invalid-traffic decision for a dropped event finds no row
// to mark.
type PartitionKeeper struct {
	Archive *postgres.Archive
	// Retention, above 0, is how long archived events are kept; 0 keeps
	// them all (nothing is dropped).
	Retention time.Duration
	// Ahead is how many months after the current one get their partition
	// in advance; default 2.
	Ahead int
	// Every is the time between two passes; default 1h. A failed pass
	// (PostgreSQL down, a lock not granted in time) is tried again after a
	// minute.
	Every  time.Duration
	Logger *slog.Logger
	// Now is the clock; default time.Now. For tests.
	Now func() time.Time
}

// retryPass is the pause after a failed pass.
const retryPass = time.Minute

// Run keeps the partitions until ctx ends, and then returns nil: failures
// are logged and tried again, since PostgreSQL may be down a while.
func (k *PartitionKeeper) Run(ctx context.Context) error {
	every := k.Every
	if every <= 0 {
		every = time.Hour
	}
	reported := false
	for {
		wait := every
		err := k.Pass(ctx)
		switch {
		case err != nil && ctx.Err() != nil:
			return nil
		case err != nil:
			k.logger().Warn("keeping the archive's partitions failed; trying again", "err", err, "pause", retryPass)
			wait = retryPass
		case !reported:
			reported = k.report(ctx)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// Pass creates the partitions ahead and drops the expired ones once,
// logging each partition it creates or drops.
func (k *PartitionKeeper) Pass(ctx context.Context) error {
	now := time.Now
	if k.Now != nil {
		now = k.Now
	}
	ahead := k.Ahead
	if ahead <= 0 {
		ahead = 2
	}
	t := now().UTC()
	created, err := k.Archive.CreateMonths(ctx, t, postgres.MonthPartition(t).From.AddDate(0, ahead, 0))
	for _, name := range created {
		k.logger().Info("archive partition created", "partition", name)
	}
	if err != nil || k.Retention <= 0 {
		return err
	}
	cutoff := t.Add(-k.Retention)
	dropped, err := k.Archive.DropBefore(ctx, cutoff)
	for _, name := range dropped {
		k.logger().Info("archive partition dropped: its events are past the retention", "partition", name, "retention", k.Retention, "cutoff", cutoff)
	}
	return err
}

func (k *PartitionKeeper) logger() *slog.Logger {
	if k.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return k.Logger.With("component", "archive-partitions")
}

// report logs, once at start, how far back the archive goes: a rebuild
// re-folds no further. It reports whether it could tell.
func (k *PartitionKeeper) report(ctx context.Context) bool {
	parts, err := k.Archive.Partitions(ctx)
	if err != nil {
		return false
	}
	switch {
	case len(parts) == 0:
	case parts[0].From.IsZero():
		k.logger().Info("archive partitions", "count", len(parts), "oldest", parts[0].Name, "retention", k.Retention)
	default:
		k.logger().Info("archive partitions", "count", len(parts), "oldest", parts[0].Name, "holds_events_from", parts[0].From, "retention", k.Retention)
	}
	return true
}
