package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/aggregator"
	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/rollup"
	"github.com/admetric/admetric/store/rollup/rolluptest"
)

// BenchmarkCPUPerEvent runs the whole service (in-process, embedded NATS,
// private PostgreSQL) at a constant ADMETRIC_BENCH_RATE (default 3,000) POST
// /ads/click and /ads/impression per second over 200 ads for
// ADMETRIC_BENCH_SECONDS (default 10), then waits until every consumer of
// the partition streams has caught up (the rollups folded, the archive
// written), and reports the CPU time per accepted event from the first
// request to the end of that catch-up: this process's (HTTP intake, NATS,
// fold, archive inserts) and PostgreSQL's, separately. vegeta runs as a
// process of its own and is not counted.
//
// The rollups start as such a load leaves them: the rollup of the current
// hour of each ad holds the visitor sets of the past 30 minutes (900 each),
// those of today and of this month the sets of its hours and days so far,
// the current ones included (HyperLogLog sketches). A commit rewrites what its keys hold, so this is
// what the writers' work depends on; the first commits (of the warm-up) move
// the sets of ended slots to their settled keys.
//
// It does so twice in one run, each on a fresh DATA_DIR: "before", as the
// rollup writers and the archiver ran before #12 (atomic batches,
// ROLLUP_COMMITS=atomic; every visitor set kept in its rollup; a commit of
// every bucket as soon as a writer caught up; archive batches of 50 ms: see
// writersAsBefore12), and "after", with the defaults, and reports both and
// their ratio. ADMETRIC_BENCH_CPUPROFILE names a file for a CPU profile of
// this process over the second measurement.
//
//	go test -run '^$' -bench CPUPerEvent -benchtime 1x -timeout 20m ./cmd/admetric/
func BenchmarkCPUPerEvent(b *testing.B) {
	seconds := envInt("ADMETRIC_BENCH_SECONDS", 10)
	rate := envInt("ADMETRIC_BENCH_RATE", 3000)
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	tmp := b.TempDir()
	vg := &vegeta{b: b, ctx: ctx, bin: buildVegeta(b, ctx, tmp), dir: tmp}
	for b.Loop() {
		writersAsBefore12 = true
		before := measureEventCPU(b, vg, "before", "atomic", rate, seconds)
		writersAsBefore12 = false
		after := measureEventCPU(b, vg, "after", "auto", rate, seconds)
		for _, m := range []struct {
			name string
			c    eventCPU
		}{{"before", before}, {"after", after}} {
			b.ReportMetric(m.c.service.Seconds()/m.c.events*1e6, m.name+"_service_us/event")
			b.ReportMetric(m.c.postgres.Seconds()/m.c.events*1e6, m.name+"_postgres_us/event")
			b.ReportMetric(float64(m.c.p99.Microseconds())/1000, m.name+"_p99_ms")
		}
		b.ReportMetric((after.service+after.postgres).Seconds()/after.events/((before.service+before.postgres).Seconds()/before.events), "after/before_cpu")
	}
}

