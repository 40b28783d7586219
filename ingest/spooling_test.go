package ingest_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/ingest"
	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/ingest/spool"
	"github.com/admetric/admetric/store/devserver"
	"github.com/admetric/admetric/store/storetest"
)

// restartableNATS is an embedded server on a fixed port and store directory,
// so that a TCP client reconnects to it after a restart, as to a real outage.
type restartableNATS struct {
	t    *testing.T
	dir  string
	addr string
	srv  *devserver.NATS
}

func startRestartableNATS(t *testing.T) *restartableNATS {
	t.Helper()
	r := &restartableNATS{t: t, dir: t.TempDir(), addr: "127.0.0.1:0"}
	r.start()
	r.addr = strings.TrimPrefix(r.srv.ClientURL(), "nats://")
	t.Cleanup(func() {
		if r.srv != nil {
			r.srv.Shutdown()
		}
	})
	return r
}

func (r *restartableNATS) start() {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := devserver.StartNATS(ctx, devserver.NATSOptions{StoreDir: r.dir, Listen: r.addr, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		r.t.Fatal(err)
	}
	r.srv = srv
}

func (r *restartableNATS) stop() {
	r.srv.Shutdown()
	r.srv = nil
}

func (r *restartableNATS) connect(t *testing.T) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect("nats://"+r.addr, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// intake is the handlers over a publisher with a spool and its replayer.
type intake struct {
	router *gin.Engine
	spool  *spool.Spool
	stream jetstream.Stream
}

func startIntake(t *testing.T, nc *nats.Conn, spoolBytes int64) *intake {
	t.Helper()
	ctx := context.Background()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream := storetest.EventStream(t, js, 1)
	sp, err := spool.Open(t.TempDir(), spool.Options{MaxBytes: spoolBytes, SegmentBytes: 16 << 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Close() })
	pub, err := ingest.NewPublisher(nc, ingest.PublisherOptions{Timeout: 2 * time.Second, Spool: sp})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := ingest.NewReplayer(nc, sp, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rep.Run(rctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	gin.SetMode(gin.TestMode)
	r := gin.New()
	ingest.NewHandlers(pub, knownAds{"ad-1": true}, event.Limits{MaxAge: time.Hour}, slog.New(slog.DiscardHandler)).Register(r)
	return &intake{router: r, spool: sp, stream: stream}
}

func (in *intake) post(t *testing.T, path, body string) (int, http.Header, map[string]any) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	in.router.ServeHTTP(rec, req)
	var out map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("%s: body %q is not JSON", path, rec.Body.String())
	}
	return rec.Code, rec.Header(), out
}

// streamIDs returns the Nats-Msg-Id of every message in the stream, with how
// often each occurs.
func streamIDs(t *testing.T, stream jetstream.Stream) map[string]int {
	t.Helper()
	ctx := context.Background()
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ids := make(map[string]int)
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("seq %d: %v", seq, err)
		}
		ids[m.Header.Get(jetstream.MsgIDHeader)]++
	}
	return ids
}

func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSpoolWhileNATSIsDown: with the server gone every event still gets a 202,
// "spooled"; once it is back the replayer publishes them all, each once, and a
// retry of a replayed event_id is a duplicate.
func TestSpoolWhileNATSIsDown(t *testing.T) {
	ns := startRestartableNATS(t)
	in := startIntake(t, ns.connect(t), 64<<20)

	post := func(id string) string {
		t.Helper()
		code, _, body := in.post(t, "/ads/click", `{"event_id":"`+id+`","ad_id":"ad-1","playback_time":1}`)
		if code != http.StatusAccepted {
			t.Fatalf("%s: %d %v", id, code, body)
		}
		return body["status"].(string)
	}
	for i := range 20 {
		if s := post(fmt.Sprintf("before-%d", i)); s != "accepted" && s != "spooled" {
			t.Fatalf("with NATS up: status %q", s)
		}
	}
	ns.stop()
	began := time.Now()
	var wg sync.WaitGroup
	statuses := make([]string, 300)
	for i := range statuses {
		wg.Go(func() { statuses[i] = post(fmt.Sprintf("during-%d", i)) })
	}
	wg.Wait()
	for i, s := range statuses {
		if s != "spooled" {
			t.Fatalf("during-%d with NATS down: status %q, want spooled", i, s)
		}
	}
	t.Logf("300 events spooled in %s", time.Since(began).Round(time.Millisecond))
	if in.spool.Empty() {
		t.Fatal("the spool is empty after spooling")
	}

	ns.start()
	waitFor(t, "the replay", 30*time.Second, in.spool.Empty)
	ids := streamIDs(t, in.stream)
	if len(ids) != 320 {
		t.Fatalf("stream holds %d distinct events, want 320", len(ids))
	}
	for id, n := range ids {
		if n != 1 {
			t.Errorf("%s stored %d times", id, n)
		}
	}
	// A retry of a replayed event: the breaker may still be open for a moment
	// after the outage, so it may be spooled again; either way it is stored once.
	if s := post("during-7"); s != "accepted" && s != "spooled" {
		t.Fatalf("retry after the replay: %q", s)
	}
	waitFor(t, "the retry's replay", 30*time.Second, in.spool.Empty)
	if ids := streamIDs(t, in.stream); len(ids) != 320 || ids["during-7"] != 1 {
		t.Fatalf("a retried event_id was stored again: %d distinct, during-7 %d times", len(ids), ids["during-7"])
	}
	// Once the breaker closes, events are published directly again.
	n := 0
	waitFor(t, "a direct publish after the outage", 10*time.Second, func() bool {
		n++
		return post(fmt.Sprintf("after-%d", n)) == "accepted"
	})
	waitFor(t, "the spool to empty", 30*time.Second, in.spool.Empty)
	if ids := streamIDs(t, in.stream); len(ids) != 320+n {
		t.Fatalf("stream holds %d events, want %d", len(ids), 320+n)
	}
}

