package access

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"

	"github.com/admetric/admetric/api/respond"
	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/store/postgres"
)

// TokenHandlers serve POST /tokens, GET /tokens and DELETE /tokens/:id, each
// with the admin token. Build with NewTokenHandlers.
type TokenHandlers struct {
	tokens       *Tokens
	requireAdmin gin.HandlerFunc
	logger       *slog.Logger
	now          func() time.Time
}

// NewTokenHandlers returns the token handlers. An empty adminToken disables
// them (403).
func NewTokenHandlers(tokens *Tokens, adminToken string, logger *slog.Logger) *TokenHandlers {
	return &TokenHandlers{tokens: tokens, requireAdmin: AdminOnly(adminToken, "token management"),
		logger: logger.With("component", "access"), now: time.Now}
}

// Register mounts the token routes on r.
func (h *TokenHandlers) Register(r gin.IRouter) {
	g := r.Group("/tokens", h.requireAdmin)
	g.POST("", h.create)
	g.GET("", h.list)
	g.DELETE("/:id", h.delete)
}

// AdminOnly returns the middleware of the management routes (what names
// them in the 403): a request must carry "Authorization: Bearer
// <adminToken>", or it is answered 401; with no adminToken every request is
// answered 403. Both sides are hashed first, so the comparison takes the same
// time whatever the lengths.
func AdminOnly(adminToken, what string) gin.HandlerFunc {
	if adminToken == "" {
		return func(c *gin.Context) {
			respond.Error(c, http.StatusForbidden, "", what+" is disabled: the server has no ADMIN_TOKEN")
		}
	}
	admin := HashToken(adminToken)
	return func(c *gin.Context) {
		token, _ := BearerToken(c.GetHeader("Authorization"))
		sum := HashToken(token)
		if token == "" || subtle.ConstantTimeCompare(sum[:], admin[:]) != 1 {
			c.Header("WWW-Authenticate", `Bearer realm="admetric"`)
			respond.Error(c, http.StatusUnauthorized, "Authorization", "a valid admin bearer token is required")
			return
		}
		c.Next()
	}
}

// TokenInfo is a scoped token as GET /tokens lists it: never the token.
type TokenInfo struct {
	ID        string     `json:"id"`
	Name      string     `json:"name"`
	AdIDs     []string   `json:"ad_ids"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	Expired   bool       `json:"expired"`
}

// CreatedToken is the answer to POST /tokens: the token, shown this once.
type CreatedToken struct {
	TokenInfo
	Token string `json:"token"`
}

// tokenInput is the body of POST /tokens.
type tokenInput struct {
	Name      string     `json:"name"`
	AdIDs     []string   `json:"ad_ids"`
	ExpiresAt *time.Time `json:"expires_at"`
}

// Bounds of POST /tokens.
const (
	maxTokenBody = 64 << 10
	maxTokenName = 200
	maxTokenAds  = 1000
)

// check validates and normalizes the input: the name trimmed, the ad IDs
// sorted and without repeats; it returns the field at fault and what is wrong.
func (in *tokenInput) check(now time.Time) (field, msg string) {
	in.Name = strings.TrimSpace(in.Name)
	switch {
	case in.Name == "":
		return "name", "is required"
	case len(in.Name) > maxTokenName:
		return "name", fmt.Sprintf("must be at most %d bytes", maxTokenName)
	case !utf8.ValidString(in.Name) || strings.ContainsFunc(in.Name, unicode.IsControl):
		return "name", "must be valid UTF-8 without control characters"
	case len(in.AdIDs) == 0:
		return "ad_ids", "must name at least one ad"
	case len(in.AdIDs) > maxTokenAds:
		return "ad_ids", fmt.Sprintf("must name at most %d ads", maxTokenAds)
	case in.ExpiresAt != nil && !in.ExpiresAt.After(now):
		return "expires_at", "must be in the future"
	}
	for _, id := range in.AdIDs {
		if err := event.ValidateAdID(id); err != nil {
			var fe *event.FieldError
			if errors.As(err, &fe) {
				return "ad_ids", fmt.Sprintf("%q %s", id, fe.Message)
			}
			return "ad_ids", err.Error()
		}
	}
	slices.Sort(in.AdIDs)
	in.AdIDs = slices.Compact(in.AdIDs)
	return "", ""
}

func (h *TokenHandlers) create(c *gin.Context) {
	var in tokenInput
	c.Request.Body = http.MaxBytesReader(c.Writer, c.Request.Body, maxTokenBody)
	if err := c.ShouldBindJSON(&in); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			respond.Error(c, http.StatusRequestEntityTooLarge, "", "body is larger than 64 KiB")
			return
		}
		respond.Error(c, http.StatusBadRequest, "", "malformed JSON: "+err.Error())
		return
	}
	now := h.now()
	if field, msg := in.check(now); field != "" {
		respond.Error(c, http.StatusBadRequest, field, msg)
		return
	}
	id, err := uuid.NewV7()
	if err != nil {
		h.failed(c, err)
		return
	}
	secret, hash := NewToken()
	tok := &postgres.ReadToken{ID: id.String(), Name: in.Name, AdIDs: in.AdIDs, Hash: hash[:], ExpiresAt: in.ExpiresAt}
	if tok.ExpiresAt != nil {
		at := tok.ExpiresAt.UTC()
		tok.ExpiresAt = &at
	}
	if err := h.tokens.Create(c.Request.Context(), tok); err != nil {
		h.failed(c, err)
		return
	}
	h.logger.Info("read token created", "id", tok.ID, "name", tok.Name, "ads", len(tok.AdIDs))
	c.JSON(http.StatusCreated, CreatedToken{TokenInfo: info(*tok, now), Token: secret})
}

func (h *TokenHandlers) list(c *gin.Context) {
	now := h.now()
	all := h.tokens.List()
	out := make([]TokenInfo, len(all))
	for i, tok := range all {
		out[i] = info(tok, now)
	}
	c.JSON(http.StatusOK, gin.H{"tokens": out})
}

func (h *TokenHandlers) delete(c *gin.Context) {
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		respond.Error(c, http.StatusNotFound, "id", "no such token")
		return
	}
	if err := h.tokens.Revoke(c.Request.Context(), id.String()); err != nil {
		h.failed(c, err)
		return
	}
	h.logger.Info("read token revoked", "id", id.String())
	c.Status(http.StatusNoContent)
}

// failed maps a store error to its answer, and logs it once when it is the
// server's fault.
func (h *TokenHandlers) failed(c *gin.Context, err error) {
	switch {
	case errors.Is(err, postgres.ErrNotFound):
		respond.Error(c, http.StatusNotFound, "id", "no such token")
	case errors.Is(err, context.Canceled):
		c.Abort()
	case postgres.IsDataError(err):
		h.logger.Warn("the database refused a read token", "err", err)
		respond.Error(c, http.StatusBadRequest, "", "a value cannot be stored")
	default:
		h.logger.Error("read token query failed", "err", err)
		c.Header("Retry-After", "5")
		respond.Error(c, http.StatusServiceUnavailable, "", "the database is unavailable")
	}
}

func info(tok postgres.ReadToken, now time.Time) TokenInfo {
	return TokenInfo{ID: tok.ID, Name: tok.Name, AdIDs: tok.AdIDs, CreatedAt: tok.CreatedAt, ExpiresAt: tok.ExpiresAt,
		Expired: tok.ExpiresAt != nil && !now.Before(*tok.ExpiresAt)}
}
