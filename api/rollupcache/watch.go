package rollupcache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/admetric/admetric/store/rollup"

	"github.com/cenkalti/backoff/v5"
	"github.com/maypok86/otter/v2"
	"github.com/nats-io/nats.go/jetstream"
)

// Pauses between attempts to (re-)establish a bucket watch: growing after
// each failure up to the maximum (each one jittered by half either way),
// back to the minimum once a watch was established.
const (
	watchMinPause = 500 * time.Millisecond
	watchMaxPause = 15 * time.Second
)

// errWatchClosed ends a watch whose updates channel the client closed.
var errWatchClosed = errors.New("rollupcache: watch closed")

// watchPosition is where the watch of one bucket stands.
type watchPosition struct {
	// next is the first stream sequence not yet applied: every update below it
	// to a cached key is reflected in the cache. It starts after the bucket
	// stream's last sequence as the Source last saw it (when it was created:
	// no later than any state a load of this cache can read), moves on as
	// the watch applies updates, and moves back when Warm adds entries that
	// are only as fresh as their snapshot.
	next uint64
	// epoch counts rewinds, so that a watch started before one does not move
	// next forward past it.
	epoch uint64
	// cancel stops the bucket's current watch, so that it restarts from next.
	cancel context.CancelFunc
}

// Run watches the three rollup buckets until ctx ends, then returns nil. Every
// update of a cached key replaces its entry (a delete, purge or expiry makes
// it an empty rollup at the marker's revision); an update of a key being
// loaded makes that load read again. A watch that fails or ends is
// re-established from where it stood, after a pause with jitter that grows
// while attempts fail (see watchMinPause), each failure logged once as a
// warning with its pause. Run may be called once; a second call returns an
// error at once.
func (c *Cache) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("rollupcache: Cache.Run called twice")
	}
	var wg sync.WaitGroup
	for _, res := range c.r.Layout() {
		wg.Go(func() { c.watchBucket(ctx, res.Unit, res.Bucket) })
	}
	wg.Go(func() { c.probeCurrent(ctx) })
	wg.Wait()
	return nil
}

// watchBucket keeps a watch of unit's bucket going until ctx ends.
func (c *Cache) watchBucket(ctx context.Context, u rollup.Unit, bucket string) {
	pauses := &backoff.ExponentialBackOff{
		InitialInterval:     watchMinPause,
		RandomizationFactor: backoff.DefaultRandomizationFactor,
		Multiplier:          2,
		MaxInterval:         watchMaxPause,
	}
	attempt := func() (struct{}, error) {
		err := c.watchUntilFailure(ctx, u, bucket, pauses)
		if ctx.Err() != nil {
			return struct{}{}, backoff.Permanent(ctx.Err())
		}
		return struct{}{}, err
	}
	// It returns only once ctx has ended: every failure is retried.
	_, _ = backoff.Retry(ctx, attempt,
		backoff.WithBackOff(pauses),
		backoff.WithMaxElapsedTime(0),
		backoff.WithNotify(func(err error, pause time.Duration) {
			c.logger.Warn("rollup bucket watch ended; retrying", "bucket", bucket, "err", err, "pause", pause)
		}))
}

// watchUntilFailure watches unit's bucket from where the cache stands, again
// at once whenever Warm moves that back, until ctx ends or the watch fails.
// It resets pauses when the failed watch had been established, so that the
// pause after it is the shortest.
func (c *Cache) watchUntilFailure(ctx context.Context, u rollup.Unit, bucket string, pauses backoff.BackOff) error {
	for {
		wctx, cancel := context.WithCancel(ctx)
		start, epoch := c.beginWatch(u, cancel)
		established, err := c.watchOnce(wctx, u, bucket, start, epoch)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if c.rewound(u, epoch) {
			continue // Warm moved the start back: restart at once
		}
		if established {
			pauses.Reset()
		}
		return err
	}
}

// watchOnce watches bucket from stream sequence start until ctx ends or the
// watch fails; established reports that the watch was set up.
func (c *Cache) watchOnce(ctx context.Context, u rollup.Unit, bucket string, start, epoch uint64) (established bool, err error) {
	last, err := c.r.LastSeq(ctx, u)
	if err != nil {
		return false, fmt.Errorf("rollupcache: watch %s: %w", bucket, err)
	}
	if start > last+1 {
		// The stream is behind what the cache has seen: it was recreated, and
		// the cached revisions of this bucket mean nothing any more.
		c.logger.Warn("rollup bucket is behind the cache; dropping its entries", "bucket", bucket,
			"stream_last_seq", last, "cache_next_seq", start)
		c.dropUnit(u)
		start = last + 1
		c.reset(u, epoch, start)
	}
	w, err := c.r.Watch(ctx, u, start)
	if err != nil {
		return false, fmt.Errorf("rollupcache: watch %s: %w", bucket, err)
	}
	defer func() {
		if err := w.Stop(); err != nil && ctx.Err() == nil {
			c.logger.Debug("stopping rollup bucket watch", "bucket", bucket, "err", err)
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return true, ctx.Err()
		case ent, ok := <-w.Updates():
			if !ok {
				return true, errWatchClosed
			}
			if ent == nil {
				continue
			}
			c.apply(u, ent)
			c.advance(u, epoch, ent.Revision()+1)
		}
	}
}

