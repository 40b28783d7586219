package main

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
	"github.com/uptrace/bun/driver/pgdriver"

	"github.com/admetric/admetric/ingest/event"
)

// awBenchWorkMem is the work_mem of the second set of SQL runs: enough for
// count(DISTINCT)'s sorts to stay in memory.
const awBenchWorkMem = "256MB"

// BenchmarkAnalyticsVsSQL compares GET /ads/analytics, which sums rollups
// through the in-memory cache, with the same figures computed by SQL over the
// PostgreSQL events archive. The whole service runs in-process (embedded NATS,
// private PostgreSQL); ADMETRIC_BENCH_EVENTS events (default 1,000,000) of the
// analytics workload (1,000 ads with Zipf popularity, 30 days, repeat
// visitors, 5% late) are published straight to JetStream, and the benchmark
// waits until the archive holds them all and the rollups count them all
// (logging how long that took).
//
// After one warming pass of each query it measures, one request at a time over
// one keep-alive connection, ADMETRIC_BENCH_REQUESTS requests (default 1,000
// for one ad, 200 for all ads; ADMETRIC_BENCH_ALL_ADS_REQUESTS sets the
// latter apart) of GET /ads/analytics?timeframe=30d&ad_id=<the most
// popular ad> and GET /ads/analytics?timeframe=30d&limit=10000, and
// ADMETRIC_BENCH_SQL_RUNS runs (default 20) of each SQL equivalent over the
// same window: counts by type, the click playback sum and
// count(DISTINCT (ip, user_agent)), for one ad (by the (ad_id, occurred_at)
// index) and GROUP BY ad_id for all, each with the server's work_mem (4MB, the
// private PostgreSQL's default: count(DISTINCT) sorts spill to disk) and with
// SET LOCAL work_mem = '256MB' (sql_wm256_*). The SQL runs on a second pool to
// the same server, because the service's pool gives up reading after 5 s.
// It reports the latencies, the speed-ups (SQL p50 with the server's
// work_mem / API p50) and the rollup cache's size from /metrics.
// With ADMETRIC_BENCH_LIVE_RATE=n, n events a second (Zipf over the ads,
// timestamped now) are published while the API requests run, as in
// production: the keys of the current hour, day and month then change with
// every commit of the rollup writers.
//
// ADMETRIC_BENCH_CPUPROFILE names a file for a CPU profile of the service
// while it answers the API requests; ADMETRIC_BENCH_MEMPROFILE one for the
// allocations of the whole run up to their end.
//
//	go test -run '^$' -bench AnalyticsVsSQL -benchtime 1x -timeout 30m ./cmd/admetric/
func BenchmarkAnalyticsVsSQL(b *testing.B) {
	nEvents := envInt("ADMETRIC_BENCH_EVENTS", 1_000_000)
	// Enough that p99 is not just the slowest answer or two.
	oneAdRequests, allAdsRequests := 1000, 200
	if n := envInt("ADMETRIC_BENCH_REQUESTS", 0); n > 0 {
		oneAdRequests, allAdsRequests = n, n
	}
	allAdsRequests = envInt("ADMETRIC_BENCH_ALL_ADS_REQUESTS", allAdsRequests)
	sqlRuns := envInt("ADMETRIC_BENCH_SQL_RUNS", 20)
	liveRate := envInt("ADMETRIC_BENCH_LIVE_RATE", 0)

	env := testEnv(testDataDir(b))
	env["IVT_RULES"] = "false" // every event counts, as SQL counts them
	env["LOG_LEVEL"] = "error"
	d := startTestDaemon(b, env)
	base := "http://" + d.httpAddr()
	hc := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: 2}}
	defer hc.CloseIdleConnections()

	genStart := time.Now()
	w := newAnalyticsWorkload(awOptions{
		Events: nEvents, Ads: 1000, AdPrefix: "bench-ad-", Visitors: 200_000,
		Span: 30*24*time.Hour - time.Hour, LateShare: 0.05, Seed: 20261125,
	}, time.Now())
	b.Logf("generated %d events (%d late) over 1,000 ads in %s", len(w.events), w.late, time.Since(genStart).Round(time.Millisecond))
	awCreateAds(b, hc, base, w.ads)
	published := awPublish(b, d.natsURL(), w.events)
	archived, folded := awWaitIngested(b, d, hc, w, 25*time.Minute)
	b.Logf("ingest: published to JetStream in %s (%.0f events/s); then archived in PostgreSQL %s and counted by the rollups %s later",
		published.Round(time.Millisecond), float64(len(w.events))/published.Seconds(), archived.Round(time.Millisecond), folded.Round(time.Millisecond))
	top := w.ads[0]
	// d.db's driver gives up reading after 5 s (postgres.Open), less
	// than SQL over a million rows can take: the SQL runs on a second pool to
	// the same server whose reads may take 10 minutes.
	if d.pg == nil {
		b.Fatal("want the private PostgreSQL")
	}
	db := bun.NewDB(sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(d.pg.DSN()), pgdriver.WithReadTimeout(10*time.Minute))), pgdialect.New())
	defer db.Close()
	w.events = nil // the figures come from the service and SQL from here on

	oneAdQuery := "timeframe=30d&ad_id=" + url.QueryEscape(top)
	allAdsQuery := "timeframe=30d&limit=10000"
	get := func(query string) time.Duration {
		start := time.Now()
		resp, err := hc.Get(base + "/ads/analytics?" + query)
		if err != nil {
			b.Fatalf("analytics %s: %v", query, err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		took := time.Since(start)
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("analytics %s: status %d, %v", query, resp.StatusCode, err)
		}
		return took
	}
	ctx := context.Background()

	for b.Loop() {
		// Warm: one pass of each query, and the window SQL is asked for.
		rep := awGetReport(b, hc, base, oneAdQuery)
		from, to := rep.From, rep.To
		allRep := awGetReport(b, hc, base, allAdsQuery)
		sqlOne, _ := awBenchSQLOneAd(b, ctx, db, "", top, from, to)
		awBenchSQLAllAds(b, ctx, db, "", from, to)
		awBenchSQLOneAd(b, ctx, db, awBenchWorkMem, top, from, to)
		awBenchSQLAllAds(b, ctx, db, awBenchWorkMem, from, to)
		// The two answer the same (the window moves on with the minute, so
		// compare the answer and SQL over the answer's own window).
		got := awFigures{counts: awCounts(&rep.Ads[0]), visitors: rep.Ads[0].UniqueVisitors}
		if avg := rep.Ads[0].AvgPlaybackTime; avg != nil {
			got.playbackMS = uint64(math.Round(*avg * float64(rep.Ads[0].Clicks) * 1000))
		}
		if err := awBenchSame(rep.Ads[0].AdID, got, sqlOne); err != nil {
			b.Errorf("one ad: %v", err)
		}
		b.Logf("30d window [%s, %s): %s has %d impressions, %d clicks, %d unique visitors; all %d ads: %d impressions, %d unique visitors",
			from.Format(time.RFC3339), to.Format(time.RFC3339), top, rep.Ads[0].Impressions, rep.Ads[0].Clicks, rep.Ads[0].UniqueVisitors,
			allRep.TotalAds, allRep.Total.Impressions, allRep.Total.UniqueVisitors)

		stopLive := startLiveLoad(b, d.natsURL(), w.ads, liveRate)
		stopProfile := startCPUProfile(b, os.Getenv("ADMETRIC_BENCH_CPUPROFILE"))
		oneAd := make([]time.Duration, oneAdRequests)
		oneAdBegan := time.Now()
		for i := range oneAd {
			oneAd[i] = get(oneAdQuery)
		}
		allAds := make([]time.Duration, allAdsRequests)
		allAdsBegan := time.Now()
		for i := range allAds {
			allAds[i] = get(allAdsQuery)
		}
		stopProfile()
		if n := stopLive(); liveRate > 0 {
			b.Logf("live load: %d events published during the API requests (%d/s asked)", n, liveRate)
		}
		if path := os.Getenv("ADMETRIC_BENCH_MEMPROFILE"); path != "" {
			writeProfile(b, "allocs", path)
		}
		var sqlOneAd, sqlAllAds, sqlOneAdWM, sqlAllAdsWM []time.Duration
		for range sqlRuns {
			_, took := awBenchSQLOneAd(b, ctx, db, "", top, from, to)
			sqlOneAd = append(sqlOneAd, took)
			_, took = awBenchSQLOneAd(b, ctx, db, awBenchWorkMem, top, from, to)
			sqlOneAdWM = append(sqlOneAdWM, took)
			sqlAllAds = append(sqlAllAds, awBenchSQLAllAds(b, ctx, db, "", from, to))
			sqlAllAdsWM = append(sqlAllAdsWM, awBenchSQLAllAds(b, ctx, db, awBenchWorkMem, from, to))
		}

		p := func(lat []time.Duration, q float64) float64 {
			s := slices.Clone(lat)
			slices.Sort(s)
			i := max(int(math.Ceil(q*float64(len(s))))-1, 0)
			return float64(s[i]) / 1e6
		}
		cacheBytes, cacheEntries := awCacheMetrics(b, hc, base)
		b.ReportMetric(p(oneAd, 0.5), "one_ad_p50_ms")
		b.ReportMetric(p(oneAd, 0.99), "one_ad_p99_ms")
		b.ReportMetric(p(allAds, 0.5), "all_ads_p50_ms")
		b.ReportMetric(p(allAds, 0.99), "all_ads_p99_ms")
		b.ReportMetric(p(sqlOneAd, 0.5), "sql_one_ad_p50_ms")
		b.ReportMetric(p(sqlAllAds, 0.5), "sql_all_ads_p50_ms")
		b.ReportMetric(p(sqlOneAd, 0.5)/p(oneAd, 0.5), "speedup_one_ad")
		b.ReportMetric(p(sqlAllAds, 0.5)/p(allAds, 0.5), "speedup_all_ads")
		b.ReportMetric(p(sqlOneAdWM, 0.5), "sql_wm256_one_ad_p50_ms")
		b.ReportMetric(p(sqlAllAdsWM, 0.5), "sql_wm256_all_ads_p50_ms")
		b.ReportMetric(cacheBytes/(1<<20), "cache_MiB")
		b.ReportMetric(cacheEntries, "cache_entries")
		b.Logf("%d + %d API requests, %d + %d SQL runs; sql p99: one ad %.1f ms, all ads %.1f ms",
			oneAdRequests, allAdsRequests, sqlRuns, sqlRuns, p(sqlOneAd, 0.99), p(sqlAllAds, 0.99))
		b.Logf("slowest API answers (and the second of the minute they started in): one ad %v; all ads %v",
			slowest(oneAd, 5, oneAdBegan), slowest(allAds, 5, allAdsBegan))
		b.Logf("one ad, answers over 5 ms by the second of the minute they started in: %v", overBySecond(oneAd, oneAdBegan, 5*time.Millisecond))
	}
}

