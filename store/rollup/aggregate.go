package rollup

import (
	"fmt"
	"slices"
	"sync/atomic"

	"github.com/axiomhq/hyperloglog"
)

// Aggregate is the sum of any number of slots: counters add, visitor sets
// merge. The zero value is ready to use; an Aggregate is not safe for
// concurrent use, and UniqueVisitors changes its internal state.
//
// An Aggregate refers to the exact visitor lists of the slots and sealed
// aggregates added to it, without copying them: they must not change while
// it is in use (cached and decoded rollups never do). Counting merges the
// sorted lists; an exact count stays exact up to maxExactAggregate distinct
// visitors (beyond ExactVisitors, as a union of exact sets is exact too).
// Past that, or once a sketch is added, the count is a HyperLogLog estimate,
// and the lists go into the sketch when counted: straight into the registers
// of a dense sketch; into a sparse one as sparse sketches, merged in at once
// (see sparseForm).
type Aggregate struct {
	Counters
	// ErrorCodes counts the error events by VAST error code.
	ErrorCodes CodeCounts
	runs       []run // exact lists added and not yet in sketch
	sketch     *hyperloglog.Sketch
	// dense is true when sketch is known to be dense (registers, not a
	// sparse list). False when unknown.
	dense   bool
	counted bool // unique holds the count of everything added so far
	unique  uint64

	// Of a sealed aggregate only (see Seal): its exact members, sorted and
	// distinct, when it has no sketch; and those members as a sparse
	// sketch, once one was needed.
	sealed bool
	hashes []uint64
	sparse atomic.Pointer[hyperloglog.Sketch]
}

// run is an exact visitor list added to an Aggregate: sorted and distinct,
// shared with the slot or sealed aggregate it came from, never written.
type run struct {
	hashes []uint64
	from   *Aggregate // the sealed aggregate whose members these are; nil for a slot's
}

// maxExactAggregate bounds the distinct visitors an Aggregate counts exactly.
const maxExactAggregate = 64 << 10

// AddSlot folds s into a. s must not change while a is in use.
func (a *Aggregate) AddSlot(s *Slot) error {
	a.Add(&s.Counters)
	a.ErrorCodes.Add(s.ErrorCodes)
	if s.Visitors == nil {
		return nil
	}
	return a.merge(run{hashes: s.Visitors.exact}, s.Visitors.sketch, false)
}

// AddAggregate folds o into a. o is only read, so one o may be added to many
// aggregates at once; a refers to o's exact lists, which must not change
// while a is in use (a sealed o never changes).
func (a *Aggregate) AddAggregate(o *Aggregate) error {
	a.Add(&o.Counters)
	a.ErrorCodes.Add(o.ErrorCodes)
	if o.sealed {
		return a.merge(run{hashes: o.hashes, from: o}, o.sketch, o.dense)
	}
	if err := a.merge(run{}, o.sketch, o.dense); err != nil {
		return err
	}
	for _, r := range o.runs {
		if err := a.merge(r, nil, false); err != nil {
			return err
		}
	}
	return nil
}

// merge adds an exact list and a sketch (either may be empty; sk dense when
// skDense). Neither is written.
func (a *Aggregate) merge(r run, sk *hyperloglog.Sketch, skDense bool) error {
	if sk == nil && len(r.hashes) == 0 {
		return nil
	}
	a.counted = false
	if sk != nil {
		if a.sketch == nil {
			a.sketch, a.dense = sk.Clone(), skDense
		} else if err := a.sketch.Merge(sk); err != nil {
			return fmt.Errorf("rollup: merge sketch: %w", err)
		} else {
			a.dense = a.dense || skDense // merging a dense sketch makes a sparse one dense
		}
	}
	switch {
	case len(r.hashes) == 0:
	case a.dense:
		// A register takes the maximum: no list to keep.
		for _, h := range r.hashes {
			a.sketch.InsertHash(h)
		}
	default:
		a.runs = append(a.runs, r)
	}
	return nil
}

// settle counts the exact lists when there is no sketch and they hold at
// most maxExactAggregate visitors; else it moves them into the sketch,
// starting a dense one if there is none.
func (a *Aggregate) settle() {
	if a.sketch == nil {
		n := unionLen(a.runs)
		if n <= maxExactAggregate {
			a.unique, a.counted = uint64(n), true
			return
		}
		// A sparse sketch turns dense past 16,384 members anyway, into the
		// same registers; starting dense skips the sparse list's re-sorting.
		a.sketch, a.dense = hyperloglog.NewNoSparse(), true
	}
	if len(a.runs) == 0 {
		return
	}
	if a.dense {
		insertRuns(a.sketch, a.runs)
		a.runs = nil
		return
	}
	// A sparse sketch re-sorts its whole list every m/100 (163) inserts, so
	// inserting n members one by one costs O(n²): a sealed aggregate's list
	// goes in as its sparse form, the rest as one sparse sketch.
	var rest []run
	for _, r := range a.runs {
		if r.from != nil && len(r.hashes) > sparseBatch {
			_ = a.sketch.Merge(r.from.sparseForm()) // cannot fail: both are precision 14
		} else {
			rest = append(rest, r)
		}
	}
	a.runs = nil
	switch n := unionLen(rest); {
	case n <= sparseBatch:
		insertRuns(a.sketch, rest)
	case n > 1<<14:
		// Past 16,384 members (the sketch's m) the union is dense anyway.
		batch := hyperloglog.NewNoSparse()
		insertRuns(batch, rest)
		_ = a.sketch.Merge(batch)
		a.dense = true
	default:
		_ = a.sketch.Merge(sparseSketchOf(unionOf(rest)))
	}
}

