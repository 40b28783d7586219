package event

import (
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
