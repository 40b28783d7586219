package rollup

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"slices"
	"sync"
	"testing"

	"github.com/axiomhq/hyperloglog"
)

// testHash spreads i over 64 bits (splitmix64), standing in for the
// SHA-256-derived visitor hashes of production: HyperLogLog needs well-mixed
// hashes, and small integers used as hashes would all land in one register.
func testHash(i uint64) uint64 {
	z := i + 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// testSlot returns a slot with the given counters and the hashes of
// [from, to) in its sketch (none when from == to).
func testSlot(c Counters, from, to uint64) *Slot {
	s := &Slot{Counters: c}
	for i := from; i < to; i++ {
		s.AddVisitor(testHash(i))
	}
	return s
}

// equalRollups fails unless got holds what want holds: the same MaxSeq, slot
// indices, counters, and sketches with equal estimates. Sketch encodings are not
// canonical, so sketches are compared by what they estimate.
func equalRollups(t *testing.T, got, want *Rollup) {
	t.Helper()
	if got.MaxSeq != want.MaxSeq {
		t.Errorf("MaxSeq = %d, want %d", got.MaxSeq, want.MaxSeq)
	}
	if len(got.Slots) != len(want.Slots) {
		t.Errorf("%d slots, want %d", len(got.Slots), len(want.Slots))
	}
	for i, ws := range want.Slots {
		gs, ok := got.Slots[i]
		if !ok {
			t.Errorf("slot %d missing", i)
			continue
		}
		if gs.Counters != ws.Counters {
			t.Errorf("slot %d counters = %+v, want %+v", i, gs.Counters, ws.Counters)
		}
		if (gs.Visitors == nil) != (ws.Visitors == nil) {
			t.Errorf("slot %d: sketch present = %v, want %v", i, gs.Visitors != nil, ws.Visitors != nil)
			continue
		}
		if g, w := gs.Visitors.Count(), ws.Visitors.Count(); g != w {
			t.Errorf("slot %d: visitors estimate = %d, want %d", i, g, w)
		}
	}
}

func roundTrip(t *testing.T, r *Rollup) *Rollup {
	t.Helper()
	b, err := r.MarshalBinary()
	if err != nil {
		t.Fatalf("MarshalBinary: %v", err)
	}
	var got Rollup
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatalf("UnmarshalBinary: %v", err)
	}
	return &got
}

// sampleRollup is a rollup exercising every part of the encoding.
func sampleRollup() *Rollup {
	r := New()
	r.MaxSeq = 123456789
	r.Slots[0] = testSlot(Counters{Impressions: 1}, 0, 0)
	r.Slots[7] = testSlot(Counters{
		Impressions: 1, Clicks: 2, Starts: 3, FirstQuartiles: 4, Midpoints: 5,
		ThirdQuartiles: 6, Completes: 7, Skips: 8, PlaybackMillis: 9, PlaybackCount: 10,
	}, 0, 10)
	r.Slots[59] = testSlot(Counters{Clicks: 300, PlaybackMillis: 1 << 40, PlaybackCount: 300}, 100, 400)
	return r
}

func TestRollupCodecRoundTrip(t *testing.T) {
	t.Parallel()
	allMax := Counters{
		Impressions: math.MaxUint64, Clicks: math.MaxUint64, Starts: math.MaxUint64,
		FirstQuartiles: math.MaxUint64, Midpoints: math.MaxUint64, ThirdQuartiles: math.MaxUint64,
		Completes: math.MaxUint64, Skips: math.MaxUint64, PlaybackMillis: math.MaxUint64, PlaybackCount: math.MaxUint64,
	}
	tests := []struct {
		name string
		r    func() *Rollup
	}{
		{"empty", New},
		{"zero value", func() *Rollup { return &Rollup{} }},
		{"max seq only", func() *Rollup { return &Rollup{Slots: map[int]*Slot{}, MaxSeq: math.MaxUint64} }},
		{"counters without sketches", func() *Rollup {
			r := New()
			r.MaxSeq = 42
			r.Slots[0] = testSlot(Counters{Impressions: 3, Clicks: 1, PlaybackMillis: 12500, PlaybackCount: 1}, 0, 0)
			r.Slots[59] = testSlot(Counters{Starts: 2, Completes: 1, Skips: 1}, 0, 0)
			r.Slots[maxSlots-1] = testSlot(allMax, 0, 0)
			return r
		}},
		{"empty slot", func() *Rollup {
			r := New()
			r.Slot(5)
			return r
		}},
		{"sketch of 10", func() *Rollup {
			r := New()
			r.MaxSeq = 7
			r.Slots[3] = testSlot(Counters{Impressions: 10}, 0, 10)
			return r
		}},
		{"sketch of 5000", func() *Rollup {
			r := New()
			r.MaxSeq = 5000
			r.Slots[23] = testSlot(Counters{Impressions: 5000}, 0, 5000)
			return r
		}},
		{"dense sketch of 50000", func() *Rollup {
			r := New()
			r.MaxSeq = 50000
			r.Slots[30] = testSlot(Counters{Impressions: 50000}, 0, 50000)
			return r
		}},
		{"sample", sampleRollup},
		{"all 60 minutes", func() *Rollup {
			r := New()
			for i := range 60 {
				r.Slots[i] = testSlot(Counters{Impressions: uint64(i), Clicks: uint64(i) / 10}, uint64(i*10), uint64(i*10+i%3))
			}
			r.MaxSeq = 1 << 62
			return r
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			want := tc.r()
			got := roundTrip(t, want)
			if got.Slots == nil {
				t.Error("decoded Slots is nil; want an empty map ready for Slot()")
			}
			equalRollups(t, got, want)
			// A second trip holds the same again.
			equalRollups(t, roundTrip(t, got), want)
		})
	}
}

