package event

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
)

// testNow is the receive time used throughout: an unaligned instant.
var testNow = time.Date(2026, 11, 25, 12, 0, 30, 0, time.UTC)

// validEvent returns an event that passes Validate(testNow, Limits{}).
func validEvent() Event {
	return Event{
		EventID:      "0193a3c4-7b1e-7cc1-9d1e-2f5c1a2b3c4d",
		Type:         Click,
		AdID:         "summer-sale-15s",
		Timestamp:    time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC),
		IP:           "203.0.113.7",
		UserAgent:    "Mozilla/5.0 (X11; Linux x86_64)",
		PlaybackTime: 12.5,
	}
}

// wantFieldError fails unless err is a *FieldError for field.
func wantFieldError(t *testing.T, err error, field string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want a field error for %q", field)
	}
	var fe *FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("error %v (%T) is not a *FieldError", err, err)
	}
	if fe.Field != field {
		t.Errorf("error %q names field %q, want %q", err, fe.Field, field)
	}
	if fe.Message == "" {
		t.Errorf("error for %q has no message", field)
	}
	if !strings.HasPrefix(err.Error(), "event: ") {
		t.Errorf("error text %q does not start with %q", err.Error(), "event: ")
	}
}

// sameEvent reports the first difference between two events, or "".
func sameEvent(got, want Event) string {
	switch {
	case got.EventID != want.EventID:
		return "event_id " + got.EventID + " != " + want.EventID
	case got.Type != want.Type:
		return "type " + string(got.Type) + " != " + string(want.Type)
	case got.AdID != want.AdID:
		return "ad_id " + got.AdID + " != " + want.AdID
	case !got.Timestamp.Equal(want.Timestamp):
		return "timestamp " + got.Timestamp.String() + " != " + want.Timestamp.String()
	case got.IP != want.IP:
		return "ip " + got.IP + " != " + want.IP
	case got.UserAgent != want.UserAgent:
		return "user_agent " + got.UserAgent + " != " + want.UserAgent
	case got.PlaybackTime != want.PlaybackTime || math.Signbit(got.PlaybackTime) != math.Signbit(want.PlaybackTime):
		return "playback_time differs"
	case got.ServingID != want.ServingID:
		return "serving_id " + got.ServingID + " != " + want.ServingID
	case got.ErrorCode != want.ErrorCode:
		return fmt.Sprintf("error_code %d != %d", got.ErrorCode, want.ErrorCode)
	case got.InvalidReason != want.InvalidReason:
		return "invalid_reason " + string(got.InvalidReason) + " != " + string(want.InvalidReason)
	case got.Visitor != want.Visitor:
		return "visitor " + got.Visitor + " != " + want.Visitor
	}
	return ""
}

func TestValidateAcceptsValidEvent(t *testing.T) {
	t.Parallel()
	for _, typ := range Types {
		ev := validEvent()
		ev.Type = typ
		if err := ev.Validate(testNow, Limits{}); err != nil {
			t.Errorf("type %s: Validate = %v, want nil", typ, err)
		}
	}
}

