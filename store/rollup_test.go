package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"testing"

	"github.com/axiomhq/hyperloglog"
)

// rollupTestHash spreads i over 64 bits (splitmix64), standing in for the
// SHA-256-derived visitor hashes of production: HyperLogLog needs well-mixed
// hashes, and small integers used as hashes would all land in one register.
func rollupTestHash(i uint64) uint64 {
	z := i + 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// rollupTestSlot returns a slot with the given counters and the hashes of
// [from, to) in its sketch (none when from == to).
func rollupTestSlot(c Counters, from, to uint64) *Slot {
	s := &Slot{Counters: c}
	for i := from; i < to; i++ {
		s.AddVisitor(rollupTestHash(i))
	}
	return s
}

// rollupTestEstimate counts a visitor set, nil included.
func rollupTestEstimate(v *Visitors) uint64 { return v.Count() }

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
		if g, w := rollupTestEstimate(gs.Visitors), rollupTestEstimate(ws.Visitors); g != w {
			t.Errorf("slot %d: visitors estimate = %d, want %d", i, g, w)
		}
	}
}

func rollupTestRoundTrip(t *testing.T, r *Rollup) *Rollup {
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

// rollupTestSample is a rollup exercising every part of the encoding.
func rollupTestSample() *Rollup {
	r := NewRollup()
	r.MaxSeq = 123456789
	r.Slots[0] = rollupTestSlot(Counters{Impressions: 1}, 0, 0)
	r.Slots[7] = rollupTestSlot(Counters{
		Impressions: 1, Clicks: 2, Starts: 3, FirstQuartiles: 4, Midpoints: 5,
		ThirdQuartiles: 6, Completes: 7, Skips: 8, PlaybackMillis: 9, PlaybackCount: 10,
	}, 0, 10)
	r.Slots[59] = rollupTestSlot(Counters{Clicks: 300, PlaybackMillis: 1 << 40, PlaybackCount: 300}, 100, 400)
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
		{"empty", NewRollup},
		{"zero value", func() *Rollup { return &Rollup{} }},
		{"max seq only", func() *Rollup { return &Rollup{Slots: map[int]*Slot{}, MaxSeq: math.MaxUint64} }},
		{"counters without sketches", func() *Rollup {
			r := NewRollup()
			r.MaxSeq = 42
			r.Slots[0] = rollupTestSlot(Counters{Impressions: 3, Clicks: 1, PlaybackMillis: 12500, PlaybackCount: 1}, 0, 0)
			r.Slots[59] = rollupTestSlot(Counters{Starts: 2, Completes: 1, Skips: 1}, 0, 0)
			r.Slots[maxSlots-1] = rollupTestSlot(allMax, 0, 0)
			return r
		}},
		{"empty slot", func() *Rollup {
			r := NewRollup()
			r.Slot(5)
			return r
		}},
		{"sketch of 10", func() *Rollup {
			r := NewRollup()
			r.MaxSeq = 7
			r.Slots[3] = rollupTestSlot(Counters{Impressions: 10}, 0, 10)
			return r
		}},
		{"sketch of 5000", func() *Rollup {
			r := NewRollup()
			r.MaxSeq = 5000
			r.Slots[23] = rollupTestSlot(Counters{Impressions: 5000}, 0, 5000)
			return r
		}},
		{"dense sketch of 50000", func() *Rollup {
			r := NewRollup()
			r.MaxSeq = 50000
			r.Slots[30] = rollupTestSlot(Counters{Impressions: 50000}, 0, 50000)
			return r
		}},
		{"sample", rollupTestSample},
		{"all 60 minutes", func() *Rollup {
			r := NewRollup()
			for i := range 60 {
				r.Slots[i] = rollupTestSlot(Counters{Impressions: uint64(i), Clicks: uint64(i) / 10}, uint64(i*10), uint64(i*10+i%3))
			}
			r.MaxSeq = 1 << 62
			return r
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			want := tc.r()
			got := rollupTestRoundTrip(t, want)
			if got.Slots == nil {
				t.Error("decoded Slots is nil; want an empty map ready for Slot()")
			}
			equalRollups(t, got, want)
			// A second trip holds the same again.
			equalRollups(t, rollupTestRoundTrip(t, got), want)
		})
	}
}

