package ingest_test

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/admetric/admetric/api/openapi/openapitest"
	"github.com/admetric/admetric/api/respond"
	"github.com/admetric/admetric/ingest"
	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/store/storetest"
)

// TestBrowserPlayersPostEvents: a page on an allowed origin gets its CORS
// preflight answered and its POSTs the CORS headers; a body sent as
// text/plain (navigator.sendBeacon) is taken as JSON and lands in the
// stream; a page of another origin is refused (403), its event nowhere;
// with "*" any origin may post; without allowed origins the service's own
// pages and clients without an Origin still may; other content types
// answer 415.
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
		// A method a path does not take is answered as the service's engine
		// (cmd/admetric) answers it, as the API contract has it.
		r := gin.New()
		r.HandleMethodNotAllowed = true
		r.NoMethod(func(c *gin.Context) {
			respond.Error(c, http.StatusMethodNotAllowed, "", "method not allowed on this route")
		})
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
		openapitest.Handler(t, r).ServeHTTP(rec, req)
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

	// A page of another origin may not post, even the text/plain POST that
	// needs no preflight.
	for _, method := range []string{http.MethodOptions, http.MethodPost} {
		rec := do(one, method, "/ads/click", "https://evil.example.com", "text/plain", `{"event_id":"evil-1","ad_id":"ad-1"}`)
		if rec.Code != http.StatusForbidden || rec.Header().Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("%s from another origin: %d %v, want 403 without CORS headers", method, rec.Code, rec.Header())
		}
	}
	if ids := streamIDs(t, stream); ids["evil-1"] != 0 {
		t.Fatalf("another origin's event reached the stream: %v", ids)
	}

	anyOrigin := router("*")
	if rec := do(anyOrigin, http.MethodPost, "/ads/impression", "https://anywhere.example.org", "text/plain", `{"event_id":"beacon-2","ad_id":"ad-1"}`); rec.Code != http.StatusAccepted || rec.Header().Get("Access-Control-Allow-Origin") != "*" {
		t.Fatalf("with *: %d %v", rec.Code, rec.Header())
	}

	// Without allowed origins only the service's own pages (and clients that
	// send no Origin) may post.
	none := router()
	if rec := do(none, http.MethodOptions, "/ads/click", player, "", ""); rec.Header().Get("Access-Control-Allow-Origin") != "" || rec.Code == http.StatusNoContent {
		t.Errorf("without allowed origins, a preflight was answered: %d %v", rec.Code, rec.Header())
	}
	if rec := do(none, http.MethodPost, "/ads/click", player, "text/plain", `{"event_id":"cross-1","ad_id":"ad-1"}`); rec.Code != http.StatusForbidden {
		t.Errorf("without allowed origins, a cross-origin POST: %d, want 403", rec.Code)
	}
	// httptest requests go to example.com.
	if rec := do(none, http.MethodPost, "/ads/click", "http://example.com", "text/plain", `{"event_id":"own-1","ad_id":"ad-1"}`); rec.Code != http.StatusAccepted {
		t.Errorf("without allowed origins, a POST of the service's own page: %d %s", rec.Code, rec.Body)
	}
	if rec := do(none, http.MethodPost, "/ads/click", "", "application/json", `{"event_id":"server-1","ad_id":"ad-1"}`); rec.Code != http.StatusAccepted {
		t.Errorf("without allowed origins, a POST without Origin: %d %s", rec.Code, rec.Body)
	}

	for _, ct := range []string{"application/xml", "text/html", ""} {
		if rec := do(one, http.MethodPost, "/ads/click", player, ct, `{"ad_id":"ad-1"}`); rec.Code != http.StatusUnsupportedMediaType {
			t.Errorf("Content-Type %q: %d, want 415", ct, rec.Code)
		}
	}
}
