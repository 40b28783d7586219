package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"time"
)

// fuzzNow and fuzzLimits are what the HTTP intake uses: a fixed receive time and
// the longest rollup retention (5 years) as MaxAge.
var (
	fuzzNow    = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	fuzzLimits = Limits{MaxAge: 43800 * time.Hour}
)

// FuzzDecode checks that Decode never panics, that every error it returns is a
// *FieldError, and that a decoded event that validates survives Marshal then
// Decode unchanged.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"event_id":"e1","type":"click","ad_id":"summer-sale-15s","timestamp":"2026-11-25T12:00:00Z","ip":"203.0.113.7","user_agent":"UA","playback_time":12.5}`,
		`{"event_id":"e2","type":"impression","ad_id":"a","timestamp":1764072000000}`,
		`{"event_id":"e3","type":"midpoint","ad_id":"A_1","timestamp":"2026-11-25T13:30:00.5+01:30","ip":"2001:db8::1"}`,
		`{"event_id":"e4","type":"complete","ad_id":"b","timestamp":1764072000000.0,"playback_time":0}`,
		`{"event_id":"e5","type":"skip","ad_id":"c","timestamp":null,"extra":[1,{"x":2}]}`,
		`{"event_id":"e6","type":"click","ad_id":"a","timestamp":1764072000000,"ip":"203.0.113.0","visitor":"9f86d081884c7d65"}`,
		`{"event_id":"e7","type":"click","ad_id":"a","timestamp":1764072000000,"visitor":"9F86"}`,
		`{"type":"click","ad_id":"a","timestamp":1764072000000.5}`,
		`{"type":"click","playback_time":"x"}`,
		`{"ad_id":5}`,
		`{"type":"click"} {}`,
		`{"type":"click"}}`,
		`[]`,
		`"click"`,
		`null`,
		`{"timestamp":-62167219200001}`,
		`{"event_id":"e\u00e9","user_agent":"\ud800"}`,
		`{`,
		``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ev, err := Decode(data)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("Decode error %v (%T) is not a *FieldError", err, err)
			}
			return
		}
		if !ev.Timestamp.IsZero() && ev.Timestamp.Location() != time.UTC {
			t.Fatalf("decoded timestamp %v is not UTC", ev.Timestamp)
		}
		if err := ev.Validate(fuzzNow, fuzzLimits); err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("Validate error %v (%T) is not a *FieldError", err, err)
			}
			return
		}
		b, err := ev.Marshal()
		if err != nil {
			t.Fatalf("Marshal of a valid event %+v: %v", ev, err)
		}
		again, err := Decode(b)
		if err != nil {
			t.Fatalf("Decode(Marshal(ev)) = %v; ev %+v, JSON %s", err, ev, b)
		}
		if diff := sameEvent(again, ev); diff != "" {
			t.Fatalf("round trip changed the event: %s\ninput %q\nJSON  %s", diff, data, b)
		}
		if err := again.Validate(fuzzNow, fuzzLimits); err != nil {
			t.Fatalf("round-tripped event no longer validates: %v", err)
		}
		if again.Subject() != ev.Subject() || again.PlaybackMillis() != ev.PlaybackMillis() {
			t.Fatalf("round trip changed subject or playback millis")
		}
	})
}

// FuzzMarshal: Marshal writes what encoding/json writes for the event, its
// fast path included, for any strings and numbers.
func FuzzMarshal(f *testing.F) {
	f.Add("admetric-x.start", "start", "ad-1", int64(1764072000123), "10.0.0.1", "bench/1.0", 3.25, "admetric-x", 0, "", "")
	f.Add("x", "error", "a", int64(1), "", "", 0.0, "", 402, "signature", "")
	f.Add("x", "click", "a", int64(-5), "", "a\"<b>&\u00e9\x7f", 86400.0, "", 0, "", "")
	f.Add("x", "click", "a", int64(0), "", "", 1e-9, "", 0, "", "")
	f.Add("x", "click", "a", int64(0), "", "\xff", 1e21, "s\\", -1, "r", "<&>")
	f.Add("x", "click", "a", int64(0), "203.0.113.0", "UA", 1.5, "", 0, "", "9f86d081884c7d65")
	f.Fuzz(func(t *testing.T, id, typ, ad string, ms int64, ip, ua string, playback float64, serving string, code int, reason, visitor string) {
		e := Event{EventID: id, Type: Type(typ), AdID: ad, Timestamp: time.UnixMilli(ms % (1 << 45)).In(time.FixedZone("z", 3600)),
			IP: ip, UserAgent: ua, PlaybackTime: playback, ServingID: serving, ErrorCode: code, InvalidReason: InvalidReason(reason), Visitor: visitor}
		got, err := e.Marshal()
		out := e
		out.Timestamp = e.Timestamp.UTC()
		want, werr := json.Marshal(&out)
		if (err != nil) != (werr != nil) || !bytes.Equal(got, want) {
			t.Fatalf("Marshal = %s, %v\nencoding/json: %s, %v", got, err, want, werr)
		}
	})
}