func TestValidateRules(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		mutate func(*Event)
		lim    Limits
		field  string // "" means valid
	}{
		// event_id
		{"event_id missing", func(e *Event) { e.EventID = "" }, Limits{}, "event_id"},
		{"event_id 128 chars", func(e *Event) { e.EventID = strings.Repeat("a", MaxEventIDLen) }, Limits{}, ""},
		{"event_id 129 chars", func(e *Event) { e.EventID = strings.Repeat("a", MaxEventIDLen+1) }, Limits{}, "event_id"},
		{"event_id with space", func(e *Event) { e.EventID = "a b" }, Limits{}, "event_id"},
		{"event_id with tab", func(e *Event) { e.EventID = "a\tb" }, Limits{}, "event_id"},
		{"event_id with DEL", func(e *Event) { e.EventID = "a\x7f" }, Limits{}, "event_id"},
		{"event_id with NUL", func(e *Event) { e.EventID = "a\x00" }, Limits{}, "event_id"},
		{"event_id non-ASCII", func(e *Event) { e.EventID = "évé" }, Limits{}, "event_id"},
		{"event_id all printable", func(e *Event) { e.EventID = "!~azAZ09:/._-{}" }, Limits{}, ""},
		{"event_id with the derived prefix", func(e *Event) { e.EventID = DerivedIDPrefix + "ADMETRIC_EVENTS:1" }, Limits{}, "event_id"},
		{"ip with an IPv6 zone", func(e *Event) { e.IP = "fe80::1%eth0" }, Limits{}, "ip"},
		{"user_agent with NUL", func(e *Event) { e.UserAgent = "a\x00b" }, Limits{}, "user_agent"},
		{"user_agent with newline", func(e *Event) { e.UserAgent = "a\nb" }, Limits{}, "user_agent"},
		{"user_agent invalid UTF-8", func(e *Event) { e.UserAgent = "a\xffb" }, Limits{}, "user_agent"},
		{"user_agent non-ASCII", func(e *Event) { e.UserAgent = "Mozilla/5.0 (été)" }, Limits{}, ""},
		// timestamp years RFC 3339 and PostgreSQL can hold, whatever the limits
		{"timestamp year -1", func(e *Event) { e.Timestamp = time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC) }, Limits{}, "timestamp"},
		{"timestamp before 1970", func(e *Event) { e.Timestamp = time.Date(1969, 12, 31, 0, 0, 0, 0, time.UTC) }, Limits{}, "timestamp"},
		// type
		{"type missing", func(e *Event) { e.Type = "" }, Limits{}, "type"},
		{"type unknown", func(e *Event) { e.Type = "view" }, Limits{}, "type"},
		{"type wrong case", func(e *Event) { e.Type = "Click" }, Limits{}, "type"},
		{"type firstquartile lower case", func(e *Event) { e.Type = "firstquartile" }, Limits{}, "type"},
		// ad_id
		{"ad_id missing", func(e *Event) { e.AdID = "" }, Limits{}, "ad_id"},
		{"ad_id 64 chars", func(e *Event) { e.AdID = strings.Repeat("x", MaxAdIDLen) }, Limits{}, ""},
		{"ad_id 65 chars", func(e *Event) { e.AdID = strings.Repeat("x", MaxAdIDLen+1) }, Limits{}, "ad_id"},
		{"ad_id every allowed class", func(e *Event) { e.AdID = "AZaz09_-" }, Limits{}, ""},
		{"ad_id with dot", func(e *Event) { e.AdID = "a.b" }, Limits{}, "ad_id"},
		{"ad_id with star", func(e *Event) { e.AdID = "a*" }, Limits{}, "ad_id"},
		{"ad_id with gt", func(e *Event) { e.AdID = "a>" }, Limits{}, "ad_id"},
		{"ad_id with space", func(e *Event) { e.AdID = "a b" }, Limits{}, "ad_id"},
		{"ad_id non-ASCII", func(e *Event) { e.AdID = "é" }, Limits{}, "ad_id"},
		// timestamp
		{"timestamp missing", func(e *Event) { e.Timestamp = time.Time{} }, Limits{}, "timestamp"},
		{"timestamp exactly default max future", func(e *Event) { e.Timestamp = testNow.Add(5 * time.Minute) }, Limits{}, ""},
		{"timestamp past default max future", func(e *Event) { e.Timestamp = testNow.Add(5*time.Minute + time.Nanosecond) }, Limits{}, "timestamp"},
		{"timestamp past custom max future", func(e *Event) { e.Timestamp = testNow.Add(time.Minute + time.Nanosecond) }, Limits{MaxFuture: time.Minute}, "timestamp"},
		{"timestamp within custom max future", func(e *Event) { e.Timestamp = testNow.Add(30 * time.Minute) }, Limits{MaxFuture: time.Hour}, ""},
		{"timestamp exactly max age", func(e *Event) { e.Timestamp = testNow.Add(-72 * time.Hour) }, Limits{MaxAge: 72 * time.Hour}, ""},
		{"timestamp older than max age", func(e *Event) { e.Timestamp = testNow.Add(-72*time.Hour - time.Nanosecond) }, Limits{MaxAge: 72 * time.Hour}, "timestamp"},
		{"timestamp old without max age", func(e *Event) { e.Timestamp = testNow.AddDate(-10, 0, 0) }, Limits{}, ""},
		{"timestamp in another zone", func(e *Event) {
			e.Timestamp = testNow.In(time.FixedZone("UTC-5", -5*3600))
		}, Limits{}, ""},
		// playback_time
		{"playback_time zero", func(e *Event) { e.PlaybackTime = 0 }, Limits{}, ""},
		{"playback_time negative", func(e *Event) { e.PlaybackTime = -0.001 }, Limits{}, "playback_time"},
		{"playback_time NaN", func(e *Event) { e.PlaybackTime = math.NaN() }, Limits{}, "playback_time"},
		{"playback_time -Inf", func(e *Event) { e.PlaybackTime = math.Inf(-1) }, Limits{}, "playback_time"},
		{"playback_time +Inf", func(e *Event) { e.PlaybackTime = math.Inf(1) }, Limits{}, "playback_time"},
		{"playback_time max", func(e *Event) { e.PlaybackTime = MaxPlaybackTime }, Limits{}, ""},
		{"playback_time over max", func(e *Event) { e.PlaybackTime = 86400.001 }, Limits{}, "playback_time"},
		// ip
		{"ip absent", func(e *Event) { e.IP = "" }, Limits{}, ""},
		{"ip v6", func(e *Event) { e.IP = "2001:db8::1" }, Limits{}, ""},
		{"ip v4-mapped v6", func(e *Event) { e.IP = "::ffff:203.0.113.7" }, Limits{}, ""},
		{"ip not an address", func(e *Event) { e.IP = "not-an-ip" }, Limits{}, "ip"},
		{"ip octet out of range", func(e *Event) { e.IP = "256.1.1.1" }, Limits{}, "ip"},
		{"ip with port", func(e *Event) { e.IP = "203.0.113.7:80" }, Limits{}, "ip"},
		{"ip CIDR", func(e *Event) { e.IP = "203.0.113.0/24" }, Limits{}, "ip"},
		// user_agent
		{"user_agent absent", func(e *Event) { e.UserAgent = "" }, Limits{}, ""},
		{"user_agent max", func(e *Event) { e.UserAgent = strings.Repeat("u", MaxUserAgentLen) }, Limits{}, ""},
		{"user_agent too long", func(e *Event) { e.UserAgent = strings.Repeat("u", MaxUserAgentLen+1) }, Limits{}, "user_agent"},
		// serving_id, error_code, invalid_reason
		{"serving_id 128 chars", func(e *Event) { e.ServingID = strings.Repeat("s", MaxServingIDLen) }, Limits{}, ""},
		{"serving_id 129 chars", func(e *Event) { e.ServingID = strings.Repeat("s", MaxServingIDLen+1) }, Limits{}, "serving_id"},
		{"serving_id with space", func(e *Event) { e.ServingID = "a b" }, Limits{}, "serving_id"},
		{"serving_id with NUL", func(e *Event) { e.ServingID = "a\x00" }, Limits{}, "serving_id"},
		{"error code on an error", func(e *Event) { e.Type, e.ErrorCode = Error, 402 }, Limits{}, ""},
		{"error without a code", func(e *Event) { e.Type = Error }, Limits{}, ""},
		{"error code 100", func(e *Event) { e.Type, e.ErrorCode = Error, MinErrorCode }, Limits{}, ""},
		{"error code 999", func(e *Event) { e.Type, e.ErrorCode = Error, MaxErrorCode }, Limits{}, ""},
		{"error code 99", func(e *Event) { e.Type, e.ErrorCode = Error, MinErrorCode-1 }, Limits{}, "error_code"},
		{"error code 1000", func(e *Event) { e.Type, e.ErrorCode = Error, MaxErrorCode+1 }, Limits{}, "error_code"},
		{"error code negative", func(e *Event) { e.Type, e.ErrorCode = Error, -1 }, Limits{}, "error_code"},
		{"error code on a click", func(e *Event) { e.ErrorCode = 402 }, Limits{}, "error_code"},
		{"invalid for a bad signature", func(e *Event) { e.InvalidReason = BadSignature }, Limits{}, ""},
		{"invalid for no known reason", func(e *Event) { e.InvalidReason = "boring" }, Limits{}, "invalid_reason"},
		// first field at fault wins
		{"several faults name the first", func(e *Event) {
			e.Type = "bogus"
			e.AdID = ""
			e.IP = "x"
		}, Limits{}, "type"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ev := validEvent()
			tc.mutate(&ev)
			err := ev.Validate(testNow, tc.lim)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			wantFieldError(t, err, tc.field)
		})
	}
}

