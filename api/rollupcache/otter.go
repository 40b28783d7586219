package rollupcache

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/maypok86/otter/v2"
)

// buildCaches makes the otter caches of c: of rollups, bounded by three
// quarters of opts.MaxBytes and expiring Idle after the last read, and of
// range sums, bounded by the rest.
func (c *Cache) buildCaches(opts Options) error {
	rangeBytes := opts.MaxBytes / 4
	ranges, err := otter.New(&otter.Options[rangeKey, *rangeSum]{
		MaximumWeight:    uint64(max(rangeBytes, 1)),
		Weigher:          func(_ rangeKey, s *rangeSum) uint32 { return s.weight },
		ExpiryCalculator: otter.ExpiryAccessing[rangeKey, *rangeSum](opts.Idle),
		Clock:            opts.clock,
		Logger:           otterLogger{c.logger},
	})
	if err != nil {
		return fmt.Errorf("rollupcache: range sum cache: %w", err)
	}
	cache, err := otter.New(&otter.Options[cacheKey, *cacheEntry]{
		MaximumWeight:    uint64(opts.MaxBytes - rangeBytes),
		Weigher:          func(_ cacheKey, e *cacheEntry) uint32 { return e.weight },
		ExpiryCalculator: idleExpiry{idle: opts.Idle},
		StatsRecorder:    evictionRecorder{c.metrics.evictions},
		Clock:            opts.clock,
		Logger:           otterLogger{c.logger},
	})
	if err != nil {
		ranges.StopAllGoroutines()
		return fmt.Errorf("rollupcache: rollup cache: %w", err)
	}
	c.cache, c.ranges = cache, ranges
	c.loader = otter.LoaderFunc[cacheKey, *cacheEntry](c.load)
	return nil
}

// stopCaches stops the expiry goroutines of c's otter caches.
func (c *Cache) stopCaches() {
	c.cache.StopAllGoroutines()
	c.ranges.StopAllGoroutines()
}

// idleExpiry drops an entry Idle after it was created or last read. Unlike
// otter.ExpiryAccessing, a replacement (a watch update, or Warm over an older
// revision) keeps the deadline: a key that is written often but never read
// must still leave.
type idleExpiry struct{ idle time.Duration }

func (x idleExpiry) ExpireAfterCreate(otter.Entry[cacheKey, *cacheEntry]) time.Duration {
	return x.idle
}

func (x idleExpiry) ExpireAfterUpdate(e otter.Entry[cacheKey, *cacheEntry], _ *cacheEntry) time.Duration {
	return e.ExpiresAfter()
}

func (x idleExpiry) ExpireAfterRead(otter.Entry[cacheKey, *cacheEntry]) time.Duration { return x.idle }

// otterLogger routes otter's warnings to the cache's logger.
type otterLogger struct{ l *slog.Logger }

func (o otterLogger) Warn(ctx context.Context, msg string, err error) {
	o.l.WarnContext(ctx, msg, "err", err)
}

func (o otterLogger) Error(ctx context.Context, msg string, err error) {
	o.l.ErrorContext(ctx, msg, "err", err)
}
