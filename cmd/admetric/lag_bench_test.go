package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkLag measures the end-to-end lag, from a click's 202 to the click
// being visible in GET /ads/analytics, while the whole service (in-process,
// private PostgreSQL, embedded NATS) takes an open-loop load of
// ADMETRIC_BENCH_RATE events/s (default 2,000) spread over 100 ads for
// ADMETRIC_BENCH_SECONDS (default 10). A probe posts one click to its own ad
// every 100 ms and polls until it shows. Reports the probes' p50 and p99.
//
//	ADMETRIC_BENCH_RATE=4000 go test -run '^$' -bench Lag -benchtime 1x ./cmd/admetric/
func BenchmarkLag(b *testing.B) {
	rate := envInt("ADMETRIC_BENCH_RATE", 2000)
	seconds := envInt("ADMETRIC_BENCH_SECONDS", 10)
	for b.Loop() {
		p50, p99, sent, missed := runLag(b, rate, time.Duration(seconds)*time.Second)
		b.ReportMetric(float64(p50.Microseconds())/1000, "p50_ms")
		b.ReportMetric(float64(p99.Microseconds())/1000, "p99_ms")
		b.ReportMetric(float64(sent)/float64(seconds), "offered_events/s")
		b.ReportMetric(float64(missed), "late_sends")
	}
}

func runLag(b *testing.B, rate int, d time.Duration) (p50, p99 time.Duration, sent int64, missed int64) {
	b.Helper()
	dir := testDataDir(b)
	env := testEnv(dir)
	env["LOG_LEVEL"] = "error"
	d2 := startTestDaemon(b, env)
	base := "http://" + d2.httpAddr()
	post := poster(base, 128)
	for i := range 101 {
		id := fmt.Sprintf("lag-ad-%03d", i)
		if i == 100 {
			id = "lag-probe"
		}
		if st := post("/ads", `{"id":"`+id+`","title":"lag"}`, testToken); st != http.StatusCreated {
			b.Fatalf("create ad: %d", st)
		}
	}

	load := startOpenLoad(post, rate, 64, func(i int) (string, string) {
		return "/ads/impression", fmt.Sprintf(`{"ad_id":"lag-ad-%03d","ip":"10.9.%d.%d"}`, i%100, i/250%250, i%250)
	})

	var lags []time.Duration
	visible := func() float64 {
		resp, err := http.Get(base + "/ads/analytics?timeframe=1h&ad_id=lag-probe")
		if err != nil {
			return -1
		}
		defer resp.Body.Close()
		var rep struct {
			Ads []struct {
				Clicks float64 `json:"clicks"`
			} `json:"ads"`
		}
		if json.NewDecoder(resp.Body).Decode(&rep) != nil || len(rep.Ads) != 1 {
			return -1
		}
		return rep.Ads[0].Clicks
	}
	end := time.Now().Add(d)
	for n := 1; time.Now().Before(end); n++ {
		// Each probe from its own visitor: the invalid-traffic rules (on, as
		// by default) would count a visitor's second click within 30 s as a
		// duplicate, which analytics leave out.
		probe := fmt.Sprintf(`{"ad_id":"lag-probe","ip":"10.8.%d.%d"}`, n/250%250, n%250)
		if st := post("/ads/click", probe, ""); st != http.StatusAccepted {
			b.Fatalf("probe: %d", st)
		}
		accepted := time.Now()
		for visible() < float64(n) {
			if time.Since(accepted) > 10*time.Second {
				b.Fatalf("probe %d not visible after 10s", n)
			}
			time.Sleep(2 * time.Millisecond)
		}
		lags = append(lags, time.Since(accepted))
		time.Sleep(100 * time.Millisecond)
	}
	load.Stop()
	if mfs, err := d2.reg.Gather(); err == nil {
		for _, mf := range mfs {
			if mf.GetName() == "admetric_rollup_commit_seconds" {
				h := mf.GetMetric()[0].GetHistogram()
				var le []string
				for _, bk := range h.GetBucket() {
					le = append(le, fmt.Sprintf("≤%gs:%d", bk.GetUpperBound(), bk.GetCumulativeCount()))
				}
				b.Logf("commits: %d, %.1f ms on average; cumulative %s", h.GetSampleCount(), 1000*h.GetSampleSum()/float64(max(h.GetSampleCount(), 1)), strings.Join(le, " "))
			}
		}
	}
	// What the commits rewrote: each bucket's writes, and the size of a value.
	for _, res := range d2.layout {
		if st, err := d2.js.Stream(context.Background(), "KV_"+res.Bucket); err == nil {
			si := st.CachedInfo().State
			b.Logf("%s: %d keys, %.1f KiB a value on average, %d writes", res.Bucket, si.Msgs, float64(si.Bytes)/1024/float64(max(si.Msgs, 1)), si.LastSeq)
		}
	}
	slices.Sort(lags)
	return lags[len(lags)/2], lags[len(lags)*99/100], load.accepted.Load(), load.behind.Load()
}

// poster returns a function that POSTs a JSON body to path of the service at
// base, with token as bearer unless empty, over up to conns keep-alive
// connections, and returns the status (0 for a transport error).
func poster(base string, conns int) func(path, body, token string) int {
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: conns}}
	return func(path, body, token string) int {
		req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", personUA) // a person's: the rules count bots apart
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0
		}
		// Read to the end: a body closed unread closes its connection, and
		// every request would dial anew (thousands of connections a second,
		// whose buffers the soak counted as the service's memory).
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
}

// openLoad is an open-loop load from this process: event i is due at
// i/rate seconds after the start, whatever became of the ones before.
type openLoad struct {
	accepted, failed atomic.Int64 // answers 202, and anything else
	// behind counts the events not offered: due while every worker was busy
	// and the queue full.
	behind atomic.Int64
	stop   chan struct{}
	wg     sync.WaitGroup
}

// startOpenLoad posts event(i) (a path and a JSON body) at rate events a
// second from workers goroutines, until Stop.
func startOpenLoad(post func(path, body, token string) int, rate, workers int, event func(i int) (path, body string)) *openLoad {
	l := &openLoad{stop: make(chan struct{})}
	jobs := make(chan int, 8192)
	for range workers {
		l.wg.Go(func() {
			for i := range jobs {
				path, body := event(i)
				if post(path, body, "") == http.StatusAccepted {
					l.accepted.Add(1)
				} else {
					l.failed.Add(1)
				}
			}
		})
	}
	l.wg.Go(func() {
		defer close(jobs)
		start := time.Now()
		for i := 0; ; {
			select {
			case <-l.stop:
				return
			default:
			}
			due := int(time.Since(start).Seconds() * float64(rate))
			for ; i < due; i++ {
				select {
				case jobs <- i:
				default:
					l.behind.Add(1)
				}
			}
			time.Sleep(time.Millisecond)
		}
	})
	return l
}

// Stop ends the load and waits for the requests in flight.
func (l *openLoad) Stop() {
	close(l.stop)
	l.wg.Wait()
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
