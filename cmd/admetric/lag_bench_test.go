package main

import (
	"context"
	"encoding/json"
	"fmt"
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
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 128}}
	post := func(path, body, token string) int {
		req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for i := range 101 {
		id := fmt.Sprintf("lag-ad-%03d", i)
		if i == 100 {
			id = "lag-probe"
		}
		if st := post("/ads", `{"id":"`+id+`","title":"lag"}`, testToken); st != http.StatusCreated {
			b.Fatalf("create ad: %d", st)
		}
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sentN, missedN atomic.Int64
	jobs := make(chan int, 4096)
	for range 64 {
		wg.Go(func() {
			for i := range jobs {
				body := fmt.Sprintf(`{"ad_id":"lag-ad-%03d","ip":"10.9.%d.%d"}`, i%100, i/250%250, i%250)
				if st := post("/ads/impression", body, ""); st == http.StatusAccepted {
					sentN.Add(1)
				}
			}
		})
	}
	wg.Go(func() {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		per := max(rate/1000, 1)
		for i := 0; ; {
			select {
			case <-stop:
				close(jobs)
				return
			case <-tick.C:
				for range per {
					select {
					case jobs <- i:
					default:
						missedN.Add(1) // the workers are behind: the offered rate is not met
					}
					i++
				}
			}
		}
	})

	var lags []time.Duration
	visible := func() float64 {
		resp, err := hc.Get(base + "/ads/analytics?timeframe=1h&ad_id=lag-probe")
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
		if st := post("/ads/click", `{"ad_id":"lag-probe","ip":"10.8.0.1"}`, ""); st != http.StatusAccepted {
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
	close(stop)
	wg.Wait()
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
	return lags[len(lags)/2], lags[len(lags)*99/100], sentN.Load(), missedN.Load()
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