func TestRollupCodecSketchEstimates(t *testing.T) {
	t.Parallel()
	for _, n := range []uint64{10, 5000} {
		r := New()
		r.Slots[0] = testSlot(Counters{}, 0, n)
		got := roundTrip(t, r)
		est := got.Slots[0].Visitors.Count()
		if diff := math.Abs(float64(est) - float64(n)); diff > 0.01*float64(n) {
			t.Errorf("%d distinct hashes: decoded estimate %d, off by more than 1%%", n, est)
		}
		t.Logf("%d distinct hashes: estimate after round trip %d", n, est)
	}
}

func TestRollupCodecGolden(t *testing.T) {
	t.Parallel()
	// The encoding is persisted in KV: a format change must be deliberate.
	r := &Rollup{MaxSeq: 300, Slots: map[int]*Slot{
		130: {Counters: Counters{Clicks: 2, Errors: 3, ServingClicks: 1, Invalid: 4, InvalidClicks: 3, InvalidImpressions: 1,
			InvalidBot: 2, InvalidDuplicateClick: 1, InvalidRate: 1},
			ErrorCodes: CodeCounts{{Code: 0, N: 1}, {Code: 303, N: 2}}},
		2: {Counters: Counters{Impressions: 1, PlaybackCount: 128, Servings: 1}},
	}}
	r.Slots[2].AddVisitor(0x0102030405060708)
	r.Slots[2].AddVisitor(0x01)
	want := []byte{
		4,          // version
		0xac, 0x02, // MaxSeq 300
		2,                                     // two slots, in index order
		2,                                     // slot 2
		1, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x01, // counters
		0, 1, 0, 0, // errors, servings, serving clicks, invalid
		0, 0, // invalid impressions, clicks
		0, 0, 0, 0, 0, 0, // invalid by reason: signature, playback, bot, click without impression, duplicate click, rate
		0,    // no error codes
		1, 2, // two exact visitor hashes, ascending
		0, 0, 0, 0, 0, 0, 0, 1,
		1, 2, 3, 4, 5, 6, 7, 8,
		0x82, 0x01, // slot 130
		0, 2, 0, 0, 0, 0, 0, 0, 0, 0, // counters
		3, 0, 1, 4, // errors, servings, serving clicks, invalid
		1, 3, // invalid impressions, clicks
		0, 0, 2, 0, 1, 1, // invalid by reason
		2, 0, 1, 0xaf, 0x02, 2, // two error codes: 0 once, 303 twice
		0, // no visitors
	}
	for range 3 { // map order must not matter
		got, err := r.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("MarshalBinary = % x\nwant            % x", got, want)
		}
	}
}

func TestRollupDecodesVersion2(t *testing.T) {
	t.Parallel()
	// Values written before the VAST counters: ten counters, no codes.
	v2 := []byte{
		2, 0xac, 0x02, 2,
		2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x01,
		1, 2, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8,
		0x82, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	}
	var r Rollup
	if err := r.UnmarshalBinary(v2); err != nil {
		t.Fatal(err)
	}
	want := &Rollup{MaxSeq: 300, Slots: map[int]*Slot{
		130: {Counters: Counters{Clicks: 2}},
		2:   {Counters: Counters{Impressions: 1, PlaybackCount: 128}},
	}}
	want.Slots[2].AddVisitor(0x0102030405060708)
	want.Slots[2].AddVisitor(0x01)
	for i, ws := range want.Slots {
		gs := r.Slots[i]
		if gs == nil || gs.Counters != ws.Counters || gs.ErrorCodes != nil || gs.Visitors.Count() != ws.Visitors.Count() {
			t.Errorf("slot %d = %+v, want %+v", i, gs, ws)
		}
	}
	if r.MaxSeq != 300 || len(r.Slots) != 2 {
		t.Errorf("MaxSeq %d, %d slots; want 300, 2", r.MaxSeq, len(r.Slots))
	}
}