// apply brings the cache up to date with one update of unit's bucket: of a
// rollup, or of the visitor sets settled apart from one, which update the
// entry of that rollup.
func (c *Cache) apply(u rollup.Unit, ent jetstream.KeyValueEntry) {
	base, settled := rollup.SettledOf(ent.Key())
	k := cacheKey{unit: u, key: base}
	if _, cached := c.cache.GetEntryQuietly(k); !cached {
		// Not cached, nothing to update, but a load of k may be in flight with
		// the value this update replaced: invalidating k makes otter discard
		// that load's result and load again.
		c.cache.Invalidate(k)
		return
	}
	v, size := rollup.New(), 0
	switch ent.Operation() {
	case jetstream.KeyValueDelete, jetstream.KeyValuePurge: // purge covers expiry markers
	default:
		if err := v.UnmarshalBinary(ent.Value()); err != nil {
			// Drop it: the next read loads it and reports the error.
			c.logger.Error("undecodable rollup update", "unit", u.String(), "key", ent.Key(), "rev", ent.Revision(), "err", err)
			c.cache.Invalidate(k)
			return
		}
		size = len(ent.Value())
	}
	rev, gen := ent.Revision(), c.gens[u].Load()
	c.cache.Compute(k, func(old *cacheEntry, found bool) (*cacheEntry, otter.ComputeOp) {
		switch {
		case !found: // evicted meanwhile: as for a key not cached
			return nil, otter.InvalidateOp
		case settled && old.settledRev >= rev, !settled && old.rev >= rev:
			return old, otter.CancelOp
		case old.gen != gen:
			return nil, otter.InvalidateOp // read before its bucket was made anew
		case settled:
			return old.withSettled(k.key, v, rev, size), otter.WriteOp
		}
		e := newCacheEntry(k.key, v, rev, size)
		e.gen = gen
		carrySlotRevs(u, old, e)
		return old.withValueOf(k.key, e), otter.WriteOp
	})
}

// dropUnit removes every cached key of unit's bucket, and the range sums of
// them: a bucket made anew numbers its revisions from 1 again. The
// generation moves on first, so that a range sum of an entry read before
// this, stored after it, is under a key no later entry looks up.
func (c *Cache) dropUnit(u rollup.Unit) {
	c.gens[u].Add(1)
	for k := range c.cache.Keys() {
		if k.unit == u {
			c.cache.Invalidate(k)
		}
	}
	for k := range c.ranges.Keys() {
		if k.k.unit == u {
			c.ranges.Invalidate(k)
		}
	}
}

// beginWatch records cancel as the stopper of unit's watch and returns where
// the watch starts and the epoch it belongs to.
func (c *Cache) beginWatch(u rollup.Unit, cancel context.CancelFunc) (start, epoch uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.watch[u].cancel = cancel
	return c.watch[u].next, c.watch[u].epoch
}

// rewound reports whether unit's watch was rewound since epoch began.
func (c *Cache) rewound(u rollup.Unit, epoch uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.watch[u].epoch != epoch
}

// advance records that the watch of epoch applied every update below next.
func (c *Cache) advance(u rollup.Unit, epoch, next uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.watch[u].epoch == epoch && next > c.watch[u].next {
		c.watch[u].next = next
		c.answerProbe(u)
	}
}

// reset sets the position of the watch of epoch to next, backwards allowed,
// for a bucket made anew: a question put to the old one means nothing now.
func (c *Cache) reset(u rollup.Unit, epoch, next uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.watch[u].epoch == epoch {
		c.watch[u].next = next
		c.probes[u].pending = false
	}
}

// rewind moves the watch of unit's bucket back to next, restarting it if it
// runs, for entries added that are only as current as asOf.
func (c *Cache) rewind(u rollup.Unit, next uint64, asOf time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.warmedAsOf(u, asOf)
	w := &c.watch[u]
	if next >= w.next {
		return
	}
	w.next = next
	w.epoch++
	if w.cancel != nil {
		w.cancel()
	}
}

// through returns, for each unit, the last stream sequence every update up to
// which is reflected in the cache.
func (c *Cache) through() [3]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out [3]uint64
	for u, w := range c.watch {
		out[u] = w.next - 1
	}
	return out
}
