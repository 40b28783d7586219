package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eapache/go-resiliency/breaker"
	"github.com/gin-gonic/gin"

	"github.com/admetric/admetric/api/respond"
	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/store/rollup"
)

// RollupReader sums an ad's rollup slots; *store.Rollups, *rollupcache.Cache
// and *rollupcache.Snapshot implement it. Implementations are safe for concurrent use.
type RollupReader interface {
	Layout() rollup.Layout
	Sum(ctx context.Context, adID string, cells []rollup.Cell) (*rollup.Aggregate, error)
}

// StaleReader is a RollupReader over a copy of the rollups taken at AsOf.
type StaleReader interface {
	RollupReader
	AsOf() time.Time
}

// AnalyticsOptions are the handler's optional parts.
type AnalyticsOptions struct {
	// Snapshot returns the latest snapshot of the rollups, read when the live
	// rollups do not answer; nil means there is none to fall back on.
	Snapshot func() (StaleReader, error)
	// LiveUp reports whether the live rollups are reachable at all (the NATS
	// connection is up); while it is false answers come from the snapshot at
	// once, rather than after a timeout. Nil: always try.
	LiveUp func() bool
	// Breaker guards reads of the live rollups. Default: open after 3 failures
	// without a 5s quiet spell, try again after 5s.
	Breaker *breaker.Breaker
	// ReadTimeout bounds one request's live reads (default 2s).
	ReadTimeout time.Duration
}

// AnalyticsHandler serves GET /ads/analytics from the rollups.
type AnalyticsHandler struct {
	live    atomic.Pointer[RollupReader]
	layout  rollup.Layout
	catalog AdCatalog
	opts    AnalyticsOptions
	logger  *slog.Logger
	now     func() time.Time
}

// NewAnalyticsHandler returns the analytics handler. live may be nil while the
// rollups are not reachable yet (SetLive supplies them later); layout gives the
// retention of each resolution.
func NewAnalyticsHandler(live RollupReader, layout rollup.Layout, catalog AdCatalog, logger *slog.Logger, opts AnalyticsOptions) *AnalyticsHandler {
	if opts.Breaker == nil {
		opts.Breaker = breaker.New(3, 1, 5*time.Second)
	}
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = 2 * time.Second
	}
	h := &AnalyticsHandler{layout: layout, catalog: catalog, opts: opts, now: time.Now,
		logger: logger.With("component", "analytics")}
	if live != nil {
		h.SetLive(live)
	}
	return h
}

// SetLive makes r the live rollups. Safe to call while serving.
func (h *AnalyticsHandler) SetLive(r RollupReader) { h.live.Store(&r) }

// Register mounts GET /ads/analytics on r.
func (h *AnalyticsHandler) Register(r gin.IRouter) {
	r.GET("/ads/analytics", h.serve)
}

// Timeframes are the named windows, ending now.
var Timeframes = map[string]time.Duration{
	"1h":  time.Hour,
	"6h":  6 * time.Hour,
	"24h": 24 * time.Hour,
	"7d":  7 * 24 * time.Hour,
	"30d": 30 * 24 * time.Hour,
}

const defaultTimeframe = "24h"

// Query bounds.
const (
	// MaxPoints bounds a series: a day of minutes, two months of hours.
	MaxPoints        = 1440
	defaultAdsLimit  = 1000
	maxAdsLimit      = 10000
	intervalMinute   = "minute"
	intervalHour     = "hour"
	intervalDay      = "day"
	queryErrorPrefix = "must be "
)

// Metrics are the analytics of one ad, or of all ads together.
type Metrics struct {
	AdID           string `json:"ad_id,omitempty"`
	Impressions    uint64 `json:"impressions"`
	Clicks         uint64 `json:"clicks"`
	UniqueVisitors uint64 `json:"unique_visitors"`
	// AvgPlaybackTime is the mean playback position at click, in seconds; null without clicks.
	AvgPlaybackTime *float64 `json:"avg_playback_time"`
	// CTR is clicks / impressions; null without impressions.
	CTR            *float64 `json:"ctr"`
	Starts         uint64   `json:"starts"`
	FirstQuartiles uint64   `json:"first_quartiles"`
	Midpoints      uint64   `json:"midpoints"`
	ThirdQuartiles uint64   `json:"third_quartiles"`
	Completes      uint64   `json:"completes"`
	Skips          uint64   `json:"skips"`
	// CompletionRate is completes / starts; null without starts.
	CompletionRate *float64 `json:"completion_rate"`
	// Series holds one point per interval when the query asks for one.
	Series []Point `json:"series,omitempty"`
}

