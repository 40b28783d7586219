package ingest

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/admetric/admetric/api/respond"
	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/ingest/pixel"
)

// gif is a transparent 1×1 GIF, what a tracking pixel answers.
var gif = []byte{
	0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
	0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
	0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
}

// ClickThroughs gives an ad's click-through URL, from memory. Safe for
// concurrent use.
type ClickThroughs interface {
	// ClickThrough returns the ad's click URL; ok is false for an unknown ad
	// or one without a click URL.
	ClickThrough(adID string) (url string, ok bool)
}

// PixelHandlers serve the URLs of AdMetric's VAST documents: GET /t/:kind,
// a tracking pixel answered with a 1×1 GIF whatever happens behind it, and
// GET /c, the click that redirects to the ad's own click URL. A pixel with a
// good signature publishes its event through the intake's path (the spool
// while NATS is down), with an event ID derived from the serving, so a pixel
// fired twice counts once; one with a bad or expired signature is published
// as invalid traffic (reason "signature"), archived but not counted as
// valid. Both are counted in admetric_pixels_total. Build with
// NewPixelHandlers.
type PixelHandlers struct {
	intake   *Handlers
	detached *DetachedPublisher // nil: each pixel waits for its PubAck
	signer   *pixel.Signer
	clicks   ClickThroughs
	outcome  *prometheus.CounterVec
	errors   *prometheus.CounterVec
	logger   *slog.Logger
	counts   map[[2]string]prometheus.Counter // outcome's children, by kind label and outcome
}

// NewPixelHandlers returns the pixel handlers, checking events as intake
// does and publishing them through detached (nil: through intake's
// publisher, each pixel waiting for its PubAck), and registering
// admetric_pixels_total with reg.
func NewPixelHandlers(intake *Handlers, detached *DetachedPublisher, signer *pixel.Signer, clicks ClickThroughs, reg prometheus.Registerer) *PixelHandlers {
	h := &PixelHandlers{intake: intake, detached: detached, signer: signer, clicks: clicks, logger: intake.logger,
		outcome: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "admetric_pixels_total",
			Help: "VAST tracking requests by kind and outcome: published, bad_signature and expired (published as invalid traffic), malformed, refused, failed.",
		}, []string{"kind", "outcome"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "admetric_vast_errors_total",
			Help: "VAST error pixels with a good signature, by the player's [ERRORCODE] (\"unknown\" when it gave none).",
		}, []string{"code"}),
	}
	reg.MustRegister(h.outcome, h.errors)
	if detached != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "admetric_pixel_publishes_in_flight",
			Help: "Tracking events answered and handed to the stream, not yet acknowledged or spooled (at most MAX_PENDING_PUBLISHES; beyond, they are spooled at once).",
		}, func() float64 { return float64(detached.InFlight()) }))
	}
	h.counts = map[[2]string]prometheus.Counter{}
	for _, k := range append([]string{"other", "clickthrough"}, typeNames()...) {
		for _, o := range []string{"published", "bad_signature", "expired", "malformed", "refused", "failed"} {
			h.counts[[2]string{k, o}] = h.outcome.WithLabelValues(k, o)
		}
	}
	return h
}

func typeNames() []string {
	var names []string
	for _, t := range event.Types {
		names = append(names, string(t))
	}
	return names
}

// count adds one to admetric_pixels_total{kind, outcome}, without hashing
// the labels for the usual ones.
func (h *PixelHandlers) count(kind, outcome string) {
	if c, ok := h.counts[[2]string{kind, outcome}]; ok {
		c.Inc()
		return
	}
	h.outcome.WithLabelValues(kind, outcome).Inc()
}

// pixelKeys are the query keys of a tracking URL that AdMetric reads.
var pixelKeys = [...]string{"ad", "sv", "exp", "sig", "ts", "ph", "code"}

// pixelQuery is what a tracking URL's query carries, read in one pass over
// the raw query: the first value of each of pixelKeys, as url.ParseQuery and
// url.Values.Get read it (FuzzPixelQuery checks), without building a map
// of every value: it is read once per pixel.
type pixelQuery [len(pixelKeys)]string

func parsePixelQuery(raw string) (q pixelQuery) {
	var seen [len(pixelKeys)]bool
	for raw != "" {
		var kv string
		kv, raw, _ = strings.Cut(raw, "&")
		if strings.Contains(kv, ";") {
			continue // as url.ParseQuery, which refuses the pair
		}
		k, v, _ := strings.Cut(kv, "=")
		k, okK := unescapeQuery(k)
		i := slices.Index(pixelKeys[:], k)
		if !okK || i < 0 || seen[i] {
			continue
		}
		if v, ok := unescapeQuery(v); ok { // else, as url.ParseQuery, the pair is skipped
			q[i], seen[i] = v, true
		}
	}
	return q
}

// unescapeQuery decodes s as a query key or value, sparing the call when
// there is nothing to decode.
func unescapeQuery(s string) (string, bool) {
	if !strings.ContainsAny(s, "%+") {
		return s, true
	}
	u, err := url.QueryUnescape(s)
	return u, err == nil
}

