package aggregator_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/admetric/admetric/aggregator"
	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/rollup"
	"github.com/admetric/admetric/store/storetest"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkDrain pre-publishes ADMETRIC_BENCH_EVENTS events (default 200,000;
// ADMETRIC_BENCH_ADS ads (default 1,000), 50,000 visitors, a third clicks,
// dated within the last minute) through the server's mapping onto
// ADMETRIC_BENCH_PARTITIONS partition streams (default 8, the service's), and
// the same events to one single stream besides. Then, in each iteration and
// in the same process, it drains them three ways: the single stream with one
// consumer that does no work but fetch 2,000 and ack once per batch (the old
// layout's ceiling), the partition streams with one such consumer each, and
// the partition streams with one rollup writer each into fresh buckets,
// without the invalid-traffic rules and with them. It reports the rates,
// the writers' share of each ceiling, and the rate with the rules over the
// rate without.
//
//	ADMETRIC_BENCH_EVENTS=1000000 go test -run '^$' -bench Drain -benchtime 1x ./aggregator/
func BenchmarkDrain(b *testing.B) {
	n := envInt("ADMETRIC_BENCH_EVENTS", 200_000)
	partitions := envInt("ADMETRIC_BENCH_PARTITIONS", 8)
	ads := envInt("ADMETRIC_BENCH_ADS", 1000)
	js, _ := storetest.JetStream(b, storetest.NATSPartitions(b, partitions))
	ctx := context.Background()
	storetest.EventStream(b, js, partitions)
	if err := store.CreateOrUpdateDecisionStream(ctx, js, time.Hour, 1); err != nil {
		b.Fatal(err)
	}
	const single, singleSubjects = "BENCH_SINGLE", "bench.single.>"
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: single, Subjects: []string{singleSubjects}, Storage: jetstream.FileStorage}); err != nil {
		b.Fatal(err)
	}
	// Live traffic is dated about when it is published; ADMETRIC_BENCH_SPREAD
	// (seconds, default 60) spreads event times further back to stress late data.
	spread := envInt("ADMETRIC_BENCH_SPREAD", 60)
	rng := rand.New(rand.NewPCG(1, 2))
	now := time.Now().UTC()
	for i := range n {
		ev := event.Event{
			EventID: "bench-" + strconv.Itoa(i), Type: event.Impression, AdID: fmt.Sprintf("ad-%05d", rng.IntN(ads)),
			Timestamp: now.Add(-time.Duration(rng.IntN(spread)) * time.Second), IP: fmt.Sprintf("10.1.%d.%d", rng.IntN(200), rng.IntN(250)),
			UserAgent: "bench",
		}
		if rng.IntN(3) == 0 {
			ev.Type, ev.PlaybackTime = event.Click, float64(rng.IntN(30_000))/1000
		}
		data, _ := ev.Marshal()
		if _, err := js.PublishAsync(ev.Subject(), data, jetstream.WithMsgID(ev.EventID)); err != nil {
			b.Fatal(err)
		}
		if _, err := js.PublishAsync("bench.single."+string(ev.Type)+"."+ev.AdID, data, jetstream.WithMsgID(ev.EventID)); err != nil {
			b.Fatal(err)
		}
		if i%1000 == 999 { // stay under the client's bound on acks in flight
			<-js.PublishAsyncComplete()
		}
	}
	<-js.PublishAsyncComplete()
	streams := make([]string, partitions)
	total := uint64(0)
	for p := range streams {
		streams[p] = store.EventStreamName(p)
		total += streamMsgs(b, js, streams[p])
	}
	if total != uint64(n) || streamMsgs(b, js, single) != uint64(n) {
		b.Fatalf("partition streams hold %d messages, the single stream %d, want %d each", total, streamMsgs(b, js, single), n)
	}

	bots, err := aggregator.LoadBots(nil)
	if err != nil {
		b.Fatal(err)
	}
	var ceiling, partitioned, writer, judged float64
	for iter := 0; b.Loop(); iter++ {
		ceiling = drainNoop(b, js, iter, []string{single})
		partitioned = drainNoop(b, js, iter, streams)
		writer = drainWriters(b, js, partitions, n, nil)
		judged = drainWriters(b, js, partitions, n, &aggregator.Rules{Bots: bots})
	}
	b.ReportMetric(ceiling, "single_noop_events/s")
	// The same no-op drain with one unfiltered consumer per partition stream,
	// as the writers read: what the partitioning itself costs or gains.
	b.ReportMetric(partitioned, "partitioned_noop_events/s")
	b.ReportMetric(writer, "writer_events/s")
	b.ReportMetric(writer/ceiling, "writer/single_noop")
	b.ReportMetric(writer/partitioned, "writer/partitioned_noop")
	// The invalid-traffic rules on (the service's default) against off.
	b.ReportMetric(judged, "writer_rules_events/s")
	b.ReportMetric(judged/writer, "rules/no_rules")
	if peak, err := peakRSS(); err == nil {
		// The whole test process: the embedded nats-server and the publisher too.
		b.ReportMetric(float64(peak)/(1<<20), "peak_rss_MiB")
	}
}

// streamMsgs is how many messages stream holds.
func streamMsgs(b *testing.B, js jetstream.JetStream, stream string) uint64 {
	b.Helper()
	s, err := js.Stream(context.Background(), stream)
	if err != nil {
		b.Fatal(err)
	}
	return s.CachedInfo().State.Msgs
}