// Point is one interval of a series, [From, To).
type Point struct {
	From time.Time `json:"from"`
	To   time.Time `json:"to"`
	Metrics
}

// Report is the body of GET /ads/analytics.
type Report struct {
	// Timeframe is the named window asked for; empty for from/to.
	Timeframe string `json:"timeframe,omitempty"`
	// From and To are the window actually covered, [from, to): minute-aligned
	// (interval-aligned with an interval), the start widened to the hour where
	// minute rollups have expired.
	From        time.Time `json:"from"`
	To          time.Time `json:"to"`
	Interval    string    `json:"interval,omitempty"`
	TZ          string    `json:"tz"`
	Resolutions []string  `json:"resolutions"`
	// Stale is true when the rollups did not answer and the figures come from
	// the snapshot taken at AsOf.
	Stale bool       `json:"stale"`
	AsOf  *time.Time `json:"as_of,omitempty"`
	// TotalAds is how many ads the query covers; Ads holds the page of them
	// that Limit and Offset select, by clicks descending.
	TotalAds int       `json:"total_ads"`
	Limit    int       `json:"limit"`
	Offset   int       `json:"offset"`
	Total    Metrics   `json:"total"`
	Ads      []Metrics `json:"ads"`
}

// query is a parsed request.
type query struct {
	timeframe     string
	from, to      time.Time // requested, before alignment
	interval      rollup.Unit
	hasInterval   bool
	intervalName  string
	loc           *time.Location
	ids           []string
	limit, offset int
}

type queryError struct {
	status int
	field  string
	msg    string
}

func badQuery(field, msg string) *queryError {
	return &queryError{http.StatusBadRequest, field, msg}
}

