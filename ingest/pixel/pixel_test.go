package pixel_test

import (
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/admetric/admetric/ingest/pixel"
)

func newSigner(t *testing.T) *pixel.Signer {
	t.Helper()
	s, err := pixel.NewSigner([]byte("0123456789abcdef-test-secret"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestNewSignerRefusesAShortSecret(t *testing.T) {
	if _, err := pixel.NewSigner([]byte("short")); err == nil {
		t.Fatal("a 5-byte secret was taken")
	}
}

// TestSignVerify: a signature verifies for exactly what it was made for,
// until the serving expires; changing any field, the kind or the signature,
// or using another key, makes it bad.
func TestSignVerify(t *testing.T) {
	s := newSigner(t)
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	sv := pixel.Serving{AdID: "coffee-6s", ServingID: pixel.NewServingID(), Expires: now.Add(time.Hour)}
	sig := s.Sign("start", sv)
	if err := s.Verify("start", sv, sig, now); err != nil {
		t.Fatalf("own signature: %v", err)
	}
	other, err := pixel.NewSigner([]byte("another-secret-of-16+"))
	if err != nil {
		t.Fatal(err)
	}
	flip := []byte(sig)
	flip[0] ^= 1
	for _, tc := range []struct {
		name string
		kind string
		sv   pixel.Serving
		sig  string
		s    *pixel.Signer
		now  time.Time
		want error
	}{
		{"other kind", "complete", sv, sig, s, now, pixel.ErrBadSignature},
		{"other ad", "start", pixel.Serving{AdID: "car-launch-20s", ServingID: sv.ServingID, Expires: sv.Expires}, sig, s, now, pixel.ErrBadSignature},
		{"other serving", "start", pixel.Serving{AdID: sv.AdID, ServingID: pixel.NewServingID(), Expires: sv.Expires}, sig, s, now, pixel.ErrBadSignature},
		{"later expiry", "start", pixel.Serving{AdID: sv.AdID, ServingID: sv.ServingID, Expires: sv.Expires.Add(time.Hour)}, sig, s, now, pixel.ErrBadSignature},
		{"flipped bit", "start", sv, string(flip), s, now, pixel.ErrBadSignature},
		{"truncated", "start", sv, sig[:len(sig)-2], s, now, pixel.ErrBadSignature},
		{"not base64", "start", sv, "!!!", s, now, pixel.ErrBadSignature},
		{"empty", "start", sv, "", s, now, pixel.ErrBadSignature},
		{"other key", "start", sv, sig, other, now, pixel.ErrBadSignature},
		{"at expiry", "start", sv, sig, s, sv.Expires, pixel.ErrExpired},
		{"after expiry", "start", sv, sig, s, sv.Expires.Add(time.Second), pixel.ErrExpired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.s.Verify(tc.kind, tc.sv, tc.sig, tc.now); !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestServingIDAndEventID(t *testing.T) {
	a, b := pixel.NewServingID(), pixel.NewServingID()
	if a == b || !strings.HasPrefix(a, "admetric-") || !pixel.ValidServingID(a) {
		t.Fatalf("serving IDs %q and %q", a, b)
	}
	for _, bad := range []string{"", "admetric-", "admetric-xyz", "other-" + a[9:], a + "0", "ADMETRIC-" + a[9:]} {
		if pixel.ValidServingID(bad) {
			t.Errorf("ValidServingID(%q) = true", bad)
		}
	}
	if id := pixel.EventID(a, "start"); id == pixel.EventID(a, "complete") || id == pixel.EventID(b, "start") || id != a+".start" {
		t.Errorf("event ID %q does not name its serving and event type alone", id)
	}
	if n := len(pixel.EventID(a, "thirdQuartile")); n > 128 {
		t.Errorf("event ID of %d bytes, over the event's bound of 128", n)
	}
}

func TestPlayhead(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want float64
		ok   bool
	}{
		{"00:00:05.250", 5.25, true},
		{"01:02:03.004", 3723.004, true},
		{"00:00:15", 15, true},
		{"-1", 0, false},
		{"-2", 0, false},
		{"", 0, false},
		{"[ADPLAYHEAD]", 0, false},
		{"%5BADPLAYHEAD%5D", 0, false},
		{"0:0:5", 0, false},
		{"00:61:00.000", 0, false},
		{"00:00:05.25", 0, false},
		{"00:00:05.-25", 0, false},
		{"aa:bb:cc.ddd", 0, false},
		{"12.5", 0, false},
	} {
		got, ok := pixel.Playhead(tc.in)
		if ok != tc.ok || got != tc.want {
			t.Errorf("Playhead(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestTimestamp(t *testing.T) {
	want := time.Date(2026, 12, 7, 7, 15, 7, 127e6, time.UTC)
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"2026-12-07T08:15:07.127+01:00", true},
		{"2026-12-07T07:15:07.127Z", true},
		{"-1", false},
		{"-2", false},
		{"[TIMESTAMP]", false},
		{"2026-12-07 08:15:07", false},
		{"yesterday", false},
	} {
		got, ok := pixel.Timestamp(tc.in)
		if ok != tc.ok || ok && !got.Equal(want) {
			t.Errorf("Timestamp(%q) = %v, %v; want ok %v", tc.in, got, ok, tc.ok)
		}
	}
}

func TestErrorCode(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
		ok   bool
	}{
		{"100", 100, true},
		{"405", 405, true},
		{"902", 902, true},
		{"99", 0, false},
		{"1000", 0, false},
		{"-1", 0, false},
		{"[ERRORCODE]", 0, false},
		{"4O5", 0, false},
	} {
		got, ok := pixel.ErrorCode(tc.in)
		if ok != tc.ok || got != tc.want {
			t.Errorf("ErrorCode(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

// FuzzMacros: the macro parsers never panic, and what they accept is in range.
func FuzzMacros(f *testing.F) {
	for _, s := range []string{"00:00:05.250", "-1", "[ADPLAYHEAD]", "2026-12-07T08:15:07.127+01:00", "405", "", "99:59:59.999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		if sec, ok := pixel.Playhead(v); ok && (sec < 0 || sec >= 100*3600) {
			t.Fatalf("Playhead(%q) = %v", v, sec)
		}
		if code, ok := pixel.ErrorCode(v); ok && (code < 100 || code > 999) {
			t.Fatalf("ErrorCode(%q) = %v", v, code)
		}
		_, _ = pixel.Timestamp(v) // must not panic; the event's validation bounds the year
	})
}

// TestQueryRoundTrip: what Query writes, ParseQuery reads back and Verify
// accepts; a query without a numeric exp is malformed.
func TestQueryRoundTrip(t *testing.T) {
	s := newSigner(t)
	sv := pixel.Serving{AdID: "coffee-6s", ServingID: pixel.NewServingID(), Expires: time.Now().Add(time.Hour).Truncate(time.Second)}
	q, err := url.ParseQuery(s.Query("midpoint", sv) + "&ph=[ADPLAYHEAD]")
	if err != nil {
		t.Fatal(err)
	}
	got, sig, err := pixel.ParseQuery(q.Get)
	if err != nil || got != sv {
		t.Fatalf("ParseQuery = %+v, %v; want %+v", got, err, sv)
	}
	if err := s.Verify("midpoint", got, sig, time.Now()); err != nil {
		t.Fatalf("Verify of a parsed query: %v", err)
	}
	q.Set("exp", "soon")
	if _, _, err := pixel.ParseQuery(q.Get); !errors.Is(err, pixel.ErrMalformed) {
		t.Fatalf("exp=soon: %v, want ErrMalformed", err)
	}
}
