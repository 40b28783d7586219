package rollupcache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/admetric/admetric/store/rollup"

	"github.com/maypok86/otter/v2"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// The weight of a cache entry estimates the memory it holds: the encoded size
// of its rollup (a sketch or an exact visitor list takes about as many bytes
// decoded as encoded), plus cacheSlotOverhead for each decoded slot (the rollup.Slot
// and rollup.Visitors structs and the map entry, which the uvarint counters of the
// encoding understate) and cacheEntryOverhead for the entry itself (the
// Rollup, its map header, the cache node and the key's header), plus the key.
const (
	cacheEntryOverhead = 256
	cacheSlotOverhead  = 128
)

// Pauses between attempts to (re-)establish a bucket watch: doubled after each
// failure up to the maximum, reset once a watch is established.
const (
	watchMinPause = 500 * time.Millisecond
	watchMaxPause = 15 * time.Second
)

// Source is the rollup buckets the cache reads through and watches
// (*store.Rollups). Implementations are safe for concurrent use.
type Source interface {
	Layout() rollup.Layout
	// Load returns the rollup at key in unit's bucket and its revision.
	Load(ctx context.Context, u rollup.Unit, key string) (*rollup.Rollup, uint64, error)
	// LastSeqAtOpen is a sequence of unit's bucket stream no later than
	// any value Load can return.
	LastSeqAtOpen(u rollup.Unit) uint64
	// LastSeq is the last sequence of unit's bucket stream now.
	LastSeq(ctx context.Context, u rollup.Unit) (uint64, error)
	// Watch delivers the updates of unit's bucket from sequence from on.
	Watch(ctx context.Context, u rollup.Unit, from uint64) (jetstream.KeyWatcher, error)
}

// Options configure a Cache.
type Options struct {
	// MaxBytes bounds the weight of what the cache holds (required; the
	// service's is CACHE_MAX_BYTES): three quarters of it for the rollups, one
	// quarter for range sums (see Cache). The weight of a rollup
	// estimates the memory it holds: its encoded size, plus 128 bytes per
	// slot, plus 256 bytes and the key's length for the entry itself; a range
	// sum weighs its visitor list or sketch. Eviction runs asynchronously, so
	// the cache may briefly exceed the bound while it catches up.
	MaxBytes int64
	// Idle drops an entry that has not been read for this long (required;
	// the service's is CACHE_IDLE). Updates from the watch do not count as
	// reads.
	Idle time.Duration
	// Registerer, when not nil, gets the cache's metrics:
	// admetric_rollup_cache_{hits,misses,evictions}_total,
	// admetric_rollup_cache_bytes and admetric_rollup_cache_entries.
	Registerer prometheus.Registerer
	// Logger receives watch errors; nil discards them.
	Logger *slog.Logger
}

// Cache is an in-memory cache of decoded rollups in front of Rollups,
// bounded in bytes, dropping entries not read for a while, and kept fresh by
// watches of the rollup buckets (see Run). It implements the same Sum as
// Rollups, so it can stand in for it. Safe for concurrent use.
//
// Each entry keeps the KV revision it was read at, and an entry is never
// replaced by an older revision: not by a load that raced a watch update, nor
// by Warm from an older snapshot. Cached rollups are shared by all readers and
// never modified; a new revision replaces the whole entry.
//
// Without Run, nothing refreshes an entry: start Run with the cache. With it,
// a write reaches readers as fast as the watch delivers it (well under a
// second), but while a watch is being re-established (after a server restart
// the ordered consumer notices in about five seconds) readers get the values
// it last applied; the watch then resumes where it stood, missing nothing. An
// entry evicted for size or idleness is forgotten: updates of it are ignored
// and the next read loads it from KV again.
//
// Sum also keeps range sums: the sealed rollup.Aggregate of a run of two or more
// slots of one key, so that the next Sum over the same run adds one
// aggregate instead of merging every slot's visitor set again. A 30-day
// window reads about 190 slots in 7 keys; only its edge runs change as the
// window moves on. A range sum is used only while none of its slots has
// changed since it was summed, within one bucket generation: the watch
// tells which slots an update changed (see carrySlotRevs), so the sum of the
// past days of this month stays in use while today's slot takes events.
type Cache struct {
	r      Source
	cache  *otter.Cache[cacheKey, *cacheEntry]
	loader otter.Loader[cacheKey, *cacheEntry]
	ranges *otter.Cache[rangeKey, *rangeSum]
	logger *slog.Logger

	hits, misses, evictions prometheus.Counter
	rangeHits, rangeMisses  prometheus.Counter

	running atomic.Bool
	mu      sync.Mutex       // guards watch
	watch   [3]watchPosition // by rollup.Unit
	// gens counts, by rollup.Unit, the times dropUnit emptied the cache of a
	// bucket: a bucket made anew numbers its revisions from 1 again, so a
	// revision names a value only within one generation.
	gens [3]atomic.Uint64
	// afterLoad, when set (by tests), runs after each load from KV has read its
	// value and before the cache stores it.
	afterLoad func(u rollup.Unit, key string)
}

