package rollup

import (
	"hash/fnv"
	"testing"
	"time"
)

// TestSumManyKeys: with more keys than the linear scan handles, the
// index gives the same sums, each key read once.
func TestSumManyKeys(t *testing.T) {
	t.Parallel()
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	var cells []Cell
	for h := range 3 * linearKeys {
		for _, m := range []int{0, 30, 59} {
			cells = append(cells, Cell{Unit: Minute, Start: start.Add(time.Duration(h)*time.Hour + time.Duration(m)*time.Minute)})
		}
	}
	type key struct {
		u   Unit
		key string
	}
	reads := map[key]int{}
	hash := func(s string) uint64 {
		h := fnv.New64a()
		h.Write([]byte(s))
		return h.Sum64()
	}
	agg, err := Sum("ad", cells, func(u Unit, k string) (*Rollup, *Rollup, error) {
		reads[key{u, k}]++
		v := New()
		for _, m := range []int{0, 30, 31} {
			v.Slot(m).Impressions = 1
		}
		// Slot 0's visitors: one in the rollup only, one in both, one
		// settled only.
		settled := New()
		v.Slot(0).AddVisitor(hash(k + "hot"))
		v.Slot(0).AddVisitor(hash(k + "both"))
		settled.Slot(0).AddVisitor(hash(k + "both"))
		settled.Slot(0).AddVisitor(hash(k + "settled"))
		return v, settled, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if agg.Impressions != uint64(2*3*linearKeys) {
		t.Errorf("impressions %d, want %d", agg.Impressions, 2*3*linearKeys)
	}
	if got, want := agg.UniqueVisitors(), uint64(3*3*linearKeys); got != want {
		t.Errorf("unique visitors %d, want %d (the union of the rollups' and the settled sets)", got, want)
	}
	if len(reads) != 3*linearKeys {
		t.Errorf("%d keys read, want %d", len(reads), 3*linearKeys)
	}
	for k, n := range reads {
		if n != 1 {
			t.Errorf("%v read %d times", k, n)
		}
	}
}