func TestRollupDecodesVersion3(t *testing.T) {
	t.Parallel()
	// Values written before the invalid counters by reason: fourteen
	// counters, the last the invalid events, all of them bad signatures.
	v3 := []byte{
		3, 7, 1,
		5, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 4, // counters
		1, 0x92, 0x03, 1, // one error code, 402, once
		0, // no visitors
	}
	var r Rollup
	if err := r.UnmarshalBinary(v3); err != nil {
		t.Fatal(err)
	}
	want := Counters{Impressions: 1, Clicks: 2, Errors: 1, Invalid: 4, InvalidSignature: 4}
	if s := r.Slots[5]; s == nil || s.Counters != want || !slices.Equal(s.ErrorCodes, CodeCounts{{402, 1}}) {
		t.Fatalf("slot 5 = %+v, want counters %+v and code 402 once", s, want)
	}
	again, err := r.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var r4 Rollup
	if err := r4.UnmarshalBinary(again); err != nil || again[0] != rollupCodecVersion || r4.Slots[5].Counters != want {
		t.Errorf("re-encoded as version %d: %+v (%v)", again[0], r4.Slots[5], err)
	}
}

func TestCodeCounts(t *testing.T) {
	t.Parallel()
	var a CodeCounts
	for _, c := range []uint32{303, 0, 303, 100, 900} {
		a.Inc(c)
	}
	if want := (CodeCounts{{0, 1}, {100, 1}, {303, 2}, {900, 1}}); !slices.Equal(a, want) {
		t.Fatalf("after Inc: %v, want %v", a, want)
	}
	tests := []struct {
		name      string
		into, add CodeCounts
		want      CodeCounts
	}{
		{"into empty", nil, CodeCounts{{303, 2}}, CodeCounts{{303, 2}}},
		{"nothing", CodeCounts{{303, 2}}, nil, CodeCounts{{303, 2}}},
		{"same codes", CodeCounts{{100, 1}, {303, 2}}, CodeCounts{{303, 5}}, CodeCounts{{100, 1}, {303, 7}}},
		{"new codes on both sides", CodeCounts{{100, 1}, {303, 2}}, CodeCounts{{0, 4}, {303, 1}, {901, 3}},
			CodeCounts{{0, 4}, {100, 1}, {303, 3}, {901, 3}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			add := slices.Clone(tt.add)
			into := slices.Clone(tt.into)
			into.Add(add)
			if !slices.Equal(into, tt.want) {
				t.Errorf("Add = %v, want %v", into, tt.want)
			}
			if !slices.Equal(add, tt.add) {
				t.Errorf("Add changed its argument: %v", add)
			}
			if into.Total() != tt.into.Total()+tt.add.Total() {
				t.Errorf("Total %d, want %d", into.Total(), tt.into.Total()+tt.add.Total())
			}
			// What was added is not shared: counting into the sum leaves it alone.
			into.Inc(303)
			if !slices.Equal(add, tt.add) {
				t.Errorf("the sum shares its argument's array: %v", add)
			}
		})
	}
}

// craftEncoding builds an encoding by hand: version, MaxSeq, slot count, then
// for each slot its index, the version's counters of zero (and from version 3
// no error codes) and an empty sketch.
func craftEncoding(version byte, count uint64, indices ...uint64) []byte {
	b := []byte{version}
	b = binary.AppendUvarint(b, 9)
	b = binary.AppendUvarint(b, count)
	for _, i := range indices {
		b = binary.AppendUvarint(b, i)
		switch {
		case version >= 4:
			b = append(b, make([]byte, numFields+1)...)
		case version == 3:
			b = append(b, make([]byte, v3Fields+1)...)
		default:
			b = append(b, make([]byte, v2Fields)...)
		}
		b = append(b, 0)
	}
	return b
}