func TestValidateAdID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		id string
		ok bool
	}{
		{"a", true},
		{"summer-sale-15s", true},
		{"A_b-C_9", true},
		{strings.Repeat("z", 64), true},
		{"", false},
		{strings.Repeat("z", 65), false},
		{"a.b", false},
		{"a/b", false},
		{"a:b", false},
		{"ünï", false},
		{"\x00", false},
	}
	for _, tc := range tests {
		err := ValidateAdID(tc.id)
		if tc.ok {
			if err != nil {
				t.Errorf("ValidateAdID(%q) = %v, want nil", tc.id, err)
			}
			continue
		}
		wantFieldError(t, err, "ad_id")
	}
}

func TestFieldErrorText(t *testing.T) {
	t.Parallel()
	if got, want := (&FieldError{Field: "ad_id", Message: "is required"}).Error(), "event: ad_id: is required"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if got, want := (&FieldError{Message: "malformed JSON"}).Error(), "event: malformed JSON"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

func TestTypeValid(t *testing.T) {
	t.Parallel()
	if len(Types) != 9 {
		t.Fatalf("len(Types) = %d, want 9", len(Types))
	}
	seen := map[Type]bool{}
	for _, typ := range Types {
		if !typ.Valid() {
			t.Errorf("%q.Valid() = false", typ)
		}
		if seen[typ] {
			t.Errorf("%q listed twice", typ)
		}
		seen[typ] = true
	}
	for _, typ := range []Type{"", "Click", "view", "click ", "quartile"} {
		if typ.Valid() {
			t.Errorf("%q.Valid() = true", typ)
		}
	}
}

func TestDecode(t *testing.T) {
	t.Parallel()
	noon := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	base := `"event_id":"e1","type":"click","ad_id":"ad-1","ip":"203.0.113.7","user_agent":"UA","playback_time":12.5`
	withTS := func(ts string) string { return `{` + base + `,"timestamp":` + ts + `}` }
	want := func(ts time.Time) Event {
		return Event{EventID: "e1", Type: Click, AdID: "ad-1", Timestamp: ts, IP: "203.0.113.7", UserAgent: "UA", PlaybackTime: 12.5}
	}
	tests := []struct {
		name  string
		in    string
		want  Event
		fail  bool   // Decode must fail ...
		field string // ... with a *FieldError naming this field ("" for the whole document)
	}{
		{name: "RFC 3339 UTC", in: withTS(`"2026-11-25T12:00:00Z"`), want: want(noon)},
		{name: "RFC 3339 with offset", in: withTS(`"2026-11-25T13:30:00+01:30"`), want: want(noon)},
		{name: "RFC 3339 negative offset", in: withTS(`"2026-11-25T07:00:00-05:00"`), want: want(noon)},
		{name: "RFC 3339 nanoseconds", in: withTS(`"2026-11-25T12:00:00.123456789Z"`), want: want(noon.Add(123456789))},
		{name: "Unix ms", in: withTS(`1764072000000`), want: want(time.Date(2025, 11, 25, 12, 0, 0, 0, time.UTC))},
		{name: "Unix ms with millis", in: withTS(`1764072000123`), want: want(time.Date(2025, 11, 25, 12, 0, 0, 123e6, time.UTC))},
		{name: "Unix ms whole float", in: withTS(`1764072000000.0`), want: want(time.Date(2025, 11, 25, 12, 0, 0, 0, time.UTC))},
		{name: "Unix ms exponent", in: withTS(`1.764072e12`), want: want(time.Date(2025, 11, 25, 12, 0, 0, 0, time.UTC))},
		{name: "Unix ms zero", in: withTS(`0`), want: want(time.Unix(0, 0).UTC())},
		{name: "timestamp null", in: withTS(`null`), want: want(time.Time{})},
		{name: "timestamp empty string", in: withTS(`""`), want: want(time.Time{})},
		{name: "timestamp absent", in: `{` + base + `}`, want: want(time.Time{})},
		{name: "playback_time absent", in: `{"event_id":"e1","type":"click","ad_id":"ad-1"}`, want: Event{EventID: "e1", Type: Click, AdID: "ad-1"}},
		{name: "playback_time null", in: `{"type":"click","playback_time":null}`, want: Event{Type: Click}},
		{name: "unknown fields ignored", in: `{"type":"impression","ad_id":"a","extra":{"nested":[1,2,{"x":null}]},"v":2,"ts":"x"}`,
			want: Event{Type: Impression, AdID: "a"}},
		{name: "empty object", in: `{}`, want: Event{}},
		{name: "surrounding whitespace", in: " \n\t{\"type\":\"skip\"} \r\n", want: Event{Type: Skip}},
		{name: "unicode escapes", in: `{"user_agent":"caf\u00e9 \u003cb\u003e"}`, want: Event{UserAgent: "café <b>"}},
		{name: "VAST fields", in: `{"type":"error","serving_id":"admetric-1","error_code":402,"invalid_reason":"signature"}`,
			want: Event{Type: Error, ServingID: "admetric-1", ErrorCode: 402, InvalidReason: BadSignature}},
		{name: "error_code null", in: `{"type":"error","error_code":null}`, want: Event{Type: Error}},

		{name: "fractional Unix ms", in: withTS(`1764072000000.5`), fail: true, field: "timestamp"},
		{name: "timestamp not RFC 3339", in: withTS(`"2026-11-25 12:00:00"`), fail: true, field: "timestamp"},
		{name: "timestamp date only", in: withTS(`"2026-11-25"`), fail: true, field: "timestamp"},
		{name: "timestamp bool", in: withTS(`true`), fail: true, field: "timestamp"},
		{name: "timestamp object", in: withTS(`{}`), fail: true, field: "timestamp"},
		{name: "timestamp array", in: withTS(`[1]`), fail: true, field: "timestamp"},
		{name: "timestamp beyond 2^53", in: withTS(`1e300`), fail: true, field: "timestamp"},
		{name: "malformed JSON", in: `{"type":`, fail: true, field: ""},
		{name: "malformed JSON unquoted key", in: `{type:"click"}`, fail: true, field: ""},
		{name: "empty input", in: ``, fail: true, field: ""},
		{name: "whitespace only", in: `   `, fail: true, field: ""},
		{name: "playback_time string", in: `{"type":"click","playback_time":"x"}`, fail: true, field: "playback_time"},
		{name: "playback_time overflow", in: `{"type":"click","playback_time":1e400}`, fail: true, field: "playback_time"},
		{name: "ad_id number", in: `{"type":"click","ad_id":5}`, fail: true, field: "ad_id"},
		{name: "event_id object", in: `{"event_id":{}}`, fail: true, field: "event_id"},
		{name: "type array", in: `{"type":["click"]}`, fail: true, field: "type"},
		{name: "ip number", in: `{"ip":1}`, fail: true, field: "ip"},
		{name: "user_agent bool", in: `{"user_agent":true}`, fail: true, field: "user_agent"},
		{name: "error_code string", in: `{"type":"error","error_code":"402"}`, fail: true, field: "error_code"},
		{name: "error_code fraction", in: `{"type":"error","error_code":402.5}`, fail: true, field: "error_code"},
		{name: "serving_id number", in: `{"serving_id":7}`, fail: true, field: "serving_id"},
		{name: "trailing object", in: `{"type":"click"} {}`, fail: true, field: ""},
		{name: "trailing garbage", in: `{"type":"click"} x`, fail: true, field: ""},
		{name: "trailing number", in: `{"type":"click"}1`, fail: true, field: ""},
		{name: "trailing brace", in: `{"type":"click"}}`, fail: true, field: ""},
		{name: "trailing bracket", in: `{"type":"click"}]`, fail: true, field: ""},
		{name: "top-level null", in: `null`, fail: true, field: ""},
		{name: "top-level array", in: `[]`, fail: true, field: ""},
		{name: "top-level array of event", in: `[{"type":"click"}]`, fail: true, field: ""},
		{name: "top-level string", in: `"click"`, fail: true, field: ""},
		{name: "top-level number", in: `5`, fail: true, field: ""},
		{name: "top-level bool", in: `true`, fail: true, field: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := Decode([]byte(tc.in))
			if tc.fail {
				wantFieldError(t, err, tc.field)
				if diff := sameEvent(got, Event{}); diff != "" {
					t.Errorf("Decode returned a non-zero event with its error: %s", diff)
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode(%s) = %v", tc.in, err)
			}
			if diff := sameEvent(got, tc.want); diff != "" {
				t.Errorf("Decode(%s): %s", tc.in, diff)
			}
			if !got.Timestamp.IsZero() && got.Timestamp.Location() != time.UTC {
				t.Errorf("timestamp location = %v, want UTC", got.Timestamp.Location())
			}
		})
	}
}

func TestMarshalDecodeRoundTrip(t *testing.T) {
	t.Parallel()
	zone := time.FixedZone("UTC+9", 9*3600)
	events := []Event{
		validEvent(),
		{EventID: "x", Type: Impression, AdID: "a", Timestamp: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)},
		{EventID: "y", Type: ThirdQuartile, AdID: "b_c-9", Timestamp: time.Date(2026, 11, 25, 21, 0, 0, 1, zone),
			IP: "2001:db8::7", UserAgent: "<script>&\"quoted\"\u2028 ünïcödé", PlaybackTime: 0.1 + 0.2},
		{EventID: "z", Type: Complete, AdID: "z", Timestamp: time.UnixMilli(1764072000123), PlaybackTime: MaxPlaybackTime},
		{EventID: "admetric-1.error", Type: Error, AdID: "v", Timestamp: time.UnixMilli(1764072000123),
			ServingID: "admetric-1", ErrorCode: 402, InvalidReason: BadSignature},
	}
	for i, ev := range events {
		b, err := ev.Marshal()
		if err != nil {
			t.Fatalf("event %d: Marshal: %v", i, err)
		}
		got, err := Decode(b)
		if err != nil {
			t.Fatalf("event %d: Decode(%s): %v", i, b, err)
		}
		if diff := sameEvent(got, ev); diff != "" {
			t.Errorf("event %d: round trip through %s: %s", i, b, diff)
		}
		if got.Timestamp.Location() != time.UTC {
			t.Errorf("event %d: decoded timestamp in %v, want UTC", i, got.Timestamp.Location())
		}
		if err := got.Validate(testNow.AddDate(1, 0, 0), Limits{}); err != nil {
			t.Errorf("event %d: round-tripped event no longer validates: %v", i, err)
		}
	}
}

