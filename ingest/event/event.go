// Package event defines the one event shape AdMetric accepts on HTTP and on NATS:
// its JSON form, its validation rules, its subject and its visitor identity.
//
// It is a leaf package: the intake handlers, the aggregator and anything that
// publishes to the stream share it, so a rule changed here changes everywhere.
package event

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Type is what happened to an ad.
type Type string

// The event types: impression and click first, the others come with VAST
// tracking. Error is a VAST error: the player could not play the ad, and
// says why with an error code.
const (
	Impression    Type = "impression"
	Start         Type = "start"
	FirstQuartile Type = "firstQuartile"
	Midpoint      Type = "midpoint"
	ThirdQuartile Type = "thirdQuartile"
	Complete      Type = "complete"
	Skip          Type = "skip"
	Click         Type = "click"
	Error         Type = "error"
)

// Types lists every valid Type in a stable order.
var Types = []Type{Impression, Start, FirstQuartile, Midpoint, ThirdQuartile, Complete, Skip, Click, Error}

// Valid reports whether t is one of Types.
func (t Type) Valid() bool {
	switch t {
	case Impression, Start, FirstQuartile, Midpoint, ThirdQuartile, Complete, Skip, Click, Error:
		return true
	}
	return false
}

// Limits on field sizes and values.
const (
	MaxEventIDLen   = 128
	MaxServingIDLen = 128
	// MinErrorCode and MaxErrorCode bound a VAST error code (VAST 4.2
	// section 2.3.6.3 defines codes from 100 to 902).
	MinErrorCode     = 100
	MaxErrorCode     = 999
	MaxAdIDLen       = 64
	MaxUserAgentLen  = 1024
	MaxPlaybackTime  = 86400.0 // seconds: a day-long video is already absurd
	SubjectPrefix    = "ads.events."
	defaultMaxFuture = 5 * time.Minute
	// minYear and maxYear bound timestamps whatever the limits: outside them
	// RFC 3339 cannot encode the time, nor PostgreSQL store it sensibly.
	minYear = 1970
	maxYear = 9999
)

// Event is one accepted ad event. Timestamp is always UTC once validated.
type Event struct {
	EventID      string    `json:"event_id"`
	Type         Type      `json:"type"`
	AdID         string    `json:"ad_id"`
	Timestamp    time.Time `json:"timestamp"`
	IP           string    `json:"ip,omitempty"`
	UserAgent    string    `json:"user_agent,omitempty"`
	PlaybackTime float64   `json:"playback_time"`
	// ServingID is the VAST AdServingId of the response the event belongs
	// to, when it came through one: a serving's events join on it.
	ServingID string `json:"serving_id,omitempty"`
	// ErrorCode is an error event's VAST error code; 0 when the player gave none.
	ErrorCode int `json:"error_code,omitempty"`
	// InvalidReason is empty for a valid event, else the reason it is not
	// counted as one (one of InvalidReasons). The event is still archived
	// with it, and counted apart.
	InvalidReason InvalidReason `json:"invalid_reason,omitempty"`
	// Visitor is the visitor hash (VisitorDigits lower-case hex digits) the
	// intake computed from the full address before truncating it
	// (Pseudonymize); empty, the fold hashes IP and UserAgent itself. The
	// HTTP intake refuses it from clients.
	Visitor string `json:"visitor,omitempty"`

	derivedID bool // EventID was set by SetDerivedID
}

// InvalidReason says why an event does not count as valid traffic.
type InvalidReason string

// The reasons an event is invalid (general invalid traffic). The intake
// decides signature and playback; the rollup writers decide the others in
// stream order (see aggregator.Judge).
const (
	// Bot: a known crawler, spider, monitor or headless browser, or an
	// empty user agent.
	Bot InvalidReason = "bot"
	// DuplicateClick: the visitor clicked the same ad less than the
	// duplicate-click window before.
	DuplicateClick InvalidReason = "duplicate_click"
	// Rate: the visitor sent more than the allowed events for the ad in one
	// minute.
	Rate InvalidReason = "rate"
	// ClickWithoutImpression: a VAST click whose serving had no impression.
	ClickWithoutImpression InvalidReason = "click_without_impression"
	// Playback: a click whose playback position exceeds the ad's duration.
	Playback InvalidReason = "playback"
	// BadSignature: a VAST pixel whose signature is wrong or expired, so
	// its serving cannot be trusted.
	BadSignature InvalidReason = "signature"
)

// InvalidReasons lists every reason in a stable order: the order in which
// rules are applied, the first that holds naming the event's reason.
var InvalidReasons = []InvalidReason{BadSignature, Playback, Bot, ClickWithoutImpression, DuplicateClick, Rate}

