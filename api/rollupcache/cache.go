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

	"github.com/admetric/admetric/store"
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

// Source is the rollup buckets the cache reads through and watches
// (*store.Rollups). Implementations are safe for concurrent use.
type Source interface {
	Layout() rollup.Layout
	// LoadStored returns the rollup at key in unit's bucket and the visitor
	// sets settled apart from it, each with its revision, reading the
	// rollup first.
	LoadStored(ctx context.Context, u rollup.Unit, key string) (store.Stored, error)
	// LastSeqAtOpen is a sequence of unit's bucket stream no later than
	// any value Load can return.
	LastSeqAtOpen(u rollup.Unit) uint64
	// LastSeq is the last sequence of unit's bucket stream now.
	LastSeq(ctx context.Context, u rollup.Unit) (uint64, error)
	// Watch delivers the updates of unit's bucket from sequence from on.
	// The caller stops the watcher.
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
	// admetric_rollup_cache_range_{hits,misses}_total,
	// admetric_rollup_cache_bytes and admetric_rollup_cache_entries.
	Registerer prometheus.Registerer
	// Logger receives watch errors; nil discards them.
	Logger *slog.Logger

	// clock, when not nil (tests only, see export_test.go), is the time
	// source of Idle.
	clock otter.Clock
}

// validate reports options New cannot build a cache from.
func (o Options) validate() error {
	if o.MaxBytes <= 0 || o.Idle <= 0 {
		return fmt.Errorf("rollupcache: New: MaxBytes (%d) and Idle (%s) must be positive", o.MaxBytes, o.Idle)
	}
	return nil
}

// Cache is an in-memory cache of decoded rollups in front of a Source
// (*store.Rollups), bounded in bytes, dropping entries not read for a while,
// and kept fresh by watches of the rollup buckets (see Run). It implements
// the same Sum as store.Rollups, so it can stand in for it. Safe for
// concurrent use.
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
//
// A Cache holds goroutines of otter's for its expiry for as long as it is
// reachable; there is nothing to close.
type Cache struct {
	r       Source
	cache   *otter.Cache[cacheKey, *cacheEntry]
	loader  otter.Loader[cacheKey, *cacheEntry]
	ranges  *otter.Cache[rangeKey, *rangeSum]
	logger  *slog.Logger
	metrics cacheMetrics

	running atomic.Bool
	mu      sync.Mutex       // guards watch, probes and current
	watch   [3]watchPosition // by rollup.Unit
	// probes and current say how current the cache is, by rollup.Unit:
	// the open question to the bucket's stream, and the last moment the
	// cache is known to have held all of the bucket (see CurrentAsOf).
	probes  [3]currentProbe
	current [3]time.Time
	// gens counts, by rollup.Unit, the times dropUnit emptied the cache of a
	// bucket: a bucket made anew numbers its revisions from 1 again, so a
	// revision names a value only within one generation.
	gens [3]atomic.Uint64
	// afterLoad, when set (by tests, before the cache is used), runs after
	// each load from KV has read its value, with the revision it read, and
	// before the cache stores it.
	afterLoad func(u rollup.Unit, key string, rev uint64)
}

// cacheKey names one KV value: a key of one resolution's bucket.
type cacheKey struct {
	unit rollup.Unit
	key  string
}

// cacheEntry is a decoded rollup and the KV revision it was read at (0 for a
// key that never existed, the marker's revision for a deleted or expired one,
// whose rollup is empty), and likewise the visitor sets settled apart from
// it (rollup.SettledKey). The two parts are read and updated apart, each at
// its own revision: a reader adds both. Immutable once built.
type cacheEntry struct {
	value      *rollup.Rollup
	rev        uint64
	settled    *rollup.Rollup // never nil
	settledRev uint64
	gen        uint64 // the generation of its unit when it was read (see Cache.gens)
	weight     uint32
	// valueLen and settledLen are the parts' encoded sizes, which weigh them.
	valueLen, settledLen int
	// slotRevs[i] is the revision since which slot i has not changed, as
	// far as the watch saw the key's updates (see carrySlotRevs); nil when
	// it saw none, and every slot counts as of rev.
	slotRevs []uint64
}

// newCacheEntry returns the entry of v, read at rev, whose encoding takes
// encodedLen bytes, with no settled visitor sets.
func newCacheEntry(key string, v *rollup.Rollup, rev uint64, encodedLen int) *cacheEntry {
	e := &cacheEntry{value: v, rev: rev, settled: rollup.New(), valueLen: encodedLen}
	e.weigh(key)
	return e
}

// withSettled returns a copy of e whose settled part is v, read at rev,
// encoded in encodedLen bytes.
func (e *cacheEntry) withSettled(key string, v *rollup.Rollup, rev uint64, encodedLen int) *cacheEntry {
	n := *e
	n.settled, n.settledRev, n.settledLen = v, rev, encodedLen
	n.weigh(key)
	return &n
}

// withValueOf returns a copy of e whose rollup part is o's.
func (e *cacheEntry) withValueOf(key string, o *cacheEntry) *cacheEntry {
	n := *o
	n.settled, n.settledRev, n.settledLen = e.settled, e.settledRev, e.settledLen
	n.weigh(key)
	return &n
}

func (e *cacheEntry) weigh(key string) {
	w := uint64(cacheEntryOverhead) + uint64(len(key)) + uint64(e.valueLen) + uint64(e.settledLen) +
		uint64(len(e.value.Slots)+len(e.settled.Slots))*cacheSlotOverhead
	e.weight = uint32(min(w, math.MaxUint32))
}

