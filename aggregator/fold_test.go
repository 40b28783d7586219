package aggregator

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/store/rollup"
	"github.com/admetric/admetric/store/rollup/rolluptest"
)

// foldTestLayout has the retentions of DESIGN.md section 5.
var foldTestLayout = rolluptest.Layout

// foldTestNow is the fold's "now": unaligned on purpose.
var foldTestNow = time.Date(2026, 11, 25, 12, 34, 56, 0, time.UTC)

// foldTestVisitor stands in for event.VisitorHash: a well-mixed 64-bit hash of
// i (splitmix64), never 0. HyperLogLog needs mixed hashes; small integers would
// share a register.
func foldTestVisitor(i uint64) uint64 {
	z := i + 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return (z ^ (z >> 31)) | 1
}

// foldTestRec builds a record.
func foldTestRec(seq uint64, typ event.Type, adID string, ts time.Time, playback float64, visitor uint64) Record {
	return Record{
		Seq:     seq,
		Event:   event.Event{EventID: fmt.Sprintf("e%d", seq), Type: typ, AdID: adID, Timestamp: ts, PlaybackTime: playback},
		Visitor: visitor,
	}
}

// foldTestValues returns values holding a fresh rollup for every key Touched
// lists for recs, keeping any already in have (which may be nil).
func foldTestValues(have map[Key]*rollup.Rollup, recs []Record) map[Key]*rollup.Rollup {
	if have == nil {
		have = make(map[Key]*rollup.Rollup)
	}
	for _, k := range Touched(foldTestLayout[:], recs, foldTestNow) {
		if _, ok := have[k]; !ok {
			have[k] = rollup.New()
		}
	}
	return have
}

// foldTestSlotView is what a slot holds, comparable with ==.
type foldTestSlotView struct {
	rollup.Counters
	Visitors uint64
}

type foldTestView struct {
	MaxSeq uint64
	Slots  map[int]foldTestSlotView
}

// foldTestSnapshot captures the content of values for comparison.
func foldTestSnapshot(values map[Key]*rollup.Rollup) map[Key]foldTestView {
	out := make(map[Key]foldTestView, len(values))
	for k, r := range values {
		v := foldTestView{MaxSeq: r.MaxSeq, Slots: make(map[int]foldTestSlotView, len(r.Slots))}
		for i, s := range r.Slots {
			sv := foldTestSlotView{Counters: s.Counters}
			if s.Visitors != nil {
				sv.Visitors = s.Visitors.Count()
			}
			v.Slots[i] = sv
		}
		out[k] = v
	}
	return out
}

func foldTestEqualSnapshots(t *testing.T, got, want map[Key]foldTestView) {
	t.Helper()
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("key %v missing", k)
			continue
		}
		if g.MaxSeq != w.MaxSeq {
			t.Errorf("key %v: MaxSeq %d, want %d", k, g.MaxSeq, w.MaxSeq)
		}
		if !maps.Equal(g.Slots, w.Slots) {
			t.Errorf("key %v: slots\n%+v\nwant\n%+v", k, g.Slots, w.Slots)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected key %v", k)
		}
	}
}

// foldTestSlot returns the slot of adID at ts in unit u, failing if absent.
func foldTestSlot(t *testing.T, values map[Key]*rollup.Rollup, u rollup.Unit, adID string, ts time.Time) *rollup.Slot {
	t.Helper()
	k, i := u.Locate(adID, ts)
	r, ok := values[Key{u, k}]
	if !ok {
		t.Fatalf("no rollup for %v key %q", u, k)
	}
	s, ok := r.Slots[i]
	if !ok {
		t.Fatalf("no slot %d in %v key %q", i, u, k)
	}
	return s
}

