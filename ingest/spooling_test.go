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
	"github.com/prometheus/client_golang/prometheus"

	"github.com/admetric/admetric/api/openapi/openapitest"
	"github.com/admetric/admetric/ingest"
	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/ingest/pixel"
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
	srv, err := devserver.StartNATS(ctx, storetest.NATSOptions(r.dir, r.addr, 1))
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
	router   *gin.Engine // serve answers through it, checked against the API contract
	spool    *spool.Spool
	stream   jetstream.Stream
	logs     *logRecorder  // the publisher's
	signer   *pixel.Signer // of the pixel handlers
	detached *ingest.DetachedPublisher
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
	logs := &logRecorder{}
	pub, err := ingest.NewPublisher(nc, ingest.PublisherOptions{Timeout: 2 * time.Second, MaxPending: 4096, Spool: sp, Logger: slog.New(logs)})
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
	h := ingest.NewHandlers(pub, knownAds{"ad-1": true}, ingest.HandlersOptions{Limits: event.Limits{MaxAge: time.Hour}, Logger: slog.New(slog.DiscardHandler)})
	h.Register(r)
	signer, err := pixel.NewSigner([]byte(testPixelSecret))
	if err != nil {
		t.Fatal(err)
	}
	detached, err := ingest.NewDetachedPublisher(pub)
	if err != nil {
		t.Fatal(err)
	}
	dctx, dcancel := context.WithCancel(ctx)
	ddone := make(chan error, 1)
	go func() { ddone <- detached.Run(dctx) }()
	t.Cleanup(func() {
		dcancel()
		if err := <-ddone; err != nil {
			t.Error(err)
		}
	})
	ingest.NewPixelHandlers(h, detached, signer, knownAds{"ad-1": true}, prometheus.NewRegistry()).Register(r)
	return &intake{router: r, spool: sp, stream: stream, logs: logs, signer: signer, detached: detached}
}

// serve answers req through the router, failing t when the answer departs
// from the OpenAPI document.
func (in *intake) serve(t testing.TB, rec http.ResponseWriter, req *http.Request) {
	openapitest.Handler(t, in.router).ServeHTTP(rec, req)
}

// testPixelSecret keys the tracking URLs of startIntake's pixel handlers.
const testPixelSecret = "intake-test-pixel-secret-0123456789"

func (in *intake) post(t *testing.T, path, body string) (int, http.Header, map[string]any) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	in.serve(t, rec, req)
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

// waitFor polls cond until it holds, failing t after within. The deadline only
// bounds a broken test; it orders nothing.
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

// click posts a click with event_id id and returns its status. It fails t
// unless the answer is a 202, without stopping the test, so that any goroutine
// may call it.
func (in *intake) click(t *testing.T, id string) string {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/ads/click", strings.NewReader(`{"event_id":"`+id+`","ad_id":"ad-1","playback_time":1}`))
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	in.serve(t, rec, req)
	var out struct {
		Status string `json:"status"`
	}
	if rec.Code != http.StatusAccepted || json.Unmarshal(rec.Body.Bytes(), &out) != nil {
		t.Errorf("%s: %d %s, want a 202", id, rec.Code, rec.Body.String())
	}
	return out.Status
}

// assertStoredOnce fails t unless the stream holds want distinct event IDs,
// each once.
func assertStoredOnce(t *testing.T, stream jetstream.Stream, want int) {
	t.Helper()
	ids := streamIDs(t, stream)
	if len(ids) != want {
		t.Fatalf("stream holds %d distinct events, want %d", len(ids), want)
	}
	for id, n := range ids {
		if n != 1 {
			t.Errorf("%s stored %d times", id, n)
		}
	}
}

