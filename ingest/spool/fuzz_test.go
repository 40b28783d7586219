package spool

import (
	"bytes"
	"slices"
	"testing"
)

// FuzzDecodeRecords checks that decoding any bytes (a segment damaged in any
// way) never panics, only returns payloads that are in the input, never frames
// more bytes than the input holds, and that intact records round-trip: the
// returned payloads encoded again decode to themselves with no damage. Seeds
// are below and in testdata/fuzz/FuzzDecodeRecords.
func FuzzDecodeRecords(f *testing.F) {
	a := encodeRecord(nil, []byte(`{"event_id":"e-1","type":"click","ad_id":"summer-sale-15s"}`))
	b := encodeRecord(nil, []byte(`{"event_id":"e-2","type":"impression"}`))
	flipped := slices.Concat(a, b)
	flipped[headerSize+2] ^= 0x40
	badLength := slices.Clone(a)
	badLength[7] = 0xff
	nested := encodeRecord(nil, a)
	nested[8] ^= 1
	for _, seed := range [][]byte{
		nil,
		a,
		slices.Concat(a, b),
		flipped,
		badLength,
		slices.Concat(a, b[:len(b)-1]),
		slices.Concat(a, b[:headerSize-1]),
		slices.Concat(a, []byte("\x00\xffSPL\xffSPL\x01\x00\x00\x00"), b),
		slices.Concat(nested, b),
		encodeRecord(nil, nil),
		magic[:],
		make([]byte, 32),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		payloads, corrupt := decodeAll(data)
		if corrupt < 0 || corrupt > len(data) {
			t.Fatalf("corrupt = %d for %d bytes", corrupt, len(data))
		}
		framed := 0
		for _, p := range payloads {
			if !bytes.Contains(data, p) {
				t.Fatalf("payload %q is not in the input", p)
			}
			framed += headerSize + len(p)
		}
		if framed > len(data) {
			t.Fatalf("records frame %d bytes of a %d-byte input", framed, len(data))
		}

		var again []byte
		for _, p := range payloads {
			again = encodeRecord(again, p)
		}
		if corrupt == 0 && !bytes.Equal(again, data) {
			t.Fatalf("no damage reported but the input is not exactly its records")
		}
		got, corruptAgain := decodeAll(again)
		if corruptAgain != 0 {
			t.Fatalf("re-encoded records decode with %d damaged stretches", corruptAgain)
		}
		if len(got) != len(payloads) {
			t.Fatalf("re-encoded records decode to %d payloads, want %d", len(got), len(payloads))
		}
		for i := range got {
			if !bytes.Equal(got[i], payloads[i]) {
				t.Fatalf("re-encoded payload #%d = %q, want %q", i, got[i], payloads[i])
			}
		}
	})
}
