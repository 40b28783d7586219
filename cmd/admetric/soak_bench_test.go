package main

import (
	"fmt"
	"net/http"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkSoak runs the whole service (in-process, embedded NATS, private
// PostgreSQL, GOGC as the command sets it) at ADMETRIC_BENCH_RATE events/s
// (default 3,000, three quarters impressions) over 200 ads for
// ADMETRIC_BENCH_SECONDS (default 5,100: the stream's 20-minute duplicate
// window holds an entry per event, and nats-server lets expired entries go
// only once the live ones are a third of its list, so the window's memory
// rises for two windows or more after it fills and then saw-tooths: 85
// minutes hold two of its teeth), and samples every 30 s
// the process's resident set (VmRSS), the Go heap in use and the events
// accepted. The load comes from open-loop goroutines in this process (a
// file of vegeta targets for 30 minutes would take gigabytes); their memory
// is a few MiB. It logs the samples and reports the RSS after the first
// minute, when the duplicate window is full, and at the end, the live heap
// at the end, the growth per minute after the window of the RSS and of
// the live heap (least-squares slopes over the samples, which a saw-tooth
// half seen tilts either way) and the highest RSS in each half of the time
// after the window: a bound holds when the second is not above the first.
// ADMETRIC_BENCH_MEMPROFILE names a file for a profile of the live heap at
// the end of the load;
// ADMETRIC_BENCH_DUPLICATE_WINDOW sets STREAM_DUPLICATE_WINDOW, so that
// shorter runs (GOGC against GOGC, say) reach the plateau sooner; the RSS
// "when the duplicate window is full" follows it.
//
//	go test -run '^$' -bench Soak -benchtime 1x -timeout 120m ./cmd/admetric/
func BenchmarkSoak(b *testing.B) {
	seconds := envInt("ADMETRIC_BENCH_SECONDS", 5100)
	rate := envInt("ADMETRIC_BENCH_RATE", 3000)
	tuneGC(os.LookupEnv)
	for b.Loop() {
		env := testEnv(testDataDir(b))
		env["LOG_LEVEL"] = "error"
		if w := os.Getenv("ADMETRIC_BENCH_DUPLICATE_WINDOW"); w != "" {
			env["STREAM_DUPLICATE_WINDOW"] = w // a shorter window fills sooner
		}
		d := startBenchDaemon(b, env, roleAll)
		base := "http://" + d.httpAddr()
		const ads = 200
		post := poster(base, 256)
		for i := range ads {
			if st := post("/ads", fmt.Sprintf(`{"id":"soak-ad-%03d","title":"soak"}`, i), testToken); st != http.StatusCreated {
				b.Fatalf("create ad: %d", st)
			}
		}
		load := startOpenLoad(post, rate, 256, func(i int) (string, string) {
			path, extra := "/ads/impression", ""
			if i%4 == 0 {
				path, extra = "/ads/click", fmt.Sprintf(`,"playback_time":%d.%02d`, i%6, i%100)
			}
			return path, fmt.Sprintf(`{"event_id":"soak-%d","ad_id":"soak-ad-%03d","ip":"10.%d.%d.%d"%s}`,
				i, i*7%ads, i>>16&0xff, i>>8&0xff, i&0xff, extra)
		})

		type sample struct {
			at        time.Duration
			rss, heap float64 // MiB
			live      float64 // MiB: the heap the last collection left live
			events    int64
		}
		var samples []sample
		began := time.Now()
		for t := time.Duration(0); t <= time.Duration(seconds)*time.Second; t += 30 * time.Second {
			time.Sleep(time.Until(began.Add(t)))
			s := sample{at: t, rss: rssMiB(), heap: heapMiB(), live: liveHeapMiB(), events: load.accepted.Load()}
			samples = append(samples, s)
			b.Logf("soak %4.0fs: RSS %6.1f MiB, heap in use %6.1f MiB, live after the last GC %6.1f MiB, %d events accepted, %d failed, %d not offered",
				s.at.Seconds(), s.rss, s.heap, s.live, s.events, load.failed.Load(), load.behind.Load())
		}
		if path := os.Getenv("ADMETRIC_BENCH_MEMPROFILE"); path != "" {
			writeProfile(b, "heap", path)
		}
		load.Stop()
		at := func(d time.Duration) sample {
			for _, s := range samples {
				if s.at >= d {
					return s
				}
			}
			return samples[len(samples)-1]
		}
		window := at(d.cfg.DuplicateWindow + time.Minute)
		end := samples[len(samples)-1]
		b.ReportMetric(at(time.Minute).rss, "rss_1min_MiB")
		b.ReportMetric(window.rss, "rss_window_MiB")
		b.ReportMetric(end.rss, "rss_end_MiB")
		// With GOGC=100 the RSS swings between the live heap and twice it
		// from one sample to the next: two samples' difference is mostly
		// that swing, so the growth is the slope of a least-squares line
		// through every sample after the window, of the RSS and of the
		// live heap.
		var after []sample
		for _, s := range samples {
			if s.at >= window.at {
				after = append(after, s)
			}
		}
		if len(after) >= 3 {
			mins, rss, live := make([]float64, len(after)), make([]float64, len(after)), make([]float64, len(after))
			for i, s := range after {
				mins[i], rss[i], live[i] = s.at.Minutes(), s.rss, s.live
			}
			b.ReportMetric(slope(mins, rss), "rss_after_window_MiB/min")
			b.ReportMetric(slope(mins, live), "live_after_window_MiB/min")
			maxRSS := func(ss []sample) (m float64) {
				for _, s := range ss {
					m = max(m, s.rss)
				}
				return m
			}
			half := len(after) / 2
			b.ReportMetric(maxRSS(after[:half]), "rss_max_first_half_MiB")
			b.ReportMetric(maxRSS(after[half:]), "rss_max_second_half_MiB")
		}
		b.ReportMetric(end.live, "live_end_MiB")
		b.ReportMetric(float64(end.events)/end.at.Seconds(), "accepted_events/s")
	}
}

// slope is the slope of the least-squares line through the points (xs[i], ys[i]).
func slope(xs, ys []float64) float64 {
	n := float64(len(xs))
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx, sy = sx+xs[i], sy+ys[i]
		sxx, sxy = sxx+xs[i]*xs[i], sxy+xs[i]*ys[i]
	}
	return (n*sxy - sx*sy) / (n*sxx - sx*sx)
}

// writeProfile writes the runtime profile name ("heap", "allocs") of this
// process to path; a heap profile after a collection, as it shows live
// objects as of the last one.
func writeProfile(b *testing.B, name, path string) {
	b.Helper()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if name == "heap" {
		runtime.GC()
	}
	if err := pprof.Lookup(name).WriteTo(f, 0); err != nil {
		b.Fatal(err)
	}
}

// rssMiB is this process's resident set size.
func rssMiB() float64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
			return kb / 1024
		}
	}
	return 0
}

// liveHeapMiB is the Go heap the last collection left live (marked): what
// the process holds, without the garbage GOGC lets pile up before the next.
func liveHeapMiB() float64 {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	return float64(s[0].Value.Uint64()) / (1 << 20)
}

// heapMiB is the Go heap's bytes in live and not yet swept objects.
func heapMiB() float64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return float64(s[0].Value.Uint64()) / (1 << 20)
}
