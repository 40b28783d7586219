package access

import (
	"crypto/subtle"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/admetric/admetric/api/respond"
)

// Guard stands before the read routes (GET /ads, GET /ads/:id, GET
// /ads/analytics) and gives each request its Scope.
//
// Read access is closed when the shared token is set: a request must then
// carry "Authorization: Bearer <token>" with the shared token or the admin
// token (every ad) or a scoped token (its ads). It is open otherwise: a
// request without a token reads every ad. Either way a request that
// presents a scoped token (TokenPrefix) is held to that token's ads, and a
// revoked or expired one is refused: an advertiser's view does not depend on
// the setting.
//
// Every refusal is the same 401 whatever the reason (no token, a wrong,
// expired or revoked one), so that an answer tells nothing of which tokens
// exist.
type Guard struct {
	shared, admin *Hash // nil when not configured
	tokens        *Tokens
	now           func() time.Time
}

// NewGuard returns a guard: sharedToken (ANALYTICS_TOKEN) closes read access
// when not empty; adminToken (ADMIN_TOKEN), when not empty, reads every ad;
// tokens holds the scoped tokens (nil: none).
func NewGuard(sharedToken, adminToken string, tokens *Tokens) *Guard {
	g := &Guard{tokens: tokens, now: time.Now}
	if sharedToken != "" {
		h := HashToken(sharedToken)
		g.shared = &h
	}
	if adminToken != "" {
		h := HashToken(adminToken)
		g.admin = &h
	}
	return g
}

// Closed reports whether reading needs a token.
func (g *Guard) Closed() bool { return g.shared != nil }

// Require is the middleware: it sets the request's Scope, or answers 401.
func (g *Guard) Require(c *gin.Context) {
	scope, ok := g.scope(c.GetHeader("Authorization"))
	if !ok {
		c.Header("WWW-Authenticate", `Bearer realm="admetric"`)
		respond.Error(c, http.StatusUnauthorized, "Authorization", "a valid bearer token is required to read this")
		return
	}
	setScope(c, scope)
	c.Next()
}

// scope returns the scope an Authorization header value grants; ok is false
// when the request must be refused.
func (g *Guard) scope(header string) (Scope, bool) {
	token, bearer := BearerToken(header)
	if !bearer {
		// Open reads ignore other schemes (a proxy's Basic credentials, say).
		return Every(), !g.Closed()
	}
	// Both sides are hashed first, so the comparisons take the same time
	// whatever the lengths; the configured tokens may be short, guessable
	// text, so they are compared in constant time.
	h := HashToken(token)
	if g.shared != nil && subtle.ConstantTimeCompare(h[:], g.shared[:]) == 1 ||
		g.admin != nil && subtle.ConstantTimeCompare(h[:], g.admin[:]) == 1 {
		return Every(), true
	}
	if IsScopedToken(token) {
		if g.tokens == nil {
			return Only(), false
		}
		return g.tokens.Lookup(h, g.now())
	}
	// Another bearer token: with reads open it is not ours to judge (a
	// proxy's, say), so it reads as no token at all.
	return Every(), !g.Closed()
}
