// Package ingest is the write side's front door: the HTTP handlers that accept
// ad events, validate them and publish them to the event stream, answering only
// once the stream holds the event.
package ingest

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"

	"github.com/admetric/admetric/ingest/event"
)

// MaxEventBody is the largest body POST /ads/click and /ads/impression read.
const MaxEventBody = 64 << 10

// AdLookup says whether an ad exists. Implementations must be fast (in memory)
// and safe for concurrent use.
type AdLookup interface {
	Exists(adID string) bool
}

// EventPublisher stores an event in the stream; see Publisher.
type EventPublisher interface {
	Publish(ctx context.Context, ev *event.Event) (duplicate bool, err error)
}

// Handlers serve event intake. Build with NewHandlers.
type Handlers struct {
	pub    EventPublisher
	ads    AdLookup
	limits event.Limits
	logger *slog.Logger
	now    func() time.Time
}

// NewHandlers returns the intake handlers. limits bound event timestamps.
func NewHandlers(pub EventPublisher, ads AdLookup, limits event.Limits, logger *slog.Logger) *Handlers {
	return &Handlers{pub: pub, ads: ads, limits: limits, now: time.Now,
		logger: logger.With("component", "ingest")}
}

// Register mounts POST /ads/click and POST /ads/impression on r.
func (h *Handlers) Register(r gin.IRouter) {
	r.POST("/ads/click", h.accept(event.Click))
	r.POST("/ads/impression", h.accept(event.Impression))
}

// accepted is the body of a 202.
type accepted struct {
	EventID string `json:"event_id"`
	Status  string `json:"status"`
}

func (h *Handlers) accept(typ event.Type) gin.HandlerFunc {
	return func(c *gin.Context) {
		if !isJSON(c.GetHeader("Content-Type")) {
			fail(c, http.StatusUnsupportedMediaType, "", "Content-Type must be application/json")
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(c.Writer, c.Request.Body, MaxEventBody))
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				fail(c, http.StatusRequestEntityTooLarge, "", "body is larger than 64 KiB")
				return
			}
			fail(c, http.StatusBadRequest, "", "could not read the body")
			return
		}
		ev, err := event.Decode(body)
		if err != nil {
			failEvent(c, err)
			return
		}
		now := h.now()
		if ev.Type == "" {
			ev.Type = typ
		} else if ev.Type != typ {
			fail(c, http.StatusBadRequest, "type", "must be "+string(typ)+" on this endpoint (or left out)")
			return
		}
		if ev.EventID == "" {
			id, err := uuid.NewV7()
			if err != nil {
				h.logger.Error("generating an event ID", "err", err)
				fail(c, http.StatusServiceUnavailable, "", "could not generate an event ID; retry")
				return
			}
			ev.EventID = id.String()
		}
		if ev.Timestamp.IsZero() {
			ev.Timestamp = now.UTC()
		}
		if ev.IP == "" {
			ev.IP = c.ClientIP()
		}
		ev.IP = event.CanonicalIP(ev.IP)
		if ev.UserAgent == "" {
			ev.UserAgent = event.SanitizeUserAgent(c.GetHeader("User-Agent"))
		}
		if err := ev.Validate(now, h.limits); err != nil {
			failEvent(c, err)
			return
		}
		// A player clock a little ahead of ours is skew, not the future: the
		// event happened now, and dated now it shows in the current window.
		if ev.Timestamp.After(now) {
			ev.Timestamp = now.UTC()
		}
		if !h.ads.Exists(ev.AdID) {
			fail(c, http.StatusNotFound, "ad_id", "no ad "+ev.AdID)
			return
		}
		if _, err := h.pub.Publish(c.Request.Context(), &ev); err != nil {
			h.logger.Warn("publish failed", "err", err, "event_id", ev.EventID)
			c.Header("Retry-After", "1")
			fail(c, http.StatusServiceUnavailable, "", "the event store is unavailable; retry with the same event_id")
			return
		}
		c.JSON(http.StatusAccepted, accepted{EventID: ev.EventID, Status: "accepted"})
	}
}

func isJSON(contentType string) bool {
	if contentType == "" {
		return false
	}
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && (mt == "application/json" || len(mt) > 5 && mt[len(mt)-5:] == "+json")
}

// errorBody is the JSON of every 4xx and 5xx: what is wrong and, when one field
// is at fault, which.
type errorBody struct {
	Error string `json:"error"`
	Field string `json:"field,omitempty"`
}

func fail(c *gin.Context, status int, field, msg string) {
	c.AbortWithStatusJSON(status, errorBody{Error: msg, Field: field})
}

func failEvent(c *gin.Context, err error) {
	var fe *event.FieldError
	if errors.As(err, &fe) {
		fail(c, http.StatusBadRequest, fe.Field, fe.Message)
		return
	}
	fail(c, http.StatusBadRequest, "", err.Error())
}