// startLiveLoad publishes rate events a second to the stream, spread over
// ads with Zipf popularity and timestamped now, until the returned func is
// called; it returns how many were published. With rate 0 it does nothing.
func startLiveLoad(b *testing.B, natsURL string, ads []string, rate int) (stop func() int) {
	b.Helper()
	if rate <= 0 {
		return func() int { return 0 }
	}
	nc, err := nats.Connect(natsURL, nats.Name("analytics-live-load"))
	if err != nil {
		b.Fatal(err)
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	published := make(chan int, 1)
	go func() {
		rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
		zipf := rand.NewZipf(rng, 1.1, 1, uint64(len(ads)-1))
		const tick = 10 * time.Millisecond
		perTick := max(rate/int(time.Second/tick), 1)
		t := time.NewTicker(tick)
		defer t.Stop()
		n := 0
		for {
			select {
			case <-done:
				published <- n
				return
			case <-t.C:
			}
			for range perTick {
				ev := event.Event{
					EventID: fmt.Sprintf("live-%d-%d", time.Now().UnixNano(), n), AdID: ads[zipf.Uint64()],
					Type: event.Impression, Timestamp: time.Now().UTC(),
					IP: fmt.Sprintf("10.9.%d.%d", rng.IntN(256), rng.IntN(256)), UserAgent: "live-load",
				}
				if rng.IntN(4) == 0 {
					ev.Type = event.Click
				}
				data, err := ev.Marshal()
				if err != nil {
					b.Error(err)
					continue
				}
				if _, err := js.PublishAsync(ev.Subject(), data, jetstream.WithMsgID(ev.EventID)); err != nil {
					b.Errorf("live load: %v", err)
					continue
				}
				n++
			}
		}
	}()
	return func() int {
		close(done)
		n := <-published
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(30 * time.Second):
			b.Errorf("live load: %d publishes unacknowledged", js.PublishAsyncPending())
		}
		nc.Close()
		return n
	}
}