func TestMarshalCanonicalForm(t *testing.T) {
	t.Parallel()
	ev := validEvent()
	ev.Timestamp = ev.Timestamp.In(time.FixedZone("UTC-5", -5*3600))
	b, err := ev.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"event_id":"0193a3c4-7b1e-7cc1-9d1e-2f5c1a2b3c4d","type":"click","ad_id":"summer-sale-15s",` +
		`"timestamp":"2026-11-25T12:00:00Z","ip":"203.0.113.7","user_agent":"Mozilla/5.0 (X11; Linux x86_64)","playback_time":12.5}`
	if string(b) != want {
		t.Errorf("Marshal =\n%s\nwant\n%s", b, want)
	}
	if ev.Timestamp.Location() == time.UTC {
		t.Error("Marshal changed the receiver's timestamp location")
	}

	ev.IP, ev.UserAgent = "", ""
	b, err = ev.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if s := string(b); strings.Contains(s, `"ip"`) || strings.Contains(s, `"user_agent"`) {
		t.Errorf("empty ip and user_agent are not omitted: %s", s)
	}
}

func TestSubject(t *testing.T) {
	t.Parallel()
	tests := []struct {
		typ  Type
		ad   string
		want string
	}{
		{Click, "summer-sale-15s", "ads.events.click.summer-sale-15s"},
		{FirstQuartile, "A_1", "ads.events.firstQuartile.A_1"},
		{Impression, "x", "ads.events.impression.x"},
	}
	for _, tc := range tests {
		ev := Event{Type: tc.typ, AdID: tc.ad}
		if got := ev.Subject(); got != tc.want {
			t.Errorf("Subject(%s, %s) = %q, want %q", tc.typ, tc.ad, got, tc.want)
		}
		if !strings.HasPrefix(ev.Subject(), SubjectPrefix) {
			t.Errorf("subject %q lacks prefix %q", ev.Subject(), SubjectPrefix)
		}
	}
}

func TestPlaybackMillis(t *testing.T) {
	t.Parallel()
	// Every input is exactly representable and so is its product with 1000,
	// so the expected rounding is unambiguous.
	tests := []struct {
		seconds float64
		want    uint64
	}{
		{0, 0},
		{12.5, 12500},
		{0.25, 250},
		{0.5, 500},
		{0.0625, 63},         // 62.5 rounds half away from zero
		{0.0009765625, 1},    // 0.9765625 ms
		{0.0001220703125, 0}, // 0.1220703125 ms
		{1.5 / 1024, 1},      // 1.46484375 ms
		{MaxPlaybackTime, 86400000},
	}
	for _, tc := range tests {
		ev := Event{PlaybackTime: tc.seconds}
		if got := ev.PlaybackMillis(); got != tc.want {
			t.Errorf("PlaybackMillis(%g s) = %d, want %d", tc.seconds, got, tc.want)
		}
	}
}

func TestVisitorHash(t *testing.T) {
	t.Parallel()
	salt := []byte("secret-salt")
	h := func(salt []byte, ip, ua string) uint64 {
		ev := Event{IP: ip, UserAgent: ua, EventID: "ignored", AdID: "ignored"}
		return ev.VisitorHash(salt)
	}
	base := h(salt, "203.0.113.7", "UA/1.0")
	if again := h(salt, "203.0.113.7", "UA/1.0"); again != base {
		t.Errorf("same inputs: %x != %x", again, base)
	}
	other := Event{IP: "203.0.113.7", UserAgent: "UA/1.0", EventID: "other", AdID: "other", Type: Click, PlaybackTime: 3}
	if got := other.VisitorHash(salt); got != base {
		t.Errorf("hash depends on fields other than ip and user agent: %x != %x", got, base)
	}
	differ := []struct {
		name string
		a, b uint64
	}{
		{"salt", h([]byte("other-salt"), "203.0.113.7", "UA/1.0"), base},
		{"nil salt", h(nil, "203.0.113.7", "UA/1.0"), base},
		{"ip", h(salt, "203.0.113.8", "UA/1.0"), base},
		{"user agent", h(salt, "203.0.113.7", "UA/1.1"), base},
		{"ip/ua boundary", h(salt, "a", "bc"), h(salt, "ab", "c")},
		{"salt/ip boundary", h([]byte("s"), "a", "x"), h([]byte("sa"), "", "x")},
		{"empty ip vs empty ua", h(salt, "x", ""), h(salt, "", "x")},
	}
	for _, tc := range differ {
		if tc.a == tc.b {
			t.Errorf("%s: hashes collide (%x)", tc.name, tc.a)
		}
	}
}

func TestSetDerivedIDValidates(t *testing.T) {
	t.Parallel()
	e := Event{Type: Click, AdID: "ad", Timestamp: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}
	e.SetDerivedID("ADMETRIC_EVENTS", 42)
	if e.EventID != "$ADMETRIC_EVENTS:42" {
		t.Fatalf("EventID = %q", e.EventID)
	}
	if err := e.Validate(e.Timestamp, Limits{}); err != nil {
		t.Fatalf("a derived ID must validate: %v", err)
	}
}

func TestSanitizeUserAgent(t *testing.T) {
	t.Parallel()
	euro := strings.Repeat("€", 400) // 1200 bytes, 3 per character
	tests := []struct {
		name, in, want string
	}{
		{"plain", "Mozilla/5.0", "Mozilla/5.0"},
		{"control characters dropped", "a\x00b\tc\n", "abc"},
		{"invalid bytes replaced", "a\xff\xfeb", "a\uFFFDb"},
		{"cut on a character boundary", euro, strings.Repeat("€", MaxUserAgentLen/3)},
		{"long ASCII", strings.Repeat("a", 2000), strings.Repeat("a", MaxUserAgentLen)},
	}
	for _, tc := range tests {
		got := SanitizeUserAgent(tc.in)
		if got != tc.want {
			t.Errorf("%s: got %q (%d bytes), want %q", tc.name, got, len(got), tc.want)
		}
		e := Event{EventID: "x", Type: Click, AdID: "ad", Timestamp: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC), UserAgent: got}
		if err := e.Validate(e.Timestamp, Limits{}); err != nil {
			t.Errorf("%s: sanitized user agent does not validate: %v", tc.name, err)
		}
	}
}

func TestCanonicalIP(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"192.0.2.1":        "192.0.2.1",
		"2001:DB8:0:0::1":  "2001:db8::1",
		"::FFFF:192.0.2.1": "::ffff:192.0.2.1",
		"not an address":   "not an address",
		"":                 "",
		"fe80::1%eth0":     "fe80::1%eth0",
	} {
		if got := CanonicalIP(in); got != want {
			t.Errorf("CanonicalIP(%q) = %q, want %q", in, got, want)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	body := []byte(`{"event_id":"01a212ca-d34d-7e7c-8ddf-b77c708ee7a3","type":"click","ad_id":"summer-sale-15s","timestamp":"2026-11-25T12:00:00Z","ip":"203.0.113.7","user_agent":"Mozilla/5.0 (X11; Linux x86_64)","playback_time":12.5}`)
	now := time.Date(2026, 11, 25, 12, 0, 1, 0, time.UTC)
	b.ReportAllocs()
	for b.Loop() {
		ev, err := Decode(body)
		if err != nil {
			b.Fatal(err)
		}
		if err := ev.Validate(now, Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}

func TestFromServing(t *testing.T) {
	t.Parallel()
	tests := []struct {
		id, serving string
		typ         Type
		want        bool
	}{
		{"admetric-1.impression", "admetric-1", Impression, true},
		{"admetric-1.click", "admetric-1", Click, true},
		{"admetric-1.click", "admetric-1", Impression, false},
		{"admetric-1.impression", "", Impression, false},
		{"admetric-12.impression", "admetric-1", Impression, false},
		{"admetric-1ximpression", "admetric-1", Impression, false},
		{"admetric-1.impression.expired", "admetric-1", Impression, false},
		{"0193-uuid", "admetric-1", Impression, false},
	}
	for _, tc := range tests {
		e := Event{EventID: tc.id, ServingID: tc.serving, Type: tc.typ}
		if got := e.FromServing(); got != tc.want {
			t.Errorf("FromServing(%q, serving %q, %s) = %v, want %v", tc.id, tc.serving, tc.typ, got, tc.want)
		}
	}
}
