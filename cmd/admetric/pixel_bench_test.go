package main

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/admetric/admetric/ingest/pixel"
)

// BenchmarkPixels measures VAST tracking as production runs it: the whole
// service against a nats-server process. In one run it drives, with vegeta,
// a bare Gin GET answering a GIF (the ceiling) and the service's pixel route
// at saturation (pixel_rps_ratio), the pixel route at a constant rate
// (ADMETRIC_BENCH_RATE, default 5,000/s: pixel_p50_ms, pixel_p99_ms), and
// GET /vast/:ad_id at a constant rate (ADMETRIC_BENCH_VAST_RATE, default
// 2,000/s: vast_p50_ms, vast_p99_ms). Every pixel is a new serving's, so
// every one is published.
func BenchmarkPixels(b *testing.B) {
	seconds := envInt("ADMETRIC_BENCH_SECONDS", 10)
	rate := envInt("ADMETRIC_BENCH_RATE", 5000)
	vastRate := envInt("ADMETRIC_BENCH_VAST_RATE", 2000)
	duration := time.Duration(seconds) * time.Second

	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	tmp := b.TempDir()
	vg := &vegeta{b: b, ctx: ctx, bin: buildVegeta(b, ctx, tmp), dir: tmp}
	ceiling := startPixelCeiling(b)

	ns := startNATSServer(b, buildNATSServer(b), freePort(b), b.TempDir())
	dataDir := testDataDir(b)
	env := testEnv(dataDir)
	env["LOG_LEVEL"] = "error"
	env["NATS_URL"] = ns.url
	tuneGC(os.LookupEnv)
	d := startBenchDaemon(b, env, roleAll)
	base := "http://" + d.httpAddr()
	secret, err := os.ReadFile(filepath.Join(dataDir, "pixel_secret"))
	if err != nil {
		b.Fatal(err)
	}
	signer, err := pixel.NewSigner([]byte(strings.TrimSpace(string(secret))))
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("service: the whole service, NATS a nats-server process; %d s per measurement, pixels at %d/s, VAST at %d/s", seconds, rate, vastRate)

	satTargets := max(200_000, 25_000*seconds)
	rateTargets := rate*(seconds+1) + 1000
	for i := 0; b.Loop(); i++ {
		cSat := vg.attackTargets("pixel-ceiling", satTargets, duration, saturationArgs, false, func(path string) {
			writePixelTargets(b, path, ceiling, signer, satTargets)
		})
		cSat.check("200")
		sSat := vg.attackTargets("pixel-saturation", satTargets, duration, saturationArgs, false, func(path string) {
			writePixelTargets(b, path, base, signer, satTargets)
		})
		sSat.check("200")
		sRate := vg.attackTargets("pixel-rate", rateTargets, duration, rateArgs(rate), false, func(path string) {
			writePixelTargets(b, path, base, signer, rateTargets)
		})
		sRate.checkOpenLoop("200")
		vastTargets := vastRate*(seconds+1) + 1000
		vRate := vg.attackTargets("vast-rate", vastTargets, duration, rateArgs(vastRate), false, func(path string) {
			writeGetTargets(b, path, base+"/vast/coffee-6s", vastTargets)
		})
		vRate.checkOpenLoop("200")

		perSecond := func(r *vegetaRun) float64 {
			return float64(r.report.StatusCodes["200"]) / (float64(r.report.Duration+r.report.Wait) / 1e9)
		}
		b.ReportMetric(perSecond(cSat), "pixel_ceiling_rps")
		b.ReportMetric(perSecond(sSat), "pixel_rps")
		b.ReportMetric(perSecond(sSat)/perSecond(cSat), "pixel_rps_ratio")
		b.ReportMetric(ms(sRate.report.Latencies.P50), "pixel_p50_ms")
		b.ReportMetric(ms(sRate.report.Latencies.P99), "pixel_p99_ms")
		b.ReportMetric(perSecond(sRate), "pixel_rate_rps")
		b.ReportMetric(ms(vRate.report.Latencies.P50), "vast_p50_ms")
		b.ReportMetric(ms(vRate.report.Latencies.P99), "vast_p99_ms")
		b.ReportMetric(perSecond(vRate), "vast_rate_rps")
	}
}

// startPixelCeiling serves GET /t/:kind with a 43-byte GIF-sized answer and
// nothing behind it (see serveCeiling); it returns the base URL.
func startPixelCeiling(b *testing.B) string {
	b.Helper()
	gin.SetMode(gin.ReleaseMode)
	engine := gin.New()
	answer := make([]byte, 43)
	engine.GET("/t/:kind", func(c *gin.Context) {
		c.Header("Cache-Control", "no-store")
		c.Data(http.StatusOK, "image/gif", answer)
	})
	return serveCeiling(b, engine)
}

// pixelKinds are the pixels a player fires for one serving, in order.
var pixelKinds = []string{"impression", "start", "firstQuartile", "midpoint", "thirdQuartile", "complete", "click"}

// writePixelTargets writes n GET targets of signed pixels at base, each of a
// serving of its own, with the player's macros filled in.
func writePixelTargets(b *testing.B, path, base string, signer *pixel.Signer, n int) {
	b.Helper()
	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	writeTargetsFunc(b, path, n, func(i int) vegetaTarget {
		kind := pixelKinds[i%len(pixelKinds)]
		sv := pixel.Serving{AdID: "coffee-6s", ServingID: pixel.NewServingID(), Expires: exp}
		return getTarget(base + "/t/" + kind + "?" + signer.Query(kind, sv) + "&ph=00:00:03.250&ts=-1&cb=" + strconv.Itoa(i))
	})
}

// writeGetTargets writes n GET targets of url.
func writeGetTargets(b *testing.B, path, url string, n int) {
	b.Helper()
	writeTargetsFunc(b, path, n, func(int) vegetaTarget { return getTarget(url) })
}

var benchHeader = http.Header{"User-Agent": {"admetric-bench/1.0"}}

func getTarget(url string) vegetaTarget {
	return vegetaTarget{Method: http.MethodGet, URL: url, Header: benchHeader}
}