// addSlots adds e's slots listed in slots, settled visitors included, to agg.
func (e *cacheEntry) addSlots(agg *rollup.Aggregate, slots []int) error {
	for _, i := range slots {
		if err := e.addSlot(agg, i); err != nil {
			return err
		}
	}
	return nil
}

// addSlot adds e's slot i, settled visitors included, to agg.
func (e *cacheEntry) addSlot(agg *rollup.Aggregate, i int) error {
	if s, ok := e.value.Slots[i]; ok {
		if err := agg.AddSlot(s); err != nil {
			return err
		}
	}
	// A settled slot holds visitors only: adding it unions them in.
	if s, ok := e.settled.Slots[i]; ok {
		return agg.AddSlot(s)
	}
	return nil
}

// New returns a cache in front of r. It does not touch the network;
// call Run to keep it fresh. It fails for a nil r, a MaxBytes or Idle that is
// not positive, and metrics opts.Registerer already has (nothing is then
// left registered).
func New(r Source, opts Options) (*Cache, error) {
	if r == nil {
		return nil, errors.New("rollupcache: New: nil Source")
	}
	if err := opts.validate(); err != nil {
		return nil, err
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c := &Cache{
		r:       r,
		logger:  logger.With("component", "rollup-cache"),
		metrics: newCacheMetrics(),
	}
	if err := c.buildCaches(opts); err != nil {
		return nil, err
	}
	for u := range c.watch {
		c.watch[u].next = r.LastSeqAtOpen(rollup.Unit(u)) + 1
	}
	if err := c.registerMetrics(opts.Registerer); err != nil {
		c.stopCaches()
		return nil, err
	}
	return c, nil
}

// Layout returns the resolutions of the Source.
func (c *Cache) Layout() rollup.Layout { return c.r.Layout() }

// Sum adds up ad's slots listed in cells, as store.Rollups.Sum does, reading
// each key once: from memory when cached, else from KV (concurrent misses of
// one key load it once), caching what it loaded. A run of two or more
// consecutive slots of one key is added from its range sum when the cache
// keeps one for the rollup's revision, else summed and kept (see addRun).
// The result is the caller's. Errors are prefixed "rollupcache:" and wrap
// the Source's (or ctx's).
func (c *Cache) Sum(ctx context.Context, adID string, cells []rollup.Cell) (*rollup.Aggregate, error) {
	agg := &rollup.Aggregate{}
	for _, ks := range rollup.GroupCells(cells) {
		k := cacheKey{unit: ks.Unit, key: ks.Key(adID)}
		e, err := c.get(ctx, k)
		if err != nil {
			return nil, fmt.Errorf("rollupcache: sum %s: %w", adID, err)
		}
		if lo, hi, ok := slotRun(ks.Slots); ok {
			err = c.addRun(agg, k, e, lo, hi)
		} else {
			err = e.addSlots(agg, ks.Slots)
		}
		if err != nil {
			return nil, fmt.Errorf("rollupcache: sum %s %s: %w", k.unit, k.key, err)
		}
	}
	return agg, nil
}

// get returns the entry of k, loading it on a miss, and counts the read.
func (c *Cache) get(ctx context.Context, k cacheKey) (*cacheEntry, error) {
	if e, ok := c.cache.GetIfPresent(k); ok {
		c.metrics.hits.Inc()
		return e, nil
	}
	c.metrics.misses.Inc()
	return c.cache.Get(ctx, k, c.loader)
}

// load reads k from KV for the cache. otter stores its result only if nothing
// wrote or invalidated k while it ran (see apply), so a load that read a value
// the watch has since replaced is discarded and run again.
func (c *Cache) load(ctx context.Context, k cacheKey) (*cacheEntry, error) {
	gen := c.gens[k.unit].Load() // a dropUnit after this discards the load
	st, err := c.r.LoadStored(ctx, k.unit, k.key)
	if err != nil {
		return nil, err
	}
	// Load does not hand out the encoded values; encoding again gives their size.
	enc, err := st.Value.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("weigh %s %s: %w", k.unit, k.key, err)
	}
	settledEnc, err := st.Settled.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("weigh %s %s: %w", k.unit, rollup.SettledKey(k.key), err)
	}
	if c.afterLoad != nil {
		c.afterLoad(k.unit, k.key, st.Rev)
	}
	e := newCacheEntry(k.key, st.Value, st.Rev, len(enc)).withSettled(k.key, st.Settled, st.SettledRev, len(settledEnc))
	e.gen = gen
	return e, nil
}

// offer stores e at k unless the cache holds both of k's parts at e's
// revisions or newer ones, and reports whether it stored anything. Where
// each holds one part newer, the newer of each is stored. A write cancels a
// load of k in flight.
func (c *Cache) offer(k cacheKey, e *cacheEntry) bool {
	stored := false
	c.cache.Compute(k, func(old *cacheEntry, found bool) (*cacheEntry, otter.ComputeOp) {
		switch {
		case !found:
		case old.rev >= e.rev && old.settledRev >= e.settledRev:
			return old, otter.CancelOp
		case old.rev > e.rev:
			e = e.withValueOf(k.key, old)
		case old.settledRev > e.settledRev:
			e = e.withSettled(k.key, old.settled, old.settledRev, old.settledLen)
		}
		stored = true
		return e, otter.WriteOp
	})
	return stored
}

// Warm puts every rollup of s into the cache unless the cache holds a newer
// revision of it. The snapshot's rollups are only as fresh as the snapshot, so
// the watches (now, or when Run starts) replay the bucket updates since it was
// written: a running watch restarts at once from there. Units whose bucket
// differs from the cache's layout are skipped. s stays the caller's and
// unchanged; Warm may run alongside Sum and Run.
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
			c.rewind(rollup.Unit(u), s.through[u]+1, s.asOf)
		}
	}
}