// cacheKey names one KV value: a key of one resolution's bucket.
type cacheKey struct {
	unit rollup.Unit
	key  string
}

// cacheEntry is a decoded rollup and the KV revision it was read at (0 for a
// key that never existed, the marker's revision for a deleted or expired one,
// whose rollup is empty). Immutable once built.
type cacheEntry struct {
	value  *rollup.Rollup
	rev    uint64
	gen    uint64 // the generation of its unit when it was read (see Cache.gens)
	weight uint32
	// slotRevs[i] is the revision since which slot i has not changed, as
	// far as the watch saw the key's updates (see carrySlotRevs); nil when
	// it saw none, and every slot counts as of rev.
	slotRevs []uint64
}

// rangeRev returns the revision since which none of slots lo through hi of
// e has changed: the revision a range sum of them is valid for.
func (e *cacheEntry) rangeRev(lo, hi int) uint64 {
	if e.slotRevs == nil || hi >= len(e.slotRevs) {
		return e.rev
	}
	var r uint64
	for _, sr := range e.slotRevs[lo : hi+1] {
		r = max(r, sr)
	}
	return r
}

// changedLast reports whether slot i changed in e's revision, as far as the
// watch saw the key's updates.
func (e *cacheEntry) changedLast(i int) bool {
	return i < len(e.slotRevs) && e.slotRevs[i] == e.rev
}

// carrySlotRevs sets, on e, the newer value of old's key, the revision since
// which each slot has not changed: old's for a slot whose counters are the
// same in both (every event the fold adds moves a counter, so a slot with
// the same counters holds the same visitors too), e's own for the rest. A
// key of the current hour, day or month gets a new revision with every
// commit, but only its current slot changes: the range sums of the others
// stay valid.
func carrySlotRevs(u rollup.Unit, old, e *cacheEntry) {
	n := u.SlotsPerKey()
	for i := range e.value.Slots {
		if i >= n {
			return // not a key this layout writes: every slot as of e.rev
		}
	}
	for i := range old.value.Slots {
		if i >= n {
			return
		}
	}
	revs := make([]uint64, n)
	for i := range revs {
		was, wasOK := old.value.Slots[i]
		now, nowOK := e.value.Slots[i]
		switch {
		case wasOK != nowOK || (nowOK && was.Counters != now.Counters):
			revs[i] = e.rev
		case old.slotRevs != nil:
			revs[i] = old.slotRevs[i]
		default:
			revs[i] = old.rev
		}
	}
	e.slotRevs = revs
}

// rangeKey names the sum of slots lo through hi of one rollup, as the
// bucket of generation gen holds it.
type rangeKey struct {
	k      cacheKey
	lo, hi int
	gen    uint64
}

// rangeSum is a sealed range sum and the revision since which its slots had
// not changed when it was summed (cacheEntry.rangeRev). Immutable once built.
type rangeSum struct {
	agg    *rollup.Aggregate
	rev    uint64
	weight uint32
}

