package ingest_test

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/admetric/admetric/ingest"
	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/store/storetest"
)

// TestBrowserPlayersPostEvents: a page on an allowed origin gets its CORS
// preflight answered and its POSTs the CORS headers; a body sent as
// text/plain (navigator.sendBeacon) is taken as JSON and lands in the
// stream; another origin gets no CORS header (its browser refuses the
// answer); with "*" any origin may post; other content types answer 415.
func TestBrowserPlayersPostEvents(t *testing.T) {
	srv := storetest.NATS(t)
	js, nc := storetest.JetStream(t, srv)
	stream := storetest.EventStream(t, js, 1)
	pub, err := ingest.NewPublisher(nc, ingest.PublisherOptions{Timeout: time.Minute, MaxPending: 64})
	if err != nil {
		t.Fatal(err)
	}
	gin.SetMode(gin.TestMode)
	router := func(origins ...string) *gin.Engine {
		r := gin.New()
		ingest.NewHandlers(pub, knownAds{"ad-1": true}, ingest.HandlersOptions{
			Limits: event.Limits{MaxAge: time.Hour}, AllowedOrigins: origins, Logger: slog.New(slog.DiscardHandler),
		}).Register(r)
		return r
	}
	do := func(r http.Handler, method, path, origin, contentType, body string) *httptest.ResponseRecorder {
		t.Helper()
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		if method == http.MethodOptions {
			req.Header.Set("Access-Control-Request-Method", http.MethodPost)
			req.Header.Set("Access-Control-Request-Headers", "content-type")
		}
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		return rec
	}
	const player = "https://player.example.com"
	one := router(player)

	for _, path := range []string{"/ads/click", "/ads/impression", "/ads/events"} {
		rec := do(one, http.MethodOptions, path, player, "", "")
		if rec.Code != http.StatusNoContent || rec.Header().Get("Access-Control-Allow-Origin") != player ||
			!strings.Contains(rec.Header().Get("Access-Control-Allow-Methods"), http.MethodPost) {
			t.Errorf("preflight of %s: %d %v", path, rec.Code, rec.Header())
		}
		if rec.Header().Get("Access-Control-Allow-Credentials") != "" {
			t.Errorf("preflight of %s allows credentials", path)
		}
	}
	rec := do(one, http.MethodPost, "/ads/click", player, "text/plain;charset=UTF-8", `{"event_id":"beacon-1","ad_id":"ad-1"}`)
	if rec.Code != http.StatusAccepted || rec.Header().Get("Access-Control-Allow-Origin") != player {
		t.Fatalf("beacon from the player's origin: %d %v %s", rec.Code, rec.Header(), rec.Body)
	}
	if ids := streamIDs(t, stream); ids["beacon-1"] != 1 {
		t.Fatalf("the beacon's event is not in the stream once: %v", ids)
	}

	for _, method := range []string{http.MethodOptions, http.MethodPost} {
		rec := do(one, method, "/ads/click", "https://evil.example.com", "application/json", `{"event_id":"evil-1","ad_id":"ad-1"}`)
		if got := rec.Header().Get("Access-Control-Allow-Origin"); got != "" {
			t.Errorf("%s from another origin: Access-Control-Allow-Origin %q", method, got)
		}
	}

	anyOrigin := router("*")
	if rec := do(anyOrigin, http.MethodPost, "/ads/impression", "https://anywhere.example.org", "text/plain", `{"event_id":"beacon-2","ad_id":"ad-1"}`); rec.Code != http.StatusAccepted || rec.Header().Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("with *: %d %v", rec.Code, rec.Header())
	}

	none := router()
	if rec := do(none, http.MethodOptions, "/ads/click", player, "", ""); rec.Header().Get("Access-Control-Allow-Origin") != "" || rec.Code == http.StatusNoContent {
		t.Errorf("without allowed origins, a preflight was answered: %d %v", rec.Code, rec.Header())
	}

	for _, ct := range []string{"application/xml", "text/html", ""} {
		if rec := do(one, http.MethodPost, "/ads/click", player, ct, `{"ad_id":"ad-1"}`); rec.Code != http.StatusUnsupportedMediaType {
			t.Errorf("Content-Type %q: %d, want 415", ct, rec.Code)
		}
	}
}
