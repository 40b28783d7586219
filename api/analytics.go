package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/admetric/admetric/store"
)

// RollupReader sums an ad's rollup slots; *store.Rollups implements it.
type RollupReader interface {
	Layout() store.Layout
	Sum(ctx context.Context, adID string, cells []store.Cell) (*store.Aggregate, error)
}

// AnalyticsHandler serves GET /ads/analytics from the rollups.
type AnalyticsHandler struct {
	rollups RollupReader
	catalog AdCatalog
	logger  *slog.Logger
	now     func() time.Time
}

// NewAnalyticsHandler returns the analytics handler.
func NewAnalyticsHandler(rollups RollupReader, catalog AdCatalog, logger *slog.Logger) *AnalyticsHandler {
	return &AnalyticsHandler{rollups: rollups, catalog: catalog, now: time.Now,
		logger: logger.With("component", "analytics")}
}

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
}

// Report is the body of GET /ads/analytics.
type Report struct {
	Timeframe string `json:"timeframe"`
	// From and To are the window actually covered, [from, to): minute-aligned,
	// the start widened to the hour where minute rollups have expired.
	From        time.Time `json:"from"`
	To          time.Time `json:"to"`
	Resolutions []string  `json:"resolutions"`
	Stale       bool      `json:"stale"`
	Total       Metrics   `json:"total"`
	Ads         []Metrics `json:"ads"`
}

func (h *AnalyticsHandler) serve(c *gin.Context) {
	tf := c.DefaultQuery("timeframe", defaultTimeframe)
	d, ok := Timeframes[tf]
	if !ok {
		fail(c, http.StatusBadRequest, "timeframe", "must be one of 1h, 6h, 24h, 7d, 30d")
		return
	}
	ids := c.QueryArray("ad_id")
	for _, id := range ids {
		if err := store.ValidateAdID(id); err != nil {
			fail(c, http.StatusBadRequest, "ad_id", strings.TrimPrefix(err.Error(), store.ErrInvalidAdID.Error()+": "))
			return
		}
		if !h.catalog.Exists(id) {
			fail(c, http.StatusNotFound, "ad_id", "no ad "+id)
			return
		}
	}
	if len(ids) == 0 {
		ids = h.catalog.IDs()
	}
	ids = dedupe(ids)

	// The window ends with the current minute included, and is exactly as long
	// as the timeframe: 1h at 13:00:20 is [12:01, 13:01).
	now := h.now().UTC()
	to := store.Minute.Truncate(now).Add(time.Minute)
	tiling, err := h.rollups.Layout().Tile(to.Add(-d), to, now)
	if err != nil {
		h.logger.Error("tiling the window", "err", err)
		fail(c, http.StatusInternalServerError, "", "could not plan the query")
		return
	}
	rep := Report{Timeframe: tf, From: tiling.From, To: tiling.To, Ads: make([]Metrics, 0, len(ids))}
	for _, u := range tiling.Units() {
		rep.Resolutions = append(rep.Resolutions, u.String())
	}
	aggs, err := h.sumAll(c.Request.Context(), ids, tiling.Cells)
	var total store.Aggregate
	for i := 0; err == nil && i < len(ids); i++ {
		err = total.AddAggregate(aggs[i])
		rep.Ads = append(rep.Ads, metricsOf(ids[i], aggs[i]))
	}
	if err != nil {
		if errors.Is(err, context.Canceled) {
			c.Abort()
			return
		}
		h.logger.Error("reading rollups", "err", err)
		c.Header("Retry-After", "1")
		fail(c, http.StatusServiceUnavailable, "", "rollups are unavailable")
		return
	}
	slices.SortStableFunc(rep.Ads, func(a, b Metrics) int {
		switch {
		case a.Clicks > b.Clicks:
			return -1
		case a.Clicks < b.Clicks:
			return 1
		}
		return strings.Compare(a.AdID, b.AdID)
	})
	rep.Total = metricsOf("", &total)
	c.JSON(http.StatusOK, rep)
}

// sumReaders bounds the KV reads one request runs at once.
const sumReaders = 8

// sumAll sums each ad's cells, reading several ads at once; the first error
// stops the rest.
func (h *AnalyticsHandler) sumAll(ctx context.Context, ids []string, cells []store.Cell) ([]*store.Aggregate, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	aggs := make([]*store.Aggregate, len(ids))
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(sumReaders, len(ids)) {
		wg.Go(func() {
			for i := range next {
				agg, err := h.rollups.Sum(ctx, ids[i], cells)
				if err != nil {
					cancel(fmt.Errorf("ad %s: %w", ids[i], err))
					continue
				}
				aggs[i] = agg
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

func metricsOf(adID string, a *store.Aggregate) Metrics {
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