// peakRSS reads the process's peak resident set size (VmHWM) from /proc.
func peakRSS() (uint64, error) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmHWM in /proc/self/status")
}

// drainNoop drains each of streams with one unfiltered consumer, each only
// acking once per batch, concurrently; it returns events per second over all
// of them.
func drainNoop(b *testing.B, js jetstream.JetStream, iter int, streams []string) float64 {
	b.Helper()
	ctx := context.Background()
	conses := make([]jetstream.Consumer, len(streams))
	lasts := make([]uint64, len(streams))
	want := 0
	for i, stream := range streams {
		cons, err := js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{
			Durable:   fmt.Sprintf("bench-noop-%d", iter),
			AckPolicy: jetstream.AckAllPolicy, MaxAckPending: 10_000,
		})
		if err != nil {
			b.Fatal(err)
		}
		conses[i] = cons
		info, err := js.Stream(ctx, stream)
		if err != nil {
			b.Fatal(err)
		}
		lasts[i] = info.CachedInfo().State.LastSeq
		want += int(info.CachedInfo().State.Msgs)
	}
	start := time.Now()
	counts := make([]int, len(streams))
	lastAt := make([]time.Time, len(streams))
	errs := make(chan error, len(streams))
	for i, cons := range conses {
		go func() {
			for {
				batch, err := cons.Fetch(2000, jetstream.FetchMaxWait(time.Second))
				if err != nil {
					errs <- err
					return
				}
				var lastMsg jetstream.Msg
				for msg := range batch.Messages() {
					lastMsg = msg
					counts[i]++
				}
				if lastMsg == nil { // the filter has nothing more
					errs <- nil
					return
				}
				lastAt[i] = time.Now()
				if err := lastMsg.Ack(); err != nil {
					errs <- err
					return
				}
				if meta, _ := lastMsg.Metadata(); meta.Sequence.Stream >= lasts[i] {
					errs <- nil
					return
				}
			}
		}()
	}
	for range conses {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	// A partition that ran dry waited out one empty fetch; that second is not
	// the server's cost, so the drain ends at the last delivery.
	total, end := 0, start
	for i, c := range counts {
		total += c
		if lastAt[i].After(end) {
			end = lastAt[i]
		}
	}
	if total != want {
		b.Fatalf("no-op consumers drained %d messages, want %d", total, want)
	}
	return float64(total) / end.Sub(start).Seconds()
}

// drainWriters drains the stream with one rollup writer per partition into
// fresh buckets, applying rules (nil: none), and returns events per second.
func drainWriters(b *testing.B, js jetstream.JetStream, partitions, n int, rules *aggregator.Rules) float64 {
	b.Helper()
	ctx := context.Background()
	for _, res := range testLayout {
		if err := js.DeleteKeyValue(ctx, res.Bucket); err != nil && !errors.Is(err, jetstream.ErrBucketNotFound) {
			b.Fatal(err)
		}
	}
	for p := range partitions {
		_ = js.DeleteConsumer(ctx, store.EventStreamName(p), aggregator.RollupConsumerName(p))
	}
	rollups, err := store.CreateOrUpdateRollups(ctx, js, testLayout, 1)
	if err != nil {
		b.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, partitions)
	reg := prometheus.NewRegistry()
	metrics := aggregator.NewMetrics(reg)
	defer func() {
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "admetric_rollup_commit_seconds" {
				h := mf.GetMetric()[0].GetHistogram()
				b.Logf("commits: %d taking %.1fs in all", h.GetSampleCount(), h.GetSampleSum())
			}
		}
	}()
	// ADMETRIC_BENCH_CPUPROFILE names a file for a CPU profile of the writers'
	// drain alone, without the publishing and the no-op drain around it.
	if path := os.Getenv("ADMETRIC_BENCH_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		defer func() {
			pprof.StopCPUProfile()
			_ = f.Close()
		}()
	}
	start := time.Now()
	for p := range partitions {
		w := aggregator.NewRollupWriter(js, rollups, slog.New(slog.DiscardHandler), metrics,
			aggregator.RollupWriterOptions{Partition: p, Partitions: partitions, BatchSize: envInt("ADMETRIC_BENCH_BATCH", 10_000), VisitorSalt: []byte("salt"), Rules: rules})
		go func() { done <- w.Run(runCtx) }()
	}
	defer func() {
		cancel()
		for range partitions {
			if err := <-done; err != nil {
				b.Error(err)
			}
		}
	}()
	for {
		finished := true
		for p := range partitions {
			cons, err := js.Consumer(ctx, store.EventStreamName(p), aggregator.RollupConsumerName(p))
			if err != nil {
				finished = false
				continue
			}
			ci, err := cons.Info(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if ci.NumPending > 0 || ci.NumAckPending > 0 || ci.AckFloor.Stream == 0 {
				finished = false
			}
		}
		if finished {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	elapsed := time.Since(start)
	if cp, _, err := rollups.Checkpoint(ctx, rollup.Day, 0); err != nil || cp == 0 {
		b.Fatalf("partition 0 day checkpoint %d (%v) after the drain", cp, err)
	}
	return float64(n) / elapsed.Seconds()
}
