package rollupcache_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/admetric/admetric/api/rollupcache"
	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/devserver"
	"github.com/admetric/admetric/store/rollup"
	"github.com/admetric/admetric/store/rollup/rolluptest"
	"github.com/admetric/admetric/store/storetest"
)

// rollupReader is api.RollupReader, which both must implement.
type rollupReader interface {
	Layout() rollup.Layout
	Sum(ctx context.Context, adID string, cells []rollup.Cell) (*rollup.Aggregate, error)
}

var (
	_ rollupReader = (*rollupcache.Cache)(nil)
	_ rollupReader = (*rollupcache.Snapshot)(nil)
)

// cacheTestNow anchors the windows of the cache tests (Rollups.Sum reads the
// keys of whatever cells it is given, whatever the time).
var cacheTestNow = time.Date(2026, 11, 25, 12, 34, 56, 0, time.UTC)

// cacheTestEnv is a real embedded NATS server with the rollup buckets, and a
// Cache over them with its own metrics registry.
type cacheTestEnv struct {
	srv *devserver.NATS
	js  jetstream.JetStream
	r   *store.Rollups
	c   *rollupcache.Cache
	reg *prometheus.Registry
}

func newCacheTestEnv(t testing.TB, opts rollupcache.Options) *cacheTestEnv {
	t.Helper()
	return newCacheTestEnvLayout(t, rolluptest.Layout, opts)
}

func newCacheTestEnvLayout(t testing.TB, layout rollup.Layout, opts rollupcache.Options) *cacheTestEnv {
	t.Helper()
	env := &cacheTestEnv{srv: storetest.NATS(t)}
	env.js, _ = storetest.JetStream(t, env.srv)
	var err error
	if env.r, err = store.CreateOrUpdateRollups(context.Background(), env.js, layout, 1); err != nil {
		t.Fatal(err)
	}
	env.c, env.reg = newTestCache(t, env.r, opts)
	return env
}

// The bounds of a test's cache where it sets none: the service's defaults.
const (
	testCacheBytes = 256 << 20
	testCacheIdle  = 15 * time.Minute
)

// newTestCache returns a cache over r registered with a new registry; zero
// bounds in opts take testCacheBytes and testCacheIdle.
func newTestCache(t testing.TB, r *store.Rollups, opts rollupcache.Options) (*rollupcache.Cache, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	opts.Registerer = reg
	if opts.MaxBytes == 0 {
		opts.MaxBytes = testCacheBytes
	}
	if opts.Idle == 0 {
		opts.Idle = testCacheIdle
	}
	c, err := rollupcache.New(r, opts)
	if err != nil {
		t.Fatal(err)
	}
	return c, reg
}

// runCache runs c's watches until the test ends, and checks that Run then
// returns nil promptly.
func runCache(t testing.TB, c *rollupcache.Cache) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after its context ended")
		}
	})
}

// put stores v at key in u's bucket, whatever is there, and returns its revision.
func put(t testing.TB, r *store.Rollups, u rollup.Unit, key string, v *rollup.Rollup) uint64 {
	t.Helper()
	ctx := context.Background()
	_, rev, err := r.Load(ctx, u, key)
	if err != nil {
		t.Fatal(err)
	}
	revs, err := r.Replace(ctx, u, []store.Write{{Key: key, Value: v, Rev: rev}})
	if err != nil {
		t.Fatal(err)
	}
	return revs[0]
}

// clicksRollup is a rollup with clicks in slot.
func clicksRollup(slot int, clicks uint64) *rollup.Rollup {
	v := rollup.New()
	v.Slot(slot).Clicks = clicks
	return v
}

// writeCells stores, for ad, a rollup slot for every cell (counters from i, a
// few visitors, a sketch's worth in every tenth) and returns how many keys
// it wrote.
func writeCells(t testing.TB, r *store.Rollups, ad string, seed uint64, cells []rollup.Cell) int {
	t.Helper()
	return writeCellsSketching(t, r, ad, seed, cells, 10)
}

// writeCellsSketching is writeCells with a sketch in every sketchEvery-th
// slot, none when 0.
func writeCellsSketching(t testing.TB, r *store.Rollups, ad string, seed uint64, cells []rollup.Cell, sketchEvery int) int {
	t.Helper()
	type ref struct {
		u   rollup.Unit
		key string
	}
	values := map[ref]*rollup.Rollup{}
	var order []ref
	for i, c := range cells {
		key, slot := c.Unit.Locate(ad, c.Start)
		k := ref{c.Unit, key}
		if values[k] == nil {
			values[k] = rollup.New()
			order = append(order, k)
		}
		s := values[k].Slot(slot)
		n := uint64(i%5 + 1)
		s.Impressions, s.Clicks, s.Starts, s.Completes = 10*n, n, 8*n, 3*n
		s.PlaybackMillis, s.PlaybackCount = 1234*n, n
		visitors := uint64(i%13 + 1)
		if sketchEvery > 0 && i%sketchEvery == 0 {
			visitors = rollup.ExactVisitors + 500
		}
		for v := range visitors {
			s.AddVisitor(rolluptest.Hash(seed<<32 | uint64(i)<<16 | v))
		}
	}
	for _, k := range order {
		put(t, r, k.u, k.key, values[k])
	}
	return len(order)
}