func TestRollupCodecSketchEstimates(t *testing.T) {
	t.Parallel()
	for _, n := range []uint64{10, 5000} {
		r := NewRollup()
		r.Slots[0] = rollupTestSlot(Counters{}, 0, n)
		got := rollupTestRoundTrip(t, r)
		est := rollupTestEstimate(got.Slots[0].Visitors)
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
		130: {Counters: Counters{Clicks: 2}},
		2:   {Counters: Counters{Impressions: 1, PlaybackCount: 128}},
	}}
	r.Slots[2].AddVisitor(0x0102030405060708)
	r.Slots[2].AddVisitor(0x01)
	want := []byte{
		2,          // version
		0xac, 0x02, // MaxSeq 300
		2,                                     // two slots, in index order
		2,                                     // slot 2
		1, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x01, // counters
		1, 2, // two exact visitor hashes, ascending
		0, 0, 0, 0, 0, 0, 0, 1,
		1, 2, 3, 4, 5, 6, 7, 8,
		0x82, 0x01, // slot 130
		0, 2, 0, 0, 0, 0, 0, 0, 0, 0, // counters
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

// rollupTestCraft builds an encoding by hand: version, MaxSeq, slot count, then
// for each slot its index, ten counters of zero and an empty sketch.
func rollupTestCraft(version byte, count uint64, indices ...uint64) []byte {
	b := []byte{version}
	b = binary.AppendUvarint(b, 9)
	b = binary.AppendUvarint(b, count)
	for _, i := range indices {
		b = binary.AppendUvarint(b, i)
		b = append(b, make([]byte, 10)...)
		b = append(b, 0)
	}
	return b
}

func TestRollupUnmarshalRejects(t *testing.T) {
	t.Parallel()
	valid, err := rollupTestSample().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	badSketch := rollupTestCraft(1, 1, 4)
	badSketch = badSketch[:len(badSketch)-1]
	badSketch = append(badSketch, 8, 9, 9, 9, 9, 9, 9, 9, 9)
	overlong := append([]byte{1}, bytes.Repeat([]byte{0xff}, 10)...)
	overlong = append(overlong, 0x7f, 0)

	if err := new(Rollup).UnmarshalBinary(rollupTestCraft(1, 1, maxSlots-1)); err != nil {
		t.Fatalf("slot index %d rejected: %v", maxSlots-1, err)
	}
	tests := []struct {
		name string
		data []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
		{"version 0", append([]byte{0}, valid[1:]...)},
		{"version 3", append([]byte{3}, valid[1:]...)},
		{"version only", []byte{1}},
		{"version 2 only", []byte{2}},
		{"unknown visitors kind", append(rollupTestCraft(2, 1, 0)[:14], 3)},
		{"missing visitors kind", rollupTestCraft(2, 1, 0)[:14]},
		{"empty exact list", append(rollupTestCraft(2, 1, 0)[:14], 1, 0)},
		{"exact list past end", append(rollupTestCraft(2, 1, 0)[:14], 1, 2, 0, 0, 0, 0, 0, 0, 0, 1)},
		{"exact list over the limit", append(rollupTestCraft(2, 1, 0)[:14], append([]byte{1, 0x81, 0x08}, make([]byte, 8*1025)...)...)},
		{"exact hashes out of order", append(rollupTestCraft(2, 1, 0)[:14], 1, 2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1)},
		{"exact hashes repeated", append(rollupTestCraft(2, 1, 0)[:14], 1, 2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2)},
		{"v2 sketch garbage", append(rollupTestCraft(2, 1, 0)[:14], 2, 8, 9, 9, 9, 9, 9, 9, 9, 9)},
		{"v2 empty sketch", append(rollupTestCraft(2, 1, 0)[:14], 2, 0)},
		{"trailing zero byte", append(bytes.Clone(valid), 0)},
		{"trailing copy", append(bytes.Clone(valid), valid...)},
		{"slot index 1024", rollupTestCraft(1, 1, maxSlots)},
		{"slot index max uint64", rollupTestCraft(1, 1, math.MaxUint64)},
		{"slot index 2^63", rollupTestCraft(1, 1, 1<<63)},
		{"slot count over 1024", rollupTestCraft(1, maxSlots+1)},
		{"slot count larger than data", rollupTestCraft(1, 3, 0, 1)},
		{"overlong MaxSeq uvarint", overlong},
		{"sketch garbage", badSketch},
		{"sketch length past end", append(rollupTestCraft(1, 1, 0)[:14], 0x05, 1, 1)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var r Rollup
			err := r.UnmarshalBinary(tc.data)
			if err == nil {
				t.Fatalf("UnmarshalBinary(% x) = nil, want an error", tc.data)
			}
			if !errors.Is(err, ErrCorruptRollup) {
				t.Errorf("error %v does not wrap ErrCorruptRollup", err)
			}
		})
	}
}