// overBySecond counts the answers of lat (one request at a time from began)
// longer than limit by the second of the minute they started in: a tail
// that recurs at one point of every minute shows there.
func overBySecond(lat []time.Duration, began time.Time, limit time.Duration) map[int]int {
	over := map[int]int{}
	at := began
	for _, l := range lat {
		if l > limit {
			over[at.Second()]++
		}
		at = at.Add(l)
	}
	return over
}

// slowest returns the n longest of lat, longest first, and where each came.
func slowest(lat []time.Duration, n int, began time.Time) []string {
	idx := make([]int, len(lat))
	starts := make([]time.Time, len(lat)) // one request at a time: each starts as the one before ends
	at := began
	for i := range idx {
		idx[i], starts[i] = i, at
		at = at.Add(lat[i])
	}
	slices.SortFunc(idx, func(a, b int) int { return int(lat[b] - lat[a]) })
	var out []string
	for _, i := range idx[:min(n, len(idx))] {
		out = append(out, fmt.Sprintf("#%d %.1fms at :%02d", i, float64(lat[i])/1e6, starts[i].Second()))
	}
	return out
}

// awBenchSelect is the SQL equivalent of one ad's (or, grouped, every ad's)
// analytics over a window.
const awBenchSelect = `count(*) FILTER (WHERE type = 'impression'), count(*) FILTER (WHERE type = 'click'),
  count(*) FILTER (WHERE type = 'start'), count(*) FILTER (WHERE type = 'firstQuartile'),
  count(*) FILTER (WHERE type = 'midpoint'), count(*) FILTER (WHERE type = 'thirdQuartile'),
  count(*) FILTER (WHERE type = 'complete'), count(*) FILTER (WHERE type = 'skip'),
  coalesce(sum(playback_ms) FILTER (WHERE type = 'click'), 0), count(DISTINCT (ip, user_agent))`

