package spool

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
)

// Record format. A segment file is records back to back, with no file header,
// so that a crash can only ever damage the tail and a reader can start anywhere:
//
//	offset  size  field
//	0       4     magic: 0xFF 'S' 'P' 'L'
//	4       4     payload length n, little-endian uint32, at most 1 MiB
//	8       4     CRC-32C (Castagnoli) of the payload, little-endian uint32
//	12      n     payload
//
// The magic starts with 0xFF because that byte never occurs in UTF-8, so a JSON
// event payload cannot contain a false magic and resynchronisation after damage
// lands on real record starts. The length is not covered by the CRC: a damaged
// length either points past the end of the data or frames bytes whose CRC does
// not match, and both are caught.
const (
	headerSize = 12
	// maxPayload bounds one record so that a damaged length field cannot make a
	// reader frame (and checksum) an absurd amount of data, and so that one
	// append cannot monopolise a group commit.
	maxPayload = 1 << 20
)

var (
	magic      = [4]byte{0xFF, 'S', 'P', 'L'}
	castagnoli = crc32.MakeTable(crc32.Castagnoli)
)

// appendRecord appends the encoded record for payload, whose CRC-32C is crc, to
// dst. The caller has checked len(payload) <= maxPayload.
func appendRecord(dst, payload []byte, crc uint32) []byte {
	dst = append(dst, magic[:]...)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(payload)))
	dst = binary.LittleEndian.AppendUint32(dst, crc)
	return append(dst, payload...)
}

// parseRecord validates the record that starts at b[0]. It reports the payload
// (capacity-limited, so appending to it cannot overwrite the next record), the
// record's total size and whether b starts with an intact record.
func parseRecord(b []byte) (payload []byte, size int, ok bool) {
	if len(b) < headerSize || !bytes.Equal(b[:4], magic[:]) {
		return nil, 0, false
	}
	n := binary.LittleEndian.Uint32(b[4:8])
	if n > maxPayload || uint64(n) > uint64(len(b)-headerSize) {
		return nil, 0, false
	}
	end := headerSize + int(n)
	payload = b[headerSize:end:end]
	if crc32.Checksum(payload, castagnoli) != binary.LittleEndian.Uint32(b[8:12]) {
		return nil, 0, false
	}
	return payload, end, true
}

// decodeRecords parses a whole segment's bytes and returns the payloads of its
// intact records in file order, calling onCorrupt with the offset where each
// damaged stretch starts, so that Replay can log where the damage is.
//
// A damaged stretch is a record whose magic, length or CRC is wrong, a torn
// record at the end, or garbage between records; each counts once however long
// it is. After one, decoding resumes at the next offset holding a magic whose
// record validates, so intact records on both sides are kept.
//
// The payloads alias data (with their capacity clipped to their length); the
// caller must not modify data while it uses them. decodeRecords never panics,
// and it terminates because every step moves forward by at least one byte. Its
// cost is linear in len(data) except when damage is adversarial: every false
// magic during a resync costs one CRC over at most 1 MiB.
func decodeRecords(data []byte, onCorrupt func(offset int)) [][]byte {
	var payloads [][]byte
	off := 0
	for off < len(data) {
		if p, n, ok := parseRecord(data[off:]); ok {
			payloads = append(payloads, p)
			off += n
			continue
		}
		onCorrupt(off)
		off = resync(data, off+1)
	}
	return payloads
}

// resync returns the offset of the first intact record at or after from, or
// len(data) when there is none.
func resync(data []byte, from int) int {
	for from < len(data) {
		i := bytes.Index(data[from:], magic[:])
		if i < 0 {
			return len(data)
		}
		from += i
		if _, _, ok := parseRecord(data[from:]); ok {
			return from
		}
		from++
	}
	return len(data)
}
