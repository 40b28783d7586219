package access

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"strings"
)

// TokenPrefix starts every scoped read token, so that one is recognized in
// a configuration file or a secret scanner's findings.
const TokenPrefix = "amr_"

// tokenBytes is how much randomness a scoped token holds.
const tokenBytes = 32

// tokenLen is the length of a scoped token: the prefix and its random bytes
// in unpadded base64url.
var tokenLen = len(TokenPrefix) + base64.RawURLEncoding.EncodedLen(tokenBytes)

// Hash is the SHA-256 of a token: what is stored and compared. A token of
// 256 random bits needs no slow, salted hash: no guess can hit one.
type Hash [sha256.Size]byte

// HashToken returns the hash of token.
func HashToken(token string) Hash { return sha256.Sum256([]byte(token)) }

// NewToken returns a new scoped token and its hash.
func NewToken() (string, Hash) {
	b := make([]byte, tokenBytes)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24)
	token := TokenPrefix + base64.RawURLEncoding.EncodeToString(b)
	return token, HashToken(token)
}

// IsScopedToken reports whether s has the form of a scoped token: the
// prefix and 43 base64url characters.
func IsScopedToken(s string) bool {
	rest, ok := strings.CutPrefix(s, TokenPrefix)
	if !ok || len(s) != tokenLen {
		return false
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(rest)
	return err == nil && len(b) == tokenBytes
}

// BearerToken returns the token of an Authorization header value
// "Bearer <token>"; ok is false for any other scheme, an empty token, or a
// token with spaces in it. The scheme is case-insensitive (RFC 9110 11.1).
func BearerToken(header string) (token string, ok bool) {
	scheme, token, found := strings.Cut(header, " ")
	if !found || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimLeft(token, " ")
	if token == "" || strings.ContainsAny(token, " \t") {
		return "", false
	}
	return token, true
}