type summer interface {
	Sum(ctx context.Context, adID string, cells []rollup.Cell) (*rollup.Aggregate, error)
}

type sumResult struct {
	rollup.Counters
	Unique uint64
}

func sumOf(t testing.TB, s summer, ad string, cells []rollup.Cell) sumResult {
	t.Helper()
	agg, err := s.Sum(context.Background(), ad, cells)
	if err != nil {
		t.Fatalf("Sum %s: %v", ad, err)
	}
	return sumResult{agg.Counters, agg.UniqueVisitors()}
}

func tile(t testing.TB, layout rollup.Layout, d time.Duration, now time.Time) []rollup.Cell {
	t.Helper()
	tl, err := layout.Tile(now.Add(-d), now, now)
	if err != nil {
		t.Fatal(err)
	}
	return tl.Cells
}

// metricValue returns the value of the counter or gauge name in reg.
func metricValue(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		m := mf.GetMetric()[0]
		if c := m.GetCounter(); c != nil {
			return c.GetValue()
		}
		return m.GetGauge().GetValue()
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// eventually polls cond until it holds, failing the test after within.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// TestRollupCacheSumMatchesKV: Sum through the cache, cold and warm, equals
// Rollups.Sum for every window, an ad without data included.
func TestRollupCacheSumMatchesKV(t *testing.T) {
	env := newCacheTestEnv(t, rollupcache.Options{})
	layout := env.r.Layout()
	month := tile(t, layout, 30*24*time.Hour, cacheTestNow)
	writeCells(t, env.r, "ad-a", 1, month)
	writeCells(t, env.r, "ad-b", 2, month[:len(month)/2])
	tests := []struct {
		name string
		d    time.Duration
	}{{"1h", time.Hour}, {"6h", 6 * time.Hour}, {"24h", 24 * time.Hour}, {"7d", 7 * 24 * time.Hour}, {"30d", 30 * 24 * time.Hour}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cells := tile(t, layout, tt.d, cacheTestNow)
			for _, ad := range []string{"ad-a", "ad-b", "ad-none"} {
				want := sumOf(t, env.r, ad, cells)
				if cold := sumOf(t, env.c, ad, cells); cold != want {
					t.Errorf("%s cold: cache %+v, KV %+v", ad, cold, want)
				}
				if warm := sumOf(t, env.c, ad, cells); warm != want {
					t.Errorf("%s warm: cache %+v, KV %+v", ad, warm, want)
				}
				if ad == "ad-a" && (want.Clicks == 0 || want.Unique == 0) {
					t.Errorf("%s: no data in the window: %+v", ad, want)
				}
			}
		})
	}
	if hits := metricValue(t, env.reg, "admetric_rollup_cache_hits_total"); hits == 0 {
		t.Error("no hits counted")
	}
}

// TestRollupCacheFreshness: with Run going, a rewritten key reads its new
// value within a second; a key nobody read is not cached by the watch.
func TestRollupCacheFreshness(t *testing.T) {
	env := newCacheTestEnv(t, rollupcache.Options{})
	runCache(t, env.c)
	const key = "ad-a.2026112512"
	cells := []rollup.Cell{{Unit: rollup.Minute, Start: time.Date(2026, 11, 25, 12, 7, 0, 0, time.UTC)}}
	put(t, env.r, rollup.Minute, key, clicksRollup(7, 1))
	if got := sumOf(t, env.c, "ad-a", cells).Clicks; got != 1 {
		t.Fatalf("clicks %d, want 1", got)
	}
	for clicks := uint64(2); clicks < 6; clicks++ {
		rev := put(t, env.r, rollup.Minute, key, clicksRollup(7, clicks))
		took := eventually(t, time.Second, "the cache reflecting the rewrite", func() bool {
			return sumOf(t, env.c, "ad-a", cells).Clicks == clicks
		})
		if got, _ := env.c.RevisionForTest(rollup.Minute, key); got != rev {
			t.Fatalf("cached revision %d, want %d", got, rev)
		}
		t.Logf("rewrite %d seen after %s", clicks, took)
	}
	if misses := metricValue(t, env.reg, "admetric_rollup_cache_misses_total"); misses != 1 {
		t.Errorf("%v misses, want 1: the updates should come from the watch", misses)
	}

	rev := put(t, env.r, rollup.Minute, "ad-b.2026112512", clicksRollup(7, 1))
	eventually(t, 5*time.Second, "the watch passing the write", func() bool {
		return env.c.WatchedThroughForTest(rollup.Minute) >= rev
	})
	if _, ok := env.c.RevisionForTest(rollup.Minute, "ad-b.2026112512"); ok {
		t.Error("the watch cached a key nobody read")
	}
}

// minuteCells returns the cells of minutes [from, to) of hour.
func minuteCells(hour time.Time, from, to int) []rollup.Cell {
	var cells []rollup.Cell
	for m := from; m < to; m++ {
		cells = append(cells, rollup.Cell{Unit: rollup.Minute, Start: hour.Add(time.Duration(m) * time.Minute)})
	}
	return cells
}