// Valid reports whether r is one of InvalidReasons.
func (r InvalidReason) Valid() bool { return slices.Contains(InvalidReasons, r) }

// FromServing reports whether e's ID is the one a VAST serving's event of
// its type derives, "<serving_id>.<type>", as AdMetric's tracking pixels
// give: the stream (within its duplicate window) and the archive then hold
// one such event per serving, so it counts as the serving's own (one
// serving per impression, one click per serving).
func (e *Event) FromServing() bool {
	id, sv, typ := e.EventID, e.ServingID, string(e.Type)
	return sv != "" && len(id) == len(sv)+1+len(typ) &&
		strings.HasPrefix(id, sv) && id[len(sv)] == '.' && strings.HasSuffix(id, typ)
}

// DerivedIDPrefix starts the IDs the service derives for events published to
// NATS without any ID; clients may not send IDs with it, so the two never collide.
const DerivedIDPrefix = "$"

// SetDerivedID gives an event that arrived without an ID one derived from its
// place in the stream.
func (e *Event) SetDerivedID(stream string, seq uint64) {
	e.EventID = DerivedIDPrefix + stream + ":" + strconv.FormatUint(seq, 10)
	e.derivedID = true
}

// CanonicalIP returns ip in its canonical text form (lower case, zeros
// compressed), so that the visitor hash of an address is the same whoever
// wrote it down, PostgreSQL's inet included. An unparsable ip is returned as is
// for Validate to reject.
func CanonicalIP(ip string) string {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	return addr.String()
}

// SanitizeUserAgent makes a user agent taken from a request header fit the
// rules: valid UTF-8, no control characters, at most MaxUserAgentLen bytes
// (cut on a character boundary).
func SanitizeUserAgent(ua string) string {
	ua = strings.ToValidUTF8(ua, "\uFFFD")
	ua = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, ua)
	if len(ua) <= MaxUserAgentLen {
		return ua
	}
	cut := MaxUserAgentLen
	for cut > 0 && !utf8.RuneStart(ua[cut]) {
		cut--
	}
	return ua[:cut]
}

// FieldError says which field of an event is wrong and why. Field is empty when
// the document as a whole is at fault (malformed JSON).
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return "event: " + e.Message
	}
	return "event: " + e.Field + ": " + e.Message
}

func fieldErr(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Message: fmt.Sprintf(format, args...)}
}

// wire is the JSON as it arrives: timestamp may be an RFC 3339 string or Unix
// milliseconds, so it is decoded by hand.
type wire struct {
	EventID      string          `json:"event_id"`
	Type         string          `json:"type"`
	AdID         string          `json:"ad_id"`
	Timestamp    json.RawMessage `json:"timestamp"`
	IP           string          `json:"ip"`
	UserAgent    string          `json:"user_agent"`
	PlaybackTime *float64        `json:"playback_time"`
	ServingID    string          `json:"serving_id"`
	ErrorCode    *int            `json:"error_code"`
	// InvalidReason is read so that Validate can check it; the HTTP intake
	// refuses it (the service decides what is invalid), publishers on NATS
	// may set it.
	InvalidReason string `json:"invalid_reason"`
	// Visitor, as InvalidReason, is the service's to set.
	Visitor string `json:"visitor"`
}

// Decode parses one JSON event. It checks only the form of each field; Validate
// checks values. Unknown fields are ignored so that newer senders keep working.
// A returned error is always a *FieldError.
func Decode(data []byte) (Event, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return Event{}, fieldErr("", "malformed JSON: expected an object")
	}
	var w wire
	// Unmarshal rejects anything after the object too.
	if err := json.Unmarshal(trimmed, &w); err != nil {
		return Event{}, jsonError(err)
	}
	ev := Event{
		EventID:       w.EventID,
		Type:          Type(w.Type),
		AdID:          w.AdID,
		IP:            w.IP,
		UserAgent:     w.UserAgent,
		ServingID:     w.ServingID,
		InvalidReason: InvalidReason(w.InvalidReason),
		Visitor:       w.Visitor,
	}
	if w.ErrorCode != nil {
		ev.ErrorCode = *w.ErrorCode
	}
	if w.PlaybackTime != nil {
		ev.PlaybackTime = *w.PlaybackTime
	}
	ts, err := parseTimestamp(w.Timestamp)
	if err != nil {
		return Event{}, err
	}
	ev.Timestamp = ts
	return ev, nil
}

