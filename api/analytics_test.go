package api_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/admetric/admetric/api"
	"github.com/admetric/admetric/api/openapi/openapitest"
	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/postgres"
	"github.com/admetric/admetric/store/rollup/rolluptest"
	"github.com/admetric/admetric/store/storetest"
)

type staticCatalog []string

func (s staticCatalog) Put(postgres.Ad)                    {}
func (s staticCatalog) Remove(string)                      {}
func (s staticCatalog) Exists(id string) bool              { return slices.Contains(s, id) }
func (s staticCatalog) IDs() []string                      { return slices.Clone(s) }
func (s staticCatalog) Get(string) (postgres.Ad, bool)     { return postgres.Ad{}, false }
func (s staticCatalog) List(int, int) ([]postgres.Ad, int) { return nil, 0 }

// TestAnalyticsWindows writes rollups straight into the buckets and reads them
// back through GET /ads/analytics: each timeframe sums exactly the slots in
// its window, names that window, and all ads are sorted by clicks.
func TestAnalyticsWindows(t *testing.T) {
	js, _ := storetest.JetStream(t, storetest.NATS(t))
	ctx := context.Background()
	layout := rolluptest.Layout
	rollups, err := store.CreateOrUpdateRollups(ctx, js, layout, 1)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	// Ad "a": 3 clicks now, 5 clicks and 10 impressions two days ago, 7 clicks 20 days ago.
	put := func(ad string, at time.Time, clicks, impressions uint64) {
		t.Helper()
		for _, res := range layout {
			if at.Before(now.Add(-res.Retention)) {
				continue
			}
			key, slot := res.Unit.Locate(ad, at)
			v, rev, err := rollups.Load(ctx, res.Unit, key)
			if err != nil {
				t.Fatal(err)
			}
			s := v.Slot(slot)
			s.Clicks += clicks
			s.Impressions += impressions
			s.PlaybackMillis += clicks * 2000
			s.PlaybackCount += clicks
			if _, err := rollups.Replace(ctx, res.Unit, []store.Write{{Key: key, Value: v, Rev: rev}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	put("a", now, 3, 0)
	put("a", now.Add(-48*time.Hour), 5, 10)
	put("a", now.Add(-20*24*time.Hour), 7, 0)
	put("b", now, 4, 8)

	gin.SetMode(gin.TestMode)
	r := gin.New()
	api.NewAnalyticsHandler(rollups, layout, staticCatalog{"a", "b"}, slog.New(slog.DiscardHandler), api.AnalyticsOptions{}).Register(r)
	h := openapitest.Handler(t, r) // every answer checked against the API contract
	get := func(query string) (int, api.Report) {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/ads/analytics?"+query, nil))
		var rep api.Report
		if rec.Code == http.StatusOK {
			if err := json.Unmarshal(rec.Body.Bytes(), &rep); err != nil {
				t.Fatal(err)
			}
		}
		return rec.Code, rep
	}
	for _, tc := range []struct {
		timeframe      string
		clicks, impres uint64
	}{
		{"1h", 3, 0}, {"6h", 3, 0}, {"24h", 3, 0}, {"7d", 8, 10}, {"30d", 15, 10},
	} {
		code, rep := get("timeframe=" + tc.timeframe + "&ad_id=a")
		if code != http.StatusOK || len(rep.Ads) != 1 {
			t.Fatalf("%s: status %d, %+v", tc.timeframe, code, rep)
		}
		a := rep.Ads[0]
		if a.Clicks != tc.clicks || a.Impressions != tc.impres || a.AvgPlaybackTime == nil || *a.AvgPlaybackTime != 2 {
			t.Errorf("%s: %+v, want %d clicks, %d impressions, avg playback 2", tc.timeframe, a, tc.clicks, tc.impres)
		}
		if (tc.impres == 0) != (a.CTR == nil) {
			t.Errorf("%s: ctr %v with %d impressions", tc.timeframe, a.CTR, tc.impres)
		}
		if d := api.Timeframes[tc.timeframe]; rep.To.Sub(rep.From) < d || rep.To.Sub(rep.From) > d+time.Hour || rep.To.Before(now) {
			t.Errorf("%s: window [%s, %s) does not cover the timeframe ending now", tc.timeframe, rep.From, rep.To)
		}
	}
	if _, rep := get("timeframe=1h"); len(rep.Ads) != 2 || rep.Ads[0].AdID != "b" || rep.Total.Clicks != 7 || rep.Total.Impressions != 8 {
		t.Errorf("all ads: %+v, want b (4 clicks) before a (3), 7 clicks in total", rep)
	}
	if code, rep := get("timeframe=1h&include_invalid=true"); code != http.StatusOK || !rep.IncludeInvalid || rep.Total.Clicks != 7 {
		t.Errorf("include_invalid=true: %d %+v, want the 7 clicks and include_invalid echoed", code, rep)
	}
	if _, rep := get("timeframe=1h&ad_id=a"); rep.To.Sub(rep.From) != time.Hour {
		t.Errorf("1h window is %s long, want exactly an hour", rep.To.Sub(rep.From))
	}
	for _, q := range []string{"timeframe=2d", "ad_id=x.y", "ad_id=zzz", "include_invalid=maybe"} {
		if code, _ := get(q); code/100 != 4 {
			t.Errorf("%s: status %d, want 4xx", q, code)
		}
	}

	// from/to: any range within retention, here the day 2 days ago.
	day := now.Add(-48 * time.Hour).Truncate(24 * time.Hour)
	q := "from=" + day.Format(time.RFC3339) + "&to=" + day.Add(24*time.Hour).Format(time.RFC3339) + "&ad_id=a"
	if code, rep := get(q); code != http.StatusOK || rep.Ads[0].Clicks != 5 || rep.Ads[0].Impressions != 10 ||
		!rep.From.Equal(day) || !rep.To.Equal(day.Add(24*time.Hour)) || rep.Timeframe != "" {
		t.Errorf("%s: %d %+v, want the 5 clicks and 10 impressions of that day", q, code, rep)
	}

	// A to in the future is cut to the end of the current minute, where a
	// timeframe's window ends too.
	before := time.Now().UTC()
	q = "from=" + now.Add(-time.Hour).Format(time.RFC3339) + "&to=" + now.Add(48*time.Hour).Format(time.RFC3339) + "&ad_id=a"
	code, rep := get(q)
	after := time.Now().UTC()
	if code != http.StatusOK || rep.Ads[0].Clicks != 3 {
		t.Fatalf("%s: %d %+v, want the 3 clicks of now", q, code, rep)
	}
	if lo, hi := before.Truncate(time.Minute).Add(time.Minute), after.Truncate(time.Minute).Add(time.Minute); rep.To.Before(lo) || rep.To.After(hi) {
		t.Errorf("to in the future was cut to %s, want the end of the current minute (%s)", rep.To, lo)
	}

	// A daily series over 30 days: the points sum to the whole, and the clicks
	// land on their days.
	code, rep = get("timeframe=30d&interval=day&ad_id=a")
	if code != http.StatusOK || rep.Interval != "day" || rep.TZ != "UTC" {
		t.Fatalf("daily series: %d %+v", code, rep)
	}
	pts := rep.Ads[0].Series
	// 31 days once aligned to days, or 30 when the 30 days end on a day
	// boundary (asked in the last minute of a UTC day).
	days := int(rep.To.Sub(rep.From) / (24 * time.Hour))
	endsAtMidnight := days == 30 && rep.To.Equal(rep.To.Truncate(24*time.Hour)) && rep.From.Equal(rep.To.Add(-30*24*time.Hour))
	if days != 31 && !endsAtMidnight {
		t.Fatalf("daily series over 30d covers [%s, %s): want 31 days, or 30 ending at midnight", rep.From, rep.To)
	}
	if len(pts) != days || len(rep.Total.Series) != days {
		t.Fatalf("daily series over 30d has %d points (total %d), want %d (the window aligned to days)", len(pts), len(rep.Total.Series), days)
	}
	var sum uint64
	byDay := map[string]uint64{}
	for i, p := range pts {
		sum += p.Clicks
		byDay[p.From.Format(time.DateOnly)] = p.Clicks
		if i > 0 && !p.From.Equal(pts[i-1].To) {
			t.Errorf("point %d starts at %s, not where point %d ended (%s)", i, p.From, i-1, pts[i-1].To)
		}
	}
	if sum != rep.Ads[0].Clicks || sum != 15 {
		t.Errorf("daily points sum to %d clicks, the whole to %d, want 15", sum, rep.Ads[0].Clicks)
	}
	if byDay[now.Format(time.DateOnly)] != 3 || byDay[now.Add(-48*time.Hour).Format(time.DateOnly)] != 5 || byDay[now.Add(-20*24*time.Hour).Format(time.DateOnly)] != 7 {
		t.Errorf("clicks by day %v, want 3 today, 5 two days ago, 7 twenty days ago", byDay)
	}

	// Hours in a time zone with a half-hour offset still tile exactly.
	code, rep = get("timeframe=6h&interval=hour&tz=Asia/Kolkata&ad_id=a&ad_id=b")
	if code != http.StatusOK || rep.TZ != "Asia/Kolkata" || len(rep.Total.Series) < 6 || len(rep.Total.Series) > 7 {
		t.Fatalf("hourly series in Asia/Kolkata: %d %+v", code, rep)
	}
	if rep.Total.Series[0].From.Minute() != 30 {
		t.Errorf("Kolkata hours start at %s, want half past a UTC hour", rep.Total.Series[0].From)
	}
	var total uint64
	for _, p := range rep.Total.Series {
		total += p.Clicks
	}
	if total != 7 || rep.Total.Clicks != 7 {
		t.Errorf("hourly total points %d, total %d, want 7", total, rep.Total.Clicks)
	}

	// Paging: the total covers every ad, the page only some.
	if code, rep := get("timeframe=1h&limit=1&offset=1"); code != http.StatusOK || rep.TotalAds != 2 || len(rep.Ads) != 1 || rep.Ads[0].AdID != "a" || rep.Total.Clicks != 7 {
		t.Errorf("second page of one: %d %+v, want ad a and the total of both", code, rep)
	}
	if code, rep := get("timeframe=1h&offset=5"); code != http.StatusOK || len(rep.Ads) != 0 || rep.TotalAds != 2 {
		t.Errorf("page past the end: %d %+v", code, rep)
	}

	old := now.Add(-10 * 24 * time.Hour).Format(time.RFC3339)
	for _, tc := range []struct{ query, field string }{
		{"timeframe=1h&from=" + old + "&to=" + now.Format(time.RFC3339), "timeframe"},
		{"from=yesterday&to=" + now.Format(time.RFC3339), "from"},
		{"from=" + old, "to"},
		{"from=" + now.Format(time.RFC3339) + "&to=" + old, "to"},
		{"from=1990-01-01T00:00:00Z&to=1990-01-02T00:00:00Z", "from"},
		{"interval=week", "interval"},
		{"timeframe=30d&interval=minute", "interval"},
		{"from=" + old + "&to=" + now.Format(time.RFC3339) + "&interval=minute", "interval"},
		{"from=" + now.Add(-48*time.Hour).Format(time.RFC3339) + "&to=" + now.Format(time.RFC3339) + "&interval=minute", "interval"}, // 2,880 points
		{"tz=Mars/Olympus", "tz"},
		{"tz=Local", "tz"},
		{"limit=0", "limit"},
		{"limit=many", "limit"},
		{"offset=-1", "offset"},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/ads/analytics?"+tc.query, nil))
		var body struct{ Error, Field string }
		_ = json.Unmarshal(rec.Body.Bytes(), &body)
		if rec.Code != http.StatusBadRequest || body.Field != tc.field || body.Error == "" {
			t.Errorf("%s: %d %s, want 400 naming %s", tc.query, rec.Code, rec.Body.String(), tc.field)
		}
	}
}