func TestRollupUnmarshalRejects(t *testing.T) {
	t.Parallel()
	valid, err := sampleRollup().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	badSketch := craftEncoding(1, 1, 4)
	badSketch = badSketch[:len(badSketch)-1]
	badSketch = append(badSketch, 8, 9, 9, 9, 9, 9, 9, 9, 9)
	overlong := append([]byte{1}, bytes.Repeat([]byte{0xff}, 10)...)
	overlong = append(overlong, 0x7f, 0)
	// A slot whose sketch is precision 16: it would not merge with the rest.
	p16 := hyperloglog.New16()
	for i := range uint64(2000) {
		p16.InsertHash(testHash(i))
	}
	wrongPrecision, err := (&Rollup{Slots: map[int]*Slot{0: {Counters: Counters{Clicks: 1}, Visitors: &Visitors{sketch: p16}}}}).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}

	if err := new(Rollup).UnmarshalBinary(craftEncoding(1, 1, maxSlots-1)); err != nil {
		t.Fatalf("slot index %d rejected: %v", maxSlots-1, err)
	}
	tests := []struct {
		name string
		data []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
		{"version 0", append([]byte{0}, valid[1:]...)},
		{"version 5", append([]byte{5}, valid[1:]...)},
		{"v4 codes past end", append(craftEncoding(4, 1, 0)[:4+numFields], 2, 5, 1)},
		{"v3 too many codes", append(craftEncoding(3, 1, 0)[:18], 0x81, 0x08)},
		{"v3 codes out of order", append(craftEncoding(3, 1, 0)[:18], 2, 5, 1, 4, 1, 0)},
		{"v3 code counted zero times", append(craftEncoding(3, 1, 0)[:18], 1, 5, 0, 0)},
		{"v3 codes past end", append(craftEncoding(3, 1, 0)[:18], 2, 5, 1)},
		{"version only", []byte{1}},
		{"version 2 only", []byte{2}},
		{"unknown visitors kind", append(craftEncoding(2, 1, 0)[:14], 3)},
		{"missing visitors kind", craftEncoding(2, 1, 0)[:14]},
		{"empty exact list", append(craftEncoding(2, 1, 0)[:14], 1, 0)},
		{"exact list past end", append(craftEncoding(2, 1, 0)[:14], 1, 2, 0, 0, 0, 0, 0, 0, 0, 1)},
		{"exact list over the limit", append(craftEncoding(2, 1, 0)[:14], append([]byte{1, 0x81, 0x08}, make([]byte, 8*1025)...)...)},
		{"exact hashes out of order", append(craftEncoding(2, 1, 0)[:14], 1, 2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1)},
		{"exact hashes repeated", append(craftEncoding(2, 1, 0)[:14], 1, 2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2)},
		{"v2 sketch garbage", append(craftEncoding(2, 1, 0)[:14], 2, 8, 9, 9, 9, 9, 9, 9, 9, 9)},
		{"v2 empty sketch", append(craftEncoding(2, 1, 0)[:14], 2, 0)},
		{"trailing zero byte", append(bytes.Clone(valid), 0)},
		{"trailing copy", append(bytes.Clone(valid), valid...)},
		{"slot index 1024", craftEncoding(1, 1, maxSlots)},
		{"slot index max uint64", craftEncoding(1, 1, math.MaxUint64)},
		{"slot index 2^63", craftEncoding(1, 1, 1<<63)},
		{"slot count over 1024", craftEncoding(1, maxSlots+1)},
		{"slot count larger than data", craftEncoding(1, 3, 0, 1)},
		{"overlong MaxSeq uvarint", overlong},
		{"sketch garbage", badSketch},
		{"sketch length past end", append(craftEncoding(1, 1, 0)[:14], 0x05, 1, 1)},
		{"sketch of precision 16", wrongPrecision},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var r Rollup
			err := r.UnmarshalBinary(tc.data)
			if err == nil {
				t.Fatalf("UnmarshalBinary(% x) = nil, want an error", tc.data)
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("error %v does not wrap ErrCorrupt", err)
			}
		})
	}
}

func TestRollupUnmarshalTruncated(t *testing.T) {
	t.Parallel()
	small, err := sampleRollup().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	dense := sampleRollup()
	dense.Slots[40] = testSlot(Counters{Skips: 1}, 0, 30000)
	large, err := dense.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	for _, enc := range [][]byte{small, large} {
		step := 1
		if len(enc) > 4096 {
			step = 61 // sample the large encoding; every byte near the end below
		}
		check := func(n int) {
			t.Helper()
			var r Rollup
			err := r.UnmarshalBinary(enc[:n:n])
			if err == nil {
				t.Fatalf("prefix of %d of %d bytes decoded without error", n, len(enc))
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("prefix of %d bytes: error %v does not wrap ErrCorrupt", n, err)
			}
		}
		for n := 0; n < len(enc); n += step {
			check(n)
		}
		for n := max(0, len(enc)-128); n < len(enc); n++ {
			check(n)
		}
		var r Rollup
		if err := r.UnmarshalBinary(enc); err != nil {
			t.Fatalf("the whole %d-byte encoding fails: %v", len(enc), err)
		}
	}
}

func TestRollupSlot(t *testing.T) {
	t.Parallel()
	r := New()
	s := r.Slot(4)
	s.Clicks++
	if again := r.Slot(4); again != s || again.Clicks != 1 {
		t.Errorf("Slot(4) again = %p (clicks %d), want the same slot %p", again, again.Clicks, s)
	}
	if len(r.Slots) != 1 {
		t.Errorf("%d slots, want 1", len(r.Slots))
	}
	if s.Visitors != nil {
		t.Error("a new slot has a sketch before any visitor")
	}
	s.AddVisitor(testHash(1))
	s.AddVisitor(testHash(1))
	s.AddVisitor(testHash(2))
	if got := s.Visitors.Count(); got != 2 {
		t.Errorf("estimate of 2 distinct visitors added 3 times = %d", got)
	}
}