func TestFoldCountsEachType(t *testing.T) {
	t.Parallel()
	ts := time.Date(2026, 11, 25, 12, 10, 30, 0, time.UTC)
	served := func(e *event.Event) {
		e.ServingID = "admetric-0b5f3c1e-9f5a-4f3e-8d47-2a1c9e6b7d10"
		e.EventID = e.ServingID + "." + string(e.Type)
	}
	namesServing := func(e *event.Event) { e.ServingID = "admetric-0b5f3c1e-9f5a-4f3e-8d47-2a1c9e6b7d10" }
	tests := []struct {
		name     string
		typ      event.Type
		edit     func(*event.Event)
		want     rollup.Counters
		codes    rollup.CodeCounts
		visitors uint64
	}{
		{"impression", event.Impression, nil, rollup.Counters{Impressions: 1}, nil, 1},
		{"click", event.Click, nil, rollup.Counters{Clicks: 1, PlaybackMillis: 12500, PlaybackCount: 1}, nil, 1},
		{"start", event.Start, nil, rollup.Counters{Starts: 1}, nil, 1},
		{"firstQuartile", event.FirstQuartile, nil, rollup.Counters{FirstQuartiles: 1}, nil, 1},
		{"midpoint", event.Midpoint, nil, rollup.Counters{Midpoints: 1}, nil, 1},
		{"thirdQuartile", event.ThirdQuartile, nil, rollup.Counters{ThirdQuartiles: 1}, nil, 1},
		{"complete", event.Complete, nil, rollup.Counters{Completes: 1}, nil, 1},
		{"skip", event.Skip, nil, rollup.Counters{Skips: 1}, nil, 1},
		{"error without a code", event.Error, nil, rollup.Counters{Errors: 1}, rollup.CodeCounts{{Code: 0, N: 1}}, 1},
		{"error 402", event.Error, func(e *event.Event) { e.ErrorCode = 402 },
			rollup.Counters{Errors: 1}, rollup.CodeCounts{{Code: 402, N: 1}}, 1},
		{"served impression", event.Impression, served, rollup.Counters{Impressions: 1, Servings: 1}, nil, 1},
		{"served click", event.Click, served,
			rollup.Counters{Clicks: 1, PlaybackMillis: 12500, PlaybackCount: 1, ServingClicks: 1}, nil, 1},
		{"served quartile", event.Midpoint, served, rollup.Counters{Midpoints: 1}, nil, 1},
		{"impression naming a serving under an ID of its own", event.Impression, namesServing, rollup.Counters{Impressions: 1}, nil, 1},
		{"click naming a serving under an ID of its own", event.Click, namesServing,
			rollup.Counters{Clicks: 1, PlaybackMillis: 12500, PlaybackCount: 1}, nil, 1},
		{"invalid click", event.Click, func(e *event.Event) { served(e); e.InvalidReason = event.BadSignature },
			rollup.Counters{Invalid: 1, InvalidClicks: 1, InvalidSignature: 1}, nil, 0},
		{"invalid error", event.Error, func(e *event.Event) { e.ErrorCode = 402; e.InvalidReason = event.BadSignature },
			rollup.Counters{Invalid: 1, InvalidSignature: 1}, nil, 0},
		{"bot impression", event.Impression, func(e *event.Event) { e.InvalidReason = event.Bot },
			rollup.Counters{Invalid: 1, InvalidImpressions: 1, InvalidBot: 1}, nil, 0},
		{"impossible playback", event.Click, func(e *event.Event) { e.InvalidReason = event.Playback },
			rollup.Counters{Invalid: 1, InvalidClicks: 1, InvalidPlayback: 1}, nil, 0},
		{"click without impression", event.Click, func(e *event.Event) { served(e); e.InvalidReason = event.ClickWithoutImpression },
			rollup.Counters{Invalid: 1, InvalidClicks: 1, InvalidClickWithoutImpression: 1}, nil, 0},
		{"duplicate click", event.Click, func(e *event.Event) { e.InvalidReason = event.DuplicateClick },
			rollup.Counters{Invalid: 1, InvalidClicks: 1, InvalidDuplicateClick: 1}, nil, 0},
		{"quartile beyond the rate", event.Midpoint, func(e *event.Event) { e.InvalidReason = event.Rate },
			rollup.Counters{Invalid: 1, InvalidRate: 1}, nil, 0},
	}
	covered := map[event.Type]bool{}
	for _, tc := range tests {
		covered[tc.typ] = true
	}
	for _, typ := range event.Types {
		if !covered[typ] {
			t.Errorf("the table does not cover type %s", typ)
		}
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// Every event carries a playback time; only a click's is summed.
			recs := []Record{foldTestRec(10, tc.typ, "ad-1", ts, 12.5, foldTestVisitor(7))}
			if tc.edit != nil {
				tc.edit(&recs[0].Event)
			}
			values := foldTestValues(nil, recs)
			st := Fold(foldTestLayout[:], values, recs, foldTestNow)
			if want := (FoldStats{Applied: 3}); st != want {
				t.Errorf("stats = %+v, want %+v", st, want)
			}
			for _, u := range []rollup.Unit{rollup.Minute, rollup.Hour, rollup.Day} {
				s := foldTestSlot(t, values, u, "ad-1", ts)
				if s.Counters != tc.want {
					t.Errorf("%v slot counters = %+v, want %+v", u, s.Counters, tc.want)
				}
				if !slices.Equal(s.ErrorCodes, tc.codes) {
					t.Errorf("%v slot error codes = %v, want %v", u, s.ErrorCodes, tc.codes)
				}
				if got := s.Visitors.Count(); got != tc.visitors {
					t.Errorf("%v slot visitors = %d, want %d", u, got, tc.visitors)
				}
			}
		})
	}
}

