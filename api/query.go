package api

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/admetric/admetric/api/access"
	"github.com/admetric/admetric/api/respond"
	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/store/rollup"
)

// query is a parsed GET /ads/analytics.
type query struct {
	timeframe     string
	from, to      time.Time // requested, before alignment
	interval      rollup.Unit
	hasInterval   bool
	intervalName  string
	loc           *time.Location
	ids           []string
	limit, offset int
	// includeInvalid counts invalid impressions and clicks in impressions,
	// clicks and CTR.
	includeInvalid bool
}

// queryError is a request the handlers refuse: the status, the query
// parameter at fault and what is wrong with it.
type queryError struct {
	status int
	field  string
	msg    string
}

func badQuery(field, msg string) *queryError {
	return &queryError{http.StatusBadRequest, field, msg}
}

// respond answers the request with the error.
func (e *queryError) respond(c *gin.Context) { respond.Error(c, e.status, e.field, e.msg) }

// queryInt reads the optional integer query parameter name: def when it is
// absent, an error naming it when it is not an integer in [lo, hi].
func queryInt(c *gin.Context, name string, def, lo, hi int) (int, *queryError) {
	raw, ok := c.GetQuery(name)
	if !ok {
		return def, nil
	}
	v, err := strconv.Atoi(raw)
	if err != nil || v < lo || v > hi {
		return 0, badQuery(name, fmt.Sprintf("must be an integer from %d to %d", lo, hi))
	}
	return v, nil
}

const rfc3339Example = "must be an RFC 3339 time such as 2026-11-25T00:00:00Z"

// parse reads the query's parameters in turn: the time zone, the window, the
// interval, the page and the ads.
func (h *AnalyticsHandler) parse(c *gin.Context, now time.Time) (query, *queryError) {
	q := query{loc: time.UTC}
	for _, step := range []func(*gin.Context, *query, time.Time) *queryError{
		h.parseZone, h.parseWindow, h.parseInterval, h.parsePage, h.parseAds, parseInvalid,
	} {
		if qerr := step(c, &q, now); qerr != nil {
			return q, qerr
		}
	}
	return q, nil
}

// parseInvalid reads include_invalid: true or false (default).
func parseInvalid(c *gin.Context, q *query, _ time.Time) *queryError {
	raw, ok := c.GetQuery("include_invalid")
	if !ok {
		return nil
	}
	v, err := strconv.ParseBool(raw)
	if err != nil {
		return badQuery("include_invalid", "must be true or false")
	}
	q.includeInvalid = v
	return nil
}

func (h *AnalyticsHandler) parseZone(c *gin.Context, q *query, _ time.Time) *queryError {
	name := c.Query("tz")
	if name == "" {
		return nil
	}
	if name == "Local" {
		return badQuery("tz", "must be an IANA time zone name such as Europe/Berlin")
	}
	if loc, ok := zones.Load(name); ok {
		q.loc = loc.(*time.Location)
		return nil
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return badQuery("tz", "must be an IANA time zone name such as Europe/Berlin")
	}
	zones.Store(name, loc)
	q.loc = loc
	return nil
}

// zones keeps the time zones loaded so far, by name: LoadLocation reads the
// zone database on every call. Only names that loaded are kept, so it holds
// at most the few hundred zones there are.
var zones sync.Map