// TestRollupCacheRangeSums: a run of slots read again at the same revision
// comes from its range sum; a rewrite of the key makes the next Sum sum the
// new value; many readers share one range sum (run with -race). Every answer
// equals Rollups.Sum's.
func TestRollupCacheRangeSums(t *testing.T) {
	env := newCacheTestEnv(t, rollupcache.Options{})
	runCache(t, env.c)
	hour := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	key, _ := rollup.Minute.Locate("ad-a", hour)
	put(t, env.r, rollup.Minute, key, minutesRollup(1, 0))
	whole, part := minuteCells(hour, 0, 60), minuteCells(hour, 10, 25)
	checkSum(t, env, "ad-a", whole)
	checkSum(t, env, "ad-a", part)
	if m := metricValue(t, env.reg, "admetric_rollup_cache_range_misses_total"); m != 2 {
		t.Errorf("%v range misses, want 2 (one per run of slots)", m)
	}
	for range 3 {
		checkSum(t, env, "ad-a", whole)
		checkSum(t, env, "ad-a", part)
	}
	if h := metricValue(t, env.reg, "admetric_rollup_cache_range_hits_total"); h != 6 {
		t.Errorf("%v range hits, want 6", h)
	}

	putApplied(t, env, rollup.Minute, key, minutesRollup(2, 1_000_000))
	if got := checkSum(t, env, "ad-a", whole); got.Clicks != 120 {
		t.Fatalf("clicks %d after the rewrite, want 120", got.Clicks)
	}
	if m := metricValue(t, env.reg, "admetric_rollup_cache_range_misses_total"); m != 3 {
		t.Errorf("%v range misses, want 3: the rewrite invalidates the range sum", m)
	}
	sumConcurrently(t, env.c, "ad-a", part, sumOf(t, env.r, "ad-a", part))
}

// minutesRollup is a rollup of an hour whose 60 minutes each have clicks
// and visitors numbered from visitorsFrom: 30 each, a sketch's worth in every
// twentieth.
func minutesRollup(clicks uint64, visitorsFrom uint64) *rollup.Rollup {
	v := rollup.New()
	for m := range 60 {
		s := v.Slot(m)
		s.Clicks = clicks
		n := uint64(30)
		if m%20 == 0 {
			n = rollup.ExactVisitors + 200 // a sketch
		}
		for i := range n {
			s.AddVisitor(rolluptest.Hash(visitorsFrom + uint64(m)*40 + i))
		}
	}
	return v
}

// checkSum fails t unless the cache's Sum of cells equals Rollups.Sum's, and
// returns it.
func checkSum(t testing.TB, env *cacheTestEnv, ad string, cells []rollup.Cell) sumResult {
	t.Helper()
	want := sumOf(t, env.r, ad, cells)
	if got := sumOf(t, env.c, ad, cells); got != want {
		t.Fatalf("cache %+v, KV %+v", got, want)
	}
	return want
}

// sumConcurrently has 8 readers Sum cells 20 times each and checks every
// answer against want (run with -race).
func sumConcurrently(t *testing.T, s summer, ad string, cells []rollup.Cell, want sumResult) {
	t.Helper()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 20 {
				agg, err := s.Sum(context.Background(), ad, cells)
				if err != nil {
					t.Error(err)
					return
				}
				if got := (sumResult{agg.Counters, agg.UniqueVisitors()}); got != want {
					t.Errorf("concurrent Sum %+v, want %+v", got, want)
					return
				}
			}
		})
	}
	wg.Wait()
}

// putApplied stores v at key as put does and, if the cache holds key, waits
// until its watch has applied the write to the entry.
func putApplied(t testing.TB, env *cacheTestEnv, u rollup.Unit, key string, v *rollup.Rollup) uint64 {
	t.Helper()
	rev := put(t, env.r, u, key, v)
	if _, cached := env.c.RevisionForTest(u, key); !cached {
		return rev
	}
	eventually(t, 5*time.Second, "the watch applying the write", func() bool {
		got, _ := env.c.RevisionForTest(u, key)
		return got == rev
	})
	return rev
}

// TestRollupCacheRangeSumsSurviveOtherSlots: a key of the current period
// gets a new revision with every commit, but only its current slot changes;
// a range sum of its other slots stays in use until one of them changes.
func TestRollupCacheRangeSumsSurviveOtherSlots(t *testing.T) {
	env := newCacheTestEnv(t, rollupcache.Options{})
	runCache(t, env.c)
	hour := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	key, _ := rollup.Minute.Locate("ad-a", hour)
	v := rollup.New()
	for m := range 50 {
		s := v.Slot(m)
		s.Impressions = 3
		n := uint64(20)
		if m == 15 {
			n = rollup.ExactVisitors + 100 // a sketch
		}
		for i := range n {
			s.AddVisitor(rolluptest.Hash(uint64(m)<<20 | i))
		}
	}
	part := minuteCells(hour, 10, 30)
	check := func(step string, wantHit bool) {
		t.Helper()
		if hit := rangeHit(t, env, "ad-a", part); hit != wantHit {
			t.Errorf("%s: range hit %v, want %v", step, hit, wantHit)
		}
	}
	putApplied(t, env, rollup.Minute, key, v)
	check("first read", false)
	check("read again", true)

	// The current minute moves on: slot 50 is new, 49 counts more.
	v.Slot(50).Clicks = 1
	v.Slot(49).Impressions++
	v.Slot(49).AddVisitor(rolluptest.Hash(1 << 40))
	putApplied(t, env, rollup.Minute, key, v)
	check("after writes to slots outside the run", true)

	// A late event lands inside the run.
	v.Slot(15).Clicks++
	v.Slot(15).AddVisitor(rolluptest.Hash(1 << 41))
	putApplied(t, env, rollup.Minute, key, v)
	check("after a write to a slot inside the run", false)
	check("read again after it", true)

	// A slot of the run that was empty gets its first event: the run's last
	// slot, as the current minute is. From then on it is added on its own,
	// and the slots before it keep their sum while it takes events.
	v.Slot(29).Starts = 1
	putApplied(t, env, rollup.Minute, key, v)
	check("after a first event in the run's last slot", false)
	for i := range 3 {
		v.Slot(29).Starts++
		v.Slot(29).AddVisitor(rolluptest.Hash(1<<42 | uint64(i)))
		putApplied(t, env, rollup.Minute, key, v)
		check(fmt.Sprintf("after event %d more in the run's last slot", i+1), true)
	}
}