func TestRollupCountersAdd(t *testing.T) {
	t.Parallel()
	// Every field set apart, so that a field Add forgets shows.
	var a, b, want Counters
	af, bf, wf := a.fields(), b.fields(), want.fields()
	for i := range numFields {
		*af[i], *bf[i], *wf[i] = uint64(i+1), uint64(10*(i+1)), uint64(11*(i+1))
	}
	bCopy := b
	a.Add(&b)
	if a != want {
		t.Errorf("Add = %+v, want %+v", a, want)
	}
	if b != bCopy {
		t.Errorf("Add changed its argument: %+v", b)
	}
}

func TestAggregateCounters(t *testing.T) {
	t.Parallel()
	var a Aggregate
	if a.UniqueVisitors() != 0 {
		t.Errorf("zero Aggregate has %d visitors", a.UniqueVisitors())
	}
	slots := []*Slot{
		{Counters: Counters{Impressions: 10, Clicks: 1, PlaybackMillis: 12500, PlaybackCount: 1}},
		{Counters: Counters{Impressions: 5, Starts: 4, FirstQuartiles: 3, Midpoints: 2, ThirdQuartiles: 2, Completes: 1, Skips: 1}},
		{},
		{Counters: Counters{Errors: 3, Servings: 2, ServingClicks: 1, Invalid: 5}, ErrorCodes: CodeCounts{{0, 1}, {402, 2}}},
		{Counters: Counters{Errors: 1}, ErrorCodes: CodeCounts{{402, 1}}},
	}
	for _, s := range slots {
		if err := a.AddSlot(s); err != nil {
			t.Fatal(err)
		}
	}
	want := Counters{Impressions: 15, Clicks: 1, Starts: 4, FirstQuartiles: 3, Midpoints: 2, ThirdQuartiles: 2,
		Completes: 1, Skips: 1, PlaybackMillis: 12500, PlaybackCount: 1,
		Errors: 4, Servings: 2, ServingClicks: 1, Invalid: 5}
	if a.Counters != want {
		t.Errorf("counters = %+v, want %+v", a.Counters, want)
	}
	if w := (CodeCounts{{0, 1}, {402, 3}}); !slices.Equal(a.ErrorCodes, w) {
		t.Errorf("error codes = %v, want %v", a.ErrorCodes, w)
	}
	if w := (CodeCounts{{402, 1}}); !slices.Equal(slots[4].ErrorCodes, w) {
		t.Errorf("adding a slot changed its error codes to %v", slots[4].ErrorCodes)
	}
	if a.UniqueVisitors() != 0 {
		t.Errorf("no sketches added, yet %d visitors", a.UniqueVisitors())
	}

	var b Aggregate
	if err := b.AddAggregate(&a); err != nil {
		t.Fatal(err)
	}
	if err := b.AddAggregate(&a); err != nil {
		t.Fatal(err)
	}
	want.Add(&want)
	if b.Counters != want {
		t.Errorf("after adding twice: %+v, want %+v", b.Counters, want)
	}
	if w := (CodeCounts{{0, 2}, {402, 6}}); !slices.Equal(b.ErrorCodes, w) {
		t.Errorf("after adding twice: error codes %v, want %v", b.ErrorCodes, w)
	}
	if err := b.AddAggregate(&Aggregate{}); err != nil {
		t.Fatal(err)
	}
	if b.Counters != want {
		t.Errorf("adding a zero Aggregate changed counters to %+v", b.Counters)
	}
}

func TestAggregateUniqueVisitors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		ranges [][2]uint64 // one slot per range of hash indices
		want   uint64
	}{
		{"one slot of 1", [][2]uint64{{0, 1}}, 1},
		{"same visitor in three slots", [][2]uint64{{7, 8}, {7, 8}, {7, 8}}, 1},
		{"disjoint 10 and 10", [][2]uint64{{0, 10}, {10, 20}}, 20},
		{"overlapping 100", [][2]uint64{{0, 60}, {40, 100}}, 100},
		{"overlapping 999", [][2]uint64{{0, 600}, {300, 999}}, 999},
		{"overlapping 1500", [][2]uint64{{0, 1000}, {500, 1500}}, 1500},
		{"60 minute slots 6000", func() [][2]uint64 {
			var r [][2]uint64
			for i := range uint64(60) {
				r = append(r, [2]uint64{i * 90, i*90 + 200}) // overlaps its neighbours
			}
			return r
		}(), 59*90 + 200},
		{"dense 40000 over 4 slots", [][2]uint64{{0, 15000}, {10000, 25000}, {20000, 35000}, {30000, 40000}}, 40000},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var a Aggregate
			for _, rg := range tc.ranges {
				if err := a.AddSlot(testSlot(Counters{}, rg[0], rg[1])); err != nil {
					t.Fatal(err)
				}
			}
			got := a.UniqueVisitors()
			tol := math.Max(1, 0.01*float64(tc.want))
			if math.Abs(float64(got)-float64(tc.want)) > tol {
				t.Errorf("UniqueVisitors = %d, want %d within %.0f", got, tc.want, tol)
			}
			t.Logf("distinct %d: estimate %d (error %+d)", tc.want, got, int64(got)-int64(tc.want))
		})
	}
}