// get is the value of key, one of pixelKeys ("" for another); it is
// pixel.ParseQuery's lookup.
func (q *pixelQuery) get(key string) string {
	if i := slices.Index(pixelKeys[:], key); i >= 0 {
		return q[i]
	}
	return ""
}

// Register mounts GET /t/:kind and GET /c on r. A client over its rate
// limit (the intake's RateLimits.Pixels) is answered 429.
func (h *PixelHandlers) Register(r gin.IRouter) {
	r.GET("/t/:kind", h.intake.rl.limitPixels, h.track)
	r.GET("/c", h.intake.rl.limitPixels, h.click)
}

// track records one tracking pixel and answers the GIF.
func (h *PixelHandlers) track(c *gin.Context) {
	kind := c.Param("kind")
	h.count(labelKind(kind), h.record(c, kind))
	c.Header("Cache-Control", "no-store")
	c.Data(http.StatusOK, "image/gif", gif)
}

// click records the click and redirects to the ad's own click URL, never
// to one taken from the request; a bad signature still redirects, uncounted.
func (h *PixelHandlers) click(c *gin.Context) {
	target, ok := h.clicks.ClickThrough(c.Query("ad"))
	if !ok {
		respond.Error(c, http.StatusNotFound, "ad", "no ad "+c.Query("ad")+" with a click URL")
		return
	}
	h.count("clickthrough", h.record(c, string(event.Click)))
	c.Header("Cache-Control", "no-store")
	c.Redirect(http.StatusFound, target)
}

// record publishes the event of a pixel of kind and returns the outcome. A
// pixel with a good signature is its serving's event, with an ID derived from
// the serving; one with a bad or expired signature is archived as invalid
// traffic under an ID of its own, so that a forged pixel can neither count
// nor take the ID of the serving it names.
func (h *PixelHandlers) record(c *gin.Context, kind string) string {
	q := parsePixelQuery(c.Request.URL.RawQuery)
	sv, sig, err := pixel.ParseQuery(q.get)
	typ := event.Type(kind)
	if err != nil || !typ.Valid() || event.ValidateAdID(sv.AdID) != nil {
		return "malformed"
	}
	now := time.Now()
	ev := event.Event{Type: typ, AdID: sv.AdID}
	outcome := "published"
	switch err := h.signer.Verify(kind, sv, sig, now); {
	case errors.Is(err, pixel.ErrExpired):
		// Our serving, tracked too late: invalid, once per serving and kind.
		if !pixel.ValidServingID(sv.ServingID) {
			return "malformed" // signed by us, so not expected
		}
		ev.ServingID, ev.EventID = sv.ServingID, pixel.EventID(sv.ServingID, kind)+".expired"
		ev.InvalidReason, outcome = event.BadSignature, "expired"
	case err != nil:
		// Nothing in a forged URL is to be trusted but that someone sent
		// it: it names no serving (a real serving's events must not gain
		// it) and is dated on arrival, under an ID of its own.
		ev.InvalidReason, outcome = event.BadSignature, "bad_signature"
	case !pixel.ValidServingID(sv.ServingID):
		return "malformed" // signed by us, so not expected
	default:
		ev.ServingID, ev.EventID = sv.ServingID, pixel.EventID(sv.ServingID, kind)
	}
	// A player clock far off (a timestamp the event rules refuse) must not
	// lose the pixel: the event is then dated when it arrived.
	if t, ok := pixel.Timestamp(q.get("ts")); ok && outcome != "bad_signature" && h.intake.limits.CheckTimestamp(t, now) == nil {
		ev.Timestamp = t.UTC()
	}
	switch typ {
	case event.Click:
		if ph, ok := pixel.Playhead(q.get("ph")); ok && ph <= event.MaxPlaybackTime {
			ev.PlaybackTime = ph
		}
	case event.Error:
		code := "unknown"
		if n, ok := pixel.ErrorCode(q.get("code")); ok {
			ev.ErrorCode, code = n, strconv.Itoa(n)
		}
		if ev.InvalidReason == "" {
			h.errors.WithLabelValues(code).Inc()
		}
	}
	if h.intake.complete(c, &ev) != nil {
		return "refused"
	}
	// Players never retry a pixel and the GIF says nothing of the event, so
	// it need not wait for the PubAck: a detached publish completes (or
	// spools) in the background. A player that hangs up mid-publish must not
	// take the event with it.
	if h.detached != nil {
		err = h.detached.Publish(&ev)
	} else {
		_, err = h.intake.pub.Publish(context.WithoutCancel(c.Request.Context()), &ev)
	}
	if err != nil {
		// Counted in admetric_pixels_total; one line per pixel would flood the log.
		h.logger.Debug("a tracking pixel's event was not published", "kind", kind, "ad_id", ev.AdID, "err", err)
		return "failed"
	}
	return outcome
}

// labelKind bounds the kind label to the kinds AdMetric hands out.
func labelKind(kind string) string {
	if event.Type(kind).Valid() {
		return kind
	}
	return "other"
}