// rangeHit checks the cache's Sum of cells, one run of slots, against
// Rollups.Sum's, and reports whether it came from a range sum: one range
// hit counted and no range miss.
func rangeHit(t *testing.T, env *cacheTestEnv, ad string, cells []rollup.Cell) bool {
	t.Helper()
	counts := func() (hits, misses float64) {
		return metricValue(t, env.reg, "admetric_rollup_cache_range_hits_total"), metricValue(t, env.reg, "admetric_rollup_cache_range_misses_total")
	}
	h0, m0 := counts()
	checkSum(t, env, ad, cells)
	h1, m1 := counts()
	if h1+m1 != h0+m0+1 {
		t.Errorf("range hits %v->%v, misses %v->%v: want one run counted", h0, h1, m0, m1)
	}
	return h1 == h0+1 && m1 == m0
}

// TestRollupCacheDeleteAndPurge: a deleted or purged key reads as empty once
// the watch sees it, cached at the marker's revision.
func TestRollupCacheDeleteAndPurge(t *testing.T) {
	env := newCacheTestEnv(t, rollupcache.Options{})
	runCache(t, env.c)
	kv, err := env.js.KeyValue(context.Background(), rollup.HourBucket)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		op   func(ctx context.Context, key string) error
	}{
		{"delete", func(ctx context.Context, key string) error { return kv.Delete(ctx, key) }},
		{"purge", func(ctx context.Context, key string) error { return kv.Purge(ctx, key) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ad := "ad-" + tt.name
			key := ad + ".20261125"
			cells := []rollup.Cell{{Unit: rollup.Hour, Start: time.Date(2026, 11, 25, 9, 0, 0, 0, time.UTC)}}
			rev := put(t, env.r, rollup.Hour, key, clicksRollup(9, 4))
			if got := sumOf(t, env.c, ad, cells).Clicks; got != 4 {
				t.Fatalf("clicks %d, want 4", got)
			}
			if err := tt.op(context.Background(), key); err != nil {
				t.Fatal(err)
			}
			eventually(t, 5*time.Second, "the cache reading the key as empty", func() bool {
				return sumOf(t, env.c, ad, cells) == sumResult{}
			})
			if got, ok := env.c.RevisionForTest(rollup.Hour, key); !ok || got <= rev {
				t.Errorf("cached revision %d (%v), want the marker's, above %d", got, ok, rev)
			}
			// The key can be written again, and the cache follows.
			put(t, env.r, rollup.Hour, key, clicksRollup(9, 6))
			eventually(t, 5*time.Second, "the cache reading the new value", func() bool {
				return sumOf(t, env.c, ad, cells).Clicks == 6
			})
		})
	}
}

// TestRollupCacheExpiryMarker: a key that expires (the bucket's TTL, with
// limit markers) reads as empty once the watch sees its marker, without a reload.
func TestRollupCacheExpiryMarker(t *testing.T) {
	layout := rollup.NewLayout(rollup.Retentions{Minute: time.Second, Hour: time.Second, Day: time.Second})
	env := newCacheTestEnvLayout(t, layout, rollupcache.Options{})
	runCache(t, env.c)
	const key = "ad-a.2026112512"
	cells := []rollup.Cell{{Unit: rollup.Minute, Start: time.Date(2026, 11, 25, 12, 3, 0, 0, time.UTC)}}
	rev := put(t, env.r, rollup.Minute, key, clicksRollup(3, 9))
	if got := sumOf(t, env.c, "ad-a", cells).Clicks; got != 9 {
		t.Fatalf("clicks %d, want 9", got)
	}
	took := eventually(t, 15*time.Second, "the expiry reaching the cache", func() bool {
		got, _ := env.c.RevisionForTest(rollup.Minute, key)
		return got > rev
	})
	t.Logf("expiry seen after %s", took)
	if got := sumOf(t, env.c, "ad-a", cells); got != (sumResult{}) {
		t.Errorf("expired key sums to %+v, want nothing", got)
	}
	if misses := metricValue(t, env.reg, "admetric_rollup_cache_misses_total"); misses != 1 {
		t.Errorf("%v misses, want 1: the expiry should come from the watch", misses)
	}
}