func jsonError(err error) *FieldError {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		field := typeErr.Field
		if field == "" {
			return fieldErr("", "malformed JSON: expected an object")
		}
		switch typeErr.Type.Kind() {
		case reflect.Int:
			return fieldErr(field, "must be a whole number")
		case reflect.Float64:
			return fieldErr(field, "must be a number")
		}
		return fieldErr(field, "must be a %s", typeErr.Type.Kind())
	}
	return fieldErr("", "malformed JSON: %v", err)
}

func parseTimestamp(raw json.RawMessage) (time.Time, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return time.Time{}, nil
	}
	if raw[0] == '"' {
		s, ok := unquoteSimple(raw)
		if !ok {
			if err := json.Unmarshal(raw, &s); err != nil {
				return time.Time{}, fieldErr("timestamp", "must be RFC 3339 or Unix milliseconds")
			}
		}
		if s == "" {
			return time.Time{}, nil
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return time.Time{}, fieldErr("timestamp", "must be RFC 3339 (2026-11-25T12:00:00Z) or Unix milliseconds")
		}
		return t.UTC(), nil
	}
	ms, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil {
		f, ferr := strconv.ParseFloat(string(raw), 64)
		if ferr != nil || math.IsNaN(f) || math.IsInf(f, 0) || f != math.Trunc(f) || math.Abs(f) > 1<<53 {
			return time.Time{}, fieldErr("timestamp", "must be RFC 3339 or whole Unix milliseconds")
		}
		ms = int64(f)
	}
	return time.UnixMilli(ms).UTC(), nil
}

// unquoteSimple returns the content of a JSON string without escapes, the usual
// form of a timestamp, sparing a full decode; ok is false when it has escapes.
func unquoteSimple(raw []byte) (string, bool) {
	if len(raw) < 2 || raw[len(raw)-1] != '"' || bytes.IndexByte(raw[1:len(raw)-1], '\\') >= 0 {
		return "", false
	}
	return string(raw[1 : len(raw)-1]), true
}

// Limits bound an event's timestamp relative to the receive time.
type Limits struct {
	// MaxFuture is how far ahead of the receive time a timestamp may be (clock skew).
	// Zero means five minutes.
	MaxFuture time.Duration
	// MaxAge is how far behind it may be: the longest rollup retention. Zero means no bound.
	MaxAge time.Duration
}

// CheckTimestamp returns the *FieldError of a timestamp t, received at now,
// that these limits refuse (too far ahead, older than MaxAge, outside the
// years an event can have), or nil.
func (lim Limits) CheckTimestamp(t, now time.Time) error {
	if y := t.Year(); y < minYear || y > maxYear {
		return fieldErr("timestamp", "must be between the years %d and %d", minYear, maxYear)
	}
	maxFuture := lim.MaxFuture
	if maxFuture == 0 {
		maxFuture = defaultMaxFuture
	}
	if t.After(now.Add(maxFuture)) {
		return fieldErr("timestamp", "is more than %s in the future", maxFuture)
	}
	if lim.MaxAge > 0 && t.Before(now.Add(-lim.MaxAge)) {
		return fieldErr("timestamp", "is older than the retention of %s", lim.MaxAge)
	}
	return nil
}

// Validate checks every field of e against the rules in DESIGN.md section 4.
// now is the receive time. It expects defaults (event ID, timestamp) already filled.
// A returned error is always a *FieldError naming the first field at fault.
func (e *Event) Validate(now time.Time, lim Limits) error {
	if e.EventID == "" {
		return fieldErr("event_id", "is required")
	}
	if len(e.EventID) > MaxEventIDLen {
		return fieldErr("event_id", "must be at most %d characters", MaxEventIDLen)
	}
	if !printableASCII(e.EventID) {
		return fieldErr("event_id", "must be printable ASCII without spaces")
	}
	if strings.HasPrefix(e.EventID, DerivedIDPrefix) && !e.derivedID {
		return fieldErr("event_id", "must not start with %q (reserved for IDs the service derives)", DerivedIDPrefix)
	}
	if e.Type == "" {
		return fieldErr("type", "is required")
	}
	if !e.Type.Valid() {
		return fieldErr("type", "must be one of %s", typeList())
	}
	if err := ValidateAdID(e.AdID); err != nil {
		return err
	}
	if e.Timestamp.IsZero() {
		return fieldErr("timestamp", "is required")
	}
	if err := lim.CheckTimestamp(e.Timestamp, now); err != nil {
		return err
	}
	if math.IsNaN(e.PlaybackTime) || e.PlaybackTime < 0 {
		return fieldErr("playback_time", "must be at least 0")
	}
	if e.PlaybackTime > MaxPlaybackTime {
		return fieldErr("playback_time", "must be at most %g seconds", MaxPlaybackTime)
	}
	if e.IP != "" {
		addr, err := netip.ParseAddr(e.IP)
		if err != nil || addr.Zone() != "" {
			return fieldErr("ip", "is not an IP address")
		}
	}
	if len(e.UserAgent) > MaxUserAgentLen {
		return fieldErr("user_agent", "must be at most %d bytes", MaxUserAgentLen)
	}
	if !utf8.ValidString(e.UserAgent) || strings.ContainsFunc(e.UserAgent, unicode.IsControl) {
		return fieldErr("user_agent", "must be UTF-8 text without control characters")
	}
	if len(e.ServingID) > MaxServingIDLen {
		return fieldErr("serving_id", "must be at most %d characters", MaxServingIDLen)
	}
	if !printableASCII(e.ServingID) {
		return fieldErr("serving_id", "must be printable ASCII without spaces")
	}
	switch {
	case e.ErrorCode != 0 && e.Type != Error:
		return fieldErr("error_code", "is only for events of type %q", Error)
	case e.ErrorCode != 0 && (e.ErrorCode < MinErrorCode || e.ErrorCode > MaxErrorCode):
		return fieldErr("error_code", "must be a VAST error code, %d to %d", MinErrorCode, MaxErrorCode)
	}
	if e.InvalidReason != "" && !e.InvalidReason.Valid() {
		return fieldErr("invalid_reason", "must be empty or one of %s", reasonList())
	}
	if e.Visitor != "" && !validVisitor(e.Visitor) {
		return fieldErr("visitor", "must be %d lower-case hex digits", VisitorDigits)
	}
	return nil
}