// watchPosition is where the watch of one bucket stands.
type watchPosition struct {
	// next is the first stream sequence not yet applied: every update below it
	// to a cached key is reflected in the cache. It starts after the bucket
	// stream's last sequence as Rollups last saw it (at OpenRollups: no later
	// than any state a load of this cache can read), moves on as the watch
	// applies updates, and moves back when Warm adds entries that are only as
	// fresh as their snapshot.
	next uint64
	// epoch counts rewinds, so that a watch started before one does not move
	// next forward past it.
	epoch uint64
	// cancel stops the bucket's current watch, so that it restarts from next.
	cancel context.CancelFunc
}

// New returns a cache in front of r. It does not touch the network;
// call Run to keep it fresh.
func New(r Source, opts Options) (*Cache, error) {
	if r == nil {
		return nil, errors.New("rollupcache: New: nil Rollups")
	}
	if opts.MaxBytes <= 0 || opts.Idle <= 0 {
		return nil, fmt.Errorf("rollupcache: New: MaxBytes (%d) and Idle (%s) must be positive", opts.MaxBytes, opts.Idle)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c := &Cache{
		r:      r,
		logger: logger.With("component", "rollup-cache"),
		hits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "admetric_rollup_cache_hits_total", Help: "rollup.Rollup keys read by Sum that the rollup cache held.",
		}),
		misses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "admetric_rollup_cache_misses_total", Help: "rollup.Rollup keys read by Sum that the rollup cache had to load from KV (concurrent misses of one key share one load).",
		}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "admetric_rollup_cache_evictions_total", Help: "rollup.Rollup cache entries dropped for the byte bound or for being idle.",
		}),
		rangeHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "admetric_rollup_cache_range_hits_total", Help: "Runs of slots of one rollup that Sum added from a range sum it kept.",
		}),
		rangeMisses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "admetric_rollup_cache_range_misses_total", Help: "Runs of slots of one rollup that Sum summed slot by slot (and kept the sum of).",
		}),
	}
	rangeBytes := opts.MaxBytes / 4
	ranges, err := otter.New(&otter.Options[rangeKey, *rangeSum]{
		MaximumWeight:    uint64(max(rangeBytes, 1)),
		Weigher:          func(_ rangeKey, s *rangeSum) uint32 { return s.weight },
		ExpiryCalculator: otter.ExpiryAccessing[rangeKey, *rangeSum](opts.Idle),
		Logger:           otterLogger{c.logger},
	})
	if err != nil {
		return nil, fmt.Errorf("rollupcache: rollup cache: %w", err)
	}
	c.ranges = ranges
	c.loader = otter.LoaderFunc[cacheKey, *cacheEntry](c.load)
	cache, err := otter.New(&otter.Options[cacheKey, *cacheEntry]{
		MaximumWeight:    uint64(opts.MaxBytes - rangeBytes),
		Weigher:          func(_ cacheKey, e *cacheEntry) uint32 { return e.weight },
		ExpiryCalculator: idleExpiry{idle: opts.Idle},
		StatsRecorder:    evictionRecorder{c.evictions},
		Logger:           otterLogger{c.logger},
	})
	if err != nil {
		c.ranges.StopAllGoroutines()
		return nil, fmt.Errorf("rollupcache: rollup cache: %w", err)
	}
	c.cache = cache
	for u := range c.watch {
		c.watch[u].next = r.LastSeqAtOpen(rollup.Unit(u)) + 1
	}
	if opts.Registerer != nil {
		var registered []prometheus.Collector
		for _, col := range []prometheus.Collector{
			c.hits, c.misses, c.evictions, c.rangeHits, c.rangeMisses,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "admetric_rollup_cache_bytes", Help: "Estimated bytes held by the rollup cache, rollups and range sums (the weight its byte bound applies to).",
			}, func() float64 { return float64(c.cache.WeightedSize() + c.ranges.WeightedSize()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "admetric_rollup_cache_entries", Help: "Approximate number of rollups in the rollup cache.",
			}, func() float64 { return float64(c.cache.EstimatedSize()) }),
		} {
			if err := opts.Registerer.Register(col); err != nil {
				for _, r := range registered {
					opts.Registerer.Unregister(r)
				}
				c.cache.StopAllGoroutines()
				c.ranges.StopAllGoroutines()
				return nil, fmt.Errorf("rollupcache: rollup cache metrics: %w", err)
			}
			registered = append(registered, col)
		}
	}
	return c, nil
}

