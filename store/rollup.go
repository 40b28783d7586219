package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"

	"github.com/axiomhq/hyperloglog"
)

// Counters are the additive measures of one rollup slot. Playback time is kept
// in whole milliseconds so sums are exact whatever the order of addition.
type Counters struct {
	Impressions    uint64 `json:"impressions"`
	Clicks         uint64 `json:"clicks"`
	Starts         uint64 `json:"starts"`
	FirstQuartiles uint64 `json:"first_quartiles"`
	Midpoints      uint64 `json:"midpoints"`
	ThirdQuartiles uint64 `json:"third_quartiles"`
	Completes      uint64 `json:"completes"`
	Skips          uint64 `json:"skips"`
	// PlaybackMillis sums the playback position of clicks; PlaybackCount counts them.
	PlaybackMillis uint64 `json:"playback_millis"`
	PlaybackCount  uint64 `json:"playback_count"`
}

// Add adds o to c.
func (c *Counters) Add(o *Counters) {
	c.Impressions += o.Impressions
	c.Clicks += o.Clicks
	c.Starts += o.Starts
	c.FirstQuartiles += o.FirstQuartiles
	c.Midpoints += o.Midpoints
	c.ThirdQuartiles += o.ThirdQuartiles
	c.Completes += o.Completes
	c.Skips += o.Skips
	c.PlaybackMillis += o.PlaybackMillis
	c.PlaybackCount += o.PlaybackCount
}

func (c *Counters) fields() [10]*uint64 {
	return [10]*uint64{
		&c.Impressions, &c.Clicks, &c.Starts, &c.FirstQuartiles, &c.Midpoints,
		&c.ThirdQuartiles, &c.Completes, &c.Skips, &c.PlaybackMillis, &c.PlaybackCount,
	}
}

// Slot is one time slot of a rollup: counters and the sketch of its visitors.
type Slot struct {
	Counters
	// Visitors is nil until a visitor is seen.
	Visitors *Visitors
}

// AddVisitor records a visitor hash in the slot's set.
func (s *Slot) AddVisitor(hash uint64) {
	if s.Visitors == nil {
		s.Visitors = &Visitors{}
	}
	s.Visitors.Insert(hash)
}

// Rollup is one KV value: the slots of one ad over one key period (the 60
// minutes of an hour, the 24 hours of a day, the days of a month), and the
// highest stream sequence folded into it. A Rollup is not safe for concurrent use.
type Rollup struct {
	Slots map[int]*Slot
	// MaxSeq is the highest stream sequence folded in. The writer reads events in
	// stream order, so an event at or below MaxSeq is already counted here.
	MaxSeq uint64
}

// NewRollup returns an empty rollup.
func NewRollup() *Rollup { return &Rollup{Slots: make(map[int]*Slot)} }

// Slot returns slot i, creating it when absent.
func (r *Rollup) Slot(i int) *Slot {
	s, ok := r.Slots[i]
	if !ok {
		s = &Slot{}
		r.Slots[i] = s
	}
	return s
}

// Codec versions: 1 stored every visitor set as a HyperLogLog; 2 stores small
// sets exactly (see ExactVisitors). Version 1 values still decode.
const (
	rollupCodecV1      = 1
	rollupCodecVersion = 2
)

// ErrCorruptRollup is returned when a KV value cannot be decoded.
var ErrCorruptRollup = errors.New("store: corrupt rollup value")

// MarshalBinary encodes the rollup: a version byte, MaxSeq, then each slot in
// index order with its ten counters as uvarints and its visitor set.
func (r *Rollup) MarshalBinary() ([]byte, error) {
	idx := make([]int, 0, len(r.Slots))
	for i := range r.Slots {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	buf := make([]byte, 0, 16+len(idx)*24)
	buf = append(buf, rollupCodecVersion)
	buf = binary.AppendUvarint(buf, r.MaxSeq)
	buf = binary.AppendUvarint(buf, uint64(len(idx)))
	for _, i := range idx {
		s := r.Slots[i]
		buf = binary.AppendUvarint(buf, uint64(i))
		for _, f := range s.fields() {
			buf = binary.AppendUvarint(buf, *f)
		}
		var err error
		if buf, err = s.Visitors.appendBinary(buf); err != nil {
			return nil, err
		}
	}
	return buf, nil
}

// maxSlots bounds the slot index so a corrupt value cannot allocate wildly.
const maxSlots = 1 << 10

// UnmarshalBinary decodes what MarshalBinary produced. Errors wrap ErrCorruptRollup.
func (r *Rollup) UnmarshalBinary(data []byte) error {
	if len(data) == 0 || (data[0] != rollupCodecVersion && data[0] != rollupCodecV1) {
		return fmt.Errorf("%w: unknown version", ErrCorruptRollup)
	}
	v1 := data[0] == rollupCodecV1
	d := decoder{buf: data[1:]}
	r.MaxSeq = d.uvarint()
	n := d.uvarint()
	if d.err != nil || n > maxSlots {
		return fmt.Errorf("%w: bad header", ErrCorruptRollup)
	}
	r.Slots = make(map[int]*Slot, n)
	for range n {
		i := d.uvarint()
		if i >= maxSlots {
			return fmt.Errorf("%w: slot index %d", ErrCorruptRollup, i)
		}
		s := &Slot{}
		for _, f := range s.fields() {
			*f = d.uvarint()
		}
		if v1 {
			skLen := d.uvarint()
			if d.err != nil || skLen > uint64(len(d.buf)) {
				return fmt.Errorf("%w: truncated slot %d", ErrCorruptRollup, i)
			}
			if skLen > 0 {
				s.Visitors = d.sketch(d.buf[:skLen])
				d.buf = d.buf[skLen:]
			}
		} else {
			s.Visitors = d.visitors()
		}
		if d.err != nil {
			return fmt.Errorf("%w: slot %d: %w", ErrCorruptRollup, i, d.err)
		}
		if _, dup := r.Slots[int(i)]; dup {
			return fmt.Errorf("%w: slot %d appears twice", ErrCorruptRollup, i)
		}
		r.Slots[int(i)] = s
	}
	if d.err != nil {
		return fmt.Errorf("%w: %w", ErrCorruptRollup, d.err)
	}
	if len(d.buf) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", ErrCorruptRollup, len(d.buf))
	}
	return nil
}

type decoder struct {
	buf []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.buf)
	if n <= 0 {
		d.err = errors.New("bad uvarint")
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

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
	runs   []run // exact lists added and not yet in sketch
	sketch *hyperloglog.Sketch
	// dense is true when sketch is known to be dense (registers, not a
	// sparse list). False when unknown.
	dense   bool
	counted bool // unique holds the count of everything added so far
	unique  uint64

	// Of a sealed aggregate only (see seal): its exact members, sorted and
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
			return fmt.Errorf("store: merge sketch: %w", err)
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
		a.unique = a.sketch.Estimate()
	}
	a.counted = true
	return a.unique
}

// seal settles a for sharing: its members one sorted, distinct list or in
// the sketch, the sketch's insert buffer merged, so that AddAggregate only
// reads it and adding it costs the least. It returns an estimate of the
// bytes a holds. Nothing may be added to a sealed aggregate.
func (a *Aggregate) seal() (weight int) {
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
	weight = 128 + 8*len(a.hashes)
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
