package main

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
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
//
// ADMETRIC_BENCH_ROLE=api measures the intake path alone: the api role, no
// rollup writers or archiver consuming meanwhile (as when the aggregators run
// on other machines). Default: the whole service.
//
// ADMETRIC_BENCH_CPUPROFILE names a file for a CPU profile of this process
// (the service, not nats-server or vegeta) during the pixel saturation run.
//
// Where /proc is there, the CPU time of this process and of the nats-server
// process during the pixel saturation attack is reported per second of it
// (pixel_sat_service_cores, pixel_sat_nats_cores) and per pixel answered
// (pixel_sat_service_us, pixel_sat_nats_us).
//
//	ADMETRIC_BENCH_SECONDS=5 ADMETRIC_BENCH_ROLE=api ADMETRIC_BENCH_CPUPROFILE=/tmp/pixels.pprof \
//		go test -run '^$' -bench Pixels -benchtime 1x -timeout 20m ./cmd/admetric/ -v
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

	ns := startNATSServer(b, buildNATSServer(b), freePort(b), b.TempDir(), 8)
	dataDir := testDataDir(b)
	env := testEnv(dataDir)
	env["LOG_LEVEL"] = "error"
	env["NATS_URL"] = ns.url
	r, roleName := roleAll, "the whole service"
	if os.Getenv("ADMETRIC_BENCH_ROLE") == "api" {
		r, roleName = roleAPI, "the api role"
	}
	tuneGC(os.LookupEnv)
	d := startBenchDaemon(b, env, r)
	base := "http://" + d.httpAddr()
	secret, err := os.ReadFile(filepath.Join(dataDir, "pixel_secret"))
	if err != nil {
		b.Fatal(err)
	}
	signer, err := pixel.NewSigner([]byte(strings.TrimSpace(string(secret))))
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("service: %s, NATS a nats-server process; %d s per measurement, pixels at %d/s, VAST at %d/s", roleName, seconds, rate, vastRate)
	natsPID := strconv.Itoa(ns.cmd.Process.Pid)

	satTargets := max(200_000, 25_000*seconds)
	rateTargets := rate*(seconds+1) + 1000
	for i := 0; b.Loop(); i++ {
		cSat := vg.attackTargets("pixel-ceiling", satTargets, duration, saturationArgs, false, func(path string) {
			writePixelTargets(b, path, ceiling, signer, satTargets)
		})
		cSat.check("200")
		var cpu cpuUse
		spooledBefore := ingestOutcome(b, d, "spooled")
		sSat := vg.attackTargets("pixel-saturation", satTargets, duration, saturationArgs, false, func(path string) {
			writePixelTargets(b, path, base, signer, satTargets)
			// The targets are written: the attack starts as this returns. It
			// ends after duration (the last answers take milliseconds at
			// most), before vegeta's reports, which must not be counted.
			stopProfile := startCPUProfile(b, os.Getenv("ADMETRIC_BENCH_CPUPROFILE"))
			stopCPU := measureCPU(natsPID, &cpu)
			time.AfterFunc(duration, func() { stopCPU(); stopProfile() })
		})
		sSat.check("200")
		// Pixels answer before their PubAck: one the stream does not take in
		// time (or beyond MAX_PENDING_PUBLISHES in flight) is spooled, not
		// lost, and replayed later. How many, so that speed is not bought
		// with a spool that fills.
		spooled := ingestOutcome(b, d, "spooled") - spooledBefore
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
		b.ReportMetric(spooled, "pixel_sat_spooled")
		if ok := float64(sSat.report.StatusCodes["200"]); cpu.ok() && ok > 0 {
			b.ReportMetric(cpu.self.Seconds()/cpu.wall.Seconds(), "pixel_sat_service_cores")
			b.ReportMetric(cpu.other.Seconds()/cpu.wall.Seconds(), "pixel_sat_nats_cores")
			b.ReportMetric(cpu.self.Seconds()/ok*1e6, "pixel_sat_service_us")
			b.ReportMetric(cpu.other.Seconds()/ok*1e6, "pixel_sat_nats_us")
		}
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

// cpuUse is the CPU time this process and another one used over wall time.
type cpuUse struct {
	mu                sync.Mutex
	self, other, wall time.Duration
}

func (u *cpuUse) ok() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.wall > 0
}

// measureCPU starts measuring the CPU time of this process and of process
// pid; the returned func stops and stores the figures in u. Without /proc
// (or once pid is gone), u stays empty.
func measureCPU(pid string, u *cpuUse) (stop func()) {
	self0, ok1 := procCPU("self")
	other0, ok2 := procCPU(pid)
	start := time.Now()
	return func() {
		self1, ok3 := procCPU("self")
		other1, ok4 := procCPU(pid)
		if !ok1 || !ok2 || !ok3 || !ok4 {
			return
		}
		u.mu.Lock()
		defer u.mu.Unlock()
		u.self, u.other, u.wall = self1-self0, other1-other0, time.Since(start)
	}
}

// procCPU reads the user and system CPU time of process pid ("self" for this
// one) from /proc/<pid>/stat, in clock ticks of 10 ms (USER_HZ is 100 on every
// Linux platform Go supports).
func procCPU(pid string) (time.Duration, bool) {
	stat, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, false
	}
	// The command name, in parentheses, may hold spaces; the fields after it
	// are state (3), ... utime (14), stime (15).
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, false
	}
	fields := strings.Fields(string(stat[i+1:]))
	if len(fields) < 13 {
		return 0, false
	}
	utime, err1 := strconv.ParseInt(fields[11], 10, 64)
	stime, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, true
}

// ingestOutcome is the service's admetric_ingest_events_total of outcome.
func ingestOutcome(b *testing.B, d *daemon, outcome string) float64 {
	b.Helper()
	families, err := d.reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "admetric_ingest_events_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" && l.GetValue() == outcome {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
