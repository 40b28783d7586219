// Package ingest is the write side's front door: the HTTP handlers that accept
// ad events, validate them and publish them to the event stream, answering only
// once the stream (or, while it is down, the local spool) holds the event.
package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/cors"

	"github.com/admetric/admetric/api/respond"
	"github.com/admetric/admetric/ingest/event"
)

// Body limits: one event, and a batch of up to MaxBatchEvents.
const (
	MaxEventBody   = 64 << 10
	MaxBatchBody   = 1 << 20
	MaxBatchEvents = 1000
)

// AdLookup says whether an ad exists, and how long its video is.
// Implementations must be fast (in memory) and safe for concurrent use.
type AdLookup interface {
	Exists(adID string) bool
	// Duration is the ad's video length in seconds, 0 when not known.
	Duration(adID string) float64
}

// EventPublisher makes an event durable; see Publisher.
type EventPublisher interface {
	Publish(ctx context.Context, ev *event.Event) (Result, error)
}

// HandlersOptions configure the intake handlers.
type HandlersOptions struct {
	// Limits bound event timestamps.
	Limits event.Limits
	// AllowedOrigins are the browser origins whose pages may POST events
	// (CORS, without credentials): "*" for any, else origins such as
	// https://player.example.com. Empty allows the service's own pages only.
	AllowedOrigins []string
	// Logger is required.
	Logger *slog.Logger
	// TruncateIPs: every accepted event gets its visitor hash computed
	// from the full address (under VisitorSalt, the rollup writers' salt),
	// then its address truncated (event.Pseudonymize), before it is
	// published, spooled or logged.
	TruncateIPs bool
	// VisitorSalt keys the visitor hash; required with TruncateIPs.
	VisitorSalt []byte
	// RateLimits limit each client's events and pixels; zero: no limits.
	RateLimits RateLimits
	// Registerer, when set, registers the rate limits' metrics.
	Registerer prometheus.Registerer
}

// Handlers serve event intake. Build with NewHandlers.
type Handlers struct {
	pub    EventPublisher
	ads    AdLookup
	limits event.Limits
	cors   *cors.Cors // nil: no cross-origin requests
	// salt is the visitor salt when addresses are truncated, else nil.
	salt   []byte
	logger *slog.Logger
	rl     *rateLimits
}

// NewHandlers returns the intake handlers.
func NewHandlers(pub EventPublisher, ads AdLookup, opts HandlersOptions) *Handlers {
	h := &Handlers{pub: pub, ads: ads, limits: opts.Limits, logger: opts.Logger.With("component", "ingest"),
		rl: newRateLimits(opts.RateLimits, opts.Registerer)}
	if opts.TruncateIPs {
		h.salt = append([]byte{}, opts.VisitorSalt...)
	}
	if len(opts.AllowedOrigins) > 0 {
		h.cors = cors.New(cors.Options{
			AllowedOrigins: opts.AllowedOrigins,
			AllowedMethods: []string{http.MethodPost},
			AllowedHeaders: []string{"Content-Type"},
			MaxAge:         600,
		})
	}
	return h
}

// Register mounts POST /ads/click, /ads/impression and /ads/events on r.
// A browser's POST from a page of another origin is refused (403) unless
// AllowedOrigins has that origin; when it has, the answer carries the CORS
// headers and the route also answers the browser's preflight (OPTIONS).
// A client over its rate limit (HandlersOptions.RateLimits) is answered 429.
func (h *Handlers) Register(r gin.IRouter) {
	routes := []struct {
		path   string
		handle gin.HandlerFunc
	}{
		{"/ads/click", h.accept(event.Click)},
		{"/ads/impression", h.accept(event.Impression)},
		{"/ads/events", h.acceptBatch},
	}
	for _, rt := range routes {
		r.POST(rt.path, h.checkOrigin, h.rl.limitEvents, rt.handle)
		if h.cors != nil {
			r.OPTIONS(rt.path, h.checkOrigin)
		}
	}
}

// checkOrigin refuses a request whose Origin (which browsers send, and
// other clients do not) is neither the service's own nor an allowed one:
// CORS alone would not stop a page from posting, since a text/plain POST
// needs no preflight. An allowed origin gets the CORS headers, and its
// preflight is answered here, with 204.
func (h *Handlers) checkOrigin(c *gin.Context) {
	origin := c.GetHeader("Origin")
	if origin == "" || sameOrigin(origin, c.Request.Host) {
		return
	}
	if h.cors == nil || !h.cors.OriginAllowed(c.Request) {
		respond.Error(c, http.StatusForbidden, "Origin", "pages of "+origin+" may not post events here (CORS_ALLOWED_ORIGINS)")
		return
	}
	h.cors.HandlerFunc(c.Writer, c.Request)
	if c.Request.Method == http.MethodOptions {
		c.AbortWithStatus(http.StatusNoContent)
	}
}

// sameOrigin reports whether origin names the host the request was sent to.
func sameOrigin(origin, host string) bool {
	u, err := url.Parse(origin)
	return err == nil && u.Host != "" && strings.EqualFold(u.Host, host)
}

