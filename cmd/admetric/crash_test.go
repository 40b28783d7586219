package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/admetric/admetric/api/openapi/openapitest"
	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/store/postgres"
	"github.com/admetric/admetric/store/storetest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/uptrace/bun"
)

// freePort returns a loopback port that was free a moment ago, for a child
// that must keep its address across restarts.
func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
}

// workload is a generated set of events and the analytics they must produce.
type workload struct {
	bodies [][]byte
	paths  []string
	want   map[string]*wantAd
}

// wantAd is what one ad was sent: every event, valid or not.
type wantAd struct {
	clicks, impressions uint64
}

// newWorkload makes n events over ads from visitors, with a known share of
// invalid traffic: about 5% from bots, and every 500th event the start of
// a burst of 40 from one visitor on one ad (beyond the rate of 30 a minute,
// a third of them clicks, most of those duplicates).
func newWorkload(n, ads, visitors int, seed uint64) *workload {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	w := &workload{want: make(map[string]*wantAd)}
	burst, burstAd, burstIP := 0, "", ""
	for i := range n {
		ad := fmt.Sprintf("crash-ad-%03d", rng.IntN(ads))
		v := rng.IntN(visitors)
		ip := fmt.Sprintf("10.%d.%d.%d", v>>16, (v>>8)&255, v&255)
		ua := personUA
		switch {
		case i%500 == 0:
			burst, burstAd, burstIP = 40, ad, fmt.Sprintf("10.200.%d.%d", (i/500)>>8&255, (i/500)&255)
		case rng.IntN(20) == 0:
			ua = referenceBots[rng.IntN(len(referenceBots))]
		}
		if burst > 0 {
			burst--
			ad, ip = burstAd, burstIP
		}
		ev := map[string]any{"event_id": fmt.Sprintf("crash-%d-%d", seed, i), "ad_id": ad, "ip": ip, "user_agent": ua}
		wa := w.want[ad]
		if wa == nil {
			wa = &wantAd{}
			w.want[ad] = wa
		}
		path := "/ads/impression"
		if rng.IntN(10) < 3 {
			ms := uint64(rng.IntN(30_000))
			ev["playback_time"] = float64(ms) / 1000
			path = "/ads/click"
			wa.clicks++
		} else {
			wa.impressions++
		}
		body, _ := json.Marshal(ev)
		w.bodies = append(w.bodies, body)
		w.paths = append(w.paths, path)
	}
	return w
}

// send posts every event until each got a 202, retrying through outages with
// the same event_id, and counts what it sent. It gives up at the deadline.
func (w *workload) send(t *testing.T, base string, workers int, deadline time.Time, done *atomic.Int64) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: openapitest.Transport(t, &http.Transport{MaxIdleConnsPerHost: workers})}
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range next {
				for {
					if time.Now().After(deadline) {
						t.Errorf("event %d never accepted", i)
						break
					}
					resp, err := client.Post(base+w.paths[i], "application/json", bytes.NewReader(w.bodies[i]))
					if err == nil {
						resp.Body.Close()
						if resp.StatusCode == http.StatusAccepted {
							done.Add(1)
							break
						}
						if resp.StatusCode < 500 {
							t.Errorf("event %d: status %d", i, resp.StatusCode)
							break
						}
					}
					time.Sleep(50 * time.Millisecond) // the service is restarting
				}
			}
		})
	}
	for i := range w.bodies {
		next <- i
	}
	close(next)
	wg.Wait()
}

