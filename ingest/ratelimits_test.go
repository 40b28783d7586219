package ingest_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/admetric/admetric/ingest"
	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/ingest/pixel"
	"github.com/admetric/admetric/ingest/ratelimit"
)

// countingPub accepts every event and counts them.
type countingPub struct{ n atomic.Int64 }

func (p *countingPub) Publish(context.Context, *event.Event) (ingest.Result, error) {
	p.n.Add(1)
	return ingest.Result{Status: ingest.Accepted}, nil
}

// TestRateLimits: over its bucket a client is answered 429 with
// Retry-After and the error body, and nothing of its request is published;
// a batch costs its events (at most the burst), one as much as a single
// event; each client has its own bucket; the pixels have their own limit;
// refusals are counted by route.
func TestRateLimits(t *testing.T) {
	gin.SetMode(gin.TestMode)
	r := gin.New()
	pub := &countingPub{}
	reg := prometheus.NewRegistry()
	// A token a second: nothing refills within the test.
	intake := ingest.NewHandlers(pub, knownAds{"ad-1": true}, ingest.HandlersOptions{
		Limits: event.Limits{MaxAge: time.Hour}, Logger: slog.New(slog.DiscardHandler), Registerer: reg,
		RateLimits: ingest.RateLimits{Events: ratelimit.New(1, 10, 100), Pixels: ratelimit.New(1, 5, 100)},
	})
	intake.Register(r)
	signer, err := pixel.NewSigner([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	ingest.NewPixelHandlers(intake, nil, signer, knownAds{"ad-1": true}, reg).Register(r)

	do := func(client, method, path, body string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		req.RemoteAddr = client + ":40000"
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		r.ServeHTTP(rec, req)
		return rec
	}
	refused := func(what string, rec *httptest.ResponseRecorder) {
		t.Helper()
		var body struct{ Error string }
		if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") != "1" ||
			json.Unmarshal(rec.Body.Bytes(), &body) != nil || body.Error == "" {
			t.Errorf("%s: %d, Retry-After %q, body %s; want 429, Retry-After 1 and the error body",
				what, rec.Code, rec.Header().Get("Retry-After"), rec.Body)
		}
	}
	batch := func(n int) string {
		return "[" + strings.Repeat(`{"type":"click","ad_id":"ad-1"},`, n-1) + `{"type":"click","ad_id":"ad-1"}]`
	}

	for i := range 10 {
		if rec := do("192.0.2.1", http.MethodPost, "/ads/click", `{"ad_id":"ad-1"}`); rec.Code != http.StatusAccepted {
			t.Fatalf("event %d of a burst of 10: %d", i+1, rec.Code)
		}
	}
	refused("an 11th event", do("192.0.2.1", http.MethodPost, "/ads/impression", `{"ad_id":"ad-1"}`))
	refused("a batch from a client with an empty bucket", do("192.0.2.1", http.MethodPost, "/ads/events", batch(1)))

	// A batch larger than the burst takes a full bucket.
	if rec := do("192.0.2.2", http.MethodPost, "/ads/events", batch(25)); rec.Code != http.StatusOK {
		t.Fatalf("a batch of 25 with a full bucket of 10: %d %s", rec.Code, rec.Body)
	}
	refused("an event after a batch took the bucket", do("192.0.2.2", http.MethodPost, "/ads/click", `{"ad_id":"ad-1"}`))
	// A batch costs its events: 6, then 5 more than the 4 left.
	if rec := do("192.0.2.3", http.MethodPost, "/ads/events", batch(6)); rec.Code != http.StatusOK {
		t.Fatalf("a batch of 6 with a full bucket of 10: %d", rec.Code)
	}
	before := pub.n.Load()
	refused("a batch of 5 with 4 tokens left", do("192.0.2.3", http.MethodPost, "/ads/events", batch(5)))
	if n := pub.n.Load() - before; n != 0 {
		t.Errorf("a refused batch published %d events", n)
	}
	// Of a batch of one, one token.
	for i := range 10 {
		if rec := do("192.0.2.4", http.MethodPost, "/ads/events", batch(1)); rec.Code != http.StatusOK {
			t.Fatalf("batch of one %d of 10: %d", i+1, rec.Code)
		}
	}
	refused("an 11th batch of one", do("192.0.2.4", http.MethodPost, "/ads/events", batch(1)))
	if want := int64(10 + 25 + 6 + 10); pub.n.Load() != want {
		t.Errorf("published %d events, want %d", pub.n.Load(), want)
	}

	// The pixels: their own bucket of 5, shared by /t and /c.
	for i := range 5 {
		if rec := do("192.0.2.1", http.MethodGet, "/t/impression?ad=ad-1", ""); rec.Code != http.StatusOK {
			t.Fatalf("pixel %d of a burst of 5: %d", i+1, rec.Code)
		}
	}
	refused("a 6th pixel", do("192.0.2.1", http.MethodGet, "/t/start?ad=ad-1", ""))
	refused("a click-through after 5 pixels", do("192.0.2.1", http.MethodGet, "/c?ad=ad-1", ""))

	limited := map[string]float64{"/ads/click": 1, "/ads/impression": 1, "/ads/events": 3, "/t/:kind": 1, "/c": 1}
	got, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range got {
		if mf.GetName() != "admetric_rate_limited_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			route := m.GetLabel()[0].GetValue()
			if v := m.GetCounter().GetValue(); v != limited[route] {
				t.Errorf("admetric_rate_limited_total{route=%q} = %v, want %v", route, v, limited[route])
			}
		}
	}
	var clients float64
	for _, mf := range got {
		if mf.GetName() == "admetric_rate_limit_clients" {
			clients = mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	if clients != 4+1 {
		t.Errorf("admetric_rate_limit_clients = %v, want 5 (4 intake clients, 1 pixel client)", clients)
	}
}
