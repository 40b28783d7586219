package rollup

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
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
	// Errors counts VAST error events (their codes are in the slot's
	// ErrorCodes).
	Errors uint64 `json:"errors"`
	// Servings counts the impressions that came through a VAST serving
	// (one per serving); ServingClicks the clicks that did.
	Servings      uint64 `json:"servings"`
	ServingClicks uint64 `json:"serving_clicks"`
	// Invalid counts the events that are not valid traffic, which count in
	// nothing else (their visitors included); InvalidImpressions and
	// InvalidClicks those of them that are impressions and clicks, and the
	// Invalid<Reason> counters split it by reason (event.InvalidReasons).
	// Values of codec version 3 and before knew the signature reason only,
	// and not the types.
	Invalid                       uint64 `json:"invalid"`
	InvalidImpressions            uint64 `json:"invalid_impressions"`
	InvalidClicks                 uint64 `json:"invalid_clicks"`
	InvalidSignature              uint64 `json:"invalid_signature"`
	InvalidPlayback               uint64 `json:"invalid_playback"`
	InvalidBot                    uint64 `json:"invalid_bot"`
	InvalidClickWithoutImpression uint64 `json:"invalid_click_without_impression"`
	InvalidDuplicateClick         uint64 `json:"invalid_duplicate_click"`
	InvalidRate                   uint64 `json:"invalid_rate"`
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
	c.Errors += o.Errors
	c.Servings += o.Servings
	c.ServingClicks += o.ServingClicks
	c.Invalid += o.Invalid
	c.InvalidImpressions += o.InvalidImpressions
	c.InvalidClicks += o.InvalidClicks
	c.InvalidSignature += o.InvalidSignature
	c.InvalidPlayback += o.InvalidPlayback
	c.InvalidBot += o.InvalidBot
	c.InvalidClickWithoutImpression += o.InvalidClickWithoutImpression
	c.InvalidDuplicateClick += o.InvalidDuplicateClick
	c.InvalidRate += o.InvalidRate
}

// fields lists the counters in their encoding's order; codec version 2 has
// the first v2Fields of them, version 3 the first v3Fields.
func (c *Counters) fields() [numFields]*uint64 {
	return [numFields]*uint64{
		&c.Impressions, &c.Clicks, &c.Starts, &c.FirstQuartiles, &c.Midpoints,
		&c.ThirdQuartiles, &c.Completes, &c.Skips, &c.PlaybackMillis, &c.PlaybackCount,
		&c.Errors, &c.Servings, &c.ServingClicks, &c.Invalid,
		&c.InvalidImpressions, &c.InvalidClicks, &c.InvalidSignature, &c.InvalidPlayback,
		&c.InvalidBot, &c.InvalidClickWithoutImpression, &c.InvalidDuplicateClick, &c.InvalidRate,
	}
}

const (
	numFields = 22
	v3Fields  = 14
	v2Fields  = 10
)

// Slot is one time slot of a rollup: counters, the VAST error codes of its
// error events, and the set of its visitors.
type Slot struct {
	Counters
	// ErrorCodes counts the slot's error events by VAST error code; it sums
	// to Errors.
	ErrorCodes CodeCounts
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

// New returns an empty rollup.
func New() *Rollup { return &Rollup{Slots: make(map[int]*Slot)} }

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
// sets exactly (see ExactVisitors); 3 adds the VAST counters and the error
// codes; 4 the invalid counters by type and reason. Versions 1 to 3 still
// decode.
const (
	rollupCodecV1      = 1
	rollupCodecV3      = 3
	rollupCodecVersion = 4
)

// ErrCorrupt is returned when a KV value cannot be decoded.
var ErrCorrupt = errors.New("rollup: corrupt rollup value")

// MarshalBinary encodes the rollup: a version byte, MaxSeq, then each slot in
// index order with its counters as uvarints, its error codes (a count, then
// code and count pairs) and its visitor set.
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
		buf = s.ErrorCodes.appendBinary(buf)
		var err error
		if buf, err = s.Visitors.appendBinary(buf); err != nil {
			return nil, err
		}
	}
	return buf, nil
}

// maxSlots bounds the slot index so a corrupt value cannot allocate wildly.
const maxSlots = 1 << 10

// UnmarshalBinary decodes what MarshalBinary produced. Errors wrap ErrCorrupt.
func (r *Rollup) UnmarshalBinary(data []byte) error {
	if len(data) == 0 || data[0] < rollupCodecV1 || data[0] > rollupCodecVersion {
		return fmt.Errorf("%w: unknown version", ErrCorrupt)
	}
	version := data[0]
	v1 := version == rollupCodecV1
	nFields := numFields
	switch {
	case version < rollupCodecV3:
		nFields = v2Fields
	case version == rollupCodecV3:
		nFields = v3Fields
	}
	d := decoder{buf: data[1:]}
	r.MaxSeq = d.uvarint()
	n := d.uvarint()
	if d.err != nil || n > maxSlots {
		return fmt.Errorf("%w: bad header", ErrCorrupt)
	}
	r.Slots = make(map[int]*Slot, n)
	for range n {
		i := d.uvarint()
		if i >= maxSlots {
			return fmt.Errorf("%w: slot index %d", ErrCorrupt, i)
		}
		s := &Slot{}
		fields := s.fields()
		for _, f := range fields[:nFields] {
			*f = d.uvarint()
		}
		if version >= rollupCodecV3 {
			s.ErrorCodes = d.codes()
		}
		if version == rollupCodecV3 {
			s.InvalidSignature = s.Invalid // the only reason version 3 knew
		}
		if v1 {
			skLen := d.uvarint()
			if d.err != nil || skLen > uint64(len(d.buf)) {
				return fmt.Errorf("%w: truncated slot %d", ErrCorrupt, i)
			}
			if skLen > 0 {
				s.Visitors = d.sketch(d.buf[:skLen])
				d.buf = d.buf[skLen:]
			}
		} else {
			s.Visitors = d.visitors()
		}
		if d.err != nil {
			return fmt.Errorf("%w: slot %d: %w", ErrCorrupt, i, d.err)
		}
		if _, dup := r.Slots[int(i)]; dup {
			return fmt.Errorf("%w: slot %d appears twice", ErrCorrupt, i)
		}
		r.Slots[int(i)] = s
	}
	if d.err != nil {
		return fmt.Errorf("%w: %w", ErrCorrupt, d.err)
	}
	if len(d.buf) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", ErrCorrupt, len(d.buf))
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