func TestRollupUnmarshalTruncated(t *testing.T) {
	t.Parallel()
	small, err := rollupTestSample().MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	dense := rollupTestSample()
	dense.Slots[40] = rollupTestSlot(Counters{Skips: 1}, 0, 30000)
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
			if !errors.Is(err, ErrCorruptRollup) {
				t.Fatalf("prefix of %d bytes: error %v does not wrap ErrCorruptRollup", n, err)
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
	r := NewRollup()
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
	s.AddVisitor(rollupTestHash(1))
	s.AddVisitor(rollupTestHash(1))
	s.AddVisitor(rollupTestHash(2))
	if got := rollupTestEstimate(s.Visitors); got != 2 {
		t.Errorf("estimate of 2 distinct visitors added 3 times = %d", got)
	}
}

func TestRollupCountersAdd(t *testing.T) {
	t.Parallel()
	a := Counters{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	b := Counters{10, 20, 30, 40, 50, 60, 70, 80, 90, 100}
	a.Add(&b)
	if want := (Counters{11, 22, 33, 44, 55, 66, 77, 88, 99, 110}); a != want {
		t.Errorf("Add = %+v, want %+v", a, want)
	}
	if want := (Counters{10, 20, 30, 40, 50, 60, 70, 80, 90, 100}); b != want {
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
	}
	for _, s := range slots {
		if err := a.AddSlot(s); err != nil {
			t.Fatal(err)
		}
	}
	want := Counters{Impressions: 15, Clicks: 1, Starts: 4, FirstQuartiles: 3, Midpoints: 2, ThirdQuartiles: 2,
		Completes: 1, Skips: 1, PlaybackMillis: 12500, PlaybackCount: 1}
	if a.Counters != want {
		t.Errorf("counters = %+v, want %+v", a.Counters, want)
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
				if err := a.AddSlot(rollupTestSlot(Counters{}, rg[0], rg[1])); err != nil {
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

func TestAggregateDoesNotAliasSlots(t *testing.T) {
	t.Parallel()
	s1 := rollupTestSlot(Counters{}, 0, 100)
	s2 := rollupTestSlot(Counters{}, 100, 200)
	var a Aggregate
	if err := a.AddSlot(s1); err != nil {
		t.Fatal(err)
	}
	if err := a.AddSlot(s2); err != nil {
		t.Fatal(err)
	}
	if got := rollupTestEstimate(s1.Visitors); got < 99 || got > 101 {
		t.Errorf("merging into the aggregate changed the first slot's sketch: estimate %d", got)
	}
	before := a.UniqueVisitors()
	for i := uint64(1000); i < 1500; i++ {
		s1.AddVisitor(rollupTestHash(i))
	}
	if after := a.UniqueVisitors(); after != before {
		t.Errorf("adding to a slot after merging changed the aggregate: %d -> %d", before, after)
	}
}

func TestAggregateAfterCodec(t *testing.T) {
	t.Parallel()
	// Unique visitors over decoded rollups equal those over the originals.
	r := NewRollup()
	for i := range 24 {
		r.Slots[i] = rollupTestSlot(Counters{Impressions: 1}, uint64(i*50), uint64(i*50+120))
	}
	got := rollupTestRoundTrip(t, r)
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
	p16.InsertHash(rollupTestHash(1))
	var a Aggregate
	if err := a.AddSlot(rollupTestSlot(Counters{}, 0, 5)); err != nil {
		t.Fatal(err)
	}
	big := rollupTestSlot(Counters{}, 0, ExactVisitors+1) // a sketch, not a list
	if err := a.AddSlot(big); err != nil {
		t.Fatal(err)
	}
	if err := a.AddSlot(&Slot{Visitors: &Visitors{sketch: p16}}); err == nil {
		t.Error("merging a precision-16 sketch into precision 14 succeeded; want an error")
	}
}

// FuzzRollupUnmarshal checks that any input either fails with ErrCorruptRollup
// or decodes into a rollup that encodes and decodes to the same content.
func FuzzRollupUnmarshal(f *testing.F) {
	for _, r := range []*Rollup{NewRollup(), rollupTestSample(), {MaxSeq: 1, Slots: map[int]*Slot{1023: {}}}} {
		b, err := r.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{1})
	f.Add([]byte{2, 0, 0})
	f.Add(rollupTestCraft(1, 1, maxSlots))
	f.Add(rollupTestCraft(1, 2, 5, 5))
	f.Add(rollupTestCraft(2, 1, 7))
	f.Add(rollupTestV1Sketch(f))
	f.Fuzz(func(t *testing.T, data []byte) {
		var r Rollup
		if err := r.UnmarshalBinary(data); err != nil {
			if !errors.Is(err, ErrCorruptRollup) {
				t.Fatalf("error %v does not wrap ErrCorruptRollup", err)
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
	r := NewRollup()
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
