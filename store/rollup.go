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
	// Visitors is nil until a visitor is seen. It is a precision-14 sparse
	// HyperLogLog: exact-ish for small sets, about 0.8% error for large ones.
	Visitors *hyperloglog.Sketch
}

// AddVisitor records a visitor hash in the slot's sketch.
func (s *Slot) AddVisitor(hash uint64) {
	if s.Visitors == nil {
		s.Visitors = hyperloglog.New14()
	}
	s.Visitors.InsertHash(hash)
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

const rollupCodecVersion = 1

// ErrCorruptRollup is returned when a KV value cannot be decoded.
var ErrCorruptRollup = errors.New("store: corrupt rollup value")

// MarshalBinary encodes the rollup: a version byte, MaxSeq, then each slot in
// index order with its ten counters and its sketch, all as uvarints.
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
		if s.Visitors == nil {
			buf = binary.AppendUvarint(buf, 0)
			continue
		}
		sk, err := s.Visitors.MarshalBinary()
		if err != nil {
			return nil, fmt.Errorf("store: marshal sketch: %w", err)
		}
		buf = binary.AppendUvarint(buf, uint64(len(sk)))
		buf = append(buf, sk...)
	}
	return buf, nil
}

// maxSlots bounds the slot index so a corrupt value cannot allocate wildly.
const maxSlots = 1 << 10

// UnmarshalBinary decodes what MarshalBinary produced. Errors wrap ErrCorruptRollup.
func (r *Rollup) UnmarshalBinary(data []byte) error {
	if len(data) == 0 || data[0] != rollupCodecVersion {
		return fmt.Errorf("%w: unknown version", ErrCorruptRollup)
	}
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
		skLen := d.uvarint()
		if d.err != nil || skLen > uint64(len(d.buf)) {
			return fmt.Errorf("%w: truncated slot %d", ErrCorruptRollup, i)
		}
		if skLen > 0 {
			s.Visitors = hyperloglog.New14()
			if err := s.Visitors.UnmarshalBinary(d.buf[:skLen]); err != nil {
				return fmt.Errorf("%w: sketch of slot %d: %w", ErrCorruptRollup, i, err)
			}
			d.buf = d.buf[skLen:]
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

// Aggregate is the sum of any number of slots: counters add, sketches merge.
// The zero value is ready to use.
type Aggregate struct {
	Counters
	visitors *hyperloglog.Sketch
}

// AddSlot folds s into a.
func (a *Aggregate) AddSlot(s *Slot) error {
	a.Add(&s.Counters)
	return a.mergeSketch(s.Visitors)
}

// AddAggregate folds o into a.
func (a *Aggregate) AddAggregate(o *Aggregate) error {
	a.Add(&o.Counters)
	return a.mergeSketch(o.visitors)
}

func (a *Aggregate) mergeSketch(sk *hyperloglog.Sketch) error {
	if sk == nil {
		return nil
	}
	if a.visitors == nil {
		a.visitors = sk.Clone()
		return nil
	}
	if err := a.visitors.Merge(sk); err != nil {
		return fmt.Errorf("store: merge sketch: %w", err)
	}
	return nil
}

// UniqueVisitors estimates the distinct visitors across everything added.
func (a *Aggregate) UniqueVisitors() uint64 {
	if a.visitors == nil {
		return 0
	}
	return a.visitors.Estimate()
}
