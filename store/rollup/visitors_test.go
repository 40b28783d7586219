package rollup

import (
	"encoding/binary"
	"math"
	"testing"

	"github.com/axiomhq/hyperloglog"
)

func TestVisitorsExactUpToLimit(t *testing.T) {
	t.Parallel()
	// Hashes that agree in their top 32 bits: a sparse HyperLogLog keeps 25 bits
	// of index and would count each group as one visitor.
	tests := []struct {
		name string
		n    uint64
	}{
		{"one", 1},
		{"277 colliding", 277},
		{"999 colliding", 999},
		{"at the limit", ExactVisitors},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var v Visitors
			for i := range tc.n {
				h := 0xdeadbeef00000000 | i
				v.Insert(h)
				v.Insert(h) // a repeat visit counts once
			}
			if got := v.Count(); got != tc.n {
				t.Errorf("Count = %d, want exactly %d", got, tc.n)
			}
			if v.sketch != nil {
				t.Errorf("%d visitors already moved to a sketch", tc.n)
			}
			r := New()
			r.Slot(0).Visitors = &v
			if got := roundTrip(t, r).Slots[0].Visitors.Count(); got != tc.n {
				t.Errorf("after the codec Count = %d, want %d", got, tc.n)
			}
		})
	}
}

func TestVisitorsBeyondLimitEstimates(t *testing.T) {
	t.Parallel()
	for _, n := range []uint64{ExactVisitors + 1, 5000, 50000} {
		var v Visitors
		for i := range n {
			v.Insert(testHash(i))
		}
		if v.sketch == nil {
			t.Fatalf("%d visitors still kept exactly", n)
		}
		got := v.Count()
		if math.Abs(float64(got)-float64(n)) > 0.02*float64(n) {
			t.Errorf("%d visitors: Count = %d, more than 2%% off", n, got)
		}
		if again := v.Count(); again != got {
			t.Errorf("Count changed between calls: %d then %d", got, again)
		}
	}
}

func TestVisitorsMerge(t *testing.T) {
	t.Parallel()
	set := func(from, to uint64) *Visitors {
		v := &Visitors{}
		for i := from; i < to; i++ {
			v.Insert(testHash(i))
		}
		return v
	}
	tests := []struct {
		name   string
		parts  []*Visitors
		want   uint64
		exact  bool // the union is still kept exactly
		within float64
	}{
		{"nil", []*Visitors{nil}, 0, true, 0},
		{"disjoint lists", []*Visitors{set(0, 300), set(300, 600)}, 600, true, 0},
		{"overlapping lists", []*Visitors{set(0, 700), set(300, 1000), set(999, 1024)}, 1024, true, 0},
		{"lists whose union outgrows the limit", []*Visitors{set(0, 800), set(500, 1500)}, 1500, false, 0.02},
		{"list into sketch", []*Visitors{set(0, 2000), set(1500, 2500)}, 2500, false, 0.02},
		{"sketch into list", []*Visitors{set(0, 10), set(0, 3000)}, 3000, false, 0.02},
		{"sketch into empty", []*Visitors{set(0, 3000)}, 3000, false, 0.02},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var v Visitors
			for _, p := range tc.parts {
				before := p.Count()
				if err := v.Merge(p); err != nil {
					t.Fatal(err)
				}
				if after := p.Count(); after != before {
					t.Errorf("Merge changed its argument: %d -> %d", before, after)
				}
			}
			got := v.Count()
			if (v.sketch == nil) != tc.exact {
				t.Errorf("kept exactly = %v, want %v", v.sketch == nil, tc.exact)
			}
			if math.Abs(float64(got)-float64(tc.want)) > tc.within*float64(tc.want) {
				t.Errorf("Count = %d, want %d (within %.0f%%)", got, tc.want, tc.within*100)
			}
		})
	}
}

func TestVisitorsCloneIsIndependent(t *testing.T) {
	t.Parallel()
	for _, n := range []uint64{5, 2000} {
		v := &Visitors{}
		for i := range n {
			v.Insert(testHash(i))
		}
		c := v.Clone()
		for i := n; i < n+500; i++ {
			v.Insert(testHash(i))
		}
		if got := c.Count(); math.Abs(float64(got)-float64(n)) > 0.02*float64(n) {
			t.Errorf("clone of %d counts %d after the original grew", n, got)
		}
	}
}

// v1Sketch is a version-1 encoding, as written before small visitor
// sets were kept exactly: one slot (index 3, one impression) with a sketch of
// three visitors.
func v1Sketch(tb testing.TB) []byte {
	tb.Helper()
	sk := hyperloglog.New14()
	for i := range uint64(3) {
		sk.InsertHash(testHash(i))
	}
	skb, err := sk.MarshalBinary()
	if err != nil {
		tb.Fatal(err)
	}
	b := []byte{rollupCodecV1}
	b = binary.AppendUvarint(b, 77) // MaxSeq
	b = binary.AppendUvarint(b, 1)
	b = binary.AppendUvarint(b, 3)
	b = append(b, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0)
	b = binary.AppendUvarint(b, uint64(len(skb)))
	return append(b, skb...)
}

func TestRollupDecodesVersion1(t *testing.T) {
	t.Parallel()
	var r Rollup
	if err := r.UnmarshalBinary(v1Sketch(t)); err != nil {
		t.Fatal(err)
	}
	s := r.Slots[3]
	if r.MaxSeq != 77 || s == nil || s.Impressions != 1 {
		t.Fatalf("decoded MaxSeq %d slot %+v, want MaxSeq 77 and one impression in slot 3", r.MaxSeq, s)
	}
	if got := s.Visitors.Count(); got != 3 {
		t.Errorf("visitors = %d, want 3", got)
	}
	// Re-encoding writes the current version, and a visitor added later counts.
	s.AddVisitor(testHash(100))
	got := roundTrip(t, &r)
	if n := got.Slots[3].Visitors.Count(); n != 4 {
		t.Errorf("after adding one and a round trip: %d visitors, want 4", n)
	}
}

func BenchmarkVisitorsInsert(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		var v Visitors
		for i := range uint64(200) {
			v.Insert(testHash(i % 150))
		}
	}
}
