package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/config"
	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/store"
)

// BenchmarkIngest measures POST /ads/click of the whole service against a
// ceiling, in one run and with the same load tool. The service is the default
// configuration started in-process (embedded NATS, private PostgreSQL, the
// aggregator running): every 202 is a real JetStream publish to the demo ad
// coffee-6s. The ceiling is a bare gin.New() server in the same process whose
// POST /ads/click only reads the body, event.Decode's it and answers the same
// 202 JSON: what Gin, net/http and the JSON decoding cost on this machine.
//
// The load comes from vegeta (github.com/tsenart/vegeta/v12, a tool of
// tools/go.mod), built once into a temporary directory and run as a separate
// process so that it does not share the Go runtime with the servers. Every
// request carries its own event_id (the stream would drop repeats), a varying
// ip and playback_time. For each server, ceiling first, after a 1 s warm-up:
//
//   - saturation: closed loop, 64 workers on 64 connections (-rate=0
//     -max-workers=64 -workers=64 -connections=64 -max-connections=64) for
//     ADMETRIC_BENCH_SECONDS (default 10): successful 202s per second;
//   - constant rate: open loop at ADMETRIC_BENCH_RATE requests/s (default
//     5,000) for the same time: p50, p99 and the achieved throughput.
//
// Before each service measurement the benchmark waits for the aggregator's
// consumers to catch up with the stream, so that one measurement does not pay
// for the previous one's backlog (the catch-up time is logged). The service may
// answer 503 (too many publishes in flight): these are counted and reported;
// any other non-202 answer fails the benchmark, and so does a transport error
// except at the constant rate, where one means the rate is beyond what the
// machine serves: there they are counted (*_rate_errors) and logged.
//
// Metrics: service_rps, ceiling_rps, rps_ratio (service/ceiling) and
// service_success_ratio, service_503s from saturation; service_p50_ms,
// service_p99_ms, ceiling_p50_ms, ceiling_p99_ms, service_rate_rps,
// ceiling_rate_rps (achieved 202s/s), service_rate_503s, service_rate_errors
// and ceiling_rate_errors from the constant rate. vegeta's text
// summary of every run is logged; add -v to see them all, as without it go test
// keeps only the first lines of a benchmark's log.
//
// ADMETRIC_BENCH_CPUPROFILE names a file for a CPU profile of this process
// (the service with its embedded NATS) during the service's saturation run.
//
// ADMETRIC_BENCH_ROLE=api runs the api role alone; ADMETRIC_BENCH_NATS=process
// puts NATS in a nats-server process of its own, as production runs it.
//
// The cost of NATS_SYNC_ALWAYS (the embedded server fsyncs every write) is the
// difference between two runs, the default and one with
// ADMETRIC_BENCH_SYNC_ALWAYS=1, which starts the service with
// NATS_SYNC_ALWAYS=true (the ceiling is the same in both):
//
//	go test -run '^$' -bench Ingest -benchtime 1x -timeout 20m ./cmd/admetric/
//	ADMETRIC_BENCH_SYNC_ALWAYS=1 go test -run '^$' -bench Ingest -benchtime 1x -timeout 20m ./cmd/admetric/
//
// Shorter or harder:
//
//	ADMETRIC_BENCH_SECONDS=5 ADMETRIC_BENCH_RATE=8000 go test -run '^$' -bench Ingest -benchtime 1x -timeout 20m ./cmd/admetric/
//
// The machine's cores are shared by vegeta, the servers, the aggregator, NATS
// and PostgreSQL, so the figures are for comparing the two servers within a
// run, not absolute capacities.
func BenchmarkIngest(b *testing.B) {
	seconds := envInt("ADMETRIC_BENCH_SECONDS", 10)
	rate := envInt("ADMETRIC_BENCH_RATE", 5000)
	syncAlways := os.Getenv("ADMETRIC_BENCH_SYNC_ALWAYS") == "1"
	duration := time.Duration(seconds) * time.Second

	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel) // kills any vegeta still running
	tmp := b.TempDir()
	vg := &vegeta{b: b, ctx: ctx, bin: buildVegeta(b, ctx, tmp), dir: tmp}

	ceilingURL := startCeiling(b)
	env := testEnv(testDataDir(b))
	env["LOG_LEVEL"] = "error"
	if syncAlways {
		env["NATS_SYNC_ALWAYS"] = "true"
	}
	// ADMETRIC_BENCH_ROLE=api measures the intake path alone: the api role with
	// the embedded NATS, no rollup writers or archiver consuming meanwhile (as
	// when the aggregators run on other machines). Default: the whole service.
	r, roleName := roleAll, "serve"
	if os.Getenv("ADMETRIC_BENCH_ROLE") == "api" {
		r, roleName = roleAPI, "api"
	}
	// ADMETRIC_BENCH_NATS=process runs NATS as production does: a nats-server
	// process, configured as the README says. Default: the embedded server.
	if os.Getenv("ADMETRIC_BENCH_NATS") == "process" {
		ns := startNATSServer(b, buildNATSServer(b), freePort(b), b.TempDir(), 8)
		env["NATS_URL"] = ns.url
		roleName += " against a nats-server process"
	}
	tuneGC(os.LookupEnv) // as the command does, for both servers in this process
	d := startBenchDaemon(b, env, r)
	serviceURL := "http://" + d.httpAddr() + "/ads/click"
	const adID = "coffee-6s" // a demo ad, seeded into the empty table
	if resp, err := http.Get("http://" + d.httpAddr() + "/ads/" + adID); err != nil || resp.StatusCode != http.StatusOK {
		b.Fatalf("demo ad %s is not there: %v %v", adID, resp, err)
	} else {
		resp.Body.Close()
	}
	drain, streamMsgs := streamDrainer(b, cmp.Or(env["NATS_URL"], d.natsURL()), d.cfg.Partitions)
	b.Logf("service: role %s, NATS_SYNC_ALWAYS=%v; %d s per measurement, constant rate %d/s", roleName, syncAlways, seconds, rate)

	satTargets := max(200_000, 25_000*seconds)
	rateTargets := rate*(seconds+1) + 1000
	warmRate := max(rate/20, 50)
	for i := 0; b.Loop(); i++ {
		// Ceiling.
		cWarm := vg.attack("ceiling-warmup", ceilingURL, adID, fmt.Sprintf("c%d-w", i), warmRate+1, time.Second, rateArgs(warmRate))
		cSat := vg.attack("ceiling-saturation", ceilingURL, adID, fmt.Sprintf("c%d-s", i), satTargets, duration, saturationArgs)
		cRate := vg.attack("ceiling-rate", ceilingURL, adID, fmt.Sprintf("c%d-r", i), rateTargets, duration, rateArgs(rate))
		cWarm.check("202")
		cSat.check("202")
		cRate.checkOpenLoop("202")

		// Service.
		sWarm := vg.attack("service-warmup", serviceURL, adID, fmt.Sprintf("s%d-w", i), warmRate+1, time.Second, rateArgs(warmRate))
		drain("the warm-up")
		sWarm.check("202")
		stopProfile := startCPUProfile(b, os.Getenv("ADMETRIC_BENCH_CPUPROFILE"))
		sSat := vg.attack("service-saturation", serviceURL, adID, fmt.Sprintf("s%d-s", i), satTargets, duration, saturationArgs)
		stopProfile()
		sSat.check("202", "503")
		drain("saturation")
		sRate := vg.attack("service-rate", serviceURL, adID, fmt.Sprintf("s%d-r", i), rateTargets, duration, rateArgs(rate))
		sRate.checkOpenLoop("202", "503")
		drain("the constant rate")
		answered := 0
		for _, r := range []*vegetaRun{sWarm, sSat, sRate} {
			answered += r.report.StatusCodes["202"]
		}
		b.Logf("service: %d events answered 202 in this iteration; the stream holds %d in all (spooled events reach it when replayed)", answered, streamMsgs())
		for _, r := range []*vegetaRun{sSat, sRate} {
			if r.report.Requests > uint64(r.targets) {
				b.Logf("WARNING %s: %d requests for %d distinct targets: event_ids repeated and the stream dropped the repeats", r.name, r.report.Requests, r.targets)
			}
			if r.spooled > 0 {
				b.Logf("WARNING %s: %d events were spooled, not accepted by the stream", r.name, r.spooled)
			}
		}

		serviceRPS, ceilingRPS := sSat.okPerSecond(), cSat.okPerSecond()
		b.ReportMetric(serviceRPS, "service_rps")
		b.ReportMetric(ceilingRPS, "ceiling_rps")
		b.ReportMetric(serviceRPS/ceilingRPS, "rps_ratio")
		b.ReportMetric(float64(sSat.report.StatusCodes["202"])/float64(sSat.report.Requests), "service_success_ratio")
		b.ReportMetric(float64(sSat.report.StatusCodes["503"]), "service_503s")
		b.ReportMetric(ms(sRate.report.Latencies.P50), "service_p50_ms")
		b.ReportMetric(ms(sRate.report.Latencies.P99), "service_p99_ms")
		b.ReportMetric(ms(cRate.report.Latencies.P50), "ceiling_p50_ms")
		b.ReportMetric(ms(cRate.report.Latencies.P99), "ceiling_p99_ms")
		b.ReportMetric(sRate.okPerSecond(), "service_rate_rps")
		b.ReportMetric(cRate.okPerSecond(), "ceiling_rate_rps")
		b.ReportMetric(float64(sRate.report.StatusCodes["503"]), "service_rate_503s")
		b.ReportMetric(float64(sRate.report.StatusCodes["0"]), "service_rate_errors")
		b.ReportMetric(float64(cRate.report.StatusCodes["0"]), "ceiling_rate_errors")
	}
}

