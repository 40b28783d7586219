package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eapache/go-resiliency/breaker"
	"github.com/gin-gonic/gin"

	"github.com/admetric/admetric/api/respond"
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

// currentReader is a live RollupReader that knows the last moment it held
// every rollup update (*rollupcache.Cache): its answers say so in as_of.
type currentReader interface {
	CurrentAsOf() time.Time
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

// Register mounts GET /ads/analytics on r. readGuard, when given, stands
// before it (access.Guard.Require): it answers within the request's scope.
func (h *AnalyticsHandler) Register(r gin.IRouter, readGuard ...gin.HandlerFunc) {
	r.GET("/ads/analytics", append(slices.Clip(readGuard), h.serve)...)
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
	MaxPoints       = 1440
	defaultAdsLimit = 1000
	maxAdsLimit     = 10000
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
	// VASTErrors counts VAST error events; VASTErrorsByCode splits them by
	// error code ("unknown" when the player gave none), omitted when none.
	VASTErrors       uint64            `json:"vast_errors"`
	VASTErrorsByCode map[string]uint64 `json:"vast_errors_by_code,omitempty"`
	// Servings counts VAST servings with an impression; ServingClicks the
	// clicks through them; ClicksPerServing is their ratio, null without
	// servings.
	Servings         uint64   `json:"servings"`
	ServingClicks    uint64   `json:"serving_clicks"`
	ClicksPerServing *float64 `json:"clicks_per_serving"`
	// Invalid counts the events that are not valid traffic (see
	// InvalidCounts), counted in nothing above unless the query asks
	// include_invalid=true: then Impressions, Clicks and CTR count the
	// invalid impressions and clicks too (the other counters and
	// UniqueVisitors never do). InvalidByReason splits Invalid by reason;
	// IVTRate is Invalid over every event, valid or not (null without
	// events).
	Invalid         uint64        `json:"invalid"`
	InvalidByReason InvalidCounts `json:"invalid_by_reason"`
	IVTRate         *float64      `json:"ivt_rate"`
	// Series holds one point per interval when the query asks for one.
	Series []Point `json:"series,omitempty"`
}

// InvalidCounts are the invalid events by reason (event.InvalidReasons).
type InvalidCounts struct {
	Bot                    uint64 `json:"bot"`
	DuplicateClick         uint64 `json:"duplicate_click"`
	Rate                   uint64 `json:"rate"`
	ClickWithoutImpression uint64 `json:"click_without_impression"`
	Playback               uint64 `json:"playback"`
	Signature              uint64 `json:"signature"`
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
	// Stale is true when the rollups did not answer and the figures come
	// from the last snapshot. AsOf is the last moment the figures are known
	// to include every event the rollups held: about a second ago for a live
	// answer, when NATS went away for a stale one. Absent when not known.
	Stale bool       `json:"stale"`
	AsOf  *time.Time `json:"as_of,omitempty"`
	// IncludeInvalid says whether impressions, clicks and CTR count invalid
	// traffic (the include_invalid parameter).
	IncludeInvalid bool `json:"include_invalid"`
	// TotalAds is how many ads the query covers; Ads holds the page of them
	// that Limit and Offset select, by clicks descending.
	TotalAds int       `json:"total_ads"`
	Limit    int       `json:"limit"`
	Offset   int       `json:"offset"`
	Total    Metrics   `json:"total"`
	Ads      []Metrics `json:"ads"`
}

func (h *AnalyticsHandler) serve(c *gin.Context) {
	now := h.now().UTC()
	q, qerr := h.parse(c, now)
	if qerr != nil {
		qerr.respond(c)
		return
	}
	p, qerr := h.plan(q, now)
	if qerr != nil {
		qerr.respond(c)
		return
	}
	aggs, stale, asOf, err := h.read(c.Request.Context(), q.ids, p.windows)
	if err != nil {
		if errors.Is(err, context.Canceled) {
			c.Abort()
			return
		}
		c.Header("Retry-After", "5")
		respond.Error(c, http.StatusServiceUnavailable, "", "rollups are unavailable and there is no snapshot to answer from")
		return
	}
	rep, err := render(q, p, aggs)
	if err != nil {
		h.logger.Error("adding up ads", "err", err)
		respond.Error(c, http.StatusInternalServerError, "", "could not add up the rollups")
		return
	}
	rep.Stale = stale
	if !asOf.IsZero() {
		asOf = asOf.UTC()
		rep.AsOf = &asOf
	}
	c.JSON(http.StatusOK, rep)
}

// read sums every window for every ad from the live rollups, or, when they are
// unreachable or the breaker is open, from the latest snapshot (stale).
func (h *AnalyticsHandler) read(ctx context.Context, ids []string, windows [][]rollup.Cell) (aggs [][]*rollup.Aggregate, stale bool, asOf time.Time, err error) {
	if live := h.live.Load(); live != nil && (h.opts.LiveUp == nil || h.opts.LiveUp()) {
		// Taken before the reads: they see at least what the cache held then.
		var current time.Time
		if cr, ok := (*live).(currentReader); ok {
			current = cr.CurrentAsOf()
		}
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
			return aggs, false, current, nil
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
