package rollup

import (
	"math/rand/v2"
	"testing"

	"github.com/axiomhq/hyperloglog"
)

// TestEstimateMatchesLibrary checks estimate against the library's own
// Estimate, to the unit, for sparse and dense sketches from empty to far
// past the sparse limit, and that it leaves a shared sketch as it was.
func TestEstimateMatchesLibrary(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 2026))
	sizes := []int{0, 1, 10, 100, 1_000, 5_000, 12_000, 20_000, 50_000, 200_000, 1_000_000}
	for _, n := range sizes {
		for _, sparse := range []bool{true, false} {
			sk := hyperloglog.NewNoSparse()
			if sparse {
				sk = hyperloglog.New14()
			}
			for range n {
				sk.InsertHash(rng.Uint64())
			}
			before, err := sk.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			got := estimate(sk, false)
			after, _ := sk.MarshalBinary()
			if string(before) != string(after) {
				t.Errorf("n=%d sparse=%v: estimate changed a shared sketch", n, sparse)
			}
			if want := sk.Clone().Estimate(); got != want {
				t.Errorf("n=%d sparse=%v: estimate %d, the library's %d", n, sparse, got, want)
			}
			if got, want := estimate(sk.Clone(), true), sk.Clone().Estimate(); got != want {
				t.Errorf("n=%d sparse=%v owned: estimate %d, the library's %d", n, sparse, got, want)
			}
		}
	}
}

// BenchmarkEstimate compares estimate with the library's Estimate on a dense
// sketch of 100,000 visitors, in one run.
func BenchmarkEstimate(b *testing.B) {
	sk := hyperloglog.NewNoSparse()
	rng := rand.New(rand.NewPCG(1, 2))
	for range 100_000 {
		sk.InsertHash(rng.Uint64())
	}
	b.Run("library", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			sk.Estimate()
		}
	})
	b.Run("estimate", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			estimate(sk, false)
		}
	})
}