func (h *AnalyticsHandler) parse(c *gin.Context, now time.Time) (query, *queryError) {
	q := query{loc: time.UTC, limit: defaultAdsLimit}
	if name := c.Query("tz"); name != "" {
		loc, err := time.LoadLocation(name)
		if err != nil || name == "Local" {
			return q, badQuery("tz", "must be an IANA time zone name such as Europe/Berlin")
		}
		q.loc = loc
	}
	fromS, toS := c.Query("from"), c.Query("to")
	tf, hasTF := c.GetQuery("timeframe")
	switch {
	case fromS != "" || toS != "":
		if hasTF {
			return q, badQuery("timeframe", "give either timeframe or from and to, not both")
		}
		var err error
		if q.from, err = time.Parse(time.RFC3339Nano, fromS); err != nil {
			return q, badQuery("from", queryErrorPrefix+"an RFC 3339 time such as 2026-11-25T00:00:00Z")
		}
		if q.to, err = time.Parse(time.RFC3339Nano, toS); err != nil {
			return q, badQuery("to", queryErrorPrefix+"an RFC 3339 time such as 2026-11-25T00:00:00Z")
		}
		if !q.from.Before(q.to) {
			return q, badQuery("to", queryErrorPrefix+"after from")
		}
		if oldest := now.Add(-h.layout.MaxRetention()); q.from.Before(oldest) {
			return q, badQuery("from", fmt.Sprintf("must be within the retention of the rollups (%s ago, %s)", h.layout.MaxRetention(), oldest.Format(time.RFC3339)))
		}
		if limit := rollup.Minute.Ceil(now).Add(time.Minute); q.to.After(limit) {
			q.to = limit // the future holds nothing yet
		}
		if !q.from.Before(q.to) {
			return q, badQuery("from", queryErrorPrefix+"in the past")
		}
	default:
		if !hasTF {
			tf = defaultTimeframe
		}
		d, ok := Timeframes[tf]
		if !ok {
			return q, badQuery("timeframe", queryErrorPrefix+"one of 1h, 6h, 24h, 7d, 30d")
		}
		// The window ends with the current minute included, and is exactly as
		// long as the timeframe: 1h at 13:00:20 is [12:01, 13:01).
		q.timeframe = tf
		q.to = rollup.Minute.Truncate(now).Add(time.Minute)
		q.from = q.to.Add(-d)
	}
	if iv := c.Query("interval"); iv != "" {
		units := map[string]rollup.Unit{intervalMinute: rollup.Minute, intervalHour: rollup.Hour, intervalDay: rollup.Day}
		u, ok := units[iv]
		if !ok {
			return q, badQuery("interval", queryErrorPrefix+"minute, hour or day")
		}
		q.interval, q.hasInterval, q.intervalName = u, true, iv
		if u != rollup.Day && q.from.Before(now.Add(-h.layout[u].Retention)) {
			return q, badQuery("interval", fmt.Sprintf("%s points reach back %s only; use a coarser interval or a later from", iv, h.layout[u].Retention))
		}
	}
	var err error
	if q.limit, err = boundedInt(c, "limit", defaultAdsLimit, 1, maxAdsLimit); err != nil {
		return q, badQuery("limit", err.Error())
	}
	if q.offset, err = boundedInt(c, "offset", 0, 0, math.MaxInt32); err != nil {
		return q, badQuery("offset", err.Error())
	}
	q.ids = c.QueryArray("ad_id")
	for _, id := range q.ids {
		if err := event.ValidateAdID(id); err != nil {
			return q, badQuery("ad_id", fieldMessage(err))
		}
		if !h.catalog.Exists(id) {
			return q, &queryError{http.StatusNotFound, "ad_id", "no ad " + id}
		}
	}
	if len(q.ids) == 0 {
		q.ids = h.catalog.IDs()
	}
	q.ids = dedupe(q.ids)
	return q, nil
}

// boundedInt reads an optional integer query parameter in [lo, hi].
func boundedInt(c *gin.Context, name string, def, lo, hi int) (int, error) {
	raw, ok := c.GetQuery(name)
	if !ok {
		return def, nil
	}
	v, err := strconv.Atoi(raw)
	if err != nil || v < lo || v > hi {
		return 0, fmt.Errorf("must be an integer from %d to %d", lo, hi)
	}
	return v, nil
}

// points splits [from, to) into intervals of unit u, aligned in loc: days
// start at local midnight (23 or 25 hours long across DST changes), hours and
// minutes at the local hour and minute.
func points(from, to time.Time, u rollup.Unit, loc *time.Location) [][2]time.Time {
	floor := func(t time.Time) time.Time {
		t = t.In(loc)
		switch u {
		case rollup.Day:
			return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, loc)
		case rollup.Hour:
			return t.Truncate(time.Minute).Add(-time.Duration(t.Minute()) * time.Minute)
		default:
			return t.Truncate(time.Minute)
		}
	}
	next := func(t time.Time) time.Time {
		switch u {
		case rollup.Day:
			t = t.In(loc)
			return time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, loc)
		case rollup.Hour:
			return t.Add(time.Hour)
		default:
			return t.Add(time.Minute)
		}
	}
	var out [][2]time.Time
	for t := floor(from); t.Before(to); t = next(t) {
		out = append(out, [2]time.Time{t.UTC(), next(t).UTC()})
		if len(out) > MaxPoints {
			break
		}
	}
	return out
}

