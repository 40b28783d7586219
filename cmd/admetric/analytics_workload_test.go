package main

// The analytics workload shared by TestAnalyticsMatchSQL and
// BenchmarkAnalyticsVsSQL: a generator of realistic events (Zipf ad
// popularity, repeat visitors, late arrivals) and the helpers that publish them
// straight to JetStream and wait until the archive and the rollups hold them.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/aggregator"
	"github.com/admetric/admetric/api"
	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/store"
)

// awTypes are the event types in the order the figures keep their counts.
var awTypes = []event.Type{
	event.Impression, event.Click, event.Start, event.FirstQuartile,
	event.Midpoint, event.ThirdQuartile, event.Complete, event.Skip,
}

// awUserAgents are the user agents of the visitor pool: two visitors that
// share an IP differ in their user agent.
var awUserAgents = []string{
	"Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
	"Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148 Safari/604.1",
	"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0.0.0 Safari/537.36",
	"Roku/DVP-14.0 (14.0.0.4155-46)",
	"AppleTV11,1/17.1",
	"Dalvik/2.1.0 (Linux; U; Android 14; Pixel 8 Build/AP2A.240805.005)",
}

// awOptions shape a generated workload.
type awOptions struct {
	Events   int
	Ads      int
	AdPrefix string // ad IDs are AdPrefix + a four-digit rank
	// Visitors is the size of the visitor pool (ip + user agent pairs); a
	// share of the events comes from its first 800, the regulars.
	Visitors int
	// Span is how far back timestamps reach (kept under 30 days so that a
	// 30d window asked a while later still holds every event).
	Span time.Duration
	// LateShare of the events is published hours to days after events
	// with later timestamps.
	LateShare float64
	Seed      uint64
}

// awWorkload is a generated set of events in publish order.
type awWorkload struct {
	now    time.Time // every timestamp is at or before it
	ads    []string  // by popularity: ads[0] has the most events
	events []event.Event
	byType map[event.Type]uint64
	late   int
}

// newAnalyticsWorkload generates o.Events events ending at now. Ads are drawn
// from a Zipf distribution (s = 1.1, so the top ad takes about a fifth of the
// events and most ads a few hundred or fewer); a quarter of the events fall in
// the last two hours, a quarter in the last 72 hours, half anywhere in the
// span; timestamps are whole milliseconds, but 1% of them fall less than a
// microsecond before a minute boundary (nanosecond precision).
// Every event passes the intake's validation: an ID, a type, an existing ad,
// a canonical IP and a printable user agent. Clicks carry a playback time,
// and so do some skips (which analytics must not average in).
func newAnalyticsWorkload(o awOptions, now time.Time) *awWorkload {
	rng := rand.New(rand.NewPCG(o.Seed, o.Seed^0x5851f42d4c957f2d))
	zipf := rand.NewZipf(rng, 1.1, 1, uint64(o.Ads-1))
	now = now.UTC().Truncate(time.Millisecond)
	w := &awWorkload{now: now, byType: make(map[event.Type]uint64)}
	for i := range o.Ads {
		w.ads = append(w.ads, fmt.Sprintf("%s%04d", o.AdPrefix, i))
	}
	ips := make([]string, (o.Visitors+1)/2)
	for i := range ips {
		if i%5 == 0 {
			var a [16]byte
			copy(a[:], []byte{0x20, 0x01, 0x0d, 0xb8, 0, byte(i % 7)})
			a[12], a[13], a[14], a[15] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
			ips[i] = netip.AddrFrom16(a).String()
		} else {
			ips[i] = netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}).String()
		}
	}
	regulars := min(800, o.Visitors)
	ms := func(d time.Duration) time.Duration {
		return time.Duration(rng.Int64N(int64(d/time.Millisecond))) * time.Millisecond
	}
	type pending struct {
		ev  event.Event
		key time.Time // when it is published, relative to the others
	}
	all := make([]pending, 0, o.Events)
	for i := range o.Events {
		var age time.Duration
		switch r := rng.Float64(); {
		case r < 0.25:
			age = ms(2 * time.Hour)
		case r < 0.5:
			age = ms(72 * time.Hour)
		default:
			age = ms(o.Span)
		}
		v := rng.IntN(o.Visitors)
		if rng.IntN(10) < 4 {
			v = rng.IntN(regulars)
		}
		ts := now.Add(-age)
		if rng.IntN(100) == 0 {
			// A nanosecond-precision time just before a minute boundary:
			// PostgreSQL keeps microseconds, and the archive must still put
			// it in the minute the rollups do.
			ts = ts.Truncate(time.Minute).Add(-time.Duration(1 + rng.IntN(999)))
		}
		ev := event.Event{
			EventID:   fmt.Sprintf("aw-%x-%d", o.Seed, i),
			AdID:      w.ads[zipf.Uint64()],
			Timestamp: ts,
			IP:        ips[v/2],
			UserAgent: awUserAgents[v%len(awUserAgents)],
		}
		switch r := rng.IntN(100); {
		case r < 55:
			ev.Type = event.Impression
		case r < 70:
			ev.Type = event.Click
			ev.PlaybackTime = float64(rng.IntN(30_001)) / 1000
		case r < 80:
			ev.Type = event.Start
		case r < 84:
			ev.Type = event.FirstQuartile
		case r < 87:
			ev.Type = event.Midpoint
		case r < 90:
			ev.Type = event.ThirdQuartile
		case r < 96:
			ev.Type = event.Complete
		default:
			ev.Type = event.Skip
			if rng.IntN(2) == 0 {
				ev.PlaybackTime = float64(rng.IntN(15_001)) / 1000
			}
		}
		w.byType[ev.Type]++
		key := ev.Timestamp
		if rng.Float64() < o.LateShare {
			key = key.Add(time.Hour + ms(3*24*time.Hour))
			if key.After(now) {
				key = now
			}
			w.late++
		}
		all = append(all, pending{ev, key})
	}
	slices.SortStableFunc(all, func(a, b pending) int { return a.key.Compare(b.key) })
	w.events = make([]event.Event, len(all))
	for i := range all {
		w.events[i] = all[i].ev
	}
	return w
}

