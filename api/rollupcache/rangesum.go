package rollupcache

import (
	"math"

	"github.com/admetric/admetric/store/rollup"

	"github.com/maypok86/otter/v2"
)

// rangeKey names the sum of slots lo through hi of one rollup, as the
// bucket of generation gen holds it.
type rangeKey struct {
	k      cacheKey
	lo, hi int
	gen    uint64
}

// rangeSum is a sealed range sum, the revision since which its slots had
// not changed when it was summed (cacheEntry.rangeRev), and the revision of
// the settled visitor sets it added. Immutable once built.
type rangeSum struct {
	agg        *rollup.Aggregate
	rev        uint64
	settledRev uint64
	weight     uint32
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

// addRun adds slots lo through hi of e, the cached rollup of k, to agg: from
// their range sum, except a last slot that is likely being written.
func (c *Cache) addRun(agg *rollup.Aggregate, k cacheKey, e *cacheEntry, lo, hi int) error {
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
		return err
	}
	if err := agg.AddAggregate(sum); err != nil {
		return err
	}
	if live {
		return e.addSlot(agg, hi+1)
	}
	return nil
}

// rangeSum returns the sealed sum of slots lo through hi of e, the cached
// rollup of k: kept from an earlier Sum of the same slots unchanged since,
// or summed now and kept unless a sum of newer slots is there already. The
// result is shared: only read it.
func (c *Cache) rangeSum(k cacheKey, e *cacheEntry, lo, hi int) (*rollup.Aggregate, error) {
	rk := rangeKey{k: k, lo: lo, hi: hi, gen: e.gen}
	rev := e.rangeRev(lo, hi)
	// A range's visitors are also in the settled sets, which change when
	// more slots settle: a sum is of one revision of them.
	if s, ok := c.ranges.GetIfPresent(rk); ok && s.rev == rev && s.settledRev == e.settledRev {
		c.metrics.rangeHits.Inc()
		return s.agg, nil
	}
	c.metrics.rangeMisses.Inc()
	agg := &rollup.Aggregate{}
	for i := lo; i <= hi; i++ {
		if err := e.addSlot(agg, i); err != nil {
			return nil, err
		}
	}
	w := uint64(agg.Seal()) + uint64(len(k.key)) + 64
	s := &rangeSum{agg: agg, rev: rev, settledRev: e.settledRev, weight: uint32(min(w, math.MaxUint32))}
	c.ranges.Compute(rk, func(old *rangeSum, found bool) (*rangeSum, otter.ComputeOp) {
		if found && old.rev >= s.rev && old.settledRev >= s.settledRev {
			return old, otter.CancelOp
		}
		return s, otter.WriteOp
	})
	return agg, nil
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
// stay valid. e must not be shared yet.
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