func awBenchScan(scan func(...any) error, prefix ...any) (awFigures, error) {
	var c [10]int64
	dest := prefix
	for i := range c {
		dest = append(dest, &c[i])
	}
	if err := scan(dest...); err != nil {
		return awFigures{}, err
	}
	var f awFigures
	for i := range 8 {
		f.counts[i] = uint64(c[i])
	}
	f.playbackMS, f.visitors = uint64(c[8]), uint64(c[9])
	return f, nil
}

// awBenchTx begins a transaction for one SQL run, with work_mem set for it
// unless workMem is "" (the server's setting, 4MB by default).
func awBenchTx(b *testing.B, ctx context.Context, db *bun.DB, workMem string) bun.Tx {
	b.Helper()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		b.Fatal(err)
	}
	if workMem != "" {
		if _, err := tx.ExecContext(ctx, "SET LOCAL work_mem = '"+workMem+"'"); err != nil {
			b.Fatal(err)
		}
	}
	return tx
}

func awBenchSQLOneAd(b *testing.B, ctx context.Context, db *bun.DB, workMem, ad string, from, to time.Time) (awFigures, time.Duration) {
	b.Helper()
	start := time.Now()
	tx := awBenchTx(b, ctx, db, workMem)
	defer func() { _ = tx.Rollback() }()
	row := tx.QueryRowContext(ctx, "SELECT "+awBenchSelect+" FROM events WHERE ad_id = ? AND occurred_at >= ? AND occurred_at < ?", ad, from, to)
	f, err := awBenchScan(row.Scan)
	if err != nil {
		b.Fatal(err)
	}
	return f, time.Since(start)
}

func awBenchSQLAllAds(b *testing.B, ctx context.Context, db *bun.DB, workMem string, from, to time.Time) time.Duration {
	b.Helper()
	start := time.Now()
	tx := awBenchTx(b, ctx, db, workMem)
	defer func() { _ = tx.Rollback() }()
	rows, err := tx.QueryContext(ctx, "SELECT ad_id, "+awBenchSelect+" FROM events WHERE occurred_at >= ? AND occurred_at < ? GROUP BY ad_id", from, to)
	if err != nil {
		b.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var ad string
		if _, err := awBenchScan(rows.Scan, &ad); err != nil {
			b.Fatal(err)
		}
		n++
	}
	if err := rows.Err(); err != nil {
		b.Fatal(err)
	}
	if n == 0 {
		b.Fatal("SQL found no ads")
	}
	return time.Since(start)
}

// awBenchSame compares counts and the playback sum exactly and unique
// visitors within 2% (exactly up to 1,000).
func awBenchSame(ad string, api, sql awFigures) error {
	if api.counts != sql.counts || api.playbackMS != sql.playbackMS {
		return fmt.Errorf("%s: analytics count %v and %d ms of playback, SQL %v and %d ms", ad, api.counts, api.playbackMS, sql.counts, sql.playbackMS)
	}
	uv, truth := float64(api.visitors), float64(sql.visitors)
	if sql.visitors <= 1000 && api.visitors != sql.visitors || math.Abs(uv-truth) > 0.02*truth {
		return fmt.Errorf("%s: %d unique visitors, SQL %d", ad, api.visitors, sql.visitors)
	}
	return nil
}

// awCacheMetrics scrapes admetric_rollup_cache_bytes and _entries from /metrics.
func awCacheMetrics(b *testing.B, hc *http.Client, base string) (bytes, entries float64) {
	b.Helper()
	resp, err := hc.Get(base + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	found := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok || (name != "admetric_rollup_cache_bytes" && name != "admetric_rollup_cache_entries") {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			b.Fatalf("/metrics: %s: %v", sc.Text(), err)
		}
		if name == "admetric_rollup_cache_bytes" {
			bytes = v
		} else {
			entries = v
		}
		found++
	}
	if found != 2 {
		b.Fatalf("/metrics: found %d of admetric_rollup_cache_bytes and _entries", found)
	}
	return bytes, entries
}
