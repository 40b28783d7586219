package aggregator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/postgres"
	"github.com/admetric/admetric/store/rollup"
)

// RebuildResult says what Rebuild did.
type RebuildResult struct {
	// From and To are the range rebuilt: the one asked for, widened to whole UTC days.
	From, To time.Time
	// Events is how many archived events were folded.
	Events int
	// Keys is how many rollup keys were rewritten.
	Keys int
}

// RebuildProgress is told how far a rebuild has come: stage is "events" or
// "keys", done of total.
type RebuildProgress func(stage string, done, total int)

// ErrArchiveBehind is returned by Rebuild when a rollup holds events the
// archive has not written yet: rebuilding it would drop them. Retry once the
// archiver has caught up.
var ErrArchiveBehind = errors.New("aggregator: the archive is behind the rollups")

// RebuildOptions say what Rebuild rebuilds.
type RebuildOptions struct {
	// From and To are the range, [From, To); Rebuild widens it to whole UTC days.
	From, To time.Time
	// AdIDs are ads to clear even when the archive has no event of theirs in
	// the range (every ad of the ads table, say).
	AdIDs []string
	// VisitorSalt keys the visitor hash: the rollup writers' salt.
	VisitorSalt []byte
	// ArchiveFloor returns the sequence of partition's stream up to which the
	// archive is complete (ArchiveFloor reads it from the archive consumers).
	ArchiveFloor func(ctx context.Context, partition int) (uint64, error)
	// Partitions is how many partitions there are: an ad without archived
	// events is in the one its ID hashes to.
	Partitions int
	// Progress, when not nil, is told how far the rebuild has come.
	Progress RebuildProgress
	// Decisions, when not nil, reads the rollup writers' invalid-traffic
	// decisions published from stream sequence from on (ReadDecisions
	// reads the decision stream), and where to read on from next time. An
	// event's decision reaches the archive only after the event, so the
	// rebuild reads the decisions of the events a key holds from the
	// stream, once it has seen the key (whose events' decisions were
	// published before it was written).
	Decisions func(ctx context.Context, from uint64) (ds []Decision, next uint64, err error)
}

// ArchiveFloor returns the function that reads, from the archive
// consumers' ack floors, the sequence of a partition's stream up to which
// the archive is complete. While the legacy stream's archive consumer has
// events left, its ack floor bounds every partition: the legacy stream's
// sequences are below the partition streams'.
func ArchiveFloor(js jetstream.JetStream) func(context.Context, int) (uint64, error) {
	return func(ctx context.Context, partition int) (uint64, error) {
		legacy, err := js.Consumer(ctx, store.LegacyStreamName, ArchiveConsumerName)
		switch {
		case err == nil:
			info, err := legacy.Info(ctx)
			if err != nil && !isGone(err) {
				return 0, fmt.Errorf("aggregator: legacy archive consumer: %w", err)
			}
			if err == nil && (info.NumPending > 0 || info.NumAckPending > 0) {
				return info.AckFloor.Stream, nil
			}
		case !isGone(err):
			return 0, fmt.Errorf("aggregator: legacy archive consumer: %w", err)
		}
		name := store.EventStreamName(partition)
		stream, err := js.Stream(ctx, name)
		if err != nil {
			return 0, fmt.Errorf("aggregator: stream %s: %w", name, err)
		}
		// The legacy stream, whose sequences end below the first, is archived.
		floor := max(stream.CachedInfo().Config.FirstSeq, 1) - 1
		cons, err := js.Consumer(ctx, name, ArchiveConsumerName)
		if isGone(err) {
			return floor, nil
		}
		if err != nil {
			return 0, fmt.Errorf("aggregator: archive consumer of %s: %w", name, err)
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return 0, fmt.Errorf("aggregator: archive consumer of %s: %w", name, err)
		}
		return max(floor, info.AckFloor.Stream), nil
	}
}

