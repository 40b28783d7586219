package rollupcache_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/admetric/admetric/api/rollupcache"
	"github.com/admetric/admetric/store/rollup"
	"github.com/admetric/admetric/store/rollup/rolluptest"
)

// TestRollupCacheSettledSets: the watch applies the settled visitor sets of
// a cached rollup to its entry, as the writer moves them (the settled key
// first, then the rollup without them); every answer on the way equals
// Rollups.Sum's; a range sum is of one revision of the settled sets; and a
// snapshot carries them.
func TestRollupCacheSettledSets(t *testing.T) {
	env := newCacheTestEnv(t, rollupcache.Options{})
	runCache(t, env.c)
	hour := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	key, _ := rollup.Minute.Locate("ad-s", hour)
	sk := rollup.SettledKey(key)
	v := rollup.New()
	for m := range 50 {
		s := v.Slot(m)
		s.Clicks = 2
		for i := range uint64(20) {
			s.AddVisitor(rolluptest.Hash(uint64(m)<<20 | i))
		}
	}
	part := minuteCells(hour, 10, 30)
	putApplied(t, env, rollup.Minute, key, v)
	before := checkSum(t, env, "ad-s", part)
	if before.Unique != 400 || !rangeHit(t, env, "ad-s", part) {
		t.Fatalf("before settling: %d visitors, want 400, from the range sum", before.Unique)
	}

	settled := rollup.New()
	if moved, err := v.Settle(settled, func(i int, _ *rollup.Slot) bool { return i < 40 }); err != nil || !moved {
		t.Fatalf("Settle: %v, %v", moved, err)
	}
	putSettledApplied(t, env, sk, settled)
	// Both hold the moved sets: counted once.
	if got := checkSum(t, env, "ad-s", part); got != before {
		t.Errorf("with the sets in both: %+v, want %+v", got, before)
	}
	putApplied(t, env, rollup.Minute, key, v)
	if got := checkSum(t, env, "ad-s", part); got != before {
		t.Errorf("with the sets settled: %+v, want %+v", got, before)
	}
	if !rangeHit(t, env, "ad-s", part) {
		t.Error("the rollup's rewrite without the moved sets dropped the range sum: its counters did not change")
	}

	// Another revision of the settled sets is summed anew.
	settled.Slot(15).AddVisitor(rolluptest.Hash(1 << 40))
	putSettledApplied(t, env, sk, settled)
	if rangeHit(t, env, "ad-s", part) {
		t.Error("a range sum of the old settled sets was used")
	}
	if got := checkSum(t, env, "ad-s", part); got.Unique != 401 {
		t.Errorf("%d visitors after a settled set grew, want 401", got.Unique)
	}

	// A cache that loads the key reads both parts; a snapshot keeps both.
	fresh, _ := newTestCache(t, env.r, rollupcache.Options{})
	want := sumOf(t, env.r, "ad-s", part)
	if got := sumOf(t, fresh, "ad-s", part); got != want {
		t.Errorf("a fresh cache's load: %+v, want %+v", got, want)
	}
	path := filepath.Join(t.TempDir(), "rollups.snap")
	if err := fresh.WriteSnapshotForTest(path); err != nil {
		t.Fatal(err)
	}
	snap, err := rollupcache.NewSnapshotFile(path, env.r.Layout()).Read()
	if err != nil {
		t.Fatal(err)
	}
	if snap.Len() != 1 {
		t.Errorf("the snapshot holds %d rollups, want 1 (the settled sets are part of it)", snap.Len())
	}
	if got := sumOf(t, snap, "ad-s", part); got != want {
		t.Errorf("the snapshot's sum %+v, want %+v", got, want)
	}
	warmed, _ := newTestCache(t, env.r, rollupcache.Options{})
	warmed.Warm(snap)
	if rev, _ := warmed.SettledRevisionForTest(rollup.Minute, key); rev == 0 {
		t.Error("the warmed entry has no settled revision")
	}
	if got := sumOf(t, warmed, "ad-s", part); got != want {
		t.Errorf("the warmed cache's sum %+v, want %+v", got, want)
	}
}

// putSettledApplied stores settled at sk in the minute bucket and waits until
// the cache's watch has applied it to the entry of its rollup.
func putSettledApplied(t *testing.T, env *cacheTestEnv, sk string, settled *rollup.Rollup) {
	t.Helper()
	rev := put(t, env.r, rollup.Minute, sk, settled)
	base, _ := rollup.SettledOf(sk)
	eventually(t, 5*time.Second, "the watch applying the settled sets", func() bool {
		got, _ := env.c.SettledRevisionForTest(rollup.Minute, base)
		return got == rev
	})
}