// TestSpoolFullAnswers503: a spool at its bound refuses with 503 and
// Retry-After; once the replay drains it, events are accepted again.
func TestSpoolFullAnswers503(t *testing.T) {
	ns := startRestartableNATS(t)
	in := startIntake(t, ns.connect(t), 32<<10)
	ns.stop()

	spooled := 0
	for i := 0; ; i++ {
		if i > 10_000 {
			t.Fatal("the spool never filled")
		}
		code, hdr, body := in.post(t, "/ads/impression", fmt.Sprintf(`{"event_id":"fill-%d","ad_id":"ad-1"}`, i))
		if code == http.StatusAccepted {
			spooled++
			continue
		}
		if code != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" || !strings.Contains(body["error"].(string), "spool is full") {
			t.Fatalf("event %d: %d %v %v, want 503 naming the full spool with Retry-After", i, code, hdr, body)
		}
		break
	}
	if spooled == 0 {
		t.Fatal("nothing was spooled before the spool filled")
	}
	t.Logf("%d events spooled before the 32 KiB spool filled", spooled)

	ns.start()
	waitFor(t, "the replay", 30*time.Second, in.spool.Empty)
	code, _, body := in.post(t, "/ads/impression", `{"event_id":"after","ad_id":"ad-1"}`)
	if code != http.StatusAccepted || body["status"] != "accepted" {
		t.Fatalf("after the drain: %d %v", code, body)
	}
	ids := streamIDs(t, in.stream)
	if len(ids) != spooled+1 {
		t.Fatalf("stream holds %d events, want the %d spooled and 1 more", len(ids), spooled)
	}
}

// TestPublisherBusy: with MaxPending publishes waiting for acks, the next one
// is refused at once rather than queued.
func TestPublisherBusy(t *testing.T) {
	ns := startRestartableNATS(t)
	nc := ns.connect(t)
	// A plain subscriber takes the events and never acknowledges: publishes
	// wait out their timeout.
	sub, err := nc.SubscribeSync("ads.events.>")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	pub, err := ingest.NewPublisher(nc, ingest.PublisherOptions{Timeout: 2 * time.Second, MaxPending: 2})
	if err != nil {
		t.Fatal(err)
	}
	ev := func(id string) *event.Event {
		return &event.Event{EventID: id, Type: event.Impression, AdID: "ad-1", Timestamp: time.Now()}
	}
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Go(func() { _, _ = pub.Publish(context.Background(), ev(fmt.Sprint("slow-", i))) })
	}
	waitFor(t, "two publishes in flight", 5*time.Second, func() bool {
		n, _, err := sub.Pending()
		return err == nil && n == 2
	})
	began := time.Now()
	_, err = pub.Publish(context.Background(), ev("third"))
	if !errors.Is(err, ingest.ErrBusy) {
		t.Fatalf("third publish: %v, want ErrBusy", err)
	}
	if d := time.Since(began); d > time.Second {
		t.Errorf("ErrBusy took %s; it must not wait", d)
	}
	wg.Wait()
}

// streamIPs maps each stored event's ID to its ip field.
func streamIPs(t *testing.T, stream jetstream.Stream) map[string]string {
	t.Helper()
	ctx := context.Background()
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]string)
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		ev, err := event.Decode(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		out[ev.EventID] = ev.IP
	}
	return out
}
