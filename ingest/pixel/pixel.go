// Package pixel is what AdMetric's VAST tracking URLs carry and how it reads
// them back: the serving they belong to (the ad, the AdServingId of one VAST
// response and an expiry), signed so that nobody can forge one; the macros a
// player fills in ([ADPLAYHEAD], [TIMESTAMP], [ERRORCODE]); and the event ID
// an event of a serving derives, so that a pixel fired twice counts once.
//
// It imports nothing of the module: the VAST documents (package api) sign
// with it and the pixel routes (package ingest) verify with it.
package pixel

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
)

// Errors of Verify.
var (
	// ErrBadSignature: the URL's signature does not match what it names, or
	// is missing or malformed.
	ErrBadSignature = errors.New("pixel: bad signature")
	// ErrExpired: the signature is good but the serving's tracking expired.
	ErrExpired = errors.New("pixel: expired")
)

// MinSecretLen is the shortest secret NewSigner takes, in bytes.
const MinSecretLen = 16

// servingPrefix starts every AdServingId AdMetric issues.
const servingPrefix = "admetric-"

// NewServingID returns a fresh AdServingId: "admetric-" and a random UUID.
func NewServingID() string { return servingPrefix + uuid.NewString() }

// Serving is what a tracking URL is signed for: one ad in one VAST response,
// trackable until Expires.
type Serving struct {
	AdID      string
	ServingID string
	Expires   time.Time // kept to the second
}

// Signer signs and verifies tracking URLs with an HMAC-SHA256 key. Safe for
// concurrent use.
type Signer struct {
	key  []byte
	macs sync.Pool // of keyed hash.Hash, Reset to the key's state
}

// NewSigner returns a signer keyed by secret, which must be at least
// MinSecretLen bytes. The signer keeps its own copy.
func NewSigner(secret []byte) (*Signer, error) {
	if len(secret) < MinSecretLen {
		return nil, fmt.Errorf("pixel: the signing secret has %d bytes, want at least %d", len(secret), MinSecretLen)
	}
	return &Signer{key: append([]byte(nil), secret...)}, nil
}

// sigLen is the bytes of the HMAC kept in a URL: 128 bits are beyond
// guessing and keep tracking URLs short.
const sigLen = 16

// Sign returns the signature of what, a tracking URL's kind (an event type,
// "click" or "error"), for sv: base64url without padding.
func (s *Signer) Sign(what string, sv Serving) string {
	return base64.RawURLEncoding.EncodeToString(s.mac(what, sv))
}

// Verify checks sig against what and sv, then sv's expiry against now. It
// returns nil, ErrBadSignature or ErrExpired; the signature is compared in
// constant time.
func (s *Signer) Verify(what string, sv Serving, sig string, now time.Time) error {
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || len(got) != sigLen || !hmac.Equal(got, s.mac(what, sv)) {
		return ErrBadSignature
	}
	if !now.Before(sv.Expires) {
		return ErrExpired
	}
	return nil
}

// Query returns the signed query of a tracking URL of what for sv:
// ad, sv (the serving ID), exp (Unix seconds) and sig. Ad IDs, serving IDs
// and signatures are URL-safe as they are. ParseQuery reads it back.
func (s *Signer) Query(what string, sv Serving) string {
	return "ad=" + sv.AdID + "&sv=" + sv.ServingID + "&exp=" + strconv.FormatInt(sv.Expires.Unix(), 10) +
		"&sig=" + s.Sign(what, sv)
}

// ErrMalformed: a tracking URL's query lacks what Query puts in it.
var ErrMalformed = errors.New("pixel: malformed tracking URL")

// ParseQuery reads back what Query wrote, get being the query's lookup
// (url.Values.Get, gin.Context.Query): the serving and its signature, to
// check with Verify. It fails with ErrMalformed when exp is not a number.
func ParseQuery(get func(key string) string) (sv Serving, sig string, err error) {
	exp, err := strconv.ParseInt(get("exp"), 10, 64)
	if err != nil {
		return Serving{}, "", ErrMalformed
	}
	return Serving{AdID: get("ad"), ServingID: get("sv"), Expires: time.Unix(exp, 0)}, get("sig"), nil
}

func (s *Signer) mac(what string, sv Serving) []byte {
	h, _ := s.macs.Get().(hash.Hash)
	if h == nil {
		h = hmac.New(sha256.New, s.key)
	} else {
		h.Reset()
	}
	// NUL cannot occur in any field (ad IDs, serving IDs and kinds are
	// checked tokens), so the fields cannot run into each other.
	var buf [256]byte
	b := append(buf[:0], what...)
	b = append(b, 0)
	b = append(b, sv.AdID...)
	b = append(b, 0)
	b = append(b, sv.ServingID...)
	b = append(b, 0)
	b = strconv.AppendInt(b, sv.Expires.Unix(), 10)
	h.Write(b)
	var sum [sha256.Size]byte
	out := h.Sum(sum[:0])[:sigLen]
	s.macs.Put(h)
	return out
}

// EventID is the event ID of the event typ of the serving servingID: the
// same for every firing of one pixel, so the stream's and the archive's
// deduplication count it once.
func EventID(servingID, typ string) string { return servingID + "." + typ }

// ValidServingID reports whether id has the form NewServingID gives.
func ValidServingID(id string) bool {
	rest, ok := strings.CutPrefix(id, servingPrefix)
	if !ok {
		return false
	}
	_, err := uuid.Parse(rest)
	return err == nil && len(rest) == 36
}

// unknown reports whether a macro's value means "not known": -1 (unknown),
// -2 (withheld), empty, or the macro itself left unreplaced by the player
// (as given, or still percent-encoded).
func unknown(v string) bool {
	switch v {
	case "", "-1", "-2":
		return true
	}
	return strings.HasPrefix(v, "[") || strings.HasPrefix(strings.ToUpper(v), "%5B")
}

// Playhead parses an [ADPLAYHEAD] value, HH:MM:SS.mmm (the milliseconds
// optional), into seconds. ok is false when the value means unknown or is
// malformed: a pixel is never refused for its macros.
func Playhead(v string) (seconds float64, ok bool) {
	if unknown(v) {
		return 0, false
	}
	hms, frac, hasFrac := strings.Cut(v, ".")
	parts := strings.Split(hms, ":")
	if len(parts) != 3 {
		return 0, false
	}
	var total int
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || len(p) != 2 || (i > 0 && n > 59) {
			return 0, false
		}
		total = total*60 + n
	}
	seconds = float64(total)
	if hasFrac {
		if len(frac) != 3 {
			return 0, false
		}
		ms, err := strconv.Atoi(frac)
		if err != nil || ms < 0 {
			return 0, false
		}
		seconds += float64(ms) / 1000
	}
	return seconds, true
}

// Timestamp parses a [TIMESTAMP] value, ISO 8601 with a time zone
// (2026-12-07T08:15:07.127+01:00). ok is false when the value means unknown
// or is malformed.
func Timestamp(v string) (t time.Time, ok bool) {
	if unknown(v) {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, false
	}
	return t, true
}

// ErrorCode parses an [ERRORCODE] value: a VAST error code, 100 to 999. ok
// is false when the value means unknown or is not such a code.
func ErrorCode(v string) (code int, ok bool) {
	if unknown(v) {
		return 0, false
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 100 || n > 999 {
		return 0, false
	}
	return n, true
}