// validate checks every event as the intake would, so that none is
// dead-lettered by the aggregator.
func (w *awWorkload) validate(tb testing.TB) {
	tb.Helper()
	for i := range w.events {
		if err := w.events[i].Validate(w.now, event.Limits{MaxAge: 5 * 365 * 24 * time.Hour}); err != nil {
			tb.Fatalf("generated event %d is invalid: %v", i, err)
		}
		if ip := w.events[i].IP; event.CanonicalIP(ip) != ip {
			tb.Fatalf("generated event %d: IP %q is not canonical", i, ip)
		}
	}
}

// awPublish publishes evs in order straight to JetStream, with each event ID as
// Nats-Msg-Id, asynchronously in windows of 2,000, and checks every
// acknowledgement (none may be a duplicate). It returns how long it took.
func awPublish(tb testing.TB, natsURL string, evs []event.Event) time.Duration {
	tb.Helper()
	nc, err := nats.Connect(natsURL, nats.Name("analytics-workload"))
	if err != nil {
		tb.Fatalf("connect to %s: %v", natsURL, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		tb.Fatal(err)
	}
	const window = 2000
	start := time.Now()
	futures := make([]jetstream.PubAckFuture, 0, window)
	flush := func() {
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(2 * time.Minute):
			tb.Fatalf("%d publishes unacknowledged after 2 minutes", js.PublishAsyncPending())
		}
		for _, f := range futures {
			select {
			case ack := <-f.Ok():
				if ack.Duplicate {
					tb.Fatalf("publish of %s: the stream calls it a duplicate", f.Msg().Header.Get(jetstream.MsgIDHeader))
				}
			case err := <-f.Err():
				tb.Fatalf("publish of %s: %v", f.Msg().Header.Get(jetstream.MsgIDHeader), err)
			}
		}
		futures = futures[:0]
	}
	for i := range evs {
		data, err := evs[i].Marshal()
		if err != nil {
			tb.Fatal(err)
		}
		f, err := js.PublishAsync(evs[i].Subject(), data, jetstream.WithMsgID(evs[i].EventID))
		if err != nil {
			tb.Fatalf("publish %d: %v", i, err)
		}
		futures = append(futures, f)
		if len(futures) == window {
			flush()
		}
	}
	flush()
	return time.Since(start)
}