// insertRuns inserts the members of runs into sk one by one.
func insertRuns(sk *hyperloglog.Sketch, runs []run) {
	for _, r := range runs {
		for _, h := range r.hashes {
			sk.InsertHash(h)
		}
	}
}

// sparseBatch is how many members go into a sparse sketch one by one; more
// are first built into a sketch of their own by sparseSketchOf.
const sparseBatch = 128

// sparseSketchOf returns a sparse sketch of hashes, built by merging halves:
// each merge of two sparse sketches re-sorts the list once, so building it
// costs O(n log n) rather than the O(n²) of inserting one by one.
func sparseSketchOf(hashes []uint64) *hyperloglog.Sketch {
	if len(hashes) <= sparseBatch {
		sk := hyperloglog.New14()
		for _, h := range hashes {
			sk.InsertHash(h)
		}
		return sk
	}
	mid := len(hashes) / 2
	sk := sparseSketchOf(hashes[:mid])
	_ = sk.Merge(sparseSketchOf(hashes[mid:])) // cannot fail: both are precision 14
	return sk
}

// sparseForm returns the members of a sealed exact aggregate as a sketch
// (sparse unless they are too many), built on the first call: a sparse
// sketch merges another sketch at about the cost of sorting its entries, but
// takes a list of hashes only by inserting them. Safe for concurrent use: concurrent first
// calls may each build one, and one is kept.
func (a *Aggregate) sparseForm() *hyperloglog.Sketch {
	if sk := a.sparse.Load(); sk != nil {
		return sk
	}
	sk := sparseSketchOf(a.hashes)
	sk.Estimate() // merges the insert buffer, so that readers only read
	// A clone holds exactly its entries: the merges left spare capacity.
	sk = sk.Clone()
	if a.sparse.CompareAndSwap(nil, sk) {
		return sk
	}
	return a.sparse.Load()
}

// unionLen returns the number of distinct members of sorted, distinct
// lists, without building their union when there are few lists.
func unionLen(runs []run) int {
	switch len(runs) {
	case 0:
		return 0
	case 1:
		return len(runs[0].hashes)
	}
	if len(runs) > 8 {
		return len(unionOf(runs))
	}
	var heads [8][]uint64
	k := 0
	for _, r := range runs {
		if len(r.hashes) > 0 {
			heads[k] = r.hashes
			k++
		}
	}
	n := 0
	for k > 0 {
		m := heads[0][0]
		for _, h := range heads[1:k] {
			m = min(m, h[0])
		}
		n++
		for i := 0; i < k; {
			if heads[i][0] == m {
				heads[i] = heads[i][1:]
				if len(heads[i]) == 0 {
					k--
					heads[i] = heads[k]
					continue
				}
			}
			i++
		}
	}
	return n
}

// unionOf returns the sorted union of sorted, distinct lists, merging them
// in pairs. The result may share memory with a list when there is one.
func unionOf(runs []run) []uint64 {
	lists := make([][]uint64, 0, len(runs))
	for _, r := range runs {
		if len(r.hashes) > 0 {
			lists = append(lists, r.hashes)
		}
	}
	if len(lists) == 0 {
		return nil
	}
	for len(lists) > 1 {
		next := lists[:0]
		for i := 0; i < len(lists); i += 2 {
			if i+1 == len(lists) {
				next = append(next, lists[i])
			} else {
				next = append(next, mergeSorted(lists[i], lists[i+1]))
			}
		}
		lists = next
	}
	return lists[0]
}

// UniqueVisitors counts the distinct visitors across everything added: exactly
// while only exact sets were added (up to 65,536 visitors), estimated beyond.
// The count is kept until more visitors are added: a dense sketch's estimate
// reads all its 16,384 registers.
func (a *Aggregate) UniqueVisitors() uint64 {
	if a.counted {
		return a.unique
	}
	a.settle()
	if a.sketch != nil {
		a.unique = estimate(a.sketch, true)
	}
	a.counted = true
	return a.unique
}

// Seal settles a for sharing: its members one sorted, distinct list or in
// the sketch, the sketch's insert buffer merged, so that AddAggregate only
// reads it and adding it costs the least. It returns an estimate of the
// bytes a holds. Nothing may be added to a sealed aggregate.
func (a *Aggregate) Seal() (weight int) {
	if a.sketch == nil {
		// Built once, the union is then counted by its length (it is a
		// slot's own list when there is one).
		a.runs = []run{{hashes: unionOf(a.runs)}}
	}
	a.UniqueVisitors() // settles, and merges a sparse sketch's insert buffer
	if a.sketch == nil {
		a.hashes = slices.Clip(a.runs[0].hashes)
		a.runs = nil
	}
	a.sealed = true
	// An exact list may get a sparse form too (about 2 bytes a member).
	weight = 128 + 8*len(a.hashes) + 16*len(a.ErrorCodes)
	if len(a.hashes) > sparseBatch {
		weight += 4 * len(a.hashes)
	}
	if a.sketch != nil {
		// A clone holds exactly its entries (merges leave spare capacity),
		// so that the encoding's length is about its size in memory; the
		// encoding also says whether it is dense.
		a.sketch = a.sketch.Clone()
		b, err := a.sketch.MarshalBinary()
		if err != nil || len(b) < 4 {
			return weight + 1<<14
		}
		a.dense = b[3] == 0 // axiomhq/hyperloglog: version, p, b, then 1 if sparse
		weight += len(b) + 64
	}
	return weight
}