// parseWindow reads timeframe, or from and to: a window within the
// retention of the rollups, with to past now cut to the end of the current
// minute.
func (h *AnalyticsHandler) parseWindow(c *gin.Context, q *query, now time.Time) *queryError {
	fromS, toS := c.Query("from"), c.Query("to")
	tf, hasTF := c.GetQuery("timeframe")
	if fromS == "" && toS == "" {
		if !hasTF {
			tf = defaultTimeframe
		}
		d, ok := Timeframes[tf]
		if !ok {
			return badQuery("timeframe", "must be one of 1h, 6h, 24h, 7d, 30d")
		}
		// The window ends with the current minute included, and is exactly as
		// long as the timeframe: 1h at 13:00:20 is [12:01, 13:01).
		q.timeframe = tf
		q.to = rollup.Minute.Truncate(now).Add(time.Minute)
		q.from = q.to.Add(-d)
		return nil
	}
	if hasTF {
		return badQuery("timeframe", "give either timeframe or from and to, not both")
	}
	var err error
	if q.from, err = time.Parse(time.RFC3339Nano, fromS); err != nil {
		return badQuery("from", rfc3339Example)
	}
	if q.to, err = time.Parse(time.RFC3339Nano, toS); err != nil {
		return badQuery("to", rfc3339Example)
	}
	if !q.from.Before(q.to) {
		return badQuery("to", "must be after from")
	}
	if oldest := now.Add(-h.layout.MaxRetention()); q.from.Before(oldest) {
		return badQuery("from", fmt.Sprintf("must be within the retention of the rollups (%s ago, %s)", h.layout.MaxRetention(), oldest.Format(time.RFC3339)))
	}
	if limit := rollup.Minute.Truncate(now).Add(time.Minute); q.to.After(limit) {
		q.to = limit // the future holds nothing yet
	}
	if !q.from.Before(q.to) {
		return badQuery("from", "must be in the past")
	}
	return nil
}

// Interval names.
const (
	intervalMinute = "minute"
	intervalHour   = "hour"
	intervalDay    = "day"
)

// intervalUnits are the interval parameter's values and their resolutions.
var intervalUnits = map[string]rollup.Unit{intervalMinute: rollup.Minute, intervalHour: rollup.Hour, intervalDay: rollup.Day}

func (h *AnalyticsHandler) parseInterval(c *gin.Context, q *query, now time.Time) *queryError {
	iv := c.Query("interval")
	if iv == "" {
		return nil
	}
	u, ok := intervalUnits[iv]
	if !ok {
		return badQuery("interval", "must be minute, hour or day")
	}
	q.interval, q.hasInterval, q.intervalName = u, true, iv
	if u != rollup.Day && q.from.Before(now.Add(-h.layout[u].Retention)) {
		return badQuery("interval", fmt.Sprintf("%s points reach back %s only; use a coarser interval or a later from", iv, h.layout[u].Retention))
	}
	return nil
}

func (h *AnalyticsHandler) parsePage(c *gin.Context, q *query, _ time.Time) *queryError {
	var qerr *queryError
	if q.limit, qerr = queryInt(c, "limit", defaultAdsLimit, 1, maxAdsLimit); qerr != nil {
		return qerr
	}
	q.offset, qerr = queryInt(c, "offset", 0, 0, math.MaxInt32)
	return qerr
}

// parseAds reads the ad_id parameters, each a known ad in the request's
// scope; none means every ad of the scope. An ad outside the scope is
// refused before it is looked up, so the answer does not tell whether it
// exists; the scope applies before anything is summed, so the totals count
// its ads only.
func (h *AnalyticsHandler) parseAds(c *gin.Context, q *query, _ time.Time) *queryError {
	scope := access.ScopeOf(c)
	q.ids = c.QueryArray("ad_id")
	for _, id := range q.ids {
		if err := event.ValidateAdID(id); err != nil {
			return badQuery("ad_id", fieldMessage(err))
		}
		if !scope.Allows(id) {
			return &queryError{http.StatusForbidden, "Authorization", "this token may not read ad " + id}
		}
		if !h.catalog.Exists(id) {
			return &queryError{http.StatusNotFound, "ad_id", "no ad " + id}
		}
	}
	if len(q.ids) == 0 {
		q.ids = scope.Filter(h.catalog.IDs())
	}
	q.ids = dedupe(q.ids)
	return nil
}

func dedupe(ids []string) []string {
	seen := make(map[string]struct{}, len(ids))
	out := ids[:0:0]
	for _, id := range ids {
		if _, ok := seen[id]; !ok {
			seen[id] = struct{}{}
			out = append(out, id)
		}
	}
	return out
}