func TestFoldPlacesInEveryResolution(t *testing.T) {
	t.Parallel()
	ts := time.Date(2026, 11, 25, 12, 10, 30, 0, time.UTC)
	ts2 := time.Date(2026, 11, 25, 12, 11, 0, 0, time.UTC)  // next minute, same hour
	ts3 := time.Date(2026, 11, 24, 23, 59, 59, 0, time.UTC) // previous day
	recs := []Record{
		foldTestRec(1, event.Impression, "a", ts, 0, foldTestVisitor(101)),
		foldTestRec(2, event.Impression, "a", ts, 0, foldTestVisitor(102)),
		foldTestRec(3, event.Click, "a", ts, 12.5, foldTestVisitor(101)),
		foldTestRec(4, event.Click, "a", ts, 0.25, 0),
		foldTestRec(5, event.Impression, "a", ts2, 7, foldTestVisitor(103)),
		foldTestRec(6, event.Impression, "b", ts, 0, foldTestVisitor(104)),
		foldTestRec(7, event.Complete, "a", ts3, 15, foldTestVisitor(105)),
	}
	values := foldTestValues(nil, recs)
	st := Fold(foldTestLayout[:], values, recs, foldTestNow)
	if want := (FoldStats{Applied: 3 * len(recs)}); st != want {
		t.Errorf("stats = %+v, want %+v", st, want)
	}

	want := map[Key]foldTestView{
		{rollup.Minute, "a.2026112512"}: {MaxSeq: 5, Slots: map[int]foldTestSlotView{
			10: {rollup.Counters{Impressions: 2, Clicks: 2, PlaybackMillis: 12750, PlaybackCount: 2}, 2},
			11: {rollup.Counters{Impressions: 1}, 1},
		}},
		{rollup.Hour, "a.20261125"}: {MaxSeq: 5, Slots: map[int]foldTestSlotView{
			12: {rollup.Counters{Impressions: 3, Clicks: 2, PlaybackMillis: 12750, PlaybackCount: 2}, 3},
		}},
		{rollup.Day, "a.202611"}: {MaxSeq: 7, Slots: map[int]foldTestSlotView{
			24: {rollup.Counters{Impressions: 3, Clicks: 2, PlaybackMillis: 12750, PlaybackCount: 2}, 3},
			23: {rollup.Counters{Completes: 1}, 1},
		}},
		{rollup.Minute, "a.2026112423"}: {MaxSeq: 7, Slots: map[int]foldTestSlotView{59: {rollup.Counters{Completes: 1}, 1}}},
		{rollup.Hour, "a.20261124"}:     {MaxSeq: 7, Slots: map[int]foldTestSlotView{23: {rollup.Counters{Completes: 1}, 1}}},
		{rollup.Minute, "b.2026112512"}: {MaxSeq: 6, Slots: map[int]foldTestSlotView{10: {rollup.Counters{Impressions: 1}, 1}}},
		{rollup.Hour, "b.20261125"}:     {MaxSeq: 6, Slots: map[int]foldTestSlotView{12: {rollup.Counters{Impressions: 1}, 1}}},
		{rollup.Day, "b.202611"}:        {MaxSeq: 6, Slots: map[int]foldTestSlotView{24: {rollup.Counters{Impressions: 1}, 1}}},
	}
	foldTestEqualSnapshots(t, foldTestSnapshot(values), want)
}