// TestAggregateOrderIndependent: however the slots are split between exact
// lists and sketches, in whatever order they are added, directly or through
// a sealed aggregate, the count equals that of one set holding every member.
// This covers each way gathered members reach a sketch: one by one, through
// a sparse batch, through a dense batch, and a dense sketch started by an
// aggregate past maxExactAggregate members.
func TestAggregateOrderIndependent(t *testing.T) {
	t.Parallel()
	exactSlots := func(from, to, per uint64) [][2]uint64 {
		var r [][2]uint64
		for i := from; i < to; i += per {
			r = append(r, [2]uint64{i, min(i+per, to)})
		}
		return r
	}
	tests := []struct {
		name   string
		ranges [][2]uint64 // one slot per range of hash indices
	}{
		{"sketch and a few exact", append([][2]uint64{{0, 1500}}, exactSlots(1400, 1500+100, 50)...)},
		{"sketch and a sparse batch", append([][2]uint64{{0, 2000}}, exactSlots(1000, 7000, 900)...)},
		{"sketch and a dense batch", append([][2]uint64{{0, 2000}}, exactSlots(1000, 31000, 1000)...)},
		{"two sketches and exact between", append([][2]uint64{{0, 1100}, {50000, 52000}}, exactSlots(900, 4000, 700)...)},
		{"exact past the aggregate's bound", exactSlots(0, 70000, 1000)},
		{"exact past twice the bound", exactSlots(0, 140000, 1000)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var one Visitors // every member in one set, as the fold builds them
			slots := make([]*Slot, len(tc.ranges))
			for i, rg := range tc.ranges {
				slots[i] = testSlot(Counters{Clicks: 1}, rg[0], rg[1])
				for h := rg[0]; h < rg[1]; h++ {
					one.Insert(testHash(h))
				}
			}
			want := one.Count()
			sum := func(order []int, via int) uint64 {
				t.Helper()
				var a Aggregate
				parts := []*Aggregate{&a}
				if via > 0 { // through sealed partial sums, as range sums are
					parts = make([]*Aggregate, via)
					for i := range parts {
						parts[i] = &Aggregate{}
					}
				}
				for i, j := range order {
					if err := parts[i%len(parts)].AddSlot(slots[j]); err != nil {
						t.Fatal(err)
					}
				}
				if via > 0 {
					for _, p := range parts {
						p.Seal()
						if err := a.AddAggregate(p); err != nil {
							t.Fatal(err)
						}
					}
				}
				if a.Clicks != uint64(len(slots)) {
					t.Fatalf("clicks %d, want %d", a.Clicks, len(slots))
				}
				return a.UniqueVisitors()
			}
			forward := make([]int, len(slots))
			for i := range forward {
				forward[i] = i
			}
			backward := slices.Clone(forward)
			slices.Reverse(backward)
			for _, c := range []struct {
				name  string
				order []int
				via   int
			}{{"forward", forward, 0}, {"backward", backward, 0}, {"forward via 3 sealed", forward, 3}, {"backward via 2 sealed", backward, 2}} {
				if got := sum(c.order, c.via); got != want {
					t.Errorf("%s: %d unique visitors, want %d as one set counts them", c.name, got, want)
				}
			}
			t.Logf("%d unique visitors", want)
		})
	}
}

// TestAggregateSealKnowsDense: seal reads from the sketch's encoding whether
// it is dense, which decides how members later go into an aggregate it is
// added to.
func TestAggregateSealKnowsDense(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		members uint64
		dense   bool
	}{{500, false}, {3000, false}, {40000, true}} {
		var a Aggregate
		for i := uint64(0); i < tc.members; i += 1000 {
			if err := a.AddSlot(testSlot(Counters{}, i, min(i+1500, tc.members))); err != nil {
				t.Fatal(err)
			}
		}
		if a.sketch != nil {
			a.dense = !tc.dense // seal must find out, not keep what it had
		}
		if w := a.Seal(); w <= 128 {
			t.Errorf("%d members: weight %d", tc.members, w)
		}
		if tc.members <= ExactVisitors {
			if a.sketch != nil {
				t.Errorf("%d members: a sketch, want an exact list", tc.members)
			}
		} else if a.dense != tc.dense {
			t.Errorf("%d members: dense %v after seal, want %v", tc.members, a.dense, tc.dense)
		}
	}
}

