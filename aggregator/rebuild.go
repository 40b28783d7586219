package aggregator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

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

// Rebuild recomputes the rollups of [from, to), widened to whole UTC days, from
// the PostgreSQL archive: every slot of every resolution in the range is
// replaced by the fold of the archived events that fall in it (slots outside
// the range are kept). adIDs are ads to clear even when the archive has no
// event of theirs in the range.
//
// A rebuilt key holds exactly the archived events up to the sequence the
// rollup writer has folded for it: the higher of the key's MaxSeq and its
// partition's checkpoint in that bucket (so a key lost or wiped comes back).
// That bound becomes its MaxSeq; later events are left to the writer, and each
// key is written guarded by its revision, so a writer running meanwhile loses
// nothing and adds nothing twice. archiveFloor
// returns the stream sequence up to which the archive is complete; a key
// holding events above it fails with ErrArchiveBehind. Run twice on an
// unchanged archive, Rebuild writes the same values.
func Rebuild(ctx context.Context, rollups *store.Rollups, archive *postgres.Archive, archiveFloor func(context.Context) (uint64, error), adIDs []string, salt []byte, from, to, now time.Time, progress RebuildProgress) (RebuildResult, error) {
	if progress == nil {
		progress = func(string, int, int) {}
	}
	from, to = rollup.Day.Truncate(from), rollup.Day.Ceil(to)
	res := RebuildResult{From: from, To: to}
	if !from.Before(to) {
		return res, fmt.Errorf("aggregator: rebuild: empty range [%s, %s)", from, to)
	}
	layout := rollups.Layout()

	total, err := archive.Count(ctx, from, to)
	if err != nil {
		return res, err
	}
	// The archived events of the range, in stream order, and which of them
	// each key holds.
	var recs []Record
	byKey := make(map[Key][]int)
	partitionOf := make(map[string]int) // ad → stream partition, from its archived events
	err = archive.Scan(ctx, from, to, func(row *postgres.ArchivedEvent) error {
		rec := recordOf(row, salt)
		if rec.Partition >= 0 {
			partitionOf[rec.Event.AdID] = rec.Partition
		}
		for _, r := range layout {
			if holds(r, rec.Event.Timestamp, now) {
				key, _ := r.Unit.Locate(rec.Event.AdID, rec.Event.Timestamp)
				k := Key{r.Unit, key}
				byKey[k] = append(byKey[k], len(recs))
			}
		}
		recs = append(recs, rec)
		if len(recs)%1000 == 0 {
			progress("events", len(recs), total)
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	res.Events = len(recs)
	progress("events", len(recs), total)

	floor, err := archiveFloor(ctx)
	if err != nil {
		return res, err
	}
	archived, err := archive.AdIDs(ctx, from, to)
	if err != nil {
		return res, err
	}
	ads := slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(adIDs), archived...))))
	type period struct {
		unit  rollup.Unit
		start time.Time
	}
	var periods []period
	for _, r := range layout {
		for p := r.Unit.PeriodStart(from); p.Before(to); p = r.Unit.NextPeriod(p) {
			if r.Unit.NextPeriod(p).After(now.Add(-r.Retention)) {
				periods = append(periods, period{r.Unit, p})
			}
		}
	}
	type unitPartition struct {
		u rollup.Unit
		p int
	}
	checkpoints := make(map[unitPartition]uint64)
	checkpoint := func(u rollup.Unit, ad string) (uint64, error) {
		p, ok := partitionOf[ad]
		if !ok {
			return 0, nil
		}
		up := unitPartition{u, p}
		if cp, ok := checkpoints[up]; ok {
			return cp, nil
		}
		cp, _, err := rollups.Checkpoint(ctx, u, p)
		checkpoints[up] = cp
		return cp, err
	}
	todo := len(ads) * len(periods)
	for i, ad := range ads {
		for _, p := range periods {
			key, _ := p.unit.Locate(ad, p.start)
			k := Key{p.unit, key}
			cp, err := checkpoint(p.unit, ad)
			if err != nil {
				return res, err
			}
			written, err := replaceRange(ctx, rollups, k, p.start, from, to, recs, byKey[k], cp, &floor, archiveFloor)
			if err != nil {
				return res, err
			}
			if written {
				res.Keys++
			}
		}
		progress("keys", (i+1)*len(periods), todo)
	}
	return res, nil
}

// replaceRange rewrites the slots of one key that fall in [from, to) with the
// fold of the archived events (recs[idx]) the key already holds, retrying when
// the key moves under it. It reports whether it wrote.
func replaceRange(ctx context.Context, rollups *store.Rollups, k Key, periodStart, from, to time.Time, recs []Record, idx []int, checkpoint uint64, floor *uint64, archiveFloor func(context.Context) (uint64, error)) (bool, error) {
	for attempt := 0; ; attempt++ {
		cur, rev, err := rollups.Load(ctx, k.Unit, k.Key)
		if err != nil {
			return false, err
		}
		bound := max(cur.MaxSeq, checkpoint)
		if bound > *floor {
			if *floor, err = archiveFloor(ctx); err != nil {
				return false, err
			}
			if bound > *floor {
				return false, fmt.Errorf("%w: %s %s holds sequence %d, the archive is complete to %d", ErrArchiveBehind, k.Unit, k.Key, bound, *floor)
			}
		}
		next := rollup.New()
		next.MaxSeq = bound
		changed := false
		for i, s := range cur.Slots {
			if t := k.Unit.SlotStart(periodStart, i); !t.Before(from) && t.Before(to) {
				changed = true // replaced (or dropped) below
				continue
			}
			next.Slots[i] = s
		}
		for _, j := range idx {
			r := &recs[j]
			if r.Seq > bound {
				break // stream order: the rest is the writer's to fold
			}
			_, slot := k.Unit.Locate(r.Event.AdID, r.Event.Timestamp)
			apply(next.Slot(slot), r)
			changed = true
		}
		if !changed {
			return false, nil
		}
		_, err = rollups.Replace(ctx, k.Unit, []store.Write{{Key: k.Key, Value: next, Rev: rev}})
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, store.ErrConflict) || attempt >= 10 {
			return false, err
		}
	}
}

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
	}
	rec := Record{Seq: row.StreamSeq, Event: ev, Partition: row.Partition}
	rec.Visitor = visitorOf(&rec.Event, salt)
	return rec
}

// visitorOf is the visitor hash of ev, 0 when it carries no identity.
func visitorOf(ev *event.Event, salt []byte) uint64 {
	if ev.IP == "" && ev.UserAgent == "" {
		return 0
	}
	if h := ev.VisitorHash(salt); h != 0 {
		return h
	}
	return 1 // 0 means "no visitor"; one hash in 2^64 moves over
}