// startCPUProfile writes a CPU profile of this process (the service, not
// vegeta) to path until the returned func is called; with an empty path it
// does nothing.
func startCPUProfile(b *testing.B, path string) (stop func()) {
	b.Helper()
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			b.Error(err)
		}
	}
}

// startBenchDaemon starts the service in-process in role r, stopped at cleanup.
func startBenchDaemon(b *testing.B, env map[string]string, r role) *daemon {
	b.Helper()
	// The benchmarks send thousands of events a second from one address:
	// the rate limits stay on, as in the service, at a rate they never
	// reach, so that their cost is in the figures and their refusals not.
	limits := map[string]string{"INTAKE_RATE_LIMIT": "1000000", "INTAKE_RATE_BURST": "1000000",
		"PIXEL_RATE_LIMIT": "1000000", "PIXEL_RATE_BURST": "1000000"}
	maps.Copy(limits, env)
	cfg, err := config.Load(lookupIn(limits))
	if err != nil {
		b.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(testLogWriter{b}, &slog.HandlerOptions{Level: cfg.LogLevel}))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d, err := startDaemon(ctx, cfg, r, logger)
	if err != nil {
		b.Fatalf("start: %v", err)
	}
	b.Cleanup(func() { stopTestDaemon(b, d) })
	return d
}