// fillRollupHistory writes, for each ad, the rollups an hour and more of
// load at 15 events/s an ad leaves: 900 visitors in each of the past 30
// minutes, a sketch of 20,000 in each hour of today and each day of this
// month so far, the current ones included. One set of each kind serves every slot: only the bytes
// matter here.
func fillRollupHistory(b *testing.B, natsURL string, layout rollup.Layout, ads []string, now time.Time) {
	b.Helper()
	ctx := context.Background()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	rollups, err := store.CreateOrUpdateRollups(ctx, js, layout, 1)
	if err != nil {
		b.Fatal(err)
	}
	visitors := func(n int) *rollup.Visitors {
		v := &rollup.Visitors{}
		for i := range n {
			v.Insert(rolluptest.Hash(uint64(n)<<32 | uint64(i)))
		}
		return v
	}
	minute, sketch := visitors(900), visitors(20_000)
	type slotAt struct {
		u rollup.Unit
		t time.Time
		v *rollup.Visitors
	}
	var slots []slotAt
	for m := 1; m <= 30; m++ {
		slots = append(slots, slotAt{rollup.Minute, now.Add(-time.Duration(m) * time.Minute), minute})
	}
	for t := rollup.Day.Truncate(now); !t.After(now); t = t.Add(time.Hour) {
		slots = append(slots, slotAt{rollup.Hour, t, sketch})
	}
	for t := rollup.Day.PeriodStart(now); !t.After(now); t = t.AddDate(0, 0, 1) {
		slots = append(slots, slotAt{rollup.Day, t, sketch})
	}
	for _, ad := range ads {
		values := map[aggregator.Key]*rollup.Rollup{}
		for _, s := range slots {
			key, i := s.u.Locate(ad, s.t)
			k := aggregator.Key{Unit: s.u, Key: key}
			if values[k] == nil {
				values[k] = rollup.New()
			}
			slot := values[k].Slot(i)
			slot.Impressions, slot.Clicks, slot.Visitors = 675, 225, s.v
		}
		for k, v := range values {
			if _, err := rollups.Replace(ctx, k.Unit, []store.Write{{Key: k.Key, Value: v}}); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// eventCPU is what one measurement found: CPU time of the service process
// and of PostgreSQL, the events accepted, and the requests' p99.
type eventCPU struct {
	service, postgres time.Duration
	events            float64
	p99               time.Duration
}

func measureEventCPU(b *testing.B, vg *vegeta, name, commits string, rate, seconds int) eventCPU {
	b.Helper()
	dataDir := testDataDir(b)
	env := testEnv(dataDir)
	env["LOG_LEVEL"] = "error"
	env["ROLLUP_COMMITS"] = commits
	d := startBenchDaemon(b, env, roleAll)
	base := "http://" + d.httpAddr()
	const ads = 200
	adIDs := make([]string, ads)
	for i := range adIDs {
		adIDs[i] = fmt.Sprintf("cpu-ad-%03d", i)
	}
	fillRollupHistory(b, d.natsURL(), d.layout, adIDs, time.Now())
	post := poster(base, 1)
	for _, id := range adIDs {
		if st := post("/ads", `{"id":"`+id+`","title":"cpu"}`, testToken); st != http.StatusCreated {
			b.Fatalf("create ad %s: %d", id, st)
		}
	}
	drain, _ := streamDrainer(b, d.natsURL(), d.cfg.Partitions)
	header := http.Header{"Content-Type": {"application/json"}, "User-Agent": {"admetric-bench/1.0"}}
	targets := func(prefix string) func(i int) vegetaTarget {
		return func(i int) vegetaTarget {
			path, extra := "/ads/impression", ""
			if i%4 == 0 {
				path, extra = "/ads/click", fmt.Sprintf(`,"playback_time":%d.%02d`, i%6, i%100)
			}
			body := fmt.Sprintf(`{"event_id":"%s-%d","ad_id":"cpu-ad-%03d","ip":"10.%d.%d.%d"%s}`,
				prefix, i, i*7%ads, i>>16&0xff, i>>8&0xff, i&0xff, extra)
			return vegetaTarget{Method: http.MethodPost, URL: base + path, Body: []byte(body), Header: header}
		}
	}
	warm := vg.attackTargets(name+"-warmup", rate+1000, time.Second, rateArgs(rate), true, func(path string) {
		writeTargetsFunc(b, path, rate+1000, targets(name+"-w"))
	})
	warm.checkOpenLoop("202")
	drain("the warm-up")

	pg := postmasterPID(b, filepath.Join(dataDir, "pg"))
	n := rate*(seconds+1) + 1000
	spooled0 := ingestOutcome(b, d, "spooled")
	var (
		self0, pg0  time.Duration
		ok1         bool
		stopProfile = func() {}
	)
	// The measurement starts once the targets are written and leaves the
	// answers' bodies unread: only the service's work is counted, not this
	// harness's (reading the bodies of a 20 s run took 3% of the CPU counted).
	run := vg.attackTargets(name+"-rate", n, time.Duration(seconds)*time.Second, rateArgs(rate), false, func(path string) {
		writeTargetsFunc(b, path, n, targets(name+"-r"))
		self0, ok1 = procCPU("self")
		pg0 = treeCPU(pg)
		if name == "after" {
			stopProfile = startCPUProfile(b, os.Getenv("ADMETRIC_BENCH_CPUPROFILE"))
		}
	})
	run.checkOpenLoop("202")
	if s := ingestOutcome(b, d, "spooled") - spooled0; s > 0 {
		b.Fatalf("%s: %.0f events were spooled: NATS did not take them all", name, s)
	}
	drain("the load")
	stopProfile()
	self1, ok2 := procCPU("self")
	pg1 := treeCPU(pg)
	if !ok1 || !ok2 {
		b.Fatal("no /proc/self/stat")
	}
	events := float64(run.report.StatusCodes["202"])
	stopTestDaemon(b, d)
	got := eventCPU{service: self1 - self0, postgres: pg1 - pg0, events: events, p99: time.Duration(run.report.Latencies.P99)}
	b.Logf("%s (ROLLUP_COMMITS=%s): %0.f events accepted at %d/s asked; service %s CPU (%.0f µs/event), PostgreSQL %s (%.0f µs/event); p50 %.2f ms, p99 %.2f ms",
		name, commits, events, rate, got.service.Round(time.Millisecond), got.service.Seconds()/events*1e6,
		got.postgres.Round(time.Millisecond), got.postgres.Seconds()/events*1e6, ms(run.report.Latencies.P50), ms(run.report.Latencies.P99))
	return got
}

// postmasterPID finds the PostgreSQL server whose data directory is dir.
func postmasterPID(b *testing.B, dir string) string {
	b.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		b.Fatal(err)
	}
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && bytes.Contains(cmdline, []byte(dir)) && bytes.Contains(cmdline, []byte("postgres")) {
			return e.Name()
		}
	}
	b.Fatalf("no PostgreSQL server of %s", dir)
	return ""
}

// treeCPU is the CPU time of process pid, of its children alive now, and of
// the children it has reaped (PostgreSQL forks a backend per connection).
func treeCPU(pid string) time.Duration {
	total := ownAndReapedCPU(pid)
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		if i := bytes.LastIndexByte(stat, ')'); i > 0 {
			if f := strings.Fields(string(stat[i+1:])); len(f) > 1 && f[1] == pid {
				if c, ok := procCPU(e.Name()); ok {
					total += c
				}
			}
		}
	}
	return total
}

// ownAndReapedCPU is utime, stime, cutime and cstime of pid.
func ownAndReapedCPU(pid string) time.Duration {
	stat, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 15 {
		return 0
	}
	var ticks int64
	for _, k := range []int{11, 12, 13, 14} {
		n, _ := strconv.ParseInt(f[k], 10, 64)
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}