func TestFoldVisitorZeroMeansNone(t *testing.T) {
	t.Parallel()
	ts := foldTestNow.Add(-time.Minute)
	recs := []Record{
		foldTestRec(1, event.Impression, "a", ts, 0, 0),
		foldTestRec(2, event.Click, "a", ts, 1, 0),
	}
	values := foldTestValues(nil, recs)
	Fold(foldTestLayout[:], values, recs, foldTestNow)
	for _, u := range []rollup.Unit{rollup.Minute, rollup.Hour, rollup.Day} {
		s := foldTestSlot(t, values, u, "a", ts)
		if s.Visitors != nil {
			t.Errorf("%v slot has a sketch (estimate %d) though no event had a visitor", u, s.Visitors.Count())
		}
	}

	more := []Record{
		foldTestRec(3, event.Impression, "a", ts, 0, foldTestVisitor(42)),
		foldTestRec(4, event.Impression, "a", ts, 0, foldTestVisitor(42)),
		foldTestRec(5, event.Impression, "a", ts, 0, 0),
		foldTestRec(6, event.Impression, "a", ts, 0, foldTestVisitor(1<<63)),
	}
	Fold(foldTestLayout[:], values, more, foldTestNow)
	for _, u := range []rollup.Unit{rollup.Minute, rollup.Hour, rollup.Day} {
		s := foldTestSlot(t, values, u, "a", ts)
		if s.Visitors == nil {
			t.Fatalf("%v slot has no sketch after visitors", u)
		}
		if got := s.Visitors.Count(); got != 2 {
			t.Errorf("%v slot estimates %d visitors, want 2", u, got)
		}
	}
}

func TestFoldRetention(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		ts    time.Time
		units []rollup.Unit // the resolutions that receive the event
	}{
		{"now", foldTestNow, []rollup.Unit{rollup.Minute, rollup.Hour, rollup.Day}},
		{"in the future", foldTestNow.Add(4 * time.Minute), []rollup.Unit{rollup.Minute, rollup.Hour, rollup.Day}},
		{"exactly the minute retention", foldTestNow.Add(-72 * time.Hour), []rollup.Unit{rollup.Minute, rollup.Hour, rollup.Day}},
		{"just past the minute retention", foldTestNow.Add(-72*time.Hour - time.Nanosecond), []rollup.Unit{rollup.Hour, rollup.Day}},
		{"80 hours old", foldTestNow.Add(-80 * time.Hour), []rollup.Unit{rollup.Hour, rollup.Day}},
		{"99 days old", foldTestNow.Add(-99 * 24 * time.Hour), []rollup.Unit{rollup.Hour, rollup.Day}},
		{"exactly the hour retention", foldTestNow.Add(-2400 * time.Hour), []rollup.Unit{rollup.Hour, rollup.Day}},
		{"just past the hour retention", foldTestNow.Add(-2400*time.Hour - time.Nanosecond), []rollup.Unit{rollup.Day}},
		{"200 days old", foldTestNow.Add(-200 * 24 * time.Hour), []rollup.Unit{rollup.Day}},
		{"exactly the day retention", foldTestNow.Add(-43800 * time.Hour), []rollup.Unit{rollup.Day}},
		{"just past the day retention", foldTestNow.Add(-43800*time.Hour - time.Nanosecond), nil},
		{"ten years old", foldTestNow.AddDate(-10, 0, 0), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			recs := []Record{foldTestRec(9, event.Impression, "ad", tc.ts, 0, 7)}
			touched := Touched(foldTestLayout[:], recs, foldTestNow)
			var wantKeys []Key
			for _, u := range tc.units {
				k, _ := u.Locate("ad", tc.ts)
				wantKeys = append(wantKeys, Key{u, k})
			}
			if !foldTestSameKeys(touched, wantKeys) {
				t.Errorf("Touched = %v, want %v", touched, wantKeys)
			}
			values := foldTestValues(nil, recs)
			st := Fold(foldTestLayout[:], values, recs, foldTestNow)
			want := FoldStats{Applied: len(tc.units)}
			if len(tc.units) == 0 {
				want.TooOld = 1
			}
			if st != want {
				t.Errorf("stats = %+v, want %+v", st, want)
			}
			if len(values) != len(tc.units) {
				t.Errorf("%d rollups, want %d", len(values), len(tc.units))
			}
			for _, u := range tc.units {
				if s := foldTestSlot(t, values, u, "ad", tc.ts); s.Impressions != 1 {
					t.Errorf("%v slot has %d impressions, want 1", u, s.Impressions)
				}
			}
		})
	}
}