// accepted is the body of a 202.
type accepted struct {
	EventID string `json:"event_id"`
	Status  Status `json:"status"`
}

// rejection is why one event was turned away: the HTTP status it earns alone,
// and the field at fault.
type rejection struct {
	status int
	field  string
	msg    string
}

// accept answers a POST of one event of type typ: 202 once the event is in the
// stream or the spool, else the rejection or the publish failure as JSON.
func (h *Handlers) accept(typ event.Type) gin.HandlerFunc {
	return func(c *gin.Context) {
		body, ok := readJSONBody(c, MaxEventBody, "64 KiB")
		if !ok {
			return
		}
		ev, rej := h.prepare(c, body, typ)
		if rej != nil {
			respond.Error(c, rej.status, rej.field, rej.msg)
			return
		}
		res, err := h.pub.Publish(c.Request.Context(), &ev)
		if err != nil {
			status, msg := h.publishFailure(err, ev.EventID)
			c.Header("Retry-After", "1")
			respond.Error(c, status, "", msg)
			return
		}
		c.Data(http.StatusAccepted, "application/json; charset=utf-8", appendAccepted(make([]byte, 0, 96), ev.EventID, res.Status))
	}
}

// appendAccepted appends the 202 body, {"event_id":...,"status":...}, without
// reflection: it is written once per event, the hottest answer there is. Event
// IDs are printable ASCII (validated), where Go quoting and JSON agree.
func appendAccepted(b []byte, eventID string, status Status) []byte {
	b = append(b, `{"event_id":`...)
	b = strconv.AppendQuote(b, eventID)
	b = append(b, `,"status":"`...)
	b = append(b, status...)
	return append(b, `"}`...)
}

// readJSONBody checks the Content-Type and reads at most limit bytes, answering
// the request itself when it cannot.
func readJSONBody(c *gin.Context, limit int64, limitText string) ([]byte, bool) {
	if !isJSON(c.GetHeader("Content-Type")) {
		respond.Error(c, http.StatusUnsupportedMediaType, "", "Content-Type must be application/json, or text/plain as navigator.sendBeacon sends")
		return nil, false
	}
	body, err := io.ReadAll(http.MaxBytesReader(c.Writer, c.Request.Body, limit))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			respond.Error(c, http.StatusRequestEntityTooLarge, "", "body is larger than "+limitText)
			return nil, false
		}
		respond.Error(c, http.StatusBadRequest, "", "could not read the body")
		return nil, false
	}
	return body, true
}

// prepare decodes and completes one event: the endpoint's type when typ is set
// (the batch endpoint passes ""), a generated event_id, the receive time, the
// connection's IP and User-Agent, then validation and the ad's existence.
func (h *Handlers) prepare(c *gin.Context, raw []byte, typ event.Type) (event.Event, *rejection) {
	ev, err := event.Decode(raw)
	if err != nil {
		return ev, eventRejection(err)
	}
	if ev.InvalidReason != "" {
		return ev, &rejection{http.StatusBadRequest, "invalid_reason", "is decided by the service: leave it out"}
	}
	if ev.Visitor != "" {
		return ev, &rejection{http.StatusBadRequest, "visitor", "is computed by the service: leave it out"}
	}
	switch {
	case typ == "":
	case ev.Type == "":
		ev.Type = typ
	case ev.Type != typ:
		return ev, &rejection{http.StatusBadRequest, "type", "must be " + string(typ) + " on this endpoint (or left out)"}
	}
	return ev, h.complete(c, &ev)
}