// TestRollupCacheLoadRacingWatch: a miss that read a value which the watch
// then sees replaced is not cached; the newer value is. The afterLoad hook
// holds the first load, which has read the old revision, until the watch has
// applied the rewrite: the load and the update overlap every time, and the
// loads the hook saw show the stale one discarded and the key read again.
func TestRollupCacheLoadRacingWatch(t *testing.T) {
	env := newCacheTestEnv(t, rollupcache.Options{})
	const key = "ad-a.2026112512"
	cells := []rollup.Cell{{Unit: rollup.Minute, Start: time.Date(2026, 11, 25, 12, 30, 0, 0, time.UTC)}}
	rev1 := put(t, env.r, rollup.Minute, key, clicksRollup(30, 1))

	loaded, release := make(chan struct{}), make(chan struct{})
	var (
		mu        sync.Mutex
		loadedRev []uint64 // the revision each load read, in order
	)
	env.c.SetAfterLoadForTest(func(_ rollup.Unit, _ string, rev uint64) {
		mu.Lock()
		loadedRev = append(loadedRev, rev)
		first := len(loadedRev) == 1
		mu.Unlock()
		if first {
			close(loaded)
			<-release // hold the first load, which has read rev1
		}
	})
	runCache(t, env.c)
	got := make(chan sumResult, 1)
	go func() {
		agg, err := env.c.Sum(context.Background(), "ad-a", cells)
		if err != nil {
			t.Error(err)
			got <- sumResult{}
			return
		}
		got <- sumResult{agg.Counters, agg.UniqueVisitors()}
	}()
	<-loaded
	rev2 := put(t, env.r, rollup.Minute, key, clicksRollup(30, 2))
	eventually(t, 5*time.Second, "the watch passing the rewrite", func() bool {
		return env.c.WatchedThroughForTest(rollup.Minute) >= rev2
	})
	close(release)
	if r := <-got; r.Clicks != 2 {
		t.Errorf("the racing Sum read %d clicks, want 2", r.Clicks)
	}
	mu.Lock()
	if len(loadedRev) != 2 || loadedRev[0] != rev1 || loadedRev[1] != rev2 {
		t.Errorf("loads read revisions %v, want [%d %d]: the load of the old value, held across the update, then one of the new", loadedRev, rev1, rev2)
	}
	mu.Unlock()
	if cached, _ := env.c.RevisionForTest(rollup.Minute, key); cached != rev2 {
		t.Errorf("cached revision %d, want %d: the stale load was stored", cached, rev2)
	}
	if got := sumOf(t, env.c, "ad-a", cells).Clicks; got != 2 {
		t.Errorf("clicks %d after the race, want 2", got)
	}
	if misses := metricValue(t, env.reg, "admetric_rollup_cache_misses_total"); misses != 1 {
		t.Errorf("%v misses, want 1: the reload belongs to the one miss", misses)
	}
}

// TestRollupCacheWarmKeepsNewer: warming from an older snapshot leaves the
// newer revisions the cache holds, and the watch still follows afterwards.
func TestRollupCacheWarmKeepsNewer(t *testing.T) {
	env := newCacheTestEnv(t, rollupcache.Options{})
	const key = "ad-a.20261125"
	cells := []rollup.Cell{{Unit: rollup.Hour, Start: time.Date(2026, 11, 25, 5, 0, 0, 0, time.UTC)}}
	put(t, env.r, rollup.Hour, key, clicksRollup(5, 1))
	sumOf(t, env.c, "ad-a", cells)
	path := filepath.Join(t.TempDir(), "old.snap")
	if err := env.c.WriteSnapshotForTest(path); err != nil {
		t.Fatal(err)
	}
	old, err := rollupcache.NewSnapshotFile(path, env.r.Layout()).Read()
	if err != nil {
		t.Fatal(err)
	}

	runCache(t, env.c)
	rev2 := put(t, env.r, rollup.Hour, key, clicksRollup(5, 2))
	eventually(t, 5*time.Second, "the rewrite", func() bool { return sumOf(t, env.c, "ad-a", cells).Clicks == 2 })
	env.c.Warm(old)
	if got, _ := env.c.RevisionForTest(rollup.Hour, key); got != rev2 {
		t.Fatalf("after warming from an older snapshot the cache holds rev %d, want %d", got, rev2)
	}
	if got := sumOf(t, env.c, "ad-a", cells).Clicks; got != 2 {
		t.Fatalf("clicks %d after warming from an older snapshot, want 2", got)
	}
	put(t, env.r, rollup.Hour, key, clicksRollup(5, 3))
	eventually(t, 5*time.Second, "a rewrite after Warm", func() bool { return sumOf(t, env.c, "ad-a", cells).Clicks == 3 })
}

// TestRollupCacheWarmReplaysSinceSnapshot: a cache warmed from a snapshot
// before Run catches up the writes made after the snapshot was written.
func TestRollupCacheWarmReplaysSinceSnapshot(t *testing.T) {
	env := newCacheTestEnv(t, rollupcache.Options{})
	const key = "ad-a.202611"
	cells := []rollup.Cell{{Unit: rollup.Day, Start: time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)}}
	put(t, env.r, rollup.Day, key, clicksRollup(19, 1))
	sumOf(t, env.c, "ad-a", cells)
	path := filepath.Join(t.TempDir(), "rollups.snap")
	if err := env.c.WriteSnapshotForTest(path); err != nil {
		t.Fatal(err)
	}
	put(t, env.r, rollup.Day, key, clicksRollup(19, 2)) // after the snapshot

	// A restarted process: a new cache, created after the write.
	fresh, _ := newTestCache(t, env.r, rollupcache.Options{})
	s, err := rollupcache.NewSnapshotFile(path, env.r.Layout()).Read()
	if err != nil {
		t.Fatal(err)
	}
	fresh.Warm(s)
	if got := sumOf(t, fresh, "ad-a", cells).Clicks; got != 1 {
		t.Fatalf("warmed cache reads %d clicks, want the snapshot's 1", got)
	}
	runCache(t, fresh)
	eventually(t, 2*time.Second, "the write made after the snapshot", func() bool {
		return sumOf(t, fresh, "ad-a", cells).Clicks == 2
	})
}

