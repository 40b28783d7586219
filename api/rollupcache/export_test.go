package rollupcache

import (
	"sync/atomic"
	"time"

	"github.com/admetric/admetric/store/rollup"
)

// Test hooks for the tests of package rollupcache_test (cache_test.go), which
// use the package as the service does, over a real NATS server.

// SetAfterLoadForTest makes every load from KV call f after it has read the
// value (at revision rev) and before the cache stores it. Call before the
// cache is used.
func (c *Cache) SetAfterLoadForTest(f func(u rollup.Unit, key string, rev uint64)) { c.afterLoad = f }

// RevisionForTest returns the revision the cache holds for key, without
// counting as a read.
func (c *Cache) RevisionForTest(u rollup.Unit, key string) (uint64, bool) {
	e, ok := c.cache.GetEntryQuietly(cacheKey{unit: u, key: key})
	if !ok {
		return 0, false
	}
	return e.Value.rev, true
}

// SettledRevisionForTest returns the revision of the settled visitor sets the
// cache holds for key, without counting as a read.
func (c *Cache) SettledRevisionForTest(u rollup.Unit, key string) (uint64, bool) {
	e, ok := c.cache.GetEntryQuietly(cacheKey{unit: u, key: key})
	if !ok {
		return 0, false
	}
	return e.Value.settledRev, true
}

// WatchedThroughForTest returns the stream sequence through which the watch of
// u's bucket has applied every update.
func (c *Cache) WatchedThroughForTest(u rollup.Unit) uint64 { return c.through()[u] }

// CleanUpForTest runs otter's pending maintenance (evictions, expiries).
func (c *Cache) CleanUpForTest() { c.cache.CleanUp() }

// WriteSnapshotForTest writes one snapshot of c to path, as each tick of
// WriteSnapshots does, and returns its error.
// A cache that never ran has not caught up with anything: it is taken as
// current now, as the snapshot of whatever it loaded.
func (c *Cache) WriteSnapshotForTest(path string) error {
	c.mu.Lock()
	for u := range c.current {
		if c.current[u].IsZero() {
			c.current[u] = time.Now()
		}
	}
	c.mu.Unlock()
	return c.writeSnapshot(path)
}

// ClockForTest is a time source for Idle that moves only when Advance
// moves it; safe for concurrent use.
type ClockForTest struct{ now atomic.Int64 }

// NewClockForTest returns a clock standing at an arbitrary time.
func NewClockForTest() *ClockForTest {
	c := &ClockForTest{}
	c.now.Store(int64(time.Hour))
	return c
}

// Advance moves the clock on by d.
func (c *ClockForTest) Advance(d time.Duration) { c.now.Add(int64(d)) }

// NowNano implements otter.Clock.
func (c *ClockForTest) NowNano() int64 { return c.now.Load() }

// Tick implements otter.Clock: no ticks, so no periodic clean-ups (see
// CleanUpForTest).
func (c *ClockForTest) Tick(time.Duration) <-chan time.Time { return nil }

// WithClockForTest returns opts with clk as the time source of Idle.
func WithClockForTest(opts Options, clk *ClockForTest) Options {
	opts.clock = clk
	return opts
}