// TestAggregateSealedIsShareable: adding one sealed aggregate to many
// aggregates at once, some exact and some holding a sparse or dense sketch
// (which use its sparse form, built by whichever comes first), leaves it
// unchanged and counts as adding it alone does.
//
// Run with -race: the detector reports accesses of the adders to the shared
// aggregate that nothing orders, whether or not they overlap in time (the
// adders start together all the same, to make overlaps likely). The test
// checks that the sparse form was built, the state they share lazily.
func TestAggregateSealedIsShareable(t *testing.T) {
	t.Parallel()
	own := []uint64{0, 100, ExactVisitors + 200, 30000} // the members each adder has of its own
	for _, members := range []uint64{500, 5000, 40000} {
		sealedOf := func() *Aggregate {
			var a Aggregate
			for i := uint64(0); i < members; i += 250 {
				if err := a.AddSlot(testSlot(Counters{Impressions: 1}, i, min(i+300, members))); err != nil {
					t.Fatal(err)
				}
			}
			a.Seal()
			return &a
		}
		sum := func(shared *Aggregate, g int) (uint64, error) {
			var a Aggregate
			n := own[g%len(own)]
			for i := uint64(0); i < n; i += 1000 {
				if err := a.AddSlot(testSlot(Counters{}, 1_000_000+i, 1_000_000+min(i+1000, n))); err != nil {
					return 0, err
				}
			}
			if n > ExactVisitors {
				if err := a.AddSlot(testSlot(Counters{}, 1_000_000, 1_000_000+n)); err != nil { // one slot: a sketch
					return 0, err
				}
			}
			if err := a.AddAggregate(shared); err != nil {
				return 0, err
			}
			return a.UniqueVisitors(), nil
		}
		want := make([]uint64, 8)
		for g := range want {
			var err error
			if want[g], err = sum(sealedOf(), g); err != nil {
				t.Fatal(err)
			}
		}
		shared := sealedOf()
		if shared.sketch != nil || len(shared.hashes) <= sparseBatch || shared.sparse.Load() != nil {
			t.Fatalf("%d shared members: want an exact aggregate with no sparse form yet", members)
		}
		got := make([]uint64, len(want))
		start := make(chan struct{})
		var wg sync.WaitGroup
		for g := range got {
			wg.Go(func() {
				<-start
				var err error
				if got[g], err = sum(shared, g); err != nil {
					t.Error(err)
				}
			})
		}
		close(start)
		wg.Wait()
		if shared.sparse.Load() == nil {
			t.Errorf("%d shared members: no adder built the sparse form", members)
		}
		for g := range got {
			if got[g] != want[g] {
				t.Errorf("%d shared members, adder %d: %d unique visitors, want %d as when added alone", members, g, got[g], want[g])
			}
		}
		if c := shared.UniqueVisitors(); math.Abs(float64(c)-float64(members)) > 0.02*float64(members) {
			t.Errorf("the shared aggregate counts %d, want about %d", c, members)
		}
	}
}

func TestUnionOfSortedLists(t *testing.T) {
	t.Parallel()
	lists := func(spec ...[2]uint64) []run {
		var runs []run
		for _, sp := range spec {
			var h []uint64
			for i := sp[0]; i < sp[1]; i++ {
				h = append(h, i*3)
			}
			runs = append(runs, run{hashes: h})
		}
		return runs
	}
	var many [][2]uint64
	for i := range uint64(20) {
		many = append(many, [2]uint64{i * 10, i*10 + 15})
	}
	tests := []struct {
		name string
		runs []run
		want int
	}{
		{"none", nil, 0},
		{"empty lists", lists([2]uint64{0, 0}, [2]uint64{5, 5}), 0},
		{"one", lists([2]uint64{0, 7}), 7},
		{"disjoint", lists([2]uint64{0, 5}, [2]uint64{5, 9}), 9},
		{"same", lists([2]uint64{0, 5}, [2]uint64{0, 5}, [2]uint64{0, 5}), 5},
		{"overlapping eight", lists([2]uint64{0, 10}, [2]uint64{5, 15}, [2]uint64{0, 1}, [2]uint64{14, 30}, [2]uint64{2, 3}, [2]uint64{29, 31}, [2]uint64{0, 0}, [2]uint64{40, 41}), 32},
		{"twenty", lists(many...), 205},
	}
	for _, tc := range tests {
		if got := unionLen(tc.runs); got != tc.want {
			t.Errorf("%s: unionLen %d, want %d", tc.name, got, tc.want)
		}
		u := unionOf(tc.runs)
		if len(u) != tc.want || !slices.IsSorted(u) || len(slices.Compact(slices.Clone(u))) != len(u) {
			t.Errorf("%s: unionOf gave %d members (sorted %v), want %d distinct sorted", tc.name, len(u), slices.IsSorted(u), tc.want)
		}
	}
}

