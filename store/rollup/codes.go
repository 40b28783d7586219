package rollup

import (
	"encoding/binary"
	"errors"
	"slices"
)

// CodeCount is how many events of one slot or aggregate carried Code.
type CodeCount struct {
	Code uint32
	N    uint64
}

// CodeCounts counts events by a numeric code (VAST error codes; 0 for "none
// given"): sorted by code, each code once, no zero counts. A CodeCounts
// belongs to the slot or aggregate holding it: Add copies what it adds, so
// two never share an array.
type CodeCounts []CodeCount

// Inc counts one event of code.
func (cc *CodeCounts) Inc(code uint32) {
	i, found := slices.BinarySearchFunc(*cc, code, cmpCode)
	if found {
		(*cc)[i].N++
		return
	}
	*cc = slices.Insert(*cc, i, CodeCount{Code: code, N: 1})
}

// Add adds o's counts to cc. o is only read.
func (cc *CodeCounts) Add(o CodeCounts) {
	switch {
	case len(o) == 0:
		return
	case len(*cc) == 0:
		*cc = slices.Clone(o)
		return
	}
	in := true
	for _, c := range o {
		if _, found := slices.BinarySearchFunc(*cc, c.Code, cmpCode); !found {
			in = false
			break
		}
	}
	if !in {
		merged := make(CodeCounts, 0, len(*cc)+len(o))
		merged = append(merged, *cc...)
		for _, c := range o {
			if _, found := slices.BinarySearchFunc(*cc, c.Code, cmpCode); !found {
				merged = append(merged, CodeCount{Code: c.Code})
			}
		}
		slices.SortFunc(merged, func(a, b CodeCount) int { return cmpCode(a, b.Code) })
		*cc = merged
	}
	for _, c := range o {
		i, _ := slices.BinarySearchFunc(*cc, c.Code, cmpCode)
		(*cc)[i].N += c.N
	}
}

// Total is the sum of the counts.
func (cc CodeCounts) Total() uint64 {
	var n uint64
	for _, c := range cc {
		n += c.N
	}
	return n
}

func cmpCode(c CodeCount, code uint32) int {
	switch {
	case c.Code < code:
		return -1
	case c.Code > code:
		return 1
	}
	return 0
}

// maxCodes bounds the codes of one slot so a corrupt value cannot allocate
// wildly: VAST defines about forty error codes.
const maxCodes = 1 << 10

func (cc CodeCounts) appendBinary(buf []byte) []byte {
	buf = binary.AppendUvarint(buf, uint64(len(cc)))
	for _, c := range cc {
		buf = binary.AppendUvarint(buf, uint64(c.Code))
		buf = binary.AppendUvarint(buf, c.N)
	}
	return buf
}

func (d *decoder) codes() CodeCounts {
	n := d.uvarint()
	if d.err != nil || n == 0 {
		return nil
	}
	if n > maxCodes {
		d.err = errors.New("too many codes")
		return nil
	}
	cc := make(CodeCounts, n)
	for i := range cc {
		code, count := d.uvarint(), d.uvarint()
		if d.err != nil {
			return nil
		}
		if code > 1<<32-1 || count == 0 || (i > 0 && uint32(code) <= cc[i-1].Code) {
			d.err = errors.New("codes out of order")
			return nil
		}
		cc[i] = CodeCount{Code: uint32(code), N: count}
	}
	return cc
}
