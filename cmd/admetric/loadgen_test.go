package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/admetric/admetric/aggregator"
	"github.com/admetric/admetric/api"
	"github.com/admetric/admetric/api/vast"
	"github.com/admetric/admetric/ingest/event"
)

// TestLoadgenRefusesBadFlags: a flag loadgen cannot use exits 2 with a
// message naming it, before any request.
func TestLoadgenRefusesBadFlags(t *testing.T) {
	noEnv := func(string) (string, bool) { return "", false }
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-rate", "0"}, "-rate 0: must be above 0"},
		{[]string{"-rate", "-5"}, "-rate -5"},
		{[]string{"-rate", "NaN"}, "-rate NaN"},
		{[]string{"-rate", "fast"}, `invalid value "fast" for flag -rate`},
		{[]string{"-pixels", "1.5"}, "-pixels 1.5: must be from 0 to 1"},
		{[]string{"-bots", "-0.1"}, "-bots -0.1"},
		{[]string{"-ctr", "2"}, "-ctr 2"},
		{[]string{"-speed", "0"}, "-speed 0: must be above 0"},
		{[]string{"-duration", "-1s"}, "-duration -1s"},
		{[]string{"-duration", "10"}, `invalid value "10" for flag -duration`},
		{[]string{"-visitors", "0"}, "-visitors 0"},
		{[]string{"-concurrency", "0"}, "-concurrency 0"},
		{[]string{"-ads", "-1"}, "-ads -1"},
		{[]string{"-url", "localhost:8080"}, `-url "localhost:8080": must be an http or https URL`},
		{[]string{"-url", "ftp://example.com"}, "-url"},
		{[]string{"-create"}, "-create needs -ads"},
		{[]string{"-create", "-ads", "10"}, "-create needs the admin token"},
		{[]string{"-fast"}, "flag provided but not defined: -fast"},
		{[]string{"now"}, `unexpected argument "now"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(context.Background(), append([]string{"loadgen"}, tc.args...), noEnv, &stdout, &stderr); code != 2 {
				t.Fatalf("exit code %d, want 2; stderr:\n%s", code, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("stderr does not say %q:\n%s", tc.want, stderr.String())
			}
		})
	}
	// ADMIN_TOKEN is -admin-token's default (the flag wins), never shown
	// by -h, which is no error.
	token := func(k string) (string, bool) { return "secret", k == "ADMIN_TOKEN" }
	for _, tc := range []struct {
		args []string
		want string
	}{{[]string{"-create", "-ads", "3"}, "secret"}, {[]string{"-create", "-ads", "3", "-admin-token", "flag"}, "flag"}} {
		fs := newLoadgenFlagSet(io.Discard)
		var opts loadgenOptions
		loadgenFlags(fs, &opts)
		err := fs.Parse(tc.args)
		opts.fromEnv(token)
		if err != nil || opts.validate() != nil || opts.AdminToken != tc.want {
			t.Fatalf("%v with ADMIN_TOKEN set: parse %v, validate %v, token %q, want %q", tc.args, err, opts.validate(), opts.AdminToken, tc.want)
		}
	}
	var stderr bytes.Buffer
	if code := runLoadgen(context.Background(), []string{"-h"}, token, io.Discard, &stderr); code != 0 || !strings.Contains(stderr.String(), "-pixels") || strings.Contains(stderr.String(), "secret") {
		t.Fatalf("-h: exit code %d, usage:\n%s", code, stderr.String())
	}
}

// TestLoadgenPacer: the pacer releases the n-th event at start + n/rate,
// several at once when woken late, and never more than 200 ms worth.
func TestLoadgenPacer(t *testing.T) {
	start := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	ms := func(n int) time.Time { return start.Add(time.Duration(n) * time.Millisecond) }
	for _, tc := range []struct {
		name  string
		rate  float64
		takes []time.Time // successive wake-ups
		want  []int       // events released at each
		next  time.Time   // when the next event is due after the last take
	}{
		{"one at start", 50, []time.Time{start}, []int{1}, ms(20)},
		{"on time", 50, []time.Time{start, ms(20), ms(40)}, []int{1, 1, 1}, ms(60)},
		{"early wake-up", 50, []time.Time{start, ms(19)}, []int{1, 0}, ms(20)},
		{"late by two", 50, []time.Time{start, ms(45)}, []int{1, 2}, ms(60)},
		{"fractional interval", 3, []time.Time{start, ms(333), ms(334), ms(667)}, []int{1, 0, 1, 1}, ms(1000)},
		{"fast", 10_000, []time.Time{start, ms(1)}, []int{1, 10}, start.Add(1100 * time.Microsecond)},
		{"debt forgotten beyond 200 ms", 1000, []time.Time{start, ms(1000)}, []int{1, 200}, ms(1001)},
		{"slow rate, long stall", 1, []time.Time{start, ms(10_000)}, []int{1, 1}, ms(11_000)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPacer(start, tc.rate)
			for i, at := range tc.takes {
				if got := p.take(at); got != tc.want[i] {
					t.Fatalf("take #%d at +%s: %d events, want %d", i, at.Sub(start), got, tc.want[i])
				}
			}
			if got := p.next(); !got.Equal(tc.next) {
				t.Fatalf("next at +%s, want +%s", got.Sub(start), tc.next.Sub(start))
			}
		})
	}
	// Woken exactly at next, over a long run at an awkward rate, it
	// releases one event each time and keeps the rate.
	p := newPacer(start, 7)
	for i := range 7000 {
		if n := p.take(p.next()); n != 1 && i > 0 {
			t.Fatalf("wake-up %d at next released %d events", i, n)
		}
	}
	if got := p.next().Sub(start); got < 999*time.Second || got > 1001*time.Second {
		t.Fatalf("7000 events at 7/s took %s", got)
	}
}

// TestLoadgenSessions: sessions are in time order, with playback times
// within the ad, a funnel that narrows, a click rate near the asked one,
// skips only past the skip offset; crawlers' are an impression and maybe
// a click.
func TestLoadgenSessions(t *testing.T) {
	for _, d := range []float64{6, 15, 30} {
		t.Run(fmt.Sprint(d, "s"), func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, 2))
			const n, ctr = 20000, 0.03
			count := map[event.Type]int{}
			for range n {
				steps := planSession(r, d, ctr)
				if steps[0].Type != event.Impression || steps[0].At != 0 {
					t.Fatalf("first step %+v, want the impression at 0", steps[0])
				}
				for i, st := range steps {
					count[st.Type]++
					if st.Playback < 0 || st.Playback > d {
						t.Fatalf("playback %g outside the ad of %gs: %+v", st.Playback, d, steps)
					}
					if i > 0 && (st.At < steps[i-1].At || st.Playback < steps[i-1].Playback) {
						t.Fatalf("steps out of order: %+v", steps)
					}
					if i > 1 && math.Abs((st.At-steps[i-1].At)-(st.Playback-steps[i-1].Playback)) > 1e-9 {
						t.Fatalf("time between steps is not playback time: %+v", steps)
					}
					if (st.Type == event.Skip || st.Type == event.Click) && i != len(steps)-1 {
						t.Fatalf("%s is not the last step: %+v", st.Type, steps)
					}
					if st.Type == event.Skip && st.Playback < skipOffset {
						t.Fatalf("skip at %gs, before %gs: %+v", st.Playback, skipOffset, steps)
					}
				}
				for q, typ := range quartiles {
					if i := indexOf(steps, typ); i >= 0 && steps[i].Playback != roundMillis(d*float64(q+1)/4) {
						t.Fatalf("%s at playback %g in an ad of %gs", typ, steps[i].Playback, d)
					}
				}
			}
			funnel := []event.Type{event.Impression, event.Start, event.FirstQuartile, event.Midpoint, event.ThirdQuartile, event.Complete}
			for i := 1; i < len(funnel); i++ {
				if count[funnel[i]] >= count[funnel[i-1]] {
					t.Fatalf("the funnel does not narrow at %s: %v", funnel[i], count)
				}
			}
			if got := float64(count[event.Click]) / n; math.Abs(got-ctr) > 0.005 {
				t.Fatalf("click-through rate %.4f, want about %g", got, ctr)
			}
			if vtr := float64(count[event.Complete]) / float64(count[event.Start]); vtr < 0.6 || vtr > 0.85 {
				t.Fatalf("completion rate %.2f, want a realistic 0.6-0.85", vtr)
			}
			if d > skipOffset && count[event.Skip] == 0 {
				t.Fatal("no skips")
			}
		})
	}
	r := rand.New(rand.NewPCG(3, 4))
	clicks := 0
	for range 1000 {
		steps := planBotSession(r, 6)
		if steps[0].Type != event.Impression || len(steps) > 2 || len(steps) == 2 && (steps[1].Type != event.Click || steps[1].Playback > 6) {
			t.Fatalf("crawler session %+v", steps)
		}
		clicks += len(steps) - 1
	}
	if clicks == 0 || clicks > 400 {
		t.Fatalf("%d crawler clicks in 1000 sessions", clicks)
	}
	if got := withoutClick([]step{{Type: event.Impression}, {Type: event.Click}}); len(got) != 1 {
		t.Fatalf("withoutClick left %+v", got)
	}
}

func indexOf(steps []step, typ event.Type) int {
	for i, st := range steps {
		if st.Type == typ {
			return i
		}
	}
	return -1
}

// TestLoadgenZipf: ads are drawn by Zipf popularity, the ranks shuffled by
// the seed; one ad is always drawn.
func TestLoadgenZipf(t *testing.T) {
	for _, n := range []int{1, 2, 4, 20} {
		t.Run(fmt.Sprint(n, " ads"), func(t *testing.T) {
			r := rand.New(rand.NewPCG(5, 6))
			p := newAdPicker(r, n)
			counts := make([]int, n)
			const draws = 100_000
			for range draws {
				counts[p.pick()]++
			}
			// The ad of rank k is drawn about (k+1)^-s / H times.
			var h float64
			for k := range n {
				h += math.Pow(float64(k+1), -zipfS)
			}
			for k, ad := range p.order {
				want := math.Pow(float64(k+1), -zipfS) / h
				if got := float64(counts[ad]) / draws; math.Abs(got-want) > 0.01 {
					t.Fatalf("rank %d (ad %d) drawn %.3f of the time, want %.3f; counts %v", k, ad, got, want, counts)
				}
			}
		})
	}
}

// TestLoadgenVisitors: the pool's user agents are browsers' that the
// service's invalid-traffic rules let through, the crawlers' are caught,
// addresses are valid documentation addresses, and pairs do not repeat.
func TestLoadgenVisitors(t *testing.T) {
	bots, err := aggregator.LoadBots(nil)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(7, 8))
	pool := newVisitors(r, 5000)
	seen := map[visitor]bool{}
	uas := map[string]bool{}
	for _, v := range pool {
		if seen[v] {
			t.Fatalf("visitor %+v twice", v)
		}
		seen[v] = true
		uas[v.UserAgent] = true
		if bots.Match(v.UserAgent) {
			t.Fatalf("the service takes the browser %q for a bot", v.UserAgent)
		}
		ev := event.Event{EventID: "x", Type: event.Impression, AdID: "a", Timestamp: time.Now(), IP: v.IP, UserAgent: v.UserAgent}
		if err := ev.Validate(time.Now(), event.Limits{}); err != nil {
			t.Fatalf("visitor %+v: %v", v, err)
		}
		if !strings.HasPrefix(v.IP, "192.0.2.") && !strings.HasPrefix(v.IP, "198.51.100.") && !strings.HasPrefix(v.IP, "203.0.113.") && !strings.HasPrefix(v.IP, "2001:db8:") {
			t.Fatalf("address %s is not a documentation address", v.IP)
		}
	}
	if len(uas) < 2000 {
		t.Fatalf("only %d user agents among 5000 visitors", len(uas))
	}
	for _, b := range newBots(r) {
		if !b.Bot || !bots.Match(b.UserAgent) {
			t.Fatalf("the service does not take the crawler %q for a bot", b.UserAgent)
		}
	}
}

// TestLoadgenClickGuard: a visitor's second click on an ad within the
// window is held back; other ads, other visitors and later clicks are not.
func TestLoadgenClickGuard(t *testing.T) {
	g := clickGuard{window: time.Minute}
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	for i, tc := range []struct {
		visitor, ad int
		at          time.Duration
		want        bool
	}{
		{1, 1, 0, true},
		{1, 1, 30 * time.Second, false},
		{1, 2, 30 * time.Second, true},
		{2, 1, 30 * time.Second, true},
		{1, 1, 61 * time.Second, true},
		{1, 1, 90 * time.Second, false},
	} {
		if got := g.allow(tc.visitor, tc.ad, t0.Add(tc.at)); got != tc.want {
			t.Fatalf("#%d: visitor %d ad %d at %s: allowed %v, want %v", i, tc.visitor, tc.ad, tc.at, got, tc.want)
		}
	}
}

// TestLoadgenLatencies: quantiles from the histogram are within its 2%.
func TestLoadgenLatencies(t *testing.T) {
	var l latencies
	if l.quantile(0.5) != 0 {
		t.Fatal("a quantile of nothing is not 0")
	}
	for i := 1; i <= 1000; i++ {
		l.add(time.Duration(i) * time.Millisecond)
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Millisecond}, {0.99, 990 * time.Millisecond}, {1, time.Second}, {0.001, time.Millisecond}} {
		got := l.quantile(tc.q)
		if got < tc.want || float64(got) > float64(tc.want)*latGrowth {
			t.Fatalf("q%g = %s, want %s to 2%% above", tc.q, got, tc.want)
		}
	}
	for _, d := range []time.Duration{0, time.Microsecond, latMin, latMin + 1, time.Second, time.Hour} {
		i := latBucket(d)
		if latUpper(i) < d && i != latBuckets-1 || i > 0 && latUpper(i-1) >= d {
			t.Fatalf("%s in bucket %d of (%s, %s]", d, i, latUpper(i-1), latUpper(i))
		}
	}
}

// TestLoadgenVASTURLs: loadgen reads the tracking URLs of the documents
// the service writes, InLine and Wrapper, and fills the macros as a
// player does.
func TestLoadgenVASTURLs(t *testing.T) {
	ad := vast.Ad{ID: "a", Title: "A", ServingID: "admetric-1", Duration: 15 * time.Second,
		ImpressionURL: "http://h/t/impression?sig=1&ts=[TIMESTAMP]&cb=[CACHEBUSTING]", ErrorURL: "http://h/t/error",
		ClickThroughURL: "http://h/c?sig=2&ph=[ADPLAYHEAD]", ClickTrackingURL: "http://h/t/click?sig=3",
		Media: &vast.Media{URL: "https://cdn.example.com/a.mp4", Type: "video/mp4", Width: 1280, Height: 720, Delivery: "progressive"}}
	for _, e := range []string{"start", "firstQuartile", "midpoint", "thirdQuartile", "complete", "skip"} {
		ad.Tracking = append(ad.Tracking, vast.Tracking{Event: e, URL: "http://h/t/" + e + "?ph=[ADPLAYHEAD]"})
	}
	wrapper := ad
	wrapper.Media, wrapper.WrappedTagURL = nil, "https://third.example.com/vast"
	for _, tc := range []struct {
		name      string
		ad        vast.Ad
		wantClick string
	}{{"inline", ad, ad.ClickThroughURL}, {"wrapper", wrapper, ad.ClickTrackingURL}} {
		t.Run(tc.name, func(t *testing.T) {
			var doc bytes.Buffer
			if err := vast.Write(&doc, tc.ad); err != nil {
				t.Fatal(err)
			}
			u, err := parseVASTURLs(doc.Bytes())
			if err != nil || u == nil {
				t.Fatalf("parse: %v, %v\n%s", u, err, doc.String())
			}
			want := map[event.Type]string{event.Impression: ad.ImpressionURL, event.Click: tc.wantClick,
				event.Midpoint: "http://h/t/midpoint?ph=[ADPLAYHEAD]", event.Skip: "http://h/t/skip?ph=[ADPLAYHEAD]"}
			for typ, w := range want {
				if got := u.url(typ); got != w {
					t.Errorf("%s: %q, want %q", typ, got, w)
				}
			}
		})
	}
	var empty bytes.Buffer
	if err := vast.Write(&empty); err != nil {
		t.Fatal(err)
	}
	if u, err := parseVASTURLs(empty.Bytes()); u != nil || err != nil {
		t.Fatalf("empty document: %v, %v", u, err)
	}
	if _, err := parseVASTURLs([]byte("<html>")); err == nil {
		t.Fatal("not XML, no error")
	}

	now := time.Date(2026, 12, 1, 8, 15, 7, 127_000_000, time.UTC)
	got := fillMacros("http://h/t/click?ph=[ADPLAYHEAD]&ts=[TIMESTAMP]&cb=[CACHEBUSTING]", 3725.5, now, 42)
	q, err := url.Parse(got)
	if err != nil {
		t.Fatal(err)
	}
	if ph, ts, cb := q.Query().Get("ph"), q.Query().Get("ts"), q.Query().Get("cb"); ph != "01:02:05.500" || ts != "2026-12-01T08:15:07.127Z" || cb != "00000042" {
		t.Fatalf("filled %s: ph %q ts %q cb %q", got, ph, ts, cb)
	}
}

// TestLoadgenRefusals runs loadgen against a stub service that refuses
// some events: the report counts them by reason and quotes the answers,
// and the set-up's failures are errors that say what failed.
func TestLoadgenRefusals(t *testing.T) {
	ads := `{"ads":[{"id":"a","duration_seconds":6,"video_url":"https://cdn.example.com/a.mp4"}],"total":1}`
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ads", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, ads) })
	mux.HandleFunc("POST /ads", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, `{"error":"a valid admin bearer token is required"}`)
	})
	mux.HandleFunc("GET /vast/a", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><VAST version="4.2" xmlns="http://www.iab.com/VAST"></VAST>`)
	})
	// Starts are refused; the rest accepted.
	mux.HandleFunc("POST /ads/events", func(w http.ResponseWriter, r *http.Request) {
		var evs []jsonEvent
		if err := json.NewDecoder(r.Body).Decode(&evs); err != nil || len(evs) == 0 {
			t.Errorf("POST /ads/events: %d events, %v", len(evs), err)
		}
		var ans struct {
			Results []map[string]any `json:"results"`
		}
		for _, ev := range evs {
			if ev.Type == event.Start {
				ans.Results = append(ans.Results, map[string]any{"status": "unavailable", "code": 503, "error": "the event store is unavailable"})
				continue
			}
			ans.Results = append(ans.Results, map[string]any{"status": "accepted", "code": 202})
		}
		_ = json.NewEncoder(w).Encode(ans)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()

	opts := loadgenOptions{URL: srv.URL, Rate: 200, Duration: 500 * time.Millisecond, Visitors: 100, Seed: 3,
		Pixels: 0.5, CTR: 0.02, Speed: 20, Concurrency: 4, Quiet: true}
	rep, err := loadgen(context.Background(), opts, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var summary bytes.Buffer
	rep.write(&summary)
	t.Logf("summary:\n%s", summary.String())
	if rep.VASTSessions == 0 || rep.Refused["empty VAST"] != rep.VASTSessions {
		t.Errorf("%d VAST sessions, %d refused for an empty document", rep.VASTSessions, rep.Refused["empty VAST"])
	}
	if rep.Sent[event.Start] == 0 || rep.Refused["503"] != rep.Sent[event.Start] {
		t.Errorf("%d starts sent, %d refused with 503", rep.Sent[event.Start], rep.Refused["503"])
	}
	if rep.Accepted+rep.totalRefused() != rep.totalSent() || len(rep.Refused) != 2 {
		t.Errorf("sent %d, accepted %d, refused %v", rep.totalSent(), rep.Accepted, rep.Refused)
	}
	for _, want := range []string{"503 ×", "503: the event store is unavailable", "empty VAST: GET /vast/a: no ad in the document"} {
		if !strings.Contains(summary.String(), want) {
			t.Errorf("the summary does not say %q", want)
		}
	}

	// Set-up failures: exit code 1 and what failed.
	for _, tc := range []struct {
		name string
		args []string
		list string
		want string
	}{
		{"no ads", nil, `{"ads":[],"total":0}`, "lists no ads"},
		{"not a list", nil, `[]`, "something else than a page of ads"},
		{"creation refused", []string{"-ads", "3", "-create", "-admin-token", "wrong"}, ads, "creating ad loadgen-1: POST /ads answered 401"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ads = tc.list
			var stdout, stderr bytes.Buffer
			args := append([]string{"-url", srv.URL, "-duration", "1s", "-quiet"}, tc.args...)
			if code := runLoadgen(context.Background(), args, func(string) (string, bool) { return "", false }, &stdout, &stderr); code != 1 {
				t.Fatalf("exit code %d, want 1; stderr:\n%s", code, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("stderr does not say %q:\n%s", tc.want, stderr.String())
			}
		})
	}
}

// TestLoadgen runs loadgen for a few seconds against the service, with
// VAST sessions, crawlers and ads it creates, and checks that the
// analytics show, ad by ad, what its report says the service accepted.
func TestLoadgen(t *testing.T) {
	env := testEnv(testDataDir(t))
	// loadgen's pixels come from 127.0.0.1, each viewer's address in
	// X-Forwarded-For: believed, they make the same visitors as the JSON
	// events, so unique visitors can be compared too.
	env["TRUSTED_PROXIES"] = "127.0.0.1"
	d := startTestDaemon(t, env)
	base := "http://" + d.httpAddr()

	// 6 ads: the 4 demo ads and 2 it creates. Playback 10 times faster
	// than real time, so that the 6-30 s ads get to their quartiles and
	// completes within the run; a large pool, so that no visitor repeats
	// enough for the rate rule, and a high click rate for enough clicks.
	opts := loadgenOptions{URL: base, Rate: 150, Duration: 4 * time.Second, Ads: 6, Create: true, AdminToken: testToken,
		Visitors: 100_000, Seed: 14, Pixels: 0.4, Bots: 0.05, CTR: 0.15, Speed: 10, Concurrency: 16, Quiet: true}
	if err := opts.validate(); err != nil {
		t.Fatal(err)
	}
	var progress bytes.Buffer
	rep, err := loadgen(context.Background(), opts, &progress)
	if err != nil {
		t.Fatalf("loadgen: %v\n%s", err, progress.String())
	}
	var summary bytes.Buffer
	rep.write(&summary)
	t.Logf("summary:\n%s", summary.String())

	if rep.Ads != 6 || len(rep.ByAd) < 2 {
		t.Fatalf("%d ads, events for %d", rep.Ads, len(rep.ByAd))
	}
	if rep.totalRefused() != 0 || rep.Accepted != rep.totalSent() {
		t.Fatalf("sent %d, accepted %d, refused %v %v", rep.totalSent(), rep.Accepted, rep.Refused, rep.FirstBodies)
	}
	// 600 asked; a busy machine (the race detector, other tests) may
	// starve the pacer, which then sends fewer rather than bursts.
	if sent := rep.totalSent(); sent < 300 || sent > 630 {
		t.Fatalf("sent %d events in %s at 150/s", sent, rep.Elapsed)
	}
	for _, typ := range []event.Type{event.Impression, event.Start, event.FirstQuartile, event.Midpoint, event.ThirdQuartile, event.Complete, event.Click} {
		if rep.Sent[typ] == 0 {
			t.Fatalf("no %s sent: %v", typ, rep.Sent)
		}
	}
	var vastImpressions, vastQuartiles int
	for _, c := range rep.ByAd {
		vastImpressions += c.VAST[event.Impression]
		vastQuartiles += c.VAST[event.Midpoint]
	}
	if rep.VASTSessions == 0 || vastImpressions == 0 || vastQuartiles == 0 || rep.BotAccepted == 0 {
		t.Fatalf("%d VAST sessions, %d VAST impressions, %d VAST midpoints, %d crawler events", rep.VASTSessions, vastImpressions, vastQuartiles, rep.BotAccepted)
	}

	// The analytics show those numbers once the rollups have them.
	var mismatch []string
	waited := time.Now()
	deadline := waited.Add(30 * time.Second)
	for {
		mismatch = compareAnalytics(t, base, rep)
		if len(mismatch) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(mismatch) > 0 {
		t.Fatalf("analytics differ from loadgen's report:\n%s", strings.Join(mismatch, "\n"))
	}
	t.Logf("the analytics showed loadgen's numbers %s after it stopped", time.Since(waited).Round(time.Millisecond))
}

// compareAnalytics returns how the last hour's analytics differ from what
// rep says the service accepted.
func compareAnalytics(t *testing.T, base string, rep *loadgenReport) []string {
	t.Helper()
	resp, err := http.Get(base + "/ads/analytics?timeframe=1h")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got api.Report
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("analytics: status %d, %v", resp.StatusCode, err)
	}
	counts := func(m *api.Metrics) map[string]uint64 {
		return map[string]uint64{
			"impressions": m.Impressions, "clicks": m.Clicks, "starts": m.Starts, "first_quartiles": m.FirstQuartiles,
			"midpoints": m.Midpoints, "third_quartiles": m.ThirdQuartiles, "completes": m.Completes, "skips": m.Skips,
			"servings": m.Servings, "serving_clicks": m.ServingClicks,
		}
	}
	want := func(c *adCounts) map[string]uint64 {
		n := func(m map[event.Type]int, typ event.Type) uint64 { return uint64(m[typ]) }
		return map[string]uint64{
			"impressions": n(c.Events, event.Impression), "clicks": n(c.Events, event.Click), "starts": n(c.Events, event.Start),
			"first_quartiles": n(c.Events, event.FirstQuartile), "midpoints": n(c.Events, event.Midpoint),
			"third_quartiles": n(c.Events, event.ThirdQuartile), "completes": n(c.Events, event.Complete),
			"skips": n(c.Events, event.Skip), "servings": n(c.VAST, event.Impression), "serving_clicks": n(c.VAST, event.Click),
		}
	}
	var diffs []string
	total := &adCounts{Events: map[event.Type]int{}, VAST: map[event.Type]int{}}
	byAd := map[string]*api.Metrics{}
	for i := range got.Ads {
		byAd[got.Ads[i].AdID] = &got.Ads[i]
	}
	for id, c := range rep.ByAd {
		for typ, n := range c.Events {
			total.Events[typ] += n
		}
		for typ, n := range c.VAST {
			total.VAST[typ] += n
		}
		m := byAd[id]
		if m == nil {
			diffs = append(diffs, id+": not in the analytics")
			continue
		}
		g := counts(m)
		for k, w := range want(c) {
			if g[k] != w {
				diffs = append(diffs, fmt.Sprintf("%s: %s %d, loadgen says %d", id, k, g[k], w))
			}
		}
	}
	g := counts(&got.Total)
	for k, w := range want(total) {
		if g[k] != w {
			diffs = append(diffs, fmt.Sprintf("total: %s %d, loadgen says %d", k, g[k], w))
		}
	}
	if got.Total.Invalid != uint64(rep.BotAccepted) || got.Total.InvalidByReason.Bot != uint64(rep.BotAccepted) {
		diffs = append(diffs, fmt.Sprintf("total: invalid %d (bot %d), loadgen's crawlers sent %d", got.Total.Invalid, got.Total.InvalidByReason.Bot, rep.BotAccepted))
	}
	// Unique visitors come from a HyperLogLog sketch: near, not exact.
	if uv, w := float64(got.Total.UniqueVisitors), float64(rep.Viewers); math.Abs(uv-w) > 0.02*w+1 {
		diffs = append(diffs, fmt.Sprintf("total: unique_visitors %g, loadgen's pool had %g with accepted events", uv, w))
	}
	return diffs
}
