package ingest_test

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/admetric/admetric/ingest"
	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/ingest/pixel"
)

// FuzzPixelRequest: whatever its kind and query, a tracking pixel is
// answered the GIF, and a click-through a redirect to the ad's own URL or a
// 404 naming the ad; never a 5xx.
func FuzzPixelRequest(f *testing.F) {
	signer, err := pixel.NewSigner([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		f.Fatal(err)
	}
	signed := signer.Query("click", pixel.Serving{AdID: "ad-1", ServingID: pixel.NewServingID(), Expires: time.Now().Add(time.Hour)})
	for _, s := range []struct{ kind, query string }{
		{"impression", signed}, {"click", signed + "&ph=00:00:03.000&ts=2026-12-07T08%3A15%3A07.127Z"},
		{"error", signed + "&code=405"}, {"error", "ad=ad-1&code=%5BERRORCODE%5D"}, {"midpoint", "ad=ad-1&sv=x&exp=1&sig=AAAA"},
		{"nope", ""}, {"click", "ad=ad-1&ph=-1&ts=99999999999999"}, {"start", "ad=%00&sv=%ff&exp=-9223372036854775808"},
		{"complete", strings.Repeat("ad=ad-1&", 50)}, {"skip", "ad=ad-1;x=y&sig=%"},
	} {
		f.Add(s.kind, s.query)
	}
	gin.SetMode(gin.TestMode)
	r := gin.New()
	ads := knownAds{"ad-1": true}
	intake := ingest.NewHandlers(&countingPub{}, ads, ingest.HandlersOptions{Limits: event.Limits{MaxAge: time.Hour}, Logger: slog.New(slog.DiscardHandler)})
	ingest.NewPixelHandlers(intake, nil, signer, ads, prometheus.NewRegistry()).Register(r)
	gif := func() []byte {
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/t/impression", nil))
		return rec.Body.Bytes()
	}()
	f.Fuzz(func(t *testing.T, kind, query string) {
		req := httptest.NewRequest(http.MethodGet, "/t/x", nil)
		req.URL.Path, req.URL.RawPath, req.URL.RawQuery = "/t/"+kind, "/t/"+url.PathEscape(kind), query
		req.RequestURI = req.URL.RequestURI()
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		routed := kind != "" && !strings.Contains(kind, "/")
		if routed && (rec.Code != http.StatusOK || !bytes.Equal(rec.Body.Bytes(), gif)) {
			t.Fatalf("GET %s: %d %q, want the GIF", req.RequestURI, rec.Code, rec.Body)
		}
		click := httptest.NewRequest(http.MethodGet, "/c", nil)
		click.URL.RawQuery = query
		rec = httptest.NewRecorder()
		r.ServeHTTP(rec, click)
		switch {
		case rec.Code == http.StatusFound && rec.Header().Get("Location") == "https://shop.example.com/ad-1":
		case rec.Code == http.StatusNotFound && strings.Contains(rec.Body.String(), `"field":"ad"`):
		default:
			t.Fatalf("GET /c?%s: %d %v %q, want a redirect to the ad's URL or 404 naming ad", query, rec.Code, rec.Header(), rec.Body)
		}
	})
}