// complete fills in what the client left out of ev (a generated event ID,
// the receive time, the connection's IP and User-Agent), validates it and
// checks that its ad exists.
func (h *Handlers) complete(c *gin.Context, ev *event.Event) *rejection {
	now := time.Now()
	if ev.EventID == "" {
		id, err := uuid.NewV7()
		if err != nil {
			h.logger.Error("generating an event ID", "err", err)
			return &rejection{http.StatusServiceUnavailable, "", "could not generate an event ID; retry"}
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
		return eventRejection(err)
	}
	// A player clock a little ahead of ours is skew, not the future: the
	// event happened now, and dated now it shows in the current window.
	if ev.Timestamp.After(now) {
		ev.Timestamp = now.UTC()
	}
	if !h.ads.Exists(ev.AdID) {
		return &rejection{http.StatusNotFound, "ad_id", "no ad " + ev.AdID}
	}
	// Invalid traffic the intake can tell (see event.Playback): the ad's
	// duration is the catalog's, which the stream does not carry.
	if ev.Type == event.Click && ev.InvalidReason == "" {
		if d := h.ads.Duration(ev.AdID); d > 0 && ev.PlaybackTime > d {
			ev.InvalidReason = event.Playback
		}
	}
	if h.salt != nil {
		ev.Pseudonymize(h.salt)
	}
	return nil
}

// publishFailure maps a publisher error to a status and message, logging the
// unexpected ones (the expected ones are counted in metrics).
func (h *Handlers) publishFailure(err error, eventID string) (int, string) {
	switch {
	case errors.Is(err, ErrBusy):
		return http.StatusServiceUnavailable, "too many events in flight; retry with the same event_id"
	case errors.Is(err, ErrSpoolFull):
		return http.StatusServiceUnavailable, "the event store is unavailable and the local spool is full; retry with the same event_id"
	default:
		h.logger.Warn("publish failed", "err", err, "event_id", eventID)
		return http.StatusServiceUnavailable, "the event store is unavailable; retry with the same event_id"
	}
}

// itemResult is one event's outcome in a batch answer.
type itemResult struct {
	Index   int    `json:"index"`
	EventID string `json:"event_id,omitempty"`
	Status  string `json:"status"` // accepted, spooled, rejected, or unavailable (retry it)
	Code    int    `json:"code"`   // the HTTP status the event alone would have got
	Error   string `json:"error,omitempty"`
	Field   string `json:"field,omitempty"`
}

// batchAnswer is the body of POST /ads/events.
type batchAnswer struct {
	Accepted    int          `json:"accepted"`
	Spooled     int          `json:"spooled"`
	Rejected    int          `json:"rejected"`
	Unavailable int          `json:"unavailable"`
	Results     []itemResult `json:"results"`
}

// acceptBatch takes a JSON array of up to MaxBatchEvents events of any type.
// Each event stands alone: a bad one is rejected with its field, the others are
// published concurrently (sharing the connection's pipeline). The answer is 200
// with a result per item, in order, unless the body itself is unusable.
func (h *Handlers) acceptBatch(c *gin.Context) {
	raws, ok := readBatch(c)
	if !ok || !h.rl.allow(c, h.rl.Events, min(len(raws), h.rl.Events.Burst())-1) { // one was spent at the door
		return
	}
	ans := tally(h.publishBatch(c, raws))
	if ans.Unavailable > 0 {
		c.Header("Retry-After", "1")
	}
	c.JSON(http.StatusOK, ans)
}

// readBatch reads the batch body and splits it into its items, answering the
// request itself when the body as a whole is unusable.
func readBatch(c *gin.Context) ([]json.RawMessage, bool) {
	body, ok := readJSONBody(c, MaxBatchBody, "1 MiB")
	if !ok {
		return nil, false
	}
	var raws []json.RawMessage
	if err := json.Unmarshal(body, &raws); err != nil {
		respond.Error(c, http.StatusBadRequest, "", "body must be a JSON array of events")
		return nil, false
	}
	if len(raws) == 0 {
		respond.Error(c, http.StatusBadRequest, "", "the batch is empty")
		return nil, false
	}
	if len(raws) > MaxBatchEvents {
		respond.Error(c, http.StatusRequestEntityTooLarge, "", fmt.Sprintf("a batch holds at most %d events, not %d", MaxBatchEvents, len(raws)))
		return nil, false
	}
	return raws, true
}

// publishBatch prepares every item and publishes the valid ones concurrently,
// returning each item's outcome in order once all publishes have answered.
func (h *Handlers) publishBatch(c *gin.Context, raws []json.RawMessage) []itemResult {
	results := make([]itemResult, len(raws))
	var wg sync.WaitGroup
	for i, raw := range raws {
		ev, rej := h.prepare(c, raw, "")
		results[i] = itemResult{Index: i, EventID: ev.EventID}
		if rej != nil {
			results[i].Status, results[i].Code, results[i].Error, results[i].Field = "rejected", rej.status, rej.msg, rej.field
			if rej.status >= 500 {
				results[i].Status = "unavailable"
			}
			continue
		}
		wg.Go(func() {
			res, err := h.pub.Publish(c.Request.Context(), &ev)
			if err != nil {
				code, msg := h.publishFailure(err, ev.EventID)
				results[i].Status, results[i].Code, results[i].Error = "unavailable", code, msg
				return
			}
			results[i].Status, results[i].Code = string(res.Status), http.StatusAccepted
		})
	}
	wg.Wait()
	return results
}

// tally counts the outcomes of a batch into its answer.
func tally(results []itemResult) batchAnswer {
	ans := batchAnswer{Results: results}
	for _, r := range results {
		switch r.Status {
		case string(Accepted):
			ans.Accepted++
		case string(Spooled):
			ans.Spooled++
		case "rejected":
			ans.Rejected++
		default:
			ans.Unavailable++
		}
	}
	return ans
}

// isJSON reports whether a body of contentType is taken as JSON: JSON's own
// types, and text/plain, which navigator.sendBeacon and fetch without a
// preflight send.
func isJSON(contentType string) bool {
	if contentType == "" {
		return false
	}
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && (mt == "application/json" || mt == "text/plain" || strings.HasSuffix(mt, "+json"))
}

func eventRejection(err error) *rejection {
	var fe *event.FieldError
	if errors.As(err, &fe) {
		return &rejection{http.StatusBadRequest, fe.Field, fe.Message}
	}
	return &rejection{http.StatusBadRequest, "", err.Error()}
}
