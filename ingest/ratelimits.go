package ingest

import (
	"net/http"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/admetric/admetric/api/respond"
	"github.com/admetric/admetric/ingest/ratelimit"
)

// RateLimits are the per-client limits of the intake, keyed on the client's
// address as Gin's ClientIP gives it: the connection's, or X-Forwarded-For's
// from a trusted proxy. A request over its limit is answered 429 with
// Retry-After (whole seconds), before anything of it is published.
type RateLimits struct {
	// Events limits each client's events on POST /ads/click, /ads/impression
	// and /ads/events. An event costs a token, a batch one token per event
	// (capped at the burst): one at the door, before its body is read, the
	// rest once its items are counted. nil: no limit.
	Events *ratelimit.Limiter
	// Pixels limits each client's GET /t/:kind and GET /c, a token each.
	// nil: no limit.
	Pixels *ratelimit.Limiter
}

// limitedRoutes are the routes a RateLimits limits, the label values of
// admetric_rate_limited_total.
var limitedRoutes = [...]string{"/ads/click", "/ads/impression", "/ads/events", "/t/:kind", "/c"}

// rateLimits applies RateLimits and counts what they refuse.
type rateLimits struct {
	RateLimits
	limited map[string]prometheus.Counter // by route
}

func newRateLimits(l RateLimits, reg prometheus.Registerer) *rateLimits {
	limited := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "admetric_rate_limited_total",
		Help: "Requests answered 429 because their client (address) was over its rate limit (INTAKE_RATE_LIMIT, PIXEL_RATE_LIMIT), by route.",
	}, []string{"route"})
	clients := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "admetric_rate_limit_clients",
		Help: "Client addresses whose token buckets the rate limits remember (at most RATE_LIMIT_MAX_CLIENTS per limit), events and pixels together.",
	}, func() float64 { return float64(l.Events.Clients() + l.Pixels.Clients()) })
	if reg != nil {
		reg.MustRegister(limited, clients)
	}
	r := &rateLimits{RateLimits: l, limited: map[string]prometheus.Counter{}}
	for _, route := range limitedRoutes {
		r.limited[route] = limited.WithLabelValues(route)
	}
	return r
}

// allow spends cost tokens of the client's bucket of l, or answers 429 and
// returns false.
func (r *rateLimits) allow(c *gin.Context, l *ratelimit.Limiter, cost int) bool {
	if l == nil || cost <= 0 {
		return true
	}
	ok, wait := l.Allow(c.ClientIP(), cost, time.Now())
	if ok {
		return true
	}
	if n, found := r.limited[c.FullPath()]; found {
		n.Inc()
	}
	after := strconv.Itoa(ratelimit.RetryAfter(wait))
	c.Header("Retry-After", after)
	respond.Error(c, http.StatusTooManyRequests, "", "too many requests from this address: retry after "+after+" s")
	return false
}

// limitEvents is the door of the event routes: a token per request.
func (r *rateLimits) limitEvents(c *gin.Context) { r.allow(c, r.Events, 1) }

// limitPixels is the door of the pixel routes: a token per request.
func (r *rateLimits) limitPixels(c *gin.Context) { r.allow(c, r.Pixels, 1) }