var saturationArgs = []string{"-rate=0", "-max-workers=64", "-workers=64", "-connections=64", "-max-connections=64"}

func rateArgs(perSecond int) []string {
	return []string{"-rate=" + strconv.Itoa(perSecond) + "/s"}
}

func ms(ns int64) float64 { return float64(ns) / 1e6 }

// buildVegeta builds the load tool from tools/go.mod into dir.
func buildVegeta(b *testing.B, ctx context.Context, dir string) string {
	b.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		b.Fatal(err)
	}
	modfile := filepath.Join(root, "tools", "go.mod")
	if _, err := os.Stat(modfile); err != nil {
		b.Fatalf("tools module: %v", err)
	}
	bin := filepath.Join(dir, "vegeta")
	cmd := exec.CommandContext(ctx, "go", "build", "-modfile="+modfile, "-o", bin, "github.com/tsenart/vegeta/v12")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("building vegeta: %v\n%s", err, out)
	}
	return bin
}

// startCeiling serves the ceiling: POST /ads/click decodes the event and
// answers 202 like the service, and does nothing else. It returns its URL.
func startCeiling(b *testing.B) string {
	b.Helper()
	gin.SetMode(gin.ReleaseMode)
	engine := gin.New()
	engine.POST("/ads/click", func(c *gin.Context) {
		body, err := io.ReadAll(c.Request.Body)
		if err != nil {
			c.JSON(http.StatusBadRequest, gin.H{"error": "could not read the body"})
			return
		}
		ev, err := event.Decode(body)
		if err != nil {
			c.JSON(http.StatusBadRequest, gin.H{"error": err.Error()})
			return
		}
		c.JSON(http.StatusAccepted, struct {
			EventID string `json:"event_id"`
			Status  string `json:"status"`
		}{ev.EventID, "accepted"})
	})
	return serveCeiling(b, engine) + "/ads/click"
}

// serveCeiling serves engine on a free port of 127.0.0.1 until the benchmark
// ends, with the service's server timeouts so that both keep connections
// alike, and returns its base URL.
func serveCeiling(b *testing.B, engine *gin.Engine) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{
		Handler:           engine.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	go func() { _ = srv.Serve(ln) }()
	b.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}