// TestRollupCacheByteBound: filling far more than MaxBytes keeps the weighted
// size under the bound, and the evictions are counted.
func TestRollupCacheByteBound(t *testing.T) {
	const maxBytes = 64 << 10
	env := newCacheTestEnv(t, rollupcache.Options{MaxBytes: maxBytes})
	start := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	writes := make([]store.Write, 300)
	for i := range writes {
		v := clicksRollup(0, 1)
		for h := range uint64(100) {
			v.Slot(0).AddVisitor(rolluptest.Hash(uint64(i)<<20 | h))
		}
		key, _ := rollup.Minute.Locate(adName(i), start)
		writes[i] = store.Write{Key: key, Value: v}
	}
	if _, err := env.r.Replace(context.Background(), rollup.Minute, writes); err != nil {
		t.Fatal(err)
	}
	cells := []rollup.Cell{{Unit: rollup.Minute, Start: start}}
	for i := range writes {
		if got := sumOf(t, env.c, adName(i), cells); got.Clicks != 1 || got.Unique != 100 {
			t.Fatalf("ad %d: %+v", i, got)
		}
		if i%50 == 49 {
			env.c.CleanUpForTest()
			if b := metricValue(t, env.reg, "admetric_rollup_cache_bytes"); b > maxBytes {
				t.Fatalf("after %d keys and a clean-up the cache weighs %v bytes, above %d", i+1, b, maxBytes)
			}
		}
	}
	env.c.CleanUpForTest()
	b := metricValue(t, env.reg, "admetric_rollup_cache_bytes")
	n := metricValue(t, env.reg, "admetric_rollup_cache_entries")
	ev := metricValue(t, env.reg, "admetric_rollup_cache_evictions_total")
	t.Logf("%v bytes in %v entries, %v evictions", b, n, ev)
	if b > maxBytes || b == 0 {
		t.Errorf("cache weighs %v bytes, want within (0, %d]", b, maxBytes)
	}
	if n >= float64(len(writes)) || n == 0 {
		t.Errorf("%v entries cached of %d keys", n, len(writes))
	}
	if ev == 0 || ev+n < float64(len(writes)) {
		t.Errorf("%v evictions counted, %v entries left, of %d keys", ev, n, len(writes))
	}
}

func adName(i int) string {
	return "ad-" + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676))
}

// TestRollupCacheIdleExpiry: an entry read within Idle stays, one not read for
// Idle goes, and a watch update is not a read. The cache's clock moves only
// when the test moves it, and each write is waited for until the watch has
// applied it to the entry.
func TestRollupCacheIdleExpiry(t *testing.T) {
	const idle = time.Minute
	clk := rollupcache.NewClockForTest()
	env := newCacheTestEnv(t, rollupcache.WithClockForTest(rollupcache.Options{Idle: idle}, clk))
	runCache(t, env.c)
	const key = "ad-a.2026112512"
	cells := []rollup.Cell{{Unit: rollup.Minute, Start: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}}
	put(t, env.r, rollup.Minute, key, clicksRollup(0, 1))
	misses := func() float64 { return metricValue(t, env.reg, "admetric_rollup_cache_misses_total") }
	cached := func() bool {
		env.c.CleanUpForTest()
		_, ok := env.c.RevisionForTest(rollup.Minute, key)
		return ok
	}

	sumOf(t, env.c, "ad-a", cells)
	for range 6 { // read every idle/2 for 3 idle
		clk.Advance(idle / 2)
		if !cached() {
			t.Fatal("an entry read within Idle is gone")
		}
		sumOf(t, env.c, "ad-a", cells)
	}
	if m := misses(); m != 1 {
		t.Fatalf("%v misses while the entry was read every %s, want 1", m, idle/2)
	}

	// Written often, never read: it goes all the same, Idle after its last read.
	for i := range 3 {
		clk.Advance(idle / 4)
		rev := put(t, env.r, rollup.Minute, key, clicksRollup(0, uint64(2+i)))
		eventually(t, 5*time.Second, "the watch applying the write to the entry", func() bool {
			got, _ := env.c.RevisionForTest(rollup.Minute, key)
			return got == rev
		})
	}
	clk.Advance(idle/4 + time.Second)
	if cached() {
		t.Fatalf("an entry not read for more than %s, only written, is still cached", idle)
	}
	// An update of a key no longer cached does not bring it back.
	rev := put(t, env.r, rollup.Minute, key, clicksRollup(0, 7))
	eventually(t, 5*time.Second, "the watch passing the write", func() bool {
		return env.c.WatchedThroughForTest(rollup.Minute) >= rev
	})
	if cached() {
		t.Fatal("the watch cached an expired key again")
	}
	if got := sumOf(t, env.c, "ad-a", cells).Clicks; got != 7 {
		t.Errorf("clicks %d after reloading, want 7", got)
	}
	if m := misses(); m != 2 {
		t.Errorf("%v misses, want 2", m)
	}
}