func (h *AnalyticsHandler) serve(c *gin.Context) {
	now := h.now().UTC()
	q, qerr := h.parse(c, now)
	if qerr != nil {
		respond.Error(c, qerr.status, qerr.field, qerr.msg)
		return
	}
	// The windows to sum: the whole, then each point of the series.
	from, to := q.from, q.to
	var pts [][2]time.Time
	if q.hasInterval {
		pts = points(q.from, q.to, q.interval, q.loc)
		if len(pts) > MaxPoints {
			respond.Error(c, http.StatusBadRequest, "interval", fmt.Sprintf("the series would have more than %d points; use a coarser interval or a shorter window", MaxPoints))
			return
		}
		// A point's edges must fall where rollups fine enough to cut there
		// still exist; else the tiling would widen the point into its
		// neighbours (e.g. hours at :30 in Asia/Kolkata need minutes).
		for _, p := range pts {
			for _, edge := range p {
				u := rollup.Day
				switch {
				case !rollup.Hour.Truncate(edge).Equal(edge):
					u = rollup.Minute
				case !rollup.Day.Truncate(edge).Equal(edge):
					u = rollup.Hour
				}
				if edge.Before(now.Add(-h.layout[u].Retention)) && edge.Before(now) {
					respond.Error(c, http.StatusBadRequest, "tz", fmt.Sprintf("%s points in %s start at %s, where %s rollups (kept %s) have expired; use a later from, or a time zone whose offset is whole hours",
						q.intervalName, q.loc, edge.Format(time.RFC3339), u, h.layout[u].Retention))
					return
				}
			}
		}
		from, to = pts[0][0], pts[len(pts)-1][1]
	}
	whole, err := h.layout.Tile(from, to, now)
	if err != nil {
		h.logger.Error("tiling the window", "err", err)
		respond.Error(c, http.StatusInternalServerError, "", "could not plan the query")
		return
	}
	windows := [][]rollup.Cell{whole.Cells}
	for _, p := range pts {
		tl, err := h.layout.Tile(p[0], p[1], now)
		if err != nil {
			h.logger.Error("tiling a point", "err", err)
			respond.Error(c, http.StatusInternalServerError, "", "could not plan the query")
			return
		}
		windows = append(windows, tl.Cells)
	}

	aggs, stale, asOf, err := h.read(c.Request.Context(), q.ids, windows)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			c.Abort()
			return
		}
		c.Header("Retry-After", "5")
		respond.Error(c, http.StatusServiceUnavailable, "", "rollups are unavailable and there is no snapshot to answer from")
		return
	}

	rep := Report{Timeframe: q.timeframe, From: whole.From, To: whole.To, Interval: q.intervalName,
		TZ: q.loc.String(), Stale: stale, TotalAds: len(q.ids), Limit: q.limit, Offset: q.offset}
	if stale {
		rep.AsOf = &asOf
	}
	for _, u := range whole.Units() {
		rep.Resolutions = append(rep.Resolutions, u.String())
	}
	ads := make([]Metrics, len(q.ids))
	order := make([]int, len(q.ids))
	for i, id := range q.ids {
		ads[i] = metricsOf(id, aggs[i][0])
		ads[i].Series = series(pts, aggs[i][1:])
		order[i] = i
	}
	slices.SortFunc(order, func(i, j int) int {
		a, b := &ads[i], &ads[j]
		switch {
		case a.Clicks > b.Clicks:
			return -1
		case a.Clicks < b.Clicks:
			return 1
		}
		return strings.Compare(a.AdID, b.AdID)
	})
	// The totals add the ads in that order: the most clicked first, whose
	// visitors are the likeliest to be a dense sketch already (from a range
	// sum), which the rest then go into without sorting.
	totals := make([]rollup.Aggregate, len(windows))
	sorted := make([]Metrics, len(ads))
	for k, i := range order {
		for w := range windows {
			if err := totals[w].AddAggregate(aggs[i][w]); err != nil {
				h.logger.Error("adding up ads", "err", err)
				respond.Error(c, http.StatusInternalServerError, "", "could not add up the rollups")
				return
			}
		}
		sorted[k] = ads[i]
	}
	ads = sorted
	lo := min(q.offset, len(ads))
	rep.Ads = ads[lo:min(lo+q.limit, len(ads))]
	rep.Total = metricsOf("", &totals[0])
	tp := make([]*rollup.Aggregate, len(pts))
	for i := range pts {
		tp[i] = &totals[i+1]
	}
	rep.Total.Series = series(pts, tp)
	c.JSON(http.StatusOK, rep)
}

