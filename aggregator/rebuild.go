package aggregator

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/store"
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

// Rebuild recomputes the rollups of [from, to), widened to whole UTC days, from
// the PostgreSQL archive: every slot of every resolution in the range is
// replaced by the fold of the archived events that fall in it (slots outside
// the range are kept). It is idempotent: run twice, it writes the same values.
// adIDs are ads to clear even when the archive has no event of theirs in the
// range. Each key is written guarded by its revision and keeps the higher of
// its MaxSeq and the archive's, so a rollup writer running meanwhile neither
// loses its own work nor adds the rebuilt events again. Rebuild ranges the
// rollup writers have caught up on.
func Rebuild(ctx context.Context, rollups *store.Rollups, archive *store.Archive, adIDs []string, salt []byte, from, to, now time.Time, progress RebuildProgress) (RebuildResult, error) {
	if progress == nil {
		progress = func(string, int, int) {}
	}
	from = store.Day.Truncate(from)
	if t := store.Day.Truncate(to); t.Before(to) {
		to = t.AddDate(0, 0, 1)
	} else {
		to = t
	}
	res := RebuildResult{From: from, To: to}
	if !from.Before(to) {
		return res, fmt.Errorf("aggregator: rebuild: empty range [%s, %s)", from, to)
	}
	layout := rollups.Layout()

	total, err := archive.Count(ctx, from, to)
	if err != nil {
		return res, err
	}
	fresh := make(map[Key]*store.Rollup)
	batch := make([]Record, 0, 1000)
	fold := func() {
		for _, k := range Touched(layout, batch, now) {
			if _, ok := fresh[k]; !ok {
				fresh[k] = store.NewRollup()
			}
		}
		Fold(layout, fresh, batch, now)
		res.Events += len(batch)
		progress("events", res.Events, total)
		batch = batch[:0]
	}
	err = archive.Scan(ctx, from, to, func(row *store.ArchivedEvent) error {
		batch = append(batch, recordOf(row, salt))
		if len(batch) == cap(batch) {
			fold()
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	fold()

	archived, err := archive.AdIDs(ctx, from, to)
	if err != nil {
		return res, err
	}
	ads := slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(adIDs), archived...))))
	type period struct {
		unit  store.Unit
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
	todo := len(ads) * len(periods)
	for i, ad := range ads {
		for _, p := range periods {
			key, _ := p.unit.Locate(ad, p.start)
			written, err := replaceRange(ctx, rollups, p.unit, key, p.start, from, to, fresh[Key{p.unit, key}])
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

// replaceRange rewrites the slots of one key that fall in [from, to) with
// those of rebuilt (nil: none), retrying when the key moves under it. It
// reports whether it wrote.
func replaceRange(ctx context.Context, rollups *store.Rollups, u store.Unit, key string, periodStart, from, to time.Time, rebuilt *store.Rollup) (bool, error) {
	for attempt := 0; ; attempt++ {
		cur, rev, err := rollups.Load(ctx, u, key)
		if err != nil {
			return false, err
		}
		next := store.NewRollup()
		next.MaxSeq = cur.MaxSeq
		changed := false
		for i, s := range cur.Slots {
			if t := u.SlotStart(periodStart, i); !t.Before(from) && t.Before(to) {
				changed = true // replaced (or dropped) below
				continue
			}
			next.Slots[i] = s
		}
		if rebuilt != nil {
			for _, i := range slices.Sorted(maps.Keys(rebuilt.Slots)) {
				next.Slots[i] = rebuilt.Slots[i]
				changed = true
			}
			next.MaxSeq = max(next.MaxSeq, rebuilt.MaxSeq)
		}
		if !changed {
			return false, nil
		}
		_, err = rollups.Replace(ctx, u, []store.Write{{Key: key, Value: next, Rev: rev}})
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, store.ErrConflict) || attempt >= 10 {
			return false, err
		}
	}
}

// recordOf turns an archived row back into the Record the fold takes.
func recordOf(row *store.ArchivedEvent, salt []byte) Record {
	ev := event.Event{
		EventID:      row.EventID,
		Type:         event.Type(row.Type),
		AdID:         row.AdID,
		Timestamp:    row.OccurredAt.UTC(),
		IP:           event.CanonicalIP(row.IP),
		UserAgent:    row.UserAgent,
		PlaybackTime: float64(row.PlaybackMS) / 1000,
	}
	rec := Record{Seq: row.StreamSeq, Event: ev}
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