// TestRollupCacheMetrics: every key read counts once as a hit or a miss, and
// the gauges follow what is cached.
func TestRollupCacheMetrics(t *testing.T) {
	env := newCacheTestEnv(t, rollupcache.Options{})
	cells := tile(t, env.r.Layout(), 30*24*time.Hour, cacheTestNow)
	keys := writeCells(t, env.r, "ad-a", 1, cells)
	value := func(name string) float64 { return metricValue(t, env.reg, "admetric_rollup_cache_"+name) }

	sumOf(t, env.c, "ad-a", cells)
	if h, m := value("hits_total"), value("misses_total"); h != 0 || m != float64(keys) {
		t.Errorf("cold Sum: %v hits, %v misses, want 0 and %d", h, m, keys)
	}
	sumOf(t, env.c, "ad-a", cells)
	sumOf(t, env.c, "ad-a", cells)
	if h, m := value("hits_total"), value("misses_total"); h != float64(2*keys) || m != float64(keys) {
		t.Errorf("two warm Sums: %v hits, %v misses, want %d and %d", h, m, 2*keys, keys)
	}
	if n, b := value("entries"), value("bytes"); n != float64(keys) || b < float64(keys*256) {
		t.Errorf("%v entries of %v bytes, want %d entries of at least 256 bytes each", n, b, keys)
	}
	if ev := value("evictions_total"); ev != 0 {
		t.Errorf("%v evictions, want 0", ev)
	}
	_, err := rollupcache.New(env.r, rollupcache.Options{MaxBytes: testCacheBytes, Idle: testCacheIdle, Registerer: env.reg})
	var already prometheus.AlreadyRegisteredError
	if !errors.As(err, &already) {
		t.Errorf("a second cache registering the same metrics: %v, want prometheus.AlreadyRegisteredError", err)
	}
}

// TestRollupCacheRunOnce: Run returns nil when its context ends, and a second
// Run, made once the first has its watches going, is refused.
func TestRollupCacheRunOnce(t *testing.T) {
	env := newCacheTestEnv(t, rollupcache.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- env.c.Run(ctx) }()
	rev := put(t, env.r, rollup.Minute, "ad-a.2026112512", clicksRollup(0, 1))
	eventually(t, 5*time.Second, "the first Run watching", func() bool {
		return env.c.WatchedThroughForTest(rollup.Minute) >= rev
	})
	if err := env.c.Run(ctx); err == nil {
		t.Error("a second Run was accepted")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return")
	}
}

// TestRollupCacheRewatchesAfterRestart: after the server restarts, the
// watches are re-established and the cache follows writes again.
func TestRollupCacheRewatchesAfterRestart(t *testing.T) {
	ctx := context.Background()
	js, nc, restart := restartableNATS(t)
	r, err := store.CreateOrUpdateRollups(ctx, js, rolluptest.Layout, 1)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := newTestCache(t, r, rollupcache.Options{})
	runCache(t, c)
	const key = "ad-a.2026112512"
	cells := []rollup.Cell{{Unit: rollup.Minute, Start: time.Date(2026, 11, 25, 12, 1, 0, 0, time.UTC)}}
	put(t, r, rollup.Minute, key, clicksRollup(1, 1))
	sumOf(t, c, "ad-a", cells)

	restart()
	eventually(t, 10*time.Second, "reconnecting", nc.IsConnected)
	var rev uint64
	eventually(t, 10*time.Second, "a write after the restart", func() bool {
		_, cur, err := r.Load(ctx, rollup.Minute, key)
		if err != nil {
			return false
		}
		revs, err := r.Replace(ctx, rollup.Minute, []store.Write{{Key: key, Value: clicksRollup(1, 2), Rev: cur}})
		if err == nil {
			rev = revs[0]
		}
		return err == nil
	})
	took := eventually(t, 30*time.Second, "the cache following the write after the restart", func() bool {
		got, _ := c.RevisionForTest(rollup.Minute, key)
		return got == rev
	})
	t.Logf("write after the restart seen in %s", took)
	if got := sumOf(t, c, "ad-a", cells).Clicks; got != 2 {
		t.Errorf("clicks %d, want 2", got)
	}
}

// restartableNATS starts an embedded server with its store in a temporary
// directory and connects to it, reconnecting for ever; restart shuts the
// server down and starts it again on the same address and store.
func restartableNATS(t *testing.T) (js jetstream.JetStream, nc *nats.Conn, restart func()) {
	t.Helper()
	dir := t.TempDir()
	start := func(listen string) *devserver.NATS {
		t.Helper()
		srv, err := devserver.StartNATS(context.Background(), storetest.NATSOptions(dir, listen, 1))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(srv.Shutdown)
		return srv
	}
	srv := start("127.0.0.1:0")
	url := srv.ClientURL()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})) // the restart's broken pipes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	host := url[len("nats://"):]
	if _, _, err := net.SplitHostPort(host); err != nil {
		t.Fatal(err)
	}
	return js, nc, func() {
		srv.Shutdown()
		start(host)
	}
}