func TestFoldTooOldAmongOthers(t *testing.T) {
	t.Parallel()
	ancient := foldTestNow.AddDate(-6, 0, 0)
	recs := []Record{
		foldTestRec(1, event.Impression, "a", foldTestNow, 0, 0),
		foldTestRec(2, event.Impression, "a", ancient, 0, 0),
		foldTestRec(3, event.Click, "a", foldTestNow.Add(-100*time.Hour), 2, 0),
		foldTestRec(4, event.Click, "b", ancient, 2, 0),
	}
	values := foldTestValues(nil, recs)
	st := Fold(foldTestLayout[:], values, recs, foldTestNow)
	if want := (FoldStats{Applied: 3 + 2, TooOld: 2}); st != want {
		t.Errorf("stats = %+v, want %+v", st, want)
	}
	for _, k := range Touched(foldTestLayout[:], recs, foldTestNow) {
		if k.Key[:2] == "b." {
			t.Errorf("Touched lists %v for an event older than every retention", k)
		}
	}
}

// foldTestSameKeys reports whether a and b hold the same keys, ignoring order.
func foldTestSameKeys(a, b []Key) bool {
	cmp := func(x, y Key) int {
		if x.Unit != y.Unit {
			return int(x.Unit) - int(y.Unit)
		}
		switch {
		case x.Key < y.Key:
			return -1
		case x.Key > y.Key:
			return 1
		}
		return 0
	}
	a, b = slices.Clone(a), slices.Clone(b)
	slices.SortFunc(a, cmp)
	slices.SortFunc(b, cmp)
	return slices.Equal(a, b)
}

func TestTouchedDistinct(t *testing.T) {
	t.Parallel()
	at := func(d, h, m int) time.Time { return time.Date(2026, 11, d, h, m, 0, 0, time.UTC) }
	k := func(u rollup.Unit, key string) Key { return Key{u, key} }
	tests := []struct {
		name string
		recs []Record
		want []Key
	}{
		{"none", nil, nil},
		{"one ad, one minute, many events", []Record{
			foldTestRec(1, event.Impression, "a", at(25, 12, 1), 0, 0),
			foldTestRec(2, event.Click, "a", at(25, 12, 1), 0, 0),
			foldTestRec(3, event.Impression, "a", at(25, 12, 1), 0, 0),
		}, []Key{k(rollup.Minute, "a.2026112512"), k(rollup.Hour, "a.20261125"), k(rollup.Day, "a.202611")}},
		{"minutes of one hour share a key", []Record{
			foldTestRec(1, event.Impression, "a", at(25, 12, 1), 0, 0),
			foldTestRec(2, event.Impression, "a", at(25, 12, 59), 0, 0),
		}, []Key{k(rollup.Minute, "a.2026112512"), k(rollup.Hour, "a.20261125"), k(rollup.Day, "a.202611")}},
		{"two hours of one day", []Record{
			foldTestRec(1, event.Impression, "a", at(25, 11, 1), 0, 0),
			foldTestRec(2, event.Impression, "a", at(25, 12, 1), 0, 0),
		}, []Key{k(rollup.Minute, "a.2026112511"), k(rollup.Minute, "a.2026112512"), k(rollup.Hour, "a.20261125"), k(rollup.Day, "a.202611")}},
		{"two ads", []Record{
			foldTestRec(1, event.Impression, "a", at(25, 12, 1), 0, 0),
			foldTestRec(2, event.Impression, "b", at(25, 12, 1), 0, 0),
			foldTestRec(3, event.Impression, "a", at(25, 12, 2), 0, 0),
		}, []Key{
			k(rollup.Minute, "a.2026112512"), k(rollup.Hour, "a.20261125"), k(rollup.Day, "a.202611"),
			k(rollup.Minute, "b.2026112512"), k(rollup.Hour, "b.20261125"), k(rollup.Day, "b.202611"),
		}},
	}
	for _, tc := range tests {
		got := Touched(foldTestLayout[:], tc.recs, foldTestNow)
		if !foldTestSameKeys(got, tc.want) {
			t.Errorf("%s: Touched = %v, want %v", tc.name, got, tc.want)
		}
		seen := map[Key]bool{}
		for _, key := range got {
			if seen[key] {
				t.Errorf("%s: Touched repeats %v", tc.name, key)
			}
			seen[key] = true
		}
	}
}

