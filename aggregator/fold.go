// Package aggregator turns the event stream into what the read side needs: the
// rollup writer folds events into per-ad minute, hour and day rollups in KV, and
// the archiver writes every event to the PostgreSQL events table.
//
// The fold is pure (Fold, Touched) so that it is tested and benchmarked without
// NATS; the consumers around it only fetch, commit and acknowledge.
package aggregator

import (
	"time"

	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/store/rollup"
)

// Record is one event read from the stream, with its stream sequence and its
// visitor hash.
type Record struct {
	Seq     uint64
	Event   event.Event
	Visitor uint64 // 0: the event carries no visitor identity
	// Partition is the stream partition the event was stored in; -1 when not known.
	Partition int
}

// Key names one rollup value: a key in one resolution's bucket.
type Key struct {
	Unit rollup.Unit
	Key  string
}

// Touched lists, without repeats, the rollup keys of resolutions that Fold
// will read for recs.
func Touched(resolutions []rollup.Resolution, recs []Record, now time.Time) []Key {
	seen := make(map[Key]struct{}, len(recs))
	var keys []Key
	for i := range recs {
		for _, res := range resolutions {
			if !holds(res, recs[i].Event.Timestamp, now) {
				continue
			}
			k, _ := res.Unit.Locate(recs[i].Event.AdID, recs[i].Event.Timestamp)
			key := Key{res.Unit, k}
			if _, ok := seen[key]; !ok {
				seen[key] = struct{}{}
				keys = append(keys, key)
			}
		}
	}
	return keys
}

// holds reports whether res still keeps data for time t.
func holds(res rollup.Resolution, t, now time.Time) bool {
	return !t.Before(now.Add(-res.Retention))
}

// FoldStats says what Fold did with a batch.
type FoldStats struct {
	// Applied counts (event, resolution) pairs added to a rollup.
	Applied int
	// Duplicates counts pairs skipped because the rollup already holds that
	// sequence (a redelivery after a crash between commit and checkpoint).
	Duplicates int
	// TooOld counts events older than the retention of every resolution
	// folded: archived, but in none of their rollups.
	TooOld int
}

// Fold adds recs, which must be in ascending sequence order, to values, which
// must hold the current value of every key Touched returns for them and the
// same resolutions. An event goes to its event-time slot in every one of
// resolutions that still holds that time; a rollup skips any event at or
// below its MaxSeq, so folding a batch again after a partial commit counts
// nothing twice.
func Fold(resolutions []rollup.Resolution, values map[Key]*rollup.Rollup, recs []Record, now time.Time) FoldStats {
	var st FoldStats
	for i := range recs {
		r := &recs[i]
		placed := false
		for _, res := range resolutions {
			if !holds(res, r.Event.Timestamp, now) {
				continue
			}
			placed = true
			k, slot := res.Unit.Locate(r.Event.AdID, r.Event.Timestamp)
			v := values[Key{res.Unit, k}]
			if r.Seq <= v.MaxSeq {
				st.Duplicates++
				continue
			}
			apply(v.Slot(slot), r)
			v.MaxSeq = r.Seq
			st.Applied++
		}
		if !placed {
			st.TooOld++
		}
	}
	return st
}

// apply folds r into s. Every event moves a counter: the rollup cache tells
// an unchanged slot by its counters (rollupcache.Cache's range sums). An
// invalid event counts as invalid and in nothing else, its visitor included.
func apply(s *rollup.Slot, r *Record) {
	if r.Event.InvalidReason != "" {
		countInvalid(s, &r.Event)
		return
	}
	// A serving's impression and click count as such only under the ID the
	// serving derives, which the stream and the archive keep once: any
	// number of events merely naming a serving_id count as plain ones.
	served := r.Event.FromServing()
	switch r.Event.Type {
	case event.Impression:
		s.Impressions++
		if served {
			s.Servings++
		}
	case event.Click:
		s.Clicks++
		s.PlaybackMillis += r.Event.PlaybackMillis()
		s.PlaybackCount++
		if served {
			s.ServingClicks++
		}
	case event.Start:
		s.Starts++
	case event.FirstQuartile:
		s.FirstQuartiles++
	case event.Midpoint:
		s.Midpoints++
	case event.ThirdQuartile:
		s.ThirdQuartiles++
	case event.Complete:
		s.Completes++
	case event.Skip:
		s.Skips++
	case event.Error:
		s.Errors++
		s.ErrorCodes.Inc(uint32(r.Event.ErrorCode))
	}
	if r.Visitor != 0 {
		s.AddVisitor(r.Visitor)
	}
}

// countInvalid counts an invalid event by its type and its reason.
func countInvalid(s *rollup.Slot, e *event.Event) {
	s.Invalid++
	switch e.Type {
	case event.Impression:
		s.InvalidImpressions++
	case event.Click:
		s.InvalidClicks++
	}
	switch e.InvalidReason {
	case event.BadSignature:
		s.InvalidSignature++
	case event.Playback:
		s.InvalidPlayback++
	case event.Bot:
		s.InvalidBot++
	case event.ClickWithoutImpression:
		s.InvalidClickWithoutImpression++
	case event.DuplicateClick:
		s.InvalidDuplicateClick++
	case event.Rate:
		s.InvalidRate++
	}
}