// TestSnapshotOfKV: a snapshot of a cache loaded from KV reads back with the
// same sums, as of when it was written.
func TestSnapshotOfKV(t *testing.T) {
	env := newCacheTestEnv(t, rollupcache.Options{})
	layout := env.r.Layout()
	cells := tile(t, layout, 30*24*time.Hour, cacheTestNow)
	writeCells(t, env.r, "ad-a", 1, cells)
	writeCells(t, env.r, "ad-b", 2, cells[len(cells)/3:])
	ads := []string{"ad-a", "ad-b", "ad-none"}
	want := map[string]sumResult{}
	for _, ad := range ads {
		want[ad] = sumOf(t, env.c, ad, cells)
	}
	path := filepath.Join(t.TempDir(), "rollups.snap")
	before := time.Now()
	if err := env.c.WriteSnapshotForTest(path); err != nil {
		t.Fatal(err)
	}
	s, err := rollupcache.NewSnapshotFile(path, layout).Read()
	if err != nil {
		t.Fatal(err)
	}
	if s.AsOf().Before(before) || time.Since(s.AsOf()) > time.Minute {
		t.Errorf("AsOf %s, written at %s", s.AsOf(), before)
	}
	if n := metricValue(t, env.reg, "admetric_rollup_cache_entries"); float64(s.Len()) != n {
		t.Errorf("snapshot holds %d rollups, the cache %v", s.Len(), n)
	}
	for _, ad := range ads {
		if got := sumOf(t, s, ad, cells); got != want[ad] {
			t.Errorf("%s: snapshot %+v, cache %+v", ad, got, want[ad])
		}
		if got := sumOf(t, env.r, ad, cells); got != want[ad] {
			t.Errorf("%s: KV %+v, cache %+v", ad, got, want[ad])
		}
	}
}

// TestSnapshotWarmWithNATSDown: a new cache warmed from a snapshot answers for
// the warmed keys from memory with the server gone; other keys fail.
func TestSnapshotWarmWithNATSDown(t *testing.T) {
	env := newCacheTestEnv(t, rollupcache.Options{})
	layout := env.r.Layout()
	cells := tile(t, layout, 7*24*time.Hour, cacheTestNow)
	writeCells(t, env.r, "ad-a", 1, cells)
	writeCells(t, env.r, "ad-cold", 3, cells)
	want := sumOf(t, env.c, "ad-a", cells)
	path := filepath.Join(t.TempDir(), "rollups.snap")
	if err := env.c.WriteSnapshotForTest(path); err != nil {
		t.Fatal(err)
	}

	env.srv.Shutdown()
	s, err := rollupcache.NewSnapshotFile(path, layout).Read()
	if err != nil {
		t.Fatal(err)
	}
	if got := sumOf(t, s, "ad-a", cells); got != want {
		t.Errorf("snapshot Sum %+v, want %+v", got, want)
	}
	fresh, reg := newTestCache(t, env.r, rollupcache.Options{})
	fresh.Warm(s)
	for range 3 {
		if got := sumOf(t, fresh, "ad-a", cells); got != want {
			t.Errorf("warmed cache Sum %+v, want %+v", got, want)
		}
	}
	if m := metricValue(t, reg, "admetric_rollup_cache_misses_total"); m != 0 {
		t.Errorf("%v misses serving warmed keys", m)
	}
	if h := metricValue(t, reg, "admetric_rollup_cache_hits_total"); h == 0 {
		t.Error("no hits serving warmed keys")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := fresh.Sum(ctx, "ad-cold", cells); err == nil {
		t.Error("Sum of keys neither warmed nor reachable succeeded")
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Logf("cold Sum with the server down: %v", err)
	}
}

// BenchmarkCacheSum: the 30-day Sum of one ad, and the count of its unique
// visitors, from a warm cache ("cache"),
// and straight from KV ("kv"), over rollups whose visitor sets are all small
// ("exact") or where every tenth slot holds a sketch ("sketches"): merging
// sketches into the aggregate costs the same both ways.
func BenchmarkCacheSum(b *testing.B) {
	env := newCacheTestEnv(b, rollupcache.Options{})
	// A fixed end: how many cells and keys the window has depends on the
	// time of day, and with it the work measured.
	now := cacheTestNow
	cells := tile(b, env.r.Layout(), 30*24*time.Hour, now)
	data := []struct {
		name        string
		sketchEvery int
	}{{"exact", 0}, {"sketches", 10}}
	want := map[string]sumResult{}
	for i, d := range data {
		keys := writeCellsSketching(b, env.r, "ad-"+d.name, uint64(i), cells, d.sketchEvery)
		want[d.name] = sumOf(b, env.r, "ad-"+d.name, cells)
		b.Logf("%s: %d cells in %d keys, %d unique visitors", d.name, len(cells), keys, want[d.name].Unique)
	}
	ctx := context.Background()
	for _, via := range []struct {
		name string
		s    summer
	}{{"cache", env.c}, {"kv", env.r}} {
		b.Run(via.name, func(b *testing.B) {
			for _, d := range data {
				b.Run(d.name, func(b *testing.B) {
					ad := "ad-" + d.name
					if got := sumOf(b, via.s, ad, cells); got != want[d.name] { // warms the cache
						b.Fatalf("Sum %+v, want %+v", got, want[d.name])
					}
					b.ReportAllocs()
					for b.Loop() {
						agg, err := via.s.Sum(ctx, ad, cells)
						if err != nil {
							b.Fatal(err)
						}
						agg.UniqueVisitors()
					}
				})
			}
		})
	}
}