// ValidateAdID checks an ad ID: 1 to 64 of [A-Za-z0-9_-], because it becomes a
// NATS subject token and a KV key token. The error is a *FieldError for "ad_id".
func ValidateAdID(id string) error {
	if id == "" {
		return fieldErr("ad_id", "is required")
	}
	if len(id) > MaxAdIDLen {
		return fieldErr("ad_id", "must be at most %d characters", MaxAdIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !isAdIDByte(c) {
			return fieldErr("ad_id", "may hold only letters, digits, '_' and '-'")
		}
	}
	return nil
}

func isAdIDByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

func reasonList() string {
	names := make([]string, len(InvalidReasons))
	for i, r := range InvalidReasons {
		names[i] = string(r)
	}
	return strings.Join(names, ", ")
}

func typeList() string {
	names := make([]string, len(Types))
	for i, t := range Types {
		names[i] = string(t)
	}
	return strings.Join(names, ", ")
}

// Subject is the stream subject the event is published on: ads.events.<type>.<ad_id>.
func (e *Event) Subject() string {
	return SubjectPrefix + string(e.Type) + "." + e.AdID
}

// Marshal encodes e in the canonical JSON form published to the stream.
func (e *Event) Marshal() ([]byte, error) {
	if b, ok := e.appendJSON(make([]byte, 0, 320)); ok {
		return b, nil
	}
	out := *e
	out.Timestamp = e.Timestamp.UTC()
	b, err := json.Marshal(&out)
	if err != nil {
		return nil, fmt.Errorf("event: marshal: %w", err)
	}
	return b, nil
}

// appendJSON is Marshal's fast path, byte for byte what json.Marshal writes
// (FuzzMarshal checks it), at a third of the cost: an event is marshalled
// once per request. ok is false when a string would need escaping or the
// playback time an exponent (or is not a number), which Marshal leaves to
// encoding/json.
func (e *Event) appendJSON(b []byte) (_ []byte, ok bool) {
	if !plainJSON(e.EventID) || !plainJSON(string(e.Type)) || !plainJSON(e.AdID) || !plainJSON(e.IP) ||
		!plainJSON(e.UserAgent) || !plainJSON(e.ServingID) || !plainJSON(string(e.InvalidReason)) || !plainJSON(e.Visitor) ||
		math.IsNaN(e.PlaybackTime) || e.PlaybackTime != 0 && (math.Abs(e.PlaybackTime) < 1e-6 || math.Abs(e.PlaybackTime) >= 1e21) {
		return nil, false
	}
	ts, err := e.Timestamp.UTC().MarshalJSON()
	if err != nil {
		return nil, false
	}
	str := func(b []byte, key, v string) []byte {
		b = append(b, key...)
		b = append(b, v...)
		return append(b, '"')
	}
	b = str(b, `{"event_id":"`, e.EventID)
	b = str(b, `,"type":"`, string(e.Type))
	b = str(b, `,"ad_id":"`, e.AdID)
	b = append(b, `,"timestamp":`...)
	b = append(b, ts...)
	if e.IP != "" {
		b = str(b, `,"ip":"`, e.IP)
	}
	if e.UserAgent != "" {
		b = str(b, `,"user_agent":"`, e.UserAgent)
	}
	b = append(b, `,"playback_time":`...)
	b = strconv.AppendFloat(b, e.PlaybackTime, 'f', -1, 64)
	if e.ServingID != "" {
		b = str(b, `,"serving_id":"`, e.ServingID)
	}
	if e.ErrorCode != 0 {
		b = append(b, `,"error_code":`...)
		b = strconv.AppendInt(b, int64(e.ErrorCode), 10)
	}
	if e.InvalidReason != "" {
		b = str(b, `,"invalid_reason":"`, string(e.InvalidReason))
	}
	if e.Visitor != "" {
		b = str(b, `,"visitor":"`, e.Visitor)
	}
	return append(b, '}'), true
}

// plainJSON reports whether s is written as it is in a JSON string by
// encoding/json: printable ASCII other than ", \, <, > and &.
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

// PlaybackMillis is the playback time in whole milliseconds, the unit rollups sum
// in so that totals never drift with floating-point rounding.
func (e *Event) PlaybackMillis() uint64 {
	return uint64(math.Round(e.PlaybackTime * 1000))
}

// VisitorHash identifies the viewer without keeping the address: a keyed
// SHA-256 of (salt, ip, user agent), cut to 64 bits for the HyperLogLog sketch.
func (e *Event) VisitorHash(salt []byte) uint64 {
	h := sha256.New()
	h.Write(salt)
	h.Write([]byte{0})
	h.Write([]byte(e.IP))
	h.Write([]byte{0})
	h.Write([]byte(e.UserAgent))
	var sum [sha256.Size]byte
	return binary.BigEndian.Uint64(h.Sum(sum[:0]))
}

// VisitorDigits is the length of Event.Visitor: a 64-bit hash in hex.
const VisitorDigits = 16

// Identity is the visitor hash the fold counts for e: the one the intake
// carried in Visitor, else the hash of its IP and user agent under salt; 0
// when it carries no identity at all (no Visitor, IP nor user agent). It is
// never 0 otherwise: one hash in 2^64 moves over to 1.
func (e *Event) Identity(salt []byte) uint64 {
	if e.Visitor != "" {
		if h, err := strconv.ParseUint(e.Visitor, 16, 64); err == nil {
			return max(h, 1)
		}
	}
	if e.IP == "" && e.UserAgent == "" {
		return 0
	}
	return max(e.VisitorHash(salt), 1)
}

// Pseudonymize keeps e's visitor identity and forgets its address: it sets
// Visitor to Identity(salt), computed from the full address, unless e
// carries one already, then truncates IP (TruncateIP). The visitor counts
// stay what they were with the full address; the address is no longer in
// the event that is published, spooled and archived.
func (e *Event) Pseudonymize(salt []byte) {
	if e.Visitor == "" {
		if h := e.Identity(salt); h != 0 {
			e.Visitor = FormatVisitor(h)
		}
	}
	e.IP = TruncateIP(e.IP)
}

// FormatVisitor writes a visitor hash as Event.Visitor holds it.
func FormatVisitor(h uint64) string {
	const digits = "0123456789abcdef"
	var b [VisitorDigits]byte
	for i := VisitorDigits - 1; i >= 0; i-- {
		b[i] = digits[h&0xf]
		h >>= 4
	}
	return string(b[:])
}

func validVisitor(s string) bool {
	if len(s) != VisitorDigits {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// Truncation prefixes: an IPv4 address keeps its /24 (the last byte is
// zeroed), an IPv6 address its /48 (a site).
const (
	TruncateBitsIPv4 = 24
	TruncateBitsIPv6 = 48
)

// TruncateIP returns ip with its host part zeroed: IPv4 to its /24, IPv6 to
// its /48, an IPv4-mapped IPv6 address (::ffff:a.b.c.d) to the /24 of its
// IPv4 address, still written mapped; a zone is dropped. Whatever does not
// parse as an address is returned empty: it cannot be truncated, so it is
// not kept.
func TruncateIP(ip string) string {
	if ip == "" {
		return ""
	}
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return ""
	}
	addr = addr.WithZone("")
	switch {
	case addr.Is4():
		p, _ := addr.Prefix(TruncateBitsIPv4)
		return p.Addr().String()
	case addr.Is4In6():
		p, _ := addr.Unmap().Prefix(TruncateBitsIPv4)
		return netip.AddrFrom16(p.Addr().As16()).String()
	default:
		p, _ := addr.Prefix(TruncateBitsIPv6)
		return p.Addr().String()
	}
}