func series(pts [][2]time.Time, aggs []*rollup.Aggregate) []Point {
	if len(pts) == 0 {
		return nil
	}
	out := make([]Point, len(pts))
	for i, p := range pts {
		out[i] = Point{From: p[0], To: p[1], Metrics: metricsOf("", aggs[i])}
	}
	return out
}

// read sums every window for every ad from the live rollups, or, when they are
// unreachable or the breaker is open, from the latest snapshot (stale).
func (h *AnalyticsHandler) read(ctx context.Context, ids []string, windows [][]rollup.Cell) (aggs [][]*rollup.Aggregate, stale bool, asOf time.Time, err error) {
	if live := h.live.Load(); live != nil && (h.opts.LiveUp == nil || h.opts.LiveUp()) {
		err = h.opts.Breaker.Run(func() error {
			rctx, cancel := context.WithTimeout(ctx, h.opts.ReadTimeout)
			defer cancel()
			var rerr error
			aggs, rerr = sumAll(rctx, *live, ids, windows)
			if rerr != nil && ctx.Err() != nil {
				return nil // the client went away: not the store's fault
			}
			return rerr
		})
		if ctx.Err() != nil {
			return nil, false, time.Time{}, ctx.Err()
		}
		if err == nil {
			return aggs, false, time.Time{}, nil
		}
		if !errors.Is(err, breaker.ErrBreakerOpen) {
			h.logger.Warn("live rollups failed; answering from the snapshot", "err", err)
		}
	} else {
		err = errors.New("api: rollups not reachable")
	}
	if h.opts.Snapshot == nil {
		return nil, false, time.Time{}, err
	}
	snap, serr := h.opts.Snapshot()
	if serr != nil {
		h.logger.Warn("no snapshot to answer from", "err", serr, "live_err", err)
		return nil, false, time.Time{}, fmt.Errorf("api: %w (snapshot: %w)", err, serr)
	}
	aggs, err = sumAll(ctx, snap, ids, windows)
	if err != nil {
		return nil, false, time.Time{}, err
	}
	return aggs, true, snap.AsOf(), nil
}

// sumReaders bounds the KV reads one request runs at once.
const sumReaders = 8

// sumAll sums each ad's windows, reading several ads at once; the first error
// stops the rest. The result is indexed [ad][window].
func sumAll(ctx context.Context, r RollupReader, ids []string, windows [][]rollup.Cell) ([][]*rollup.Aggregate, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	aggs := make([][]*rollup.Aggregate, len(ids))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(sumReaders, len(ids)) {
		wg.Go(func() {
			for i := range next {
				row := make([]*rollup.Aggregate, len(windows))
				for w, cells := range windows {
					agg, err := r.Sum(ctx, ids[i], cells)
					if err != nil {
						cancel(fmt.Errorf("ad %s: %w", ids[i], err))
						break
					}
					// Counting sorts and merges the ad's visitor sets: do it
					// here, in parallel, rather than when the answer is built.
					agg.UniqueVisitors()
					row[w] = agg
				}
				aggs[i] = row
			}
		})
	}
	for i := range ids {
		if ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	return aggs, nil
}

func metricsOf(adID string, a *rollup.Aggregate) Metrics {
	m := Metrics{
		AdID:           adID,
		Impressions:    a.Impressions,
		Clicks:         a.Clicks,
		UniqueVisitors: a.UniqueVisitors(),
		Starts:         a.Starts,
		FirstQuartiles: a.FirstQuartiles,
		Midpoints:      a.Midpoints,
		ThirdQuartiles: a.ThirdQuartiles,
		Completes:      a.Completes,
		Skips:          a.Skips,
	}
	if a.PlaybackCount > 0 {
		m.AvgPlaybackTime = ratio(a.PlaybackMillis, a.PlaybackCount*1000)
	}
	if a.Impressions > 0 {
		m.CTR = ratio(a.Clicks, a.Impressions)
	}
	if a.Starts > 0 {
		m.CompletionRate = ratio(a.Completes, a.Starts)
	}
	return m
}

func ratio(num, den uint64) *float64 {
	v := float64(num) / float64(den)
	return &v
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
