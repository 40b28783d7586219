package rollupcache

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// cacheMetrics are the counters of a Cache; its gauges read the otter caches
// when gathered (see registerMetrics).
type cacheMetrics struct {
	hits, misses, evictions prometheus.Counter
	rangeHits, rangeMisses  prometheus.Counter
}

func newCacheMetrics() cacheMetrics {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: "admetric_rollup_cache_" + name, Help: help})
	}
	return cacheMetrics{
		hits:        counter("hits_total", "rollup.Rollup keys read by Sum that the rollup cache held."),
		misses:      counter("misses_total", "rollup.Rollup keys read by Sum that the rollup cache had to load from KV (concurrent misses of one key share one load)."),
		evictions:   counter("evictions_total", "rollup.Rollup cache entries dropped for the byte bound or for being idle."),
		rangeHits:   counter("range_hits_total", "Runs of slots of one rollup that Sum added from a range sum it kept."),
		rangeMisses: counter("range_misses_total", "Runs of slots of one rollup that Sum summed slot by slot (and kept the sum of)."),
	}
}

// registerMetrics registers c's counters and gauges with reg, if not nil.
// If one fails, those registered before it are unregistered again.
func (c *Cache) registerMetrics(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	m := c.metrics
	cols := []prometheus.Collector{
		m.hits, m.misses, m.evictions, m.rangeHits, m.rangeMisses,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "admetric_rollup_cache_bytes", Help: "Estimated bytes held by the rollup cache, rollups and range sums (the weight its byte bound applies to).",
		}, func() float64 { return float64(c.cache.WeightedSize() + c.ranges.WeightedSize()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "admetric_rollup_cache_entries", Help: "Approximate number of rollups in the rollup cache.",
		}, func() float64 { return float64(c.cache.EstimatedSize()) }),
	}
	for i, col := range cols {
		if err := reg.Register(col); err != nil {
			for _, done := range cols[:i] {
				reg.Unregister(done)
			}
			return fmt.Errorf("rollupcache: rollup cache metrics: %w", err)
		}
	}
	return nil
}

// evictionRecorder counts otter's evictions (for size and expiry); hits and
// misses are counted by Cache.get, which knows what a read of Sum is.
type evictionRecorder struct{ evictions prometheus.Counter }

func (r evictionRecorder) RecordHits(int)                  {}
func (r evictionRecorder) RecordMisses(int)                {}
func (r evictionRecorder) RecordEviction(uint32)           { r.evictions.Inc() }
func (r evictionRecorder) RecordLoadSuccess(time.Duration) {}
func (r evictionRecorder) RecordLoadFailure(time.Duration) {}