// TestAggregateDoesNotWriteSlots: an aggregate refers to the lists of the
// slots added (they must not change while it is in use) and never writes
// them, whatever it counts.
func TestAggregateDoesNotWriteSlots(t *testing.T) {
	t.Parallel()
	slots := []*Slot{
		testSlot(Counters{}, 0, 100),
		testSlot(Counters{}, 50, 200),
		testSlot(Counters{}, 100, 100+ExactVisitors+1), // a sketch
	}
	before := make([][]byte, len(slots))
	for i, s := range slots {
		var err error
		if before[i], err = s.Visitors.appendBinary(nil); err != nil {
			t.Fatal(err)
		}
	}
	var exact, withSketch Aggregate
	for _, s := range slots[:2] {
		if err := exact.AddSlot(s); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range slots {
		if err := withSketch.AddSlot(s); err != nil {
			t.Fatal(err)
		}
	}
	if got := exact.UniqueVisitors(); got != 200 {
		t.Errorf("exact: %d unique visitors, want 200", got)
	}
	withSketch.UniqueVisitors()
	exact.Seal()
	for i, s := range slots {
		after, err := s.Visitors.appendBinary(nil)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(before[i], after) {
			t.Errorf("slot %d changed by being added to an aggregate", i)
		}
	}
}

func TestAggregateAfterCodec(t *testing.T) {
	t.Parallel()
	// Unique visitors over decoded rollups equal those over the originals.
	r := New()
	for i := range 24 {
		r.Slots[i] = testSlot(Counters{Impressions: 1}, uint64(i*50), uint64(i*50+120))
	}
	got := roundTrip(t, r)
	var a, b Aggregate
	for i := range 24 {
		if err := a.AddSlot(r.Slots[i]); err != nil {
			t.Fatal(err)
		}
		if err := b.AddSlot(got.Slots[i]); err != nil {
			t.Fatal(err)
		}
	}
	if a.UniqueVisitors() != b.UniqueVisitors() || a.Counters != b.Counters {
		t.Errorf("before codec %d visitors %+v, after %d %+v", a.UniqueVisitors(), a.Counters, b.UniqueVisitors(), b.Counters)
	}
	if want := uint64(23*50 + 120); math.Abs(float64(b.UniqueVisitors())-float64(want)) > 0.01*float64(want) {
		t.Errorf("UniqueVisitors = %d, want about %d", b.UniqueVisitors(), want)
	}
}

func TestAggregatePrecisionMismatch(t *testing.T) {
	t.Parallel()
	p16 := hyperloglog.New16()
	p16.InsertHash(testHash(1))
	var a Aggregate
	if err := a.AddSlot(testSlot(Counters{}, 0, 5)); err != nil {
		t.Fatal(err)
	}
	big := testSlot(Counters{}, 0, ExactVisitors+1) // a sketch, not a list
	if err := a.AddSlot(big); err != nil {
		t.Fatal(err)
	}
	if err := a.AddSlot(&Slot{Visitors: &Visitors{sketch: p16}}); err == nil {
		t.Error("merging a precision-16 sketch into precision 14 succeeded; want an error")
	}
}

// FuzzRollupUnmarshal checks that any input either fails with ErrCorrupt
// or decodes into a rollup that encodes and decodes to the same content.
func FuzzRollupUnmarshal(f *testing.F) {
	for _, r := range []*Rollup{New(), sampleRollup(), {MaxSeq: 1, Slots: map[int]*Slot{1023: {}}}} {
		b, err := r.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{1})
	f.Add([]byte{2, 0, 0})
	f.Add(craftEncoding(1, 1, maxSlots))
	f.Add(craftEncoding(1, 2, 5, 5))
	f.Add(craftEncoding(2, 1, 7))
	f.Add(craftEncoding(3, 1, 7))
	f.Add(v1Sketch(f))
	f.Fuzz(func(t *testing.T, data []byte) {
		var r Rollup
		if err := r.UnmarshalBinary(data); err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if len(r.Slots) > maxSlots {
			t.Fatalf("decoded %d slots", len(r.Slots))
		}
		for i := range r.Slots {
			if i < 0 || i >= maxSlots {
				t.Fatalf("decoded slot index %d", i)
			}
		}
		b, err := r.MarshalBinary()
		if err != nil {
			t.Fatalf("MarshalBinary of a decoded rollup: %v", err)
		}
		var again Rollup
		if err := again.UnmarshalBinary(b); err != nil {
			t.Fatalf("UnmarshalBinary(MarshalBinary(r)) = %v", err)
		}
		equalRollups(t, &again, &r)
		b2, err := again.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var third Rollup
		if err := third.UnmarshalBinary(b2); err != nil {
			t.Fatalf("third decode: %v", err)
		}
		equalRollups(t, &third, &again)
	})
}

// BenchmarkRollupCodec encodes and decodes a minute key of 60 slots with a
// few visitors each, the common case of live traffic.
func BenchmarkRollupCodec(b *testing.B) {
	r := New()
	for i := range 60 {
		s := r.Slot(i)
		s.Impressions, s.Clicks = 10, 3
		for v := range 5 {
			s.AddVisitor(uint64(i*1_000_003+v) * 0x9e3779b97f4a7c15)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		data, err := r.MarshalBinary()
		if err != nil {
			b.Fatal(err)
		}
		var back Rollup
		if err := back.UnmarshalBinary(data); err != nil {
			b.Fatal(err)
		}
	}
}