// Layout returns the resolutions of the underlying Rollups.
func (c *Cache) Layout() rollup.Layout { return c.r.Layout() }

// Sum adds up ad's slots listed in cells, as Rollups.Sum does, reading each
// key once: from memory when cached, else from KV (concurrent misses of one
// key load it once), caching what it loaded. A run of two or more consecutive
// slots of one key is added from its range sum when the cache keeps one for
// the rollup's revision, else summed and kept.
func (c *Cache) Sum(ctx context.Context, adID string, cells []rollup.Cell) (*rollup.Aggregate, error) {
	agg := &rollup.Aggregate{}
	for _, ks := range rollup.GroupCells(cells) {
		k := cacheKey{unit: ks.Unit, key: ks.Key(adID)}
		e, err := c.get(ctx, k)
		if err != nil {
			return nil, err
		}
		lo, hi, ok := slotRun(ks.Slots)
		if !ok {
			if err := agg.AddSlots(e.value, ks.Slots); err != nil {
				return nil, err
			}
			continue
		}
		// The last slot of a run that changed in the key's newest revision
		// is likely the one being written (the current minute): it would
		// make the run's sum stale at every commit, so it is added on its
		// own and the slots before it keep their sum.
		live := hi-lo >= 2 && e.changedLast(hi)
		if live {
			hi--
		}
		sum, err := c.rangeSum(k, e, lo, hi)
		if err != nil {
			return nil, err
		}
		if err := agg.AddAggregate(sum); err != nil {
			return nil, err
		}
		if live {
			if err := agg.AddSlots(e.value, []int{hi + 1}); err != nil {
				return nil, err
			}
		}
	}
	return agg, nil
}

// slotRun reports whether slots are two or more consecutive slots, and which.
func slotRun(slots []int) (lo, hi int, ok bool) {
	if len(slots) < 2 {
		return 0, 0, false
	}
	for i, s := range slots {
		if s != slots[0]+i {
			return 0, 0, false
		}
	}
	return slots[0], slots[len(slots)-1], true
}

// rangeSum returns the sealed sum of slots lo through hi of e, the cached
// rollup of k: kept from an earlier Sum of the same slots unchanged since,
// or summed now and kept unless a sum of newer slots is there already. The
// result is shared: only read it.
func (c *Cache) rangeSum(k cacheKey, e *cacheEntry, lo, hi int) (*rollup.Aggregate, error) {
	rk := rangeKey{k: k, lo: lo, hi: hi, gen: e.gen}
	rev := e.rangeRev(lo, hi)
	if s, ok := c.ranges.GetIfPresent(rk); ok && s.rev == rev {
		c.rangeHits.Inc()
		return s.agg, nil
	}
	c.rangeMisses.Inc()
	agg := &rollup.Aggregate{}
	for i := lo; i <= hi; i++ {
		if s, ok := e.value.Slots[i]; ok {
			if err := agg.AddSlot(s); err != nil {
				return nil, err
			}
		}
	}
	w := uint64(agg.Seal()) + uint64(len(k.key)) + 64
	s := &rangeSum{agg: agg, rev: rev, weight: uint32(min(w, math.MaxUint32))}
	c.ranges.Compute(rk, func(old *rangeSum, found bool) (*rangeSum, otter.ComputeOp) {
		if found && old.rev >= s.rev {
			return old, otter.CancelOp
		}
		return s, otter.WriteOp
	})
	return agg, nil
}