// streamDrainer returns a function that waits until every consumer of the
// partition streams has caught up (nothing pending, nothing awaiting an ack) and
// logs how long that took, and one that counts the stream's messages.
func streamDrainer(b *testing.B, natsURL string, partitions int) (drain func(after string), msgs func() uint64) {
	b.Helper()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	pending := func() (uint64, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var n uint64
		for p := range partitions {
			s, err := js.Stream(ctx, store.EventStreamName(p))
			if err != nil {
				return 0, err
			}
			consumers := s.ListConsumers(ctx)
			for ci := range consumers.Info() {
				n += ci.NumPending + uint64(ci.NumAckPending)
			}
			if err := consumers.Err(); err != nil {
				return 0, err
			}
		}
		return n, nil
	}
	msgs = func() uint64 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var n uint64
		for p := range partitions {
			s, err := js.Stream(ctx, store.EventStreamName(p))
			if err != nil {
				b.Fatalf("stream: %v", err)
			}
			n += s.CachedInfo().State.Msgs
		}
		return n
	}
	drain = func(after string) {
		b.Helper()
		start := time.Now()
		first := uint64(0)
		for {
			n, err := pending()
			if err != nil {
				b.Fatalf("stream consumers: %v", err)
			}
			if first == 0 {
				first = n
			}
			if n == 0 {
				if first > 0 {
					b.Logf("service: the aggregator caught up %s after %s (%d messages pending over all consumers when the wait began)",
						time.Since(start).Round(10*time.Millisecond), after, first)
				}
				return
			}
			if time.Since(start) > 5*time.Minute {
				b.Fatalf("the aggregator did not catch up within 5 min after %s: %d pending", after, n)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return drain, msgs
}

// vegeta runs the load tool.
type vegeta struct {
	b   *testing.B
	ctx context.Context
	bin string
	dir string
}

// vegetaReport is the part of `vegeta report -type=json` used here; durations
// are in nanoseconds.
type vegetaReport struct {
	Latencies struct {
		Mean int64 `json:"mean"`
		P50  int64 `json:"50th"`
		P90  int64 `json:"90th"`
		P99  int64 `json:"99th"`
		Max  int64 `json:"max"`
	} `json:"latencies"`
	Duration    int64          `json:"duration"`
	Wait        int64          `json:"wait"`
	Requests    uint64         `json:"requests"`
	Rate        float64        `json:"rate"`
	Throughput  float64        `json:"throughput"`
	Success     float64        `json:"success"`
	StatusCodes map[string]int `json:"status_codes"`
	Errors      []string       `json:"errors"`
}

type vegetaRun struct {
	b       *testing.B
	name    string
	targets int
	report  vegetaReport
	spooled int            // 202s whose body says "spooled"
	refused map[string]int // the other answers' bodies, by code and error
}

// okPerSecond is the 202s per second over the attack and the wait for the last
// answers.
func (r *vegetaRun) okPerSecond() float64 {
	return float64(r.report.StatusCodes["202"]) / (float64(r.report.Duration+r.report.Wait) / 1e9)
}

// check fails the benchmark if a status other than the allowed ones was seen,
// or a transport error (vegeta's code 0).
func (r *vegetaRun) check(allowed ...string) {
	r.b.Helper()
	for code := range r.report.StatusCodes {
		if !slices.Contains(allowed, code) {
			r.b.Fatalf("%s: answers other than %v: %v; errors: %v", r.name, allowed, r.report.StatusCodes, r.report.Errors)
		}
	}
}

// checkOpenLoop is check for a constant-rate run, which tolerates transport
// errors: when the offered rate is beyond what the machine can serve, vegeta
// opens ever more connections and some of them time out or are dropped. They
// are reported (the *_rate_errors metrics) and logged.
func (r *vegetaRun) checkOpenLoop(allowed ...string) {
	r.b.Helper()
	r.check(append(allowed, "0")...)
	if n := r.report.StatusCodes["0"]; n > 0 {
		r.b.Logf("WARNING %s: %d transport errors (the offered rate is beyond what this machine serves?): %v", r.name, n, r.report.Errors)
	}
}

// attack writes n distinct click targets for url (event_ids idPrefix-0 …),
// runs vegeta against them for d with the extra flags, and returns its report.
func (v *vegeta) attack(name, url, adID, idPrefix string, n int, d time.Duration, args []string) *vegetaRun {
	v.b.Helper()
	return v.attackTargets(name, n, d, args, true, func(path string) { writeTargets(v.b, path, url, adID, idPrefix, n) })
}

// attackTargets runs vegeta for d with the extra flags against the n targets
// write puts in the file it is given, and returns its report; with bodies,
// it reads every answer as an event intake's (202, accepted or spooled).
func (v *vegeta) attackTargets(name string, n int, d time.Duration, args []string, bodies bool, write func(path string)) *vegetaRun {
	b := v.b
	b.Helper()
	targets := filepath.Join(v.dir, name+".targets")
	results := filepath.Join(v.dir, name+".bin")
	write(targets)
	defer os.Remove(targets)
	defer os.Remove(results)

	ctx, cancel := context.WithTimeout(v.ctx, d+2*time.Minute)
	defer cancel()
	attack := append([]string{"attack", "-name=" + name, "-format=json", "-targets=" + targets,
		"-duration=" + d.String(), "-timeout=30s", "-output=" + results}, args...)
	cmd := exec.CommandContext(ctx, v.bin, attack...)
	// The load tool's own collections would add to every latency it measures,
	// the ceiling's and the service's alike; keep them rare.
	cmd.Env = append(os.Environ(), "GOGC=400")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		b.Fatalf("vegeta %s: %v\n%s", strings.Join(attack, " "), err, stderr.Bytes())
	}

	run := &vegetaRun{b: b, name: name, targets: n}
	if err := json.Unmarshal(v.output(ctx, "report", "-type=json", results), &run.report); err != nil {
		b.Fatalf("%s: vegeta report: %v", name, err)
	}
	if bodies {
		run.spooled, run.refused = v.readBodies(ctx, results)
	}
	if len(run.refused) > 0 {
		b.Logf("%s: answers other than 202: %v", name, run.refused)
	}
	b.Logf("%s: vegeta %s\n%s", name, strings.Join(args, " "), v.output(ctx, "report", "-type=text", results))
	return run
}

func (v *vegeta) output(ctx context.Context, args ...string) []byte {
	v.b.Helper()
	out, err := exec.CommandContext(ctx, v.bin, args...).Output()
	if err != nil {
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			err = fmt.Errorf("%w: %s", err, exitErr.Stderr)
		}
		v.b.Fatalf("vegeta %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// readBodies reads every result's body: it counts the 202s that are "spooled"
// rather than "accepted" (and fails on a 202 that is neither), and the other
// answers by status code and error message.
func (v *vegeta) readBodies(ctx context.Context, results string) (spooled int, refused map[string]int) {
	b := v.b
	b.Helper()
	cmd := exec.CommandContext(ctx, v.bin, "encode", "-to=json", results)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	refused = map[string]int{}
	dec := json.NewDecoder(bufio.NewReaderSize(stdout, 1<<20))
	for {
		var r struct {
			Code int    `json:"code"`
			Body []byte `json:"body"`
		}
		if err := dec.Decode(&r); err == io.EOF {
			break
		} else if err != nil {
			b.Fatalf("vegeta encode: %v", err)
		}
		if r.Code != http.StatusAccepted {
			var e struct {
				Error string `json:"error"`
			}
			if r.Code == 0 {
				e.Error = "transport error" // vegeta's errors are in the report
			} else if json.Unmarshal(r.Body, &e) != nil {
				e.Error = string(r.Body)
			}
			refused[strconv.Itoa(r.Code)+" "+e.Error]++
			continue
		}
		var ans struct {
			EventID string `json:"event_id"`
			Status  string `json:"status"`
		}
		if err := json.Unmarshal(r.Body, &ans); err != nil || ans.EventID == "" {
			b.Fatalf("a 202 with an unexpected body: %q", r.Body)
		}
		switch ans.Status {
		case "accepted":
		case "spooled":
			spooled++
		default:
			b.Fatalf("a 202 with an unexpected status: %q", r.Body)
		}
	}
	if err := cmd.Wait(); err != nil {
		b.Fatalf("vegeta encode: %v", err)
	}
	return spooled, refused
}

// writeTargets writes n vegeta JSON targets, each a click on adID with its own
// event_id, ip and playback_time.
func writeTargets(b *testing.B, path, url, adID, idPrefix string, n int) {
	b.Helper()
	header := http.Header{"Content-Type": {"application/json"}, "User-Agent": {"admetric-bench/1.0"}}
	writeTargetsFunc(b, path, n, func(i int) vegetaTarget {
		body := fmt.Sprintf(`{"event_id":"bench-%s-%d","ad_id":%q,"ip":"10.%d.%d.%d","playback_time":%d.%02d}`,
			idPrefix, i, adID, i>>16&0xff, i>>8&0xff, i&0xff, i%6, i%100)
		return vegetaTarget{Method: http.MethodPost, URL: url, Body: []byte(body), Header: header}
	})
}

// vegetaTarget is one request of vegeta's JSON target format.
type vegetaTarget struct {
	Method string      `json:"method"`
	URL    string      `json:"url"`
	Body   []byte      `json:"body,omitempty"`
	Header http.Header `json:"header"`
}

// writeTargetsFunc writes n vegeta JSON targets to path, the i-th target(i).
func writeTargetsFunc(b *testing.B, path string, n int, target func(i int) vegetaTarget) {
	b.Helper()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)
	enc := json.NewEncoder(w)
	for i := range n {
		if err := enc.Encode(target(i)); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
}