// TestSpoolWhileNATSIsDown: with the server gone every event still gets a 202,
// "spooled"; once it is back the replayer publishes them all, each once, a
// retry of a replayed event_id is a duplicate, and events are then published
// directly again.
func TestSpoolWhileNATSIsDown(t *testing.T) {
	ns := startRestartableNATS(t)
	in := startIntake(t, ns.connect(t), 64<<20)
	for i := range 20 {
		if s := in.click(t, fmt.Sprintf("before-%d", i)); s != "accepted" && s != "spooled" {
			t.Fatalf("with NATS up: status %q", s)
		}
	}

	ns.stop()
	began := time.Now()
	statuses := make([]string, 300)
	var wg sync.WaitGroup
	for i := range statuses {
		wg.Go(func() { statuses[i] = in.click(t, fmt.Sprintf("during-%d", i)) })
	}
	wg.Wait()
	for i, s := range statuses {
		if s != "spooled" {
			t.Fatalf("during-%d with NATS down: status %q, want spooled", i, s)
		}
	}
	t.Logf("300 events spooled in %s", time.Since(began).Round(time.Millisecond))
	if w, i := len(in.logs.at(slog.LevelWarn)), len(in.logs.at(slog.LevelInfo)); w != i+1 {
		t.Errorf("publisher logged %d switches to the spool and %d back during the outage, want one more to the spool", w, i)
	}

	ns.start()
	waitFor(t, "the replay", 30*time.Second, in.spool.Empty)
	assertStoredOnce(t, in.stream, 320)
	// A retry of a replayed event: the breaker may still be open for a moment
	// after the outage, so it may be spooled again; either way it is stored once.
	if s := in.click(t, "during-7"); s != "accepted" && s != "spooled" {
		t.Fatalf("retry after the replay: %q", s)
	}
	waitFor(t, "the retry's replay", 30*time.Second, in.spool.Empty)
	assertStoredOnce(t, in.stream, 320)
	// Once the breaker closes, events are published directly again.
	n := 0
	waitFor(t, "a direct publish after the outage", 30*time.Second, func() bool {
		n++
		return in.click(t, fmt.Sprintf("after-%d", n)) == "accepted"
	})
	waitFor(t, "the spool to empty", 30*time.Second, in.spool.Empty)
	assertStoredOnce(t, in.stream, 320+n)
	if w, i := len(in.logs.at(slog.LevelWarn)), len(in.logs.at(slog.LevelInfo)); w != i || w == 0 {
		t.Errorf("publisher logged %d switches to the spool and %d back, want as many back, at least one", w, i)
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
	// Accepted again: straight into the stream, or into the spool when the
	// PubAck is slower than the timeout on a loaded machine.
	code, _, body := in.post(t, "/ads/impression", `{"event_id":"after","ad_id":"ad-1"}`)
	if code != http.StatusAccepted {
		t.Fatalf("after the drain: %d %v", code, body)
	}
	waitFor(t, "the spool to drain", 30*time.Second, in.spool.Empty)
	ids := streamIDs(t, in.stream)
	if len(ids) != spooled+1 {
		t.Fatalf("stream holds %d events, want the %d spooled and 1 more", len(ids), spooled)
	}
}

// heldAcks stands in for the stream: a plain subscriber that receives what a
// publisher sends and acknowledges each message only when the test says so.
type heldAcks struct {
	t   *testing.T
	sub *nats.Subscription
	seq int
}

func holdAcks(t *testing.T, nc *nats.Conn) *heldAcks {
	sub, err := nc.SubscribeSync("ads.events.>")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return &heldAcks{t: t, sub: sub}
}

// take returns the next message published, not yet acknowledged.
func (h *heldAcks) take() *nats.Msg {
	h.t.Helper()
	m, err := h.sub.NextMsg(30 * time.Second)
	if err != nil {
		h.t.Fatalf("no publish reached the subscriber: %v", err)
	}
	return m
}

// ack answers m as the stream would.
func (h *heldAcks) ack(m *nats.Msg) {
	h.t.Helper()
	h.seq++
	if err := m.Respond(fmt.Appendf(nil, `{"stream":"ADMETRIC_EVENTS","seq":%d}`, h.seq)); err != nil {
		h.t.Fatal(err)
	}
}

// publishAsync publishes an event with ID id on its own goroutine and returns
// where its error will be.
func publishAsync(pub *ingest.Publisher, id string) <-chan error {
	done := make(chan error, 1)
	ev := &event.Event{EventID: id, Type: event.Impression, AdID: "ad-1", Timestamp: time.Now()}
	go func() {
		_, err := pub.Publish(context.Background(), ev)
		done <- err
	}()
	return done
}

// result waits for a publishAsync's error. The deadline only bounds a broken
// test (a publish that waits when it must not).
func result(t *testing.T, what string, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not return", what)
		return nil
	}
}

// TestPublisherBusy: with MaxPending publishes waiting for their acks, the
// next one is refused at once rather than queued, and the slots are free again
// once the acks come. The acks are held until the test sends them, so the two
// publishes are certain to be in flight while the third is made.
func TestPublisherBusy(t *testing.T) {
	srv := storetest.NATS(t)
	_, nc := storetest.JetStream(t, srv)
	acks := holdAcks(t, nc)
	// The timeout is far beyond the test: only the acks end the publishes.
	pub, err := ingest.NewPublisher(nc, ingest.PublisherOptions{Timeout: 10 * time.Minute, MaxPending: 2})
	if err != nil {
		t.Fatal(err)
	}

	held := []<-chan error{publishAsync(pub, "slow-0"), publishAsync(pub, "slow-1")}
	msgs := []*nats.Msg{acks.take(), acks.take()} // both hold their slot, waiting for an ack
	if err := result(t, "the third publish, with both slots taken,", publishAsync(pub, "third")); !errors.Is(err, ingest.ErrBusy) {
		t.Fatalf("third publish: %v, want ErrBusy", err)
	}
	for _, m := range msgs {
		acks.ack(m)
	}
	for i, done := range held {
		if err := result(t, "an acknowledged publish", done); err != nil {
			t.Errorf("publish %d: %v", i, err)
		}
	}
	fourth := publishAsync(pub, "fourth")
	acks.ack(acks.take())
	if err := result(t, "the fourth publish", fourth); err != nil {
		t.Fatalf("publish after the acks: %v, want its slot back", err)
	}
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