func (c *Cache) get(ctx context.Context, k cacheKey) (*cacheEntry, error) {
	if e, ok := c.cache.GetIfPresent(k); ok {
		c.hits.Inc()
		return e, nil
	}
	c.misses.Inc()
	return c.cache.Get(ctx, k, c.loader)
}

// load reads k from KV for the cache. otter stores its result only if nothing
// wrote or invalidated k while it ran (see apply), so a load that read a value
// the watch has since replaced is discarded and run again.
func (c *Cache) load(ctx context.Context, k cacheKey) (*cacheEntry, error) {
	gen := c.gens[k.unit].Load() // a dropUnit after this discards the load
	v, rev, err := c.r.Load(ctx, k.unit, k.key)
	if err != nil {
		return nil, err
	}
	// Load does not hand out the encoded value; encoding again gives its size.
	enc, err := v.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("rollupcache: weigh %s %s: %w", k.unit, k.key, err)
	}
	if c.afterLoad != nil {
		c.afterLoad(k.unit, k.key)
	}
	e := newCacheEntry(k.key, v, rev, len(enc))
	e.gen = gen
	return e, nil
}

func newCacheEntry(key string, v *rollup.Rollup, rev uint64, encodedLen int) *cacheEntry {
	w := uint64(cacheEntryOverhead) + uint64(len(key)) + uint64(encodedLen) + uint64(len(v.Slots))*cacheSlotOverhead
	return &cacheEntry{value: v, rev: rev, weight: uint32(min(w, math.MaxUint32))}
}

// offer stores e at k unless the cache holds k at e's revision or a newer one,
// and reports whether it stored it. A write cancels a load of k in flight.
func (c *Cache) offer(k cacheKey, e *cacheEntry) bool {
	stored := false
	c.cache.Compute(k, func(old *cacheEntry, found bool) (*cacheEntry, otter.ComputeOp) {
		if found && old.rev >= e.rev {
			return old, otter.CancelOp
		}
		stored = true
		return e, otter.WriteOp
	})
	return stored
}

// Warm puts every rollup of s into the cache unless the cache holds a newer
// revision of it. The snapshot's rollups are only as fresh as the snapshot, so
// the watches (now, or when Run starts) replay the bucket updates since it was
// written. Units whose bucket differs from the cache's layout are skipped.
func (c *Cache) Warm(s *Snapshot) {
	if s == nil {
		return
	}
	layout := c.r.Layout()
	for k, e := range s.entries {
		if s.layout[k.unit].Bucket == layout[k.unit].Bucket {
			fresh := *e // the snapshot's entry is its own; this one is of the current generation
			fresh.gen = c.gens[k.unit].Load()
			c.offer(k, &fresh)
		}
	}
	// After the entries are in: a replay started before could apply an update
	// to a key that the snapshot then sets back.
	for u := range layout {
		if s.layout[u].Bucket == layout[u].Bucket {
			c.rewind(rollup.Unit(u), s.through[u]+1)
		}
	}
}

// Run watches the three rollup buckets until ctx ends, then returns nil. Every
// update of a cached key replaces its entry (a delete, purge or expiry makes
// it an empty rollup at the marker's revision); an update of a key being
// loaded makes that load read again. A watch that fails or ends is
// re-established from where it stood, after a pause. Run may be called once.
func (c *Cache) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("rollupcache: Cache.Run called twice")
	}
	var wg sync.WaitGroup
	for _, res := range c.r.Layout() {
		wg.Go(func() { c.watchBucket(ctx, res.Unit, res.Bucket) })
	}
	wg.Wait()
	return nil
}

func (c *Cache) watchBucket(ctx context.Context, u rollup.Unit, bucket string) {
	pause := watchMinPause
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(ctx)
		start, epoch := c.beginWatch(u, cancel)
		established, err := c.watchOnce(wctx, u, bucket, start, epoch)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if c.rewound(u, epoch) {
			continue // Warm moved the start back: restart at once
		}
		if established {
			pause = watchMinPause
		}
		c.logger.Warn("rollup bucket watch ended; retrying", "bucket", bucket, "err", err, "pause", pause)
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		pause = min(2*pause, watchMaxPause)
	}
}

