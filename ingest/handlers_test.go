package ingest_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/ingest"
	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/store/storetest"
)

type knownAds map[string]bool

func (k knownAds) Exists(id string) bool { return k[id] }

// Duration gives each known ad 15 seconds.
func (k knownAds) Duration(id string) float64 {
	if k[id] {
		return 15
	}
	return 0
}

// ClickThrough gives each known ad the click URL https://shop.example.com/<id>.
func (k knownAds) ClickThrough(id string) (string, bool) {
	if !k[id] {
		return "", false
	}
	return "https://shop.example.com/" + id, true
}

// TestIntakeOnRealJetStream: an accepted event is in the stream once, with
// Nats-Msg-Id = event_id, the IP canonical and a clock-skewed timestamp dated
// at receive time; a retried event_id is stored once; with NATS gone the
// answer is 503 with Retry-After, never a 202.
func TestIntakeOnRealJetStream(t *testing.T) {
	srv := storetest.NATS(t)
	_, nc := storetest.JetStream(t, srv)
	ctx := context.Background()
	in := newIntake(t, nc, knownAds{"ad-1": true})
	stream := in.stream

	future := time.Now().Add(2 * time.Minute).UTC().Format(time.RFC3339)
	for range 2 {
		code, _, body := in.post(t, "/ads/click", `{"event_id":"e-1","ad_id":"ad-1","ip":"2001:DB8::1","playback_time":2.5,"timestamp":"`+future+`"}`)
		if code != http.StatusAccepted || body["event_id"] != "e-1" || body["status"] != "accepted" {
			t.Fatalf("click: %d %v", code, body)
		}
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("stream holds %d messages after a retried event_id, want 1", info.State.Msgs)
	}
	msg, err := stream.GetMsg(ctx, info.State.LastSeq)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := event.Decode(msg.Data)
	if err != nil {
		t.Fatal(err)
	}
	if msg.Header.Get("Nats-Msg-Id") != "e-1" || ev.IP != "2001:db8::1" || ev.Type != event.Click || ev.Timestamp.After(time.Now()) {
		t.Fatalf("stored %+v with headers %v", ev, msg.Header)
	}

	srv.Shutdown()
	// Once the client knows the server is gone, the publisher fails at once
	// instead of waiting out the timeout.
	waitFor(t, "the client to see the server gone", 30*time.Second, func() bool { return !nc.IsConnected() })
	code, hdr, body := in.post(t, "/ads/impression", `{"ad_id":"ad-1"}`)
	if code != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" || body["error"] == "" {
		t.Fatalf("with NATS down: %d %v %v, want 503 with Retry-After", code, hdr, body)
	}
}

// A click whose playback position is past the ad's duration (15 s) is
// published as invalid traffic (playback); one at or within it, and other
// types, are not; an ad of unknown duration marks nothing.
func TestIntakeMarksImpossiblePlayback(t *testing.T) {
	_, nc := storetest.JetStream(t, storetest.NATS(t))
	ctx := context.Background()
	in := newIntake(t, nc, durations{"ad-1": 15, "ad-0": 0})
	stream := in.stream
	tests := []struct {
		path, ad string
		playback string
		want     event.InvalidReason
	}{
		{"/ads/click", "ad-1", "15", ""},
		{"/ads/click", "ad-1", "15.001", event.Playback},
		{"/ads/click", "ad-1", "3600", event.Playback},
		{"/ads/click", "ad-1", "0", ""},
		{"/ads/impression", "ad-1", "20", ""},
		{"/ads/click", "ad-0", "20", ""},
	}
	for i, tc := range tests {
		id := fmt.Sprintf("pb-%d", i)
		if code, _, body := in.post(t, tc.path, `{"event_id":"`+id+`","ad_id":"`+tc.ad+`","playback_time":`+tc.playback+`}`); code != http.StatusAccepted {
			t.Fatalf("%s %s at %s: %d %v", tc.path, tc.ad, tc.playback, code, body)
		}
		info, err := stream.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		msg, err := stream.GetMsg(ctx, info.State.LastSeq)
		if err != nil {
			t.Fatal(err)
		}
		ev, err := event.Decode(msg.Data)
		if err != nil || ev.EventID != id {
			t.Fatalf("stored %+v (%v), want event %s", ev, err, id)
		}
		if ev.InvalidReason != tc.want {
			t.Errorf("%s on %s at %ss: invalid_reason %q, want %q", tc.path, tc.ad, tc.playback, ev.InvalidReason, tc.want)
		}
	}
	// A client may not decide it.
	if code, _, body := in.post(t, "/ads/click", `{"ad_id":"ad-1","invalid_reason":"playback"}`); code != http.StatusBadRequest || body["field"] != "invalid_reason" {
		t.Errorf("a click naming its own invalid_reason: %d %v, want 400 naming invalid_reason", code, body)
	}
}

// newIntake serves the intake handlers for ads over a publisher on nc into
// a fresh event stream.
func newIntake(t testing.TB, nc *nats.Conn, ads ingest.AdLookup) *intake {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream := storetest.EventStream(t, js, 1)
	gin.SetMode(gin.TestMode)
	r := gin.New()
	// A timeout far beyond any PubAck, even on a loaded machine: without a
	// spool, a publish that times out fails the request.
	pub, err := ingest.NewPublisher(nc, ingest.PublisherOptions{Timeout: time.Minute, MaxPending: 64})
	if err != nil {
		t.Fatal(err)
	}
	ingest.NewHandlers(pub, ads, ingest.HandlersOptions{Limits: event.Limits{MaxAge: time.Hour}, Logger: slog.New(slog.DiscardHandler)}).Register(r)
	return &intake{router: r, stream: stream}
}

// durations are known ads with their durations.
type durations map[string]float64

func (d durations) Exists(id string) bool { _, ok := d[id]; return ok }

func (d durations) Duration(id string) float64 { return d[id] }

// TestNewPublisherRequiresOptions: Timeout and MaxPending have no default
// here (they live in package config); leaving one out is an error naming it.
func TestNewPublisherRequiresOptions(t *testing.T) {
	srv := storetest.NATS(t)
	_, nc := storetest.JetStream(t, srv)
	tests := []struct {
		opts ingest.PublisherOptions
		name string
	}{
		{ingest.PublisherOptions{MaxPending: 1}, "Timeout"},
		{ingest.PublisherOptions{Timeout: -time.Second, MaxPending: 1}, "Timeout"},
		{ingest.PublisherOptions{Timeout: time.Second}, "MaxPending"},
		{ingest.PublisherOptions{Timeout: time.Second, MaxPending: -1}, "MaxPending"},
	}
	for _, tc := range tests {
		pub, err := ingest.NewPublisher(nc, tc.opts)
		if err == nil || pub != nil || !strings.Contains(err.Error(), tc.name) || !strings.HasPrefix(err.Error(), "ingest: ") {
			t.Errorf("NewPublisher(%+v) = %v, %v; want an ingest: error naming %s", tc.opts, pub, err, tc.name)
		}
	}
}
