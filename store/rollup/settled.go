package rollup

import (
	"strings"
	"time"
)

// A rollup key of the current period is rewritten with every commit that
// touches it, whole. Its visitor sets are most of its bytes (up to 8 KiB a
// slot, exact or sketch) and only the slot being written changes, so the
// sets of slots that have ended (settled) are moved to a second key beside
// it, the settled key, rewritten only when more slots settle: a commit then
// rewrites the counters and the visitor sets of the current slots only.
//
// A slot's visitors are the union of its set in the rollup and its set in the
// settled value. A union does not count a visitor twice, so a reader that
// sees a set in both (moved, and the rollup not rewritten yet) still counts
// right; the writer writes the settled key before it empties the sets it
// moved, and a reader reads the rollup before its settled key. Counters stay
// in the rollup only.

// settledSuffix ends the settled key of a rollup key. Rollup keys end in
// their digits-only period, checkpoint keys in ".p<n>": no key of either
// kind ends so.
const settledSuffix = ".settled"

// SettledKey returns the key, in the same bucket, of the visitor sets moved
// out of the rollup at key.
func SettledKey(key string) string { return key + settledSuffix }

// SettledOf reports whether key is a settled key and, when it is, the rollup
// key it belongs to.
func SettledOf(key string) (rollupKey string, ok bool) {
	return strings.CutSuffix(key, settledSuffix)
}

// SettledSlots returns how many leading slots of the rollup of unit u at key
// ended before at: those below it have settled, and their visitor sets may
// move to the settled key. A key it cannot read settles nothing.
func (u Unit) SettledSlots(key string, at time.Time) int {
	dot := strings.IndexByte(key, '.')
	if dot < 0 {
		return 0
	}
	current, slot := u.Locate(key[:dot], at)
	switch {
	case len(key) != len(current):
		return 0
	case key < current: // the same ad and a fixed-width period: an earlier period
		return u.SlotsPerKey()
	case key == current:
		return slot
	default:
		return 0
	}
}

// HeldVisitors returns about how many visitor hashes the sets of slots below
// n hold: a sketch counts as ExactVisitors.
func (r *Rollup) HeldVisitors(n int) int {
	total := 0
	for i, s := range r.Slots {
		if i >= n || s.Visitors == nil {
			continue
		}
		if s.Visitors.sketch != nil {
			total += ExactVisitors
		} else {
			total += len(s.Visitors.exact)
		}
	}
	return total
}

// HasVisitors reports whether any slot of r that pick picks holds a
// visitor set.
func (r *Rollup) HasVisitors(pick func(slot int, s *Slot) bool) bool {
	for i, s := range r.Slots {
		if s.Visitors != nil && pick(i, s) {
			return true
		}
	}
	return false
}

// Settle moves the visitor sets of r's slots that move picks into settled,
// merging them with what settled holds for those slots, and reports whether
// it moved any. settled's MaxSeq becomes r's. On error r and settled may be
// partly moved; both must then be read again.
func (r *Rollup) Settle(settled *Rollup, move func(slot int, s *Slot) bool) (bool, error) {
	moved := false
	for i, s := range r.Slots {
		if s.Visitors == nil || !move(i, s) {
			continue
		}
		dst := settled.Slot(i)
		if dst.Visitors == nil {
			dst.Visitors = s.Visitors
		} else if err := dst.Visitors.Merge(s.Visitors); err != nil {
			return moved, err
		}
		s.Visitors = nil
		moved = true
	}
	if moved {
		settled.MaxSeq = max(settled.MaxSeq, r.MaxSeq)
	}
	return moved, nil
}

// DropSlots removes r's slots for which drop reports true and reports
// whether it removed any.
func (r *Rollup) DropSlots(drop func(slot int) bool) bool {
	dropped := false
	for i := range r.Slots {
		if drop(i) {
			delete(r.Slots, i)
			dropped = true
		}
	}
	return dropped
}
