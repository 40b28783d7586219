package rollup

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/axiomhq/hyperloglog"
)

// ExactVisitors is the largest number of distinct visitors a Visitors set keeps
// exactly. Above it the set becomes a precision-14 HyperLogLog (about 0.8%
// standard error).
//
// A sparse HyperLogLog alone is not exact for small sets: it keeps 25 bits of
// each hash, so two of a few hundred visitors share an index about once in a
// thousand sets, and an ad with 277 visitors reads 276. Small sets are where a
// reader checks by hand, so they keep the full 64-bit hashes, whose collisions
// are negligible (about 3e-14 at 1,024 visitors).
const ExactVisitors = 1024

// Visitors is a set of 64-bit visitor hashes: exact while it holds at most
// ExactVisitors of them, a HyperLogLog sketch (axiomhq/hyperloglog, precision 14,
// sparse) once it outgrows that. The zero value is an empty set. A Visitors is
// not safe for concurrent use.
type Visitors struct {
	exact  []uint64 // sorted and distinct; unused once sketch is set
	sketch *hyperloglog.Sketch
}

// Insert adds hash to the set.
func (v *Visitors) Insert(hash uint64) {
	if v.sketch != nil {
		v.sketch.InsertHash(hash)
		return
	}
	i, found := slices.BinarySearch(v.exact, hash)
	if found {
		return
	}
	if len(v.exact) == ExactVisitors {
		v.toSketch()
		v.sketch.InsertHash(hash)
		return
	}
	v.exact = slices.Insert(v.exact, i, hash)
}

// toSketch moves the exact hashes into a new sketch.
func (v *Visitors) toSketch() {
	v.sketch = hyperloglog.New14()
	for _, h := range v.exact {
		v.sketch.InsertHash(h)
	}
	v.exact = nil
}

// Merge adds every member of o to v; o is not changed.
func (v *Visitors) Merge(o *Visitors) error {
	switch {
	case o == nil:
		return nil
	case v.sketch == nil && o.sketch == nil:
		if len(v.exact) == 0 {
			v.exact = slices.Clone(o.exact)
			return nil
		}
		merged := mergeSorted(v.exact, o.exact)
		if len(merged) <= ExactVisitors {
			v.exact = merged
			return nil
		}
		v.exact = merged
		v.toSketch()
		return nil
	case o.sketch == nil:
		for _, h := range o.exact {
			v.sketch.InsertHash(h)
		}
		return nil
	default:
		if v.sketch == nil {
			v.toSketch()
		}
		if err := v.sketch.Merge(o.sketch); err != nil {
			return fmt.Errorf("rollup: merge sketch: %w", err)
		}
		return nil
	}
}

// mergeSorted returns the sorted union of two sorted, distinct lists.
func mergeSorted(a, b []uint64) []uint64 {
	out := make([]uint64, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch {
		case a[i] < b[j]:
			out = append(out, a[i])
			i++
		case a[i] > b[j]:
			out = append(out, b[j])
			j++
		default:
			out = append(out, a[i])
			i++
			j++
		}
	}
	out = append(out, a[i:]...)
	return append(out, b[j:]...)
}

// Count returns the number of distinct visitors: exact up to ExactVisitors,
// the sketch's estimate above.
func (v *Visitors) Count() uint64 {
	if v == nil {
		return 0
	}
	if v.sketch == nil {
		return uint64(len(v.exact))
	}
	// estimate leaves the sketch as it is, so Count stays a read for callers
	// that share v between readers.
	return estimate(v.sketch, false)
}

// Full reports whether the set holds ExactVisitors hashes or more: one more
// visitor makes an exact set a sketch, and a sketch weighs its full size.
func (v *Visitors) Full() bool {
	return v != nil && (v.sketch != nil || len(v.exact) >= ExactVisitors)
}

// Clone returns an independent copy.
func (v *Visitors) Clone() *Visitors {
	if v.sketch != nil {
		return &Visitors{sketch: v.sketch.Clone()}
	}
	return &Visitors{exact: slices.Clone(v.exact)}
}

// Encoding of a set inside a rollup slot: a kind, then its body.
const (
	visitorsNone   = 0 // no visitor seen
	visitorsExact  = 1 // uvarint n, then n big-endian uint64 hashes in ascending order
	visitorsSketch = 2 // uvarint length, then the sketch's MarshalBinary
)

// appendBinary appends the encoding of v (nil allowed) to buf.
func (v *Visitors) appendBinary(buf []byte) ([]byte, error) {
	switch {
	case v == nil || (v.sketch == nil && len(v.exact) == 0):
		return append(buf, visitorsNone), nil
	case v.sketch == nil:
		buf = append(buf, visitorsExact)
		buf = binary.AppendUvarint(buf, uint64(len(v.exact)))
		for _, h := range v.exact {
			buf = binary.BigEndian.AppendUint64(buf, h)
		}
		return buf, nil
	default:
		sk, err := v.sketch.MarshalBinary()
		if err != nil {
			return nil, fmt.Errorf("rollup: marshal sketch: %w", err)
		}
		buf = append(buf, visitorsSketch)
		buf = binary.AppendUvarint(buf, uint64(len(sk)))
		return append(buf, sk...), nil
	}
}

// visitors reads what appendBinary wrote: nil for an empty set. A failure sets
// d.err (the caller wraps it in ErrCorrupt) and returns nil.
func (d *decoder) visitors() *Visitors {
	if d.err != nil {
		return nil
	}
	if len(d.buf) == 0 {
		d.err = errors.New("missing visitors")
		return nil
	}
	kind := d.buf[0]
	d.buf = d.buf[1:]
	switch kind {
	case visitorsNone:
		return nil
	case visitorsExact:
		n := d.uvarint()
		if d.err != nil || n == 0 || n > ExactVisitors || n*8 > uint64(len(d.buf)) {
			d.err = errors.New("bad exact visitor list")
			return nil
		}
		v := &Visitors{exact: make([]uint64, n)}
		for i := range v.exact {
			v.exact[i] = binary.BigEndian.Uint64(d.buf[i*8:])
			if i > 0 && v.exact[i] <= v.exact[i-1] {
				d.err = errors.New("visitor hashes out of order")
				return nil
			}
		}
		d.buf = d.buf[n*8:]
		return v
	case visitorsSketch:
		n := d.uvarint()
		if d.err != nil || n == 0 || n > uint64(len(d.buf)) {
			d.err = errors.New("bad sketch length")
			return nil
		}
		v := d.sketch(d.buf[:n])
		d.buf = d.buf[n:]
		return v
	default:
		d.err = fmt.Errorf("unknown visitors kind %d", kind)
		return nil
	}
}

// sketch decodes a HyperLogLog encoding; a failure sets d.err.
func (d *decoder) sketch(b []byte) *Visitors {
	sk := hyperloglog.New14()
	if err := sk.UnmarshalBinary(b); err != nil {
		d.err = fmt.Errorf("sketch: %w", err)
		return nil
	}
	// Every set is precision 14, and sets of other precisions do not merge:
	// refuse one here rather than lose visitors when counting. Byte 1 of
	// the encoding (version, p, b, sparse) is the precision.
	if b[1] != 14 {
		d.err = fmt.Errorf("sketch of precision %d, want 14", b[1])
		return nil
	}
	return &Visitors{sketch: sk}
}