// awCreateAds creates the ads through the API with the admin token.
func awCreateAds(tb testing.TB, hc *http.Client, base string, ids []string) {
	tb.Helper()
	for _, id := range ids {
		body, _ := json.Marshal(map[string]any{"id": id, "title": "Analytics workload " + id, "advertiser": "Tests", "duration_seconds": 15})
		req, _ := http.NewRequest(http.MethodPost, base+"/ads", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := hc.Do(req)
		if err != nil {
			tb.Fatalf("create ad %s: %v", id, err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			tb.Fatalf("create ad %s: status %d: %s", id, resp.StatusCode, raw)
		}
	}
}

// awGetReport asks GET /ads/analytics?query until it gets a live answer (a
// 200 not from the snapshot) and decodes it. Under load a cold read of many
// rollups can exceed the handler's 2 s read timeout, and the answer then comes
// from the snapshot, flagged stale, and the breaker may keep it there for 5 s:
// it asks again for up to a minute, counting the stale answers in awStale.
func awGetReport(tb testing.TB, hc *http.Client, base, query string) *api.Report {
	tb.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		rep := awGetAnyReport(tb, hc, base, query)
		if !rep.Stale {
			return rep
		}
		awStale.Add(1)
		if time.Now().After(deadline) {
			tb.Fatalf("analytics %s: still a stale answer after a minute (from the snapshot of %v)", query, rep.AsOf)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// awStale counts the stale answers awGetReport got and asked again for.
var awStale atomic.Int64

// awGetAnyReport asks GET /ads/analytics?query and decodes the answer, which
// must be a 200, live or stale.
func awGetAnyReport(tb testing.TB, hc *http.Client, base, query string) *api.Report {
	tb.Helper()
	resp, err := hc.Get(base + "/ads/analytics?" + query)
	if err != nil {
		tb.Fatalf("analytics %s: %v", query, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatalf("analytics %s: %v", query, err)
	}
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("analytics %s: status %d: %s", query, resp.StatusCode, raw)
	}
	var rep api.Report
	if err := json.Unmarshal(raw, &rep); err != nil {
		tb.Fatalf("analytics %s: %v", query, err)
	}
	return &rep
}

// awCounts returns the counters of m in the order of awTypes.
func awCounts(m *api.Metrics) [8]uint64 {
	return [8]uint64{m.Impressions, m.Clicks, m.Starts, m.FirstQuartiles, m.Midpoints, m.ThirdQuartiles, m.Completes, m.Skips}
}

// awWaitIngested waits until the archive holds every event of w and the
// 30-day total of the analytics counts every one of them (every event adds
// one to exactly one counter, and no counter can run ahead, so equality
// means the rollups read by that query are complete). It returns how long
// each took, from the call. Analytics are asked only once the rollup
// consumers have nothing pending: a query caches the rollups it reads, and
// the cache then decodes every update of them, which slows the fold.
func awWaitIngested(tb testing.TB, d *daemon, hc *http.Client, w *awWorkload, timeout time.Duration) (archived, folded time.Duration) {
	tb.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	var want [8]uint64
	for i, typ := range awTypes {
		want[i] = w.byType[typ]
	}
	base := "http://" + d.httpAddr()
	var rows int
	var got [8]uint64
	drained := func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for p := range d.cfg.Partitions {
			cons, err := d.js.Consumer(ctx, store.EventStreamName(p), aggregator.RollupConsumerName(p))
			if err != nil {
				return false // not created yet
			}
			info, err := cons.Info(ctx)
			if err != nil || info.NumPending > 0 || info.NumAckPending > 0 {
				return false
			}
		}
		return true
	}
	for archived == 0 || folded == 0 {
		if archived == 0 {
			if err := d.db.NewRaw("SELECT count(*) FROM events").Scan(context.Background(), &rows); err != nil {
				tb.Fatal(err)
			}
			if rows == len(w.events) {
				archived = time.Since(start)
			}
		}
		if folded == 0 && drained() {
			rep := awGetAnyReport(tb, hc, base, "timeframe=30d&limit=1")
			if rep.Stale {
				awStale.Add(1)
			} else if got = awCounts(&rep.Total); got == want {
				folded = time.Since(start)
			}
		}
		if archived != 0 && folded != 0 {
			break
		}
		if time.Now().After(deadline) {
			tb.Fatalf("after %s: the archive holds %d of %d events; the 30d total counts %v, want %v (%s)",
				timeout, rows, len(w.events), got, want, strings.Join(awTypeNames(), ", "))
		}
		time.Sleep(250 * time.Millisecond)
	}
	return archived, folded
}

func awTypeNames() []string {
	out := make([]string, len(awTypes))
	for i, t := range awTypes {
		out[i] = string(t)
	}
	return out
}