// foldTestBatch is a mixed batch: several ads, types, minutes and resolutions,
// with sequences from first upwards.
func foldTestBatch(first uint64, n int, seed uint64) []Record {
	rng := rand.New(rand.NewPCG(seed, 99))
	ads := []string{"a", "b", "c", "d"}
	ages := []time.Duration{0, 5 * time.Minute, 3 * time.Hour, 30 * time.Hour, 80 * time.Hour, 500 * time.Hour, 3000 * time.Hour}
	recs := make([]Record, n)
	for i := range recs {
		ts := foldTestNow.Add(-ages[rng.IntN(len(ages))] - time.Duration(rng.IntN(3600))*time.Second)
		var visitor uint64
		if rng.IntN(4) != 0 {
			visitor = rng.Uint64() | 1
		}
		recs[i] = foldTestRec(first+uint64(i), event.Types[rng.IntN(len(event.Types))], ads[rng.IntN(len(ads))],
			ts, float64(rng.IntN(60000))/1000, visitor)
	}
	return recs
}

func TestFoldSameBatchTwiceCountsOnce(t *testing.T) {
	t.Parallel()
	recs := foldTestBatch(100, 300, 1)
	values := foldTestValues(nil, recs)
	first := Fold(foldTestLayout[:], values, recs, foldTestNow)
	if first.Applied == 0 || first.Duplicates != 0 {
		t.Fatalf("first fold: %+v", first)
	}
	want := foldTestSnapshot(values)

	second := Fold(foldTestLayout[:], values, recs, foldTestNow)
	if second.Applied != 0 || second.Duplicates != first.Applied || second.TooOld != first.TooOld {
		t.Errorf("second fold: %+v, want Applied 0, Duplicates %d, TooOld %d", second, first.Applied, first.TooOld)
	}
	foldTestEqualSnapshots(t, foldTestSnapshot(values), want)
}

func TestFoldBatchThenLongerBatchAddsOnlyTheNew(t *testing.T) {
	t.Parallel()
	a := foldTestBatch(1000, 200, 2)
	b := foldTestBatch(1200, 150, 3)
	ab := slices.Concat(a, b)

	fresh := foldTestValues(nil, ab)
	whole := Fold(foldTestLayout[:], fresh, ab, foldTestNow)

	values := foldTestValues(nil, a)
	stA := Fold(foldTestLayout[:], values, a, foldTestNow)
	values = foldTestValues(values, ab)
	stAB := Fold(foldTestLayout[:], values, ab, foldTestNow)

	if stAB.Duplicates != stA.Applied {
		t.Errorf("refold of A+B skipped %d, want the %d applied for A", stAB.Duplicates, stA.Applied)
	}
	if stA.Applied+stAB.Applied != whole.Applied {
		t.Errorf("applied %d + %d, want %d as for one fold of A+B", stA.Applied, stAB.Applied, whole.Applied)
	}
	foldTestEqualSnapshots(t, foldTestSnapshot(values), foldTestSnapshot(fresh))
}

