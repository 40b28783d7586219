package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

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
// concurrent use.
//
// While every set added is an exact list, the members are gathered unsorted in
// one buffer and sorted once when counted: a 30-day window merges a couple of
// hundred slots, and merging sorted lists pairwise would copy the growing union
// at every step. The count stays exact up to maxExactAggregate distinct
// visitors (beyond ExactVisitors, as a union of exact sets is exact too); past
// that, or once a sketch is added, it is a HyperLogLog estimate.
type Aggregate struct {
	Counters
	hashes []uint64 // members of exact sets, unsorted, with repeats
	sorted int      // hashes[:sorted] is sorted and distinct
	sketch *hyperloglog.Sketch
}

// maxExactAggregate bounds the distinct members an Aggregate keeps (512 KiB).
const maxExactAggregate = 64 << 10

// AddSlot folds s into a.
func (a *Aggregate) AddSlot(s *Slot) error {
	a.Add(&s.Counters)
	if s.Visitors == nil {
		return nil
	}
	return a.merge(s.Visitors.exact, s.Visitors.sketch)
}

// AddAggregate folds o into a; o is not changed.
func (a *Aggregate) AddAggregate(o *Aggregate) error {
	a.Add(&o.Counters)
	return a.merge(o.hashes, o.sketch)
}

// merge adds the members of an exact list or a sketch (one of them set).
func (a *Aggregate) merge(exact []uint64, sk *hyperloglog.Sketch) error {
	switch {
	case a.sketch == nil && sk == nil:
		a.hashes = append(a.hashes, exact...)
		if len(a.hashes) > 2*maxExactAggregate {
			a.compact()
		}
		return nil
	case a.sketch == nil:
		a.toSketch(sk.Clone())
		return nil
	case sk == nil:
		for _, h := range exact {
			a.sketch.InsertHash(h)
		}
		return nil
	default:
		if err := a.sketch.Merge(sk); err != nil {
			return fmt.Errorf("store: merge sketch: %w", err)
		}
		return nil
	}
}

// compact sorts and dedupes the gathered members, and moves them to a sketch
// when there are too many to keep.
func (a *Aggregate) compact() {
	if a.sorted == len(a.hashes) {
		return
	}
	slices.Sort(a.hashes)
	a.hashes = slices.Compact(a.hashes)
	a.sorted = len(a.hashes)
	if len(a.hashes) > maxExactAggregate {
		a.toSketch(hyperloglog.New14())
	}
}

// toSketch makes sk hold a's members and become a's set.
func (a *Aggregate) toSketch(sk *hyperloglog.Sketch) {
	for _, h := range a.hashes {
		sk.InsertHash(h)
	}
	a.sketch, a.hashes, a.sorted = sk, nil, 0
}

// UniqueVisitors counts the distinct visitors across everything added: exactly
// while only exact sets were added (up to 65,536 visitors), estimated beyond.
func (a *Aggregate) UniqueVisitors() uint64 {
	if a.sketch != nil {
		return a.sketch.Clone().Estimate()
	}
	a.compact()
	if a.sketch != nil {
		return a.sketch.Clone().Estimate()
	}
	return uint64(len(a.hashes))
}