// Rebuild recomputes the rollups of opts' range, widened to whole UTC days,
// from the PostgreSQL archive: every slot of every resolution in the range is
// replaced by the fold of the archived events that fall in it (slots outside
// the range are kept).
//
// A rebuilt key holds exactly the archived events up to the sequence the
// rollup writer has folded for it: the higher of the key's MaxSeq and its
// partition's checkpoint in that bucket (so a key lost or wiped comes back).
// That bound becomes its MaxSeq; later events are left to the writer, and each
// key is written guarded by its revision, so a writer running meanwhile loses
// nothing and adds nothing twice. A key holding events above the archive's
// floor fails with ErrArchiveBehind. Run twice on an unchanged archive,
// Rebuild writes the same values.
func Rebuild(ctx context.Context, rollups *store.Rollups, archive *postgres.Archive, opts RebuildOptions) (RebuildResult, error) {
	rb := &rebuilder{rollups: rollups, archive: archive, opts: opts, layout: rollups.Layout(), now: time.Now(), floors: make(map[int]uint64),
		from: rollup.Day.Truncate(opts.From), to: rollup.Day.Ceil(opts.To)}
	if rb.opts.Progress == nil {
		rb.opts.Progress = func(string, int, int) {}
	}
	res := RebuildResult{From: rb.from, To: rb.to}
	if !rb.from.Before(rb.to) {
		return res, fmt.Errorf("aggregator: rebuild: empty range [%s, %s)", rb.from, rb.to)
	}
	if err := rb.scan(ctx); err != nil {
		return res, err
	}
	res.Events = len(rb.recs)
	ads, err := rb.ads(ctx)
	if err != nil {
		return res, err
	}
	res.Keys, err = rb.rewrite(ctx, ads)
	return res, err
}

// rebuilder is one Rebuild's state.
type rebuilder struct {
	rollups  *store.Rollups
	archive  *postgres.Archive
	opts     RebuildOptions
	layout   rollup.Layout
	now      time.Time
	from, to time.Time

	recs        []Record       // the archived events of the range, in stream order
	byID        map[string]int // index in recs of each event ID
	decided     uint64         // the decision stream is read up to here (next sequence)
	decidedFor  map[int]uint64 // by partition: the decisions of events up to here are read
	byKey       map[Key][]int  // which of recs each key holds
	partitionOf map[string]int // ad → stream partition, from its archived events
	checkpoints map[unitPartition]uint64
	floors      map[int]uint64 // the archive is complete up to these sequences, by partition
}

type unitPartition struct {
	u rollup.Unit
	p int
}

// period is one key period of one resolution.
type period struct {
	unit  rollup.Unit
	start time.Time
}

// scan reads the archived events of the range.
func (rb *rebuilder) scan(ctx context.Context) error {
	total, err := rb.archive.Count(ctx, rb.from, rb.to)
	if err != nil {
		return err
	}
	rb.byKey, rb.partitionOf = make(map[Key][]int), make(map[string]int)
	rb.byID, rb.decidedFor, rb.decided = make(map[string]int), make(map[int]uint64), 1
	err = rb.archive.Scan(ctx, rb.from, rb.to, func(row *postgres.ArchivedEvent) error {
		rec := recordOf(row, rb.opts.VisitorSalt)
		if rec.Partition >= 0 {
			rb.partitionOf[rec.Event.AdID] = rec.Partition
		}
		for _, r := range rb.layout {
			if holds(r, rec.Event.Timestamp, rb.now) {
				key, _ := r.Unit.Locate(rec.Event.AdID, rec.Event.Timestamp)
				k := Key{r.Unit, key}
				rb.byKey[k] = append(rb.byKey[k], len(rb.recs))
			}
		}
		rb.byID[rec.Event.EventID] = len(rb.recs)
		rb.recs = append(rb.recs, rec)
		if len(rb.recs)%1000 == 0 {
			rb.opts.Progress("events", len(rb.recs), total)
		}
		return nil
	})
	rb.opts.Progress("events", len(rb.recs), total)
	return err
}

// ads returns, sorted, the ads to rebuild: those asked for and those with
// archived events in the range.
func (rb *rebuilder) ads(ctx context.Context) ([]string, error) {
	archived, err := rb.archive.AdIDs(ctx, rb.from, rb.to)
	if err != nil {
		return nil, err
	}
	return slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(rb.opts.AdIDs), archived...)))), nil
}

// periods lists the key periods of every resolution that overlap the range
// and are still within their retention.
func (rb *rebuilder) periods() []period {
	var out []period
	for _, r := range rb.layout {
		for p := r.Unit.PeriodStart(rb.from); p.Before(rb.to); p = r.Unit.NextPeriod(p) {
			if r.Unit.NextPeriod(p).After(rb.now.Add(-r.Retention)) {
				out = append(out, period{r.Unit, p})
			}
		}
	}
	return out
}

// rewrite replaces the range in every key of ads and returns how many it wrote.
func (rb *rebuilder) rewrite(ctx context.Context, ads []string) (int, error) {
	periods := rb.periods()
	rb.checkpoints = make(map[unitPartition]uint64)
	written := 0
	for i, ad := range ads {
		for _, p := range periods {
			key, _ := p.unit.Locate(ad, p.start)
			ok, err := rb.replaceRange(ctx, Key{p.unit, key}, ad, p.start)
			if err != nil {
				return written, err
			}
			if ok {
				written++
			}
		}
		rb.opts.Progress("keys", (i+1)*len(periods), len(ads)*len(periods))
	}
	return written, nil
}