// TestCrashRecovery SIGKILLs the whole service five times at random instants
// while 50,000 events are posted, restarting it each time on the same DATA_DIR.
// Every event is retried with its event_id until accepted; afterwards each
// ad's valid clicks and impressions and its invalid events by reason over
// 30 days equal a reference computed apart from the same events in stream
// order (referenceCounts), valid and invalid together equal the events sent,
// unique visitors are within 2% (exact below 1,000), and the archive holds
// exactly one row per event, with the reference's count of invalid ones.
func TestCrashRecovery(t *testing.T) {
	const (
		events   = 50_000
		ads      = 200
		visitors = 20_000
		kills    = 5
	)
	bin := buildBinary(t)
	pg := storetest.Postgres(t)
	port := freePort(t)
	env := map[string]string{
		"HTTP_ADDR":    "127.0.0.1:" + port,
		"NATS_LISTEN":  "127.0.0.1:" + freePort(t),
		"DATA_DIR":     t.TempDir(),
		"DATABASE_URL": pg.DSN(),
		"ADMIN_TOKEN":  testToken,
		"VISITOR_SALT": "crash-test-salt-crash-test-salt-0123",
		"PARTITIONS":   "4",
		"LOG_LEVEL":    "info", // startProc waits for the info line "admetric is up"
	}
	p := startProc(t, bin, env)
	base := "http://" + p.httpAddr
	c := client{t: t, base: base}
	for i := range ads {
		body, _ := json.Marshal(map[string]any{"id": fmt.Sprintf("crash-ad-%03d", i), "title": "crash"})
		if status, resp := c.do(http.MethodPost, "/ads", testToken, "application/json", body); status != http.StatusCreated {
			t.Fatalf("create ad: %d %v", status, resp)
		}
	}

	seed := uint64(time.Now().UnixNano())
	t.Logf("workload seed %d", seed)
	w := newWorkload(events, ads, visitors, seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	var killAt []int64
	for i := range kills {
		// One kill in each fifth of the load, at a random point of it.
		killAt = append(killAt, int64(events*i/kills+rng.IntN(events/kills-events/20)+events/40))
	}
	var done atomic.Int64
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		w.send(t, base, 32, time.Now().Add(5*time.Minute), &done)
	}()
	for i, at := range killAt {
		for done.Load() < at {
			select {
			case <-loadDone:
				t.Fatalf("the load finished before kill %d", i+1)
			case <-time.After(5 * time.Millisecond):
			}
		}
		p.kill(t)
		t.Logf("kill %d after %d accepted events", i+1, done.Load())
		p = startProc(t, bin, env)
	}
	<-loadDone
	if t.Failed() {
		t.FailNow()
	}

	// Everything settles: each ad's analytics over 30 days match exactly.
	nc, err := nats.Connect("nats://" + env["NATS_LISTEN"])
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ref, refReasons := referenceCounts(t, js, 4)
	var refInvalid uint64
	for ad, want := range w.want {
		r := ref[ad]
		var invalid uint64
		for _, n := range r.invalid {
			invalid += n
		}
		refInvalid += invalid
		if r == nil || r.clicks+r.impressions+invalid != want.clicks+want.impressions {
			t.Fatalf("%s: the stream holds %+v, the load sent %+v", ad, r, want)
		}
	}
	waitReference(t, c, ref)
	deadline := time.Now().Add(2 * time.Minute)

	db, err := postgres.Open(context.Background(), pg.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for {
		var rows, distinct, invalid int
		if err := db.NewRaw("SELECT count(*), count(DISTINCT event_id), count(invalid_reason) FROM events").Scan(context.Background(), &rows, &distinct, &invalid); err != nil {
			t.Fatal(err)
		}
		if rows == events && distinct == events && invalid == int(refInvalid) {
			break
		}
		if time.Now().After(deadline) {
			logArchivedReasons(t, db, refReasons)
			t.Fatalf("archive holds %d rows (%d distinct, %d invalid), want %d (%d invalid)", rows, distinct, invalid, events, refInvalid)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// checkCrashAnalytics compares the all-ads 30-day analytics, invalid traffic
// included (include_invalid=true), with everything w sent: nothing lost and
// nothing counted twice, whatever the rules decided. It describes the first
// difference, or returns "".
func checkCrashAnalytics(t *testing.T, c client, w *workload) string {
	t.Helper()
	status, body := c.do(http.MethodGet, "/ads/analytics?timeframe=30d&include_invalid=true", "", "", nil)
	if status != http.StatusOK {
		return fmt.Sprintf("status %d", status)
	}
	got := make(map[string]map[string]any)
	for _, a := range body["ads"].([]any) {
		m := a.(map[string]any)
		got[m["ad_id"].(string)] = m
	}
	for ad, want := range w.want {
		g := got[ad]
		if g == nil {
			return "no analytics for " + ad
		}
		if num(g, "clicks") != float64(want.clicks) || num(g, "impressions") != float64(want.impressions) {
			return fmt.Sprintf("%s: %v clicks %v impressions, invalid included, want %d and %d", ad, g["clicks"], g["impressions"], want.clicks, want.impressions)
		}
	}
	return ""
}

// logArchivedReasons logs the events whose archived invalid_reason differs
// from want's (up to 20).
func logArchivedReasons(t *testing.T, db *bun.DB, want map[string]event.InvalidReason) {
	t.Helper()
	var rows []struct {
		EventID string  `bun:"event_id"`
		Reason  *string `bun:"invalid_reason"`
	}
	if err := db.NewRaw("SELECT event_id, invalid_reason FROM events").Scan(context.Background(), &rows); err != nil {
		t.Log(err)
		return
	}
	n := 0
	for _, r := range rows {
		got := ""
		if r.Reason != nil {
			got = *r.Reason
		}
		if got != string(want[r.EventID]) {
			if n++; n <= 20 {
				t.Logf("archive: %s has %q, the reference says %q", r.EventID, got, want[r.EventID])
			}
		}
	}
	t.Logf("%d archived reasons differ from the reference", n)
}