func TestFoldPartialCommit(t *testing.T) {
	t.Parallel()
	// A writer folds batch A and commits it to the minute bucket only, then
	// crashes before the hour and day buckets commit (each bucket commits its
	// own atomic batch). The redelivery brings A again, followed by B, onto the
	// committed minute values and the old hour and day values. The result must
	// equal a single clean fold of A+B.
	a := foldTestBatch(1, 250, 4)
	b := foldTestBatch(251, 120, 5)
	ab := slices.Concat(a, b)

	clean := foldTestValues(nil, ab)
	Fold(foldTestLayout[:], clean, ab, foldTestNow)

	crashed := foldTestValues(nil, a)
	stA := Fold(foldTestLayout[:], crashed, a, foldTestNow)

	// What the store holds after the crash: committed minute values (through
	// the codec, as the KV would give them back), nothing else.
	stored := make(map[Key]*rollup.Rollup)
	minuteApplied := 0
	for k, r := range crashed {
		if k.Unit != rollup.Minute {
			continue
		}
		enc, err := r.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		dec := rollup.New()
		if err := dec.UnmarshalBinary(enc); err != nil {
			t.Fatal(err)
		}
		stored[k] = dec
	}
	for _, rec := range a {
		if !rec.Event.Timestamp.Before(foldTestNow.Add(-72 * time.Hour)) {
			minuteApplied++
		}
	}
	if minuteApplied == 0 || minuteApplied == stA.Applied {
		t.Fatalf("batch A does not exercise the partial commit: %d minute pairs of %d", minuteApplied, stA.Applied)
	}

	stored = foldTestValues(stored, ab)
	st := Fold(foldTestLayout[:], stored, ab, foldTestNow)
	if st.Duplicates != minuteApplied {
		t.Errorf("redelivery skipped %d pairs, want the %d committed to the minute bucket", st.Duplicates, minuteApplied)
	}
	foldTestEqualSnapshots(t, foldTestSnapshot(stored), foldTestSnapshot(clean))
}

func TestFoldSkipsAtOrBelowMaxSeq(t *testing.T) {
	t.Parallel()
	ts := foldTestNow.Add(-time.Minute)
	recs := []Record{
		foldTestRec(49, event.Impression, "a", ts, 0, 0),
		foldTestRec(50, event.Impression, "a", ts, 0, 0),
		foldTestRec(51, event.Impression, "a", ts, 0, 0),
	}
	values := foldTestValues(nil, recs)
	for _, r := range values {
		r.MaxSeq = 50
	}
	st := Fold(foldTestLayout[:], values, recs, foldTestNow)
	if want := (FoldStats{Applied: 3, Duplicates: 6}); st != want {
		t.Errorf("stats = %+v, want %+v", st, want)
	}
	for k, r := range values {
		if r.MaxSeq != 51 {
			t.Errorf("%v: MaxSeq = %d, want 51", k, r.MaxSeq)
		}
		total := uint64(0)
		for _, s := range r.Slots {
			total += s.Impressions
		}
		if total != 1 {
			t.Errorf("%v: %d impressions, want 1", k, total)
		}
	}
}

func BenchmarkFold(b *testing.B) {
	const nRecs, nAds = 1000, 100
	rng := rand.New(rand.NewPCG(7, 7))
	recs := make([]Record, nRecs)
	for i := range recs {
		ts := foldTestNow.Add(-time.Duration(rng.IntN(3600)) * time.Second)
		recs[i] = foldTestRec(uint64(i+1), event.Types[rng.IntN(len(event.Types))],
			fmt.Sprintf("ad-%03d", rng.IntN(nAds)), ts, float64(rng.IntN(30000))/1000, rng.Uint64()|1)
	}
	values := foldTestValues(nil, recs)
	b.ReportAllocs()
	iters := 0
	for b.Loop() {
		// Move the batch past the values' MaxSeq so every pass folds, not skips.
		for i := range recs {
			recs[i].Seq += nRecs
		}
		st := Fold(foldTestLayout[:], values, recs, foldTestNow)
		if st.Applied != 3*nRecs {
			b.Fatalf("stats %+v", st)
		}
		iters++
	}
	b.ReportMetric(float64(iters*nRecs)/b.Elapsed().Seconds(), "events/s")
}
