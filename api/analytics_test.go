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
	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/storetest"
)

type staticCatalog []string

func (s staticCatalog) Add(string)            {}
func (s staticCatalog) Remove(string)         {}
func (s staticCatalog) Exists(id string) bool { return slices.Contains(s, id) }
func (s staticCatalog) IDs() []string         { return slices.Clone(s) }

// TestAnalyticsWindows writes rollups straight into the buckets and reads them
// back through GET /ads/analytics: each timeframe sums exactly the slots in
// its window, names that window, and all ads are sorted by clicks.
func TestAnalyticsWindows(t *testing.T) {
	js, _ := storetest.JetStream(t, storetest.NATS(t))
	ctx := context.Background()
	layout := store.NewLayout(store.Retentions{Minute: 72 * time.Hour, Hour: 2400 * time.Hour, Day: 43800 * time.Hour})
	rollups, err := store.OpenRollups(ctx, js, layout, 1)
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
	api.NewAnalyticsHandler(rollups, staticCatalog{"a", "b"}, slog.New(slog.DiscardHandler)).Register(r)
	get := func(query string) (int, api.Report) {
		t.Helper()
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/ads/analytics?"+query, nil))
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
	if _, rep := get("timeframe=1h&ad_id=a"); rep.To.Sub(rep.From) != time.Hour {
		t.Errorf("1h window is %s long, want exactly an hour", rep.To.Sub(rep.From))
	}
	for _, q := range []string{"timeframe=2d", "ad_id=x.y", "ad_id=zzz"} {
		if code, _ := get(q); code/100 != 4 {
			t.Errorf("%s: status %d, want 4xx", q, code)
		}
	}
}
