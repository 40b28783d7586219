package api_test

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/gin-gonic/gin"

	"github.com/admetric/admetric/api"
	"github.com/admetric/admetric/api/openapi/openapitest"
	"github.com/admetric/admetric/store/rollup"
	"github.com/admetric/admetric/store/rollup/rolluptest"
)

// emptyRollups is a RollupReader with no events: the parsers are under test.
type emptyRollups struct{}

func (emptyRollups) Layout() rollup.Layout { return rolluptest.Layout }
func (emptyRollups) Sum(context.Context, string, []rollup.Cell) (*rollup.Aggregate, error) {
	return &rollup.Aggregate{}, nil
}

// checkEdgeAnswer fails t for an answer to bad input that is not as the
// edge must answer: a 5xx, a 4xx that names no field, or an answer the API
// contract does not describe.
func checkEdgeAnswer(t *testing.T, req *http.Request, rec *httptest.ResponseRecorder) {
	t.Helper()
	if rec.Code >= 500 {
		t.Fatalf("%s: %d %s", req.URL.RequestURI(), rec.Code, rec.Body)
	}
	if rec.Code >= 400 {
		var body struct{ Error, Field string }
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body.Error == "" || body.Field == "" {
			t.Fatalf("%s: %d %s: a 4xx must name the field at fault", req.URL.RequestURI(), rec.Code, rec.Body)
		}
	}
	if err := openapitest.Check(req, rec.Code, rec.Header(), rec.Body.Bytes()); err != nil {
		t.Fatal(err)
	}
}

// FuzzAnalyticsQuery: whatever its query, GET /ads/analytics is answered
// 200 or a 4xx naming the parameter at fault, never a 5xx, and as the
// contract says.
func FuzzAnalyticsQuery(f *testing.F) {
	for _, q := range []string{
		"", "timeframe=24h", "timeframe=30d&ad_id=a&ad_id=b&interval=day&tz=Europe/Berlin",
		"from=2026-11-25T00:00:00Z&to=2026-11-26T00:00:00Z&interval=hour",
		"from=2026-11-25T00:00:00.123456789%2B05:30&to=9999-12-31T23:59:59Z",
		"timeframe=1h&interval=minute&limit=1000&offset=99999999999999999999",
		"ad_id=%00&tz=Local&include_invalid=maybe", "tz=../../etc/passwd", "tz=America/Argentina/ComodRivadavia",
		"from=0001-01-01T00:00:00Z&to=0001-01-01T00:00:01Z", "timeframe=6h&timeframe=7d", "ad_id=c",
		"from=2026-11-25T00:00:00Z", "limit=-1", "offset=1e3", "interval=week", "ad_id=" + strings.Repeat("x", 65),
		"include_invalid=1&ad_id=a;b", "%zz=1&timeframe=%",
	} {
		f.Add(q)
	}
	gin.SetMode(gin.TestMode)
	r := gin.New()
	api.NewAnalyticsHandler(emptyRollups{}, rolluptest.Layout, staticCatalog{"a", "b"}, slog.New(slog.DiscardHandler), api.AnalyticsOptions{}).Register(r)
	f.Fuzz(func(t *testing.T, raw string) {
		req := httptest.NewRequest(http.MethodGet, "/ads/analytics", nil)
		req.URL.RawQuery = raw
		req.RequestURI = req.URL.RequestURI()
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req.Clone(req.Context()))
		checkEdgeAnswer(t, req, rec)
	})
}

// FuzzVASTRequest: whatever the ad ID in its path or its query, a VAST
// request is answered a well-formed XML document or a 4xx naming the field
// at fault, never a 5xx, and as the contract says.
func FuzzVASTRequest(f *testing.F) {
	for _, s := range []struct{ id, query string }{
		{"hosted", ""}, {"wrapped", "cb=123"}, {"empty", ""}, {"legacy", ""}, {"nope", ""},
		{"", "ad_id=hosted"}, {"", "ad_id=hosted&ad_id=wrapped"}, {"", ""}, {"", "ad_id=%00"},
		{"hosted%00", ""}, {"..", "ad_id=../x"}, {"h\u00e9", "ad_id=\xff"}, {"hosted", "ad_id=wrapped"},
		{strings.Repeat("a", 65), ""}, {"a b", "x=<y>&ad_id=&"},
	} {
		f.Add(s.id, s.query)
	}
	ads := adsInMemory{
		"hosted":  {ID: "hosted", Title: "Hosted <&> \"ad\"", VideoURL: "https://cdn.example.com/a.mp4", ClickURL: "https://shop.example.com/?a=1&b=<2>", DurationSeconds: 15, VideoType: "video/mp4", VideoWidth: 640, VideoHeight: 360, VideoDelivery: "progressive"},
		"wrapped": {ID: "wrapped", Title: "Wrapped", VASTTagURL: "https://tags.example.net/vast?id=7&x=]]>"},
		"empty":   {ID: "empty", Title: "No media"},
		"legacy":  {ID: "legacy", Title: "Legacy", VideoURL: "javascript:alert(1)", VideoType: "video/mp4", VideoWidth: 1, VideoHeight: 1, VideoDelivery: "progressive"},
	}
	r, _ := vastRouter(f, ads)
	f.Fuzz(func(t *testing.T, id, query string) {
		path := "/vast"
		if id != "" {
			path += "/" + url.PathEscape(id)
		}
		req := httptest.NewRequest(http.MethodGet, "http://internal:8080"+path, nil)
		req.URL.RawQuery = query
		req.RequestURI = req.URL.RequestURI()
		rec := httptest.NewRecorder()
		// Gin rewrites the URL of a request it redirects (a trailing slash,
		// as "0%2F" decodes to): the contract judges the request as sent.
		r.ServeHTTP(rec, req.Clone(req.Context()))
		if rec.Code == http.StatusNotFound && strings.Contains(id, "/") {
			return // another route: Gin's 404, not the handler's
		}
		checkEdgeAnswer(t, req, rec)
		if rec.Code == http.StatusOK {
			dec := xml.NewDecoder(rec.Body)
			for {
				_, err := dec.Token()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatalf("%s: the document is not well-formed XML: %v", req.URL.RequestURI(), err)
				}
			}
		}
	})
}