// checkpoint returns the checkpoint, in unit's bucket, of ad's partition (0
// when no archived event says which partition that is).
func (rb *rebuilder) checkpoint(ctx context.Context, u rollup.Unit, ad string) (uint64, error) {
	p, ok := rb.partitionOf[ad]
	if !ok {
		return 0, nil
	}
	return rb.partitionCheckpoint(ctx, u, p)
}

// partitionOfAd is the partition of ad: the one its archived events were
// in, or the one it hashes to.
func (rb *rebuilder) partitionOfAd(ad string) int {
	if p, ok := rb.partitionOf[ad]; ok {
		return p
	}
	return store.PartitionOf(ad, rb.opts.Partitions)
}

// partitionCheckpoint returns partition p's checkpoint in unit's bucket.
func (rb *rebuilder) partitionCheckpoint(ctx context.Context, u rollup.Unit, p int) (uint64, error) {
	up := unitPartition{u, p}
	if cp, ok := rb.checkpoints[up]; ok {
		return cp, nil
	}
	cp, _, err := rb.rollups.Checkpoint(ctx, u, p)
	if err != nil {
		return 0, err
	}
	rb.checkpoints[up] = cp
	return cp, nil
}

// maxConflicts bounds how often replaceRange reloads a key that a writer
// moved under it.
const maxConflicts = 10

// replaceRange rewrites the slots of key k of ad, whose period starts at
// periodStart, that fall in the range, with the fold of the archived events
// the key already holds; a key that moves under it is read again. It reports
// whether it wrote.
func (rb *rebuilder) replaceRange(ctx context.Context, k Key, ad string, periodStart time.Time) (bool, error) {
	checkpoint, err := rb.checkpoint(ctx, k.Unit, ad)
	if err != nil {
		return false, err
	}
	return backoff.Retry(ctx, func() (bool, error) {
		cur, err := rb.rollups.LoadStored(ctx, k.Unit, k.Key)
		if err != nil {
			return false, backoff.Permanent(err)
		}
		bound := max(cur.Value.MaxSeq, checkpoint)
		if err := rb.checkFloor(ctx, k, rb.partitionOfAd(ad), bound); err != nil {
			return false, backoff.Permanent(err)
		}
		if err := rb.readDecisions(ctx, rb.partitionOfAd(ad), bound); err != nil {
			return false, backoff.Permanent(err)
		}
		next, changed := rb.refold(k, periodStart, cur.Value, bound)
		// The refold holds the range's visitors whole: drop the range's sets
		// from the settled key, after the rollup is written (a reader in
		// between counts a visitor in both once).
		settledChanged := cur.Settled.DropSlots(func(i int) bool { return rb.inRange(k.Unit.SlotStart(periodStart, i)) })
		if !changed && !settledChanged {
			return false, nil
		}
		writes := []store.Write{{Key: k.Key, Value: next, Rev: cur.Rev}}
		if settledChanged {
			writes = append(writes, store.Write{Key: rollup.SettledKey(k.Key), Value: cur.Settled, Rev: cur.SettledRev})
		}
		for _, wr := range writes {
			if _, err := rb.rollups.Replace(ctx, k.Unit, []store.Write{wr}); err != nil {
				if !errors.Is(err, store.ErrConflict) {
					return false, backoff.Permanent(err)
				}
				return false, err
			}
		}
		return true, nil
	}, backoff.WithBackOff(&backoff.ZeroBackOff{}), backoff.WithMaxTries(maxConflicts+1))
}

// checkFloor fails with ErrArchiveBehind when key k, of partition p, holds
// events up to bound that the archive may not have yet; it reads the floor
// again first.
func (rb *rebuilder) checkFloor(ctx context.Context, k Key, p int, bound uint64) error {
	if floor, ok := rb.floors[p]; ok && bound <= floor {
		return nil
	}
	floor, err := rb.opts.ArchiveFloor(ctx, p)
	if err != nil {
		return err
	}
	rb.floors[p] = floor
	if bound > floor {
		return fmt.Errorf("%w: %s %s holds sequence %d, the archive of partition %d is complete to %d", ErrArchiveBehind, k.Unit, k.Key, bound, p, floor)
	}
	return nil
}

