package ingest

import (
	"bytes"
	"encoding/json"
	"testing"
)

func TestSpooledRecordRoundTrip(t *testing.T) {
	t.Parallel()
	tests := []struct {
		subject, id string
		data        []byte
	}{
		{"ads.events.click.ad-1", "e-1", []byte(`{"ad_id":"ad-1"}`)},
		{"ads.events.impression.x", "", []byte(`{}`)},
		{"s", "0193b1f0-7c1a-7cc0-9b1e-3f8a4d2c1e00", nil},
	}
	for _, tc := range tests {
		subject, id, data, err := decodeSpooled(encodeSpooled(tc.subject, tc.id, tc.data))
		if err != nil || subject != tc.subject || id != tc.id || !bytes.Equal(data, tc.data) {
			t.Errorf("round trip of %q %q %q = %q %q %q %v", tc.subject, tc.id, tc.data, subject, id, data, err)
		}
	}
	for _, bad := range [][]byte{nil, {}, {0}, {5, 'a'}, {1, 'a', 9, 'b'}, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}} {
		if _, _, _, err := decodeSpooled(bad); err == nil {
			t.Errorf("decodeSpooled(% x) succeeded", bad)
		}
	}
}

// FuzzDecodeSpooled: any bytes either fail or decode to fields that encode back
// to the same bytes.
func FuzzDecodeSpooled(f *testing.F) {
	f.Add(encodeSpooled("ads.events.click.ad-1", "e-1", []byte(`{"ad_id":"ad-1"}`)))
	f.Add([]byte{})
	f.Add([]byte{1, 'a', 0})
	f.Add([]byte{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		subject, id, data, err := decodeSpooled(b)
		if err != nil {
			return
		}
		if again := encodeSpooled(subject, id, data); !bytes.Equal(again, b) {
			// Uvarints have one canonical encoding only when minimal.
			s2, id2, d2, err := decodeSpooled(again)
			if err != nil || s2 != subject || id2 != id || !bytes.Equal(d2, data) {
				t.Fatalf("re-encoding % x does not decode to the same fields", b)
			}
		}
	})
}

func TestAppendAcceptedDecodes(t *testing.T) {
	t.Parallel()
	for _, id := range []string{"e-1", `quote"and\backslash`, "0193b1f0-7c1a-7cc0-9b1e-3f8a4d2c1e00", "~!@#$%^&*()_+{}|:<>?"} {
		for _, st := range []Status{Accepted, Spooled} {
			b := appendAccepted(nil, id, st)
			var got accepted
			if err := json.Unmarshal(b, &got); err != nil || got != (accepted{EventID: id, Status: st}) {
				t.Errorf("appendAccepted(%q, %q) = %s: decodes to %+v (%v)", id, st, b, got, err)
			}
		}
	}
}