// watchOnce watches bucket from stream sequence start until ctx ends or the
// watch fails; established reports that the watch was set up.
func (c *Cache) watchOnce(ctx context.Context, u rollup.Unit, bucket string, start, epoch uint64) (established bool, err error) {
	last, err := c.r.LastSeq(ctx, u)
	if err != nil {
		return false, err
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
		return false, err
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
				return true, errors.New("watch closed")
			}
			if ent == nil {
				continue
			}
			c.apply(u, ent)
			c.advance(u, epoch, ent.Revision()+1)
		}
	}
}

// apply brings the cache up to date with one update of unit's bucket.
func (c *Cache) apply(u rollup.Unit, ent jetstream.KeyValueEntry) {
	k := cacheKey{unit: u, key: ent.Key()}
	if _, cached := c.cache.GetEntryQuietly(k); !cached {
		// Not cached, nothing to update, but a load of k may be in flight with
		// the value this update replaced: invalidating k makes otter discard
		// that load's result and load again.
		c.cache.Invalidate(k)
		return
	}
	var e *cacheEntry
	switch ent.Operation() {
	case jetstream.KeyValueDelete, jetstream.KeyValuePurge: // purge covers expiry markers
		e = newCacheEntry(k.key, rollup.New(), ent.Revision(), 0)
	default:
		v := rollup.New()
		if err := v.UnmarshalBinary(ent.Value()); err != nil {
			// Drop it: the next read loads it and reports the error.
			c.logger.Error("undecodable rollup update", "unit", u.String(), "key", k.key, "rev", ent.Revision(), "err", err)
			c.cache.Invalidate(k)
			return
		}
		e = newCacheEntry(k.key, v, ent.Revision(), len(ent.Value()))
	}
	e.gen = c.gens[u].Load()
	c.cache.Compute(k, func(old *cacheEntry, found bool) (*cacheEntry, otter.ComputeOp) {
		switch {
		case !found: // evicted meanwhile: as for a key not cached
			return nil, otter.InvalidateOp
		case old.rev >= e.rev:
			return old, otter.CancelOp
		default:
			if old.gen == e.gen {
				carrySlotRevs(u, old, e)
			}
			return e, otter.WriteOp
		}
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

func (c *Cache) beginWatch(u rollup.Unit, cancel context.CancelFunc) (start, epoch uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.watch[u].cancel = cancel
	return c.watch[u].next, c.watch[u].epoch
}

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
	}
}

// reset sets the position of the watch of epoch to next, backwards allowed.
func (c *Cache) reset(u rollup.Unit, epoch, next uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.watch[u].epoch == epoch {
		c.watch[u].next = next
	}
}

// rewind moves the watch of unit's bucket back to next, restarting it if it runs.
func (c *Cache) rewind(u rollup.Unit, next uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
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

// evictionRecorder counts otter's evictions (for size and expiry); hits and
// misses are counted by Cache.get, which knows what a read of Sum is.
type evictionRecorder struct{ evictions prometheus.Counter }

func (r evictionRecorder) RecordHits(int)                  {}
func (r evictionRecorder) RecordMisses(int)                {}
func (r evictionRecorder) RecordEviction(uint32)           { r.evictions.Inc() }
func (r evictionRecorder) RecordLoadSuccess(time.Duration) {}
func (r evictionRecorder) RecordLoadFailure(time.Duration) {}

// otterLogger routes otter's warnings to the cache's logger.
type otterLogger struct{ l *slog.Logger }

func (o otterLogger) Warn(ctx context.Context, msg string, err error) {
	o.l.WarnContext(ctx, msg, "err", err)
}

func (o otterLogger) Error(ctx context.Context, msg string, err error) {
	o.l.ErrorContext(ctx, msg, "err", err)
}