// readDecisions makes sure the decisions of partition p's events up to
// bound are in rb.recs: they were published before the key that holds them
// was written, so reading the decision stream to its end now finds them.
// A decision overrides the archive's reason, which may not have it yet.
func (rb *rebuilder) readDecisions(ctx context.Context, p int, bound uint64) error {
	if rb.opts.Decisions == nil || bound <= rb.decidedFor[p] {
		return nil
	}
	ds, next, err := rb.opts.Decisions(ctx, rb.decided)
	if err != nil {
		return err
	}
	for _, d := range ds {
		if i, ok := rb.byID[d.EventID]; ok {
			if r := rb.recs[i].Event.InvalidReason; r == "" || r == d.Reason {
				rb.recs[i].Event.InvalidReason = d.Reason
			}
		}
	}
	rb.decided = next
	rb.decidedFor[p] = bound
	return nil
}

// ReadDecisions returns the function that reads the decision stream
// (store.DecisionStream) from a sequence to its end, for
// RebuildOptions.Decisions. Without a decision stream it reads none.
func ReadDecisions(js jetstream.JetStream) func(ctx context.Context, from uint64) ([]Decision, uint64, error) {
	return func(ctx context.Context, from uint64) ([]Decision, uint64, error) {
		stream, err := js.Stream(ctx, store.DecisionStream)
		if isGone(err) || errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, from, nil
		}
		if err != nil {
			return nil, from, fmt.Errorf("aggregator: decision stream: %w", err)
		}
		last := stream.CachedInfo().State.LastSeq
		if last < from {
			return nil, from, nil
		}
		cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
			DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: from,
		})
		if err != nil {
			return nil, from, fmt.Errorf("aggregator: decision stream: %w", err)
		}
		var out []Decision
		next := from
		for next <= last {
			batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(5*time.Second))
			if err != nil {
				return nil, from, fmt.Errorf("aggregator: decision stream: %w", err)
			}
			n := 0
			for msg := range batch.Messages() {
				n++
				meta, err := msg.Metadata()
				if err != nil {
					return nil, from, fmt.Errorf("aggregator: decision stream: %w", err)
				}
				next = meta.Sequence.Stream + 1
				if ds, err := DecodeDecisions(msg.Data()); err == nil {
					out = append(out, ds...)
				}
			}
			if err := batch.Error(); err != nil {
				return nil, from, fmt.Errorf("aggregator: decision stream: %w", err)
			}
			if n == 0 {
				break // what is left expired meanwhile
			}
		}
		return out, next, nil
	}
}

// refold returns cur with its slots in the range replaced by the fold of
// the archived events of key k up to stream sequence bound, and whether
// that changes anything.
func (rb *rebuilder) refold(k Key, periodStart time.Time, cur *rollup.Rollup, bound uint64) (*rollup.Rollup, bool) {
	next := rollup.New()
	next.MaxSeq = bound
	changed := false
	for i, s := range cur.Slots {
		if rb.inRange(k.Unit.SlotStart(periodStart, i)) {
			changed = true // replaced (or dropped) below
			continue
		}
		next.Slots[i] = s
	}
	for _, j := range rb.byKey[k] {
		r := &rb.recs[j]
		if r.Seq > bound {
			break // stream order: the rest is the writer's to fold
		}
		_, slot := k.Unit.Locate(r.Event.AdID, r.Event.Timestamp)
		apply(next.Slot(slot), r)
		changed = true
	}
	return next, changed
}

// inRange reports whether a slot starting at t is one the rebuild replaces.
func (rb *rebuilder) inRange(t time.Time) bool { return !t.Before(rb.from) && t.Before(rb.to) }

// recordOf turns an archived row back into the Record the fold takes.
func recordOf(row *postgres.ArchivedEvent, salt []byte) Record {
	ev := event.Event{
		EventID:      row.EventID,
		Type:         event.Type(row.Type),
		AdID:         row.AdID,
		Timestamp:    row.OccurredAt.UTC(),
		IP:           event.CanonicalIP(row.IP),
		UserAgent:    row.UserAgent,
		PlaybackTime: float64(row.PlaybackMS) / 1000,

		ServingID:     row.ServingID,
		ErrorCode:     row.ErrorCode,
		InvalidReason: event.InvalidReason(row.InvalidReason),
	}
	if row.Visitor != 0 {
		// Computed from the full address, which the archive does not hold
		// when addresses are truncated.
		ev.Visitor = event.FormatVisitor(uint64(row.Visitor))
	}
	rec := Record{Seq: row.StreamSeq, Event: ev, Partition: row.Partition}
	rec.Visitor = visitorOf(&rec.Event, salt)
	return rec
}

// visitorOf is the visitor hash of ev, 0 when it carries no identity: the
// one the intake computed before truncating the address, when it did
// (event.Event.Identity).
func visitorOf(ev *event.Event, salt []byte) uint64 { return ev.Identity(salt) }
