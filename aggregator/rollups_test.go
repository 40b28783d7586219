package aggregator_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/admetric/admetric/aggregator"
	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/rollup"
	"github.com/admetric/admetric/store/rollup/rolluptest"
	"github.com/admetric/admetric/store/storetest"
)

var testLayout = rolluptest.Layout

func setup(t *testing.T) (jetstream.JetStream, *store.Rollups) {
	t.Helper()
	js, _ := storetest.JetStream(t, storetest.NATS(t))
	ctx := context.Background()
	storetest.EventStream(t, js, 1)
	if err := store.CreateOrUpdateDeadLetterStream(ctx, js, time.Hour, 1); err != nil {
		t.Fatal(err)
	}
	rollups, err := store.CreateOrUpdateRollups(ctx, js, testLayout, 1)
	if err != nil {
		t.Fatal(err)
	}
	return js, rollups
}

func publish(t *testing.T, js jetstream.JetStream, evs ...event.Event) {
	t.Helper()
	for i := range evs {
		data, err := evs[i].Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.Publish(context.Background(), evs[i].Subject(), data, jetstream.WithMsgID(evs[i].EventID)); err != nil {
			t.Fatal(err)
		}
	}
}

// runWriter runs a rollup writer of partition 0 until the returned stop is called.
func runWriter(t *testing.T, js jetstream.JetStream, rollups *store.Rollups) (stop func()) {
	t.Helper()
	return runWriterWith(t, js, rollups, aggregator.RollupWriterOptions{})
}

func runWriterWith(t *testing.T, js jetstream.JetStream, rollups *store.Rollups, opts aggregator.RollupWriterOptions) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	opts.VisitorSalt = []byte("salt")
	if opts.BatchSize == 0 {
		opts.BatchSize = 7
	}
	w := aggregator.NewRollupWriter(js, rollups, slog.New(slog.DiscardHandler), aggregator.NewMetrics(prometheus.NewRegistry()), opts)
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once bool
	stop = func() {
		if once {
			return
		}
		once = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("writer: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

func sum(t *testing.T, rollups *store.Rollups, adID string, from, to time.Time) *rollup.Aggregate {
	t.Helper()
	tiling, err := rollups.Layout().Tile(from, to, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	agg, err := rollups.Sum(context.Background(), adID, tiling.Cells)
	if err != nil {
		t.Fatal(err)
	}
	return agg
}

func waitClicks(t *testing.T, rollups *store.Rollups, adID string, from, to time.Time, want uint64) *rollup.Aggregate {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		agg := sum(t, rollups, adID, from, to)
		if agg.Clicks == want {
			return agg
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d clicks, want %d", adID, agg.Clicks, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func clicks(adID string, n int, at time.Time, idPrefix string) []event.Event {
	evs := make([]event.Event, n)
	for i := range evs {
		evs[i] = event.Event{
			EventID: fmt.Sprintf("%s-%d", idPrefix, i), Type: event.Click, AdID: adID,
			Timestamp: at, IP: fmt.Sprintf("10.0.%d.%d", i/250, i%250), UserAgent: "ua", PlaybackTime: 1.5,
		}
	}
	return evs
}

// TestRollupWriterReplayCountsOnce replays the whole partition to a new writer,
// as after a crash between commit and ack: first with the checkpoints intact
// (events at or below them are skipped), then with the checkpoints rewound to
// zero (each rollup's MaxSeq skips what it holds). Only new events are added.
func TestRollupWriterReplayCountsOnce(t *testing.T) {
	js, rollups := setup(t)
	now := time.Now().UTC()
	from, to := now.Add(-2*time.Hour), now.Add(time.Minute)
	old := now.Add(-5 * 24 * time.Hour) // beyond the minute retention: hour and day only
	ctx := context.Background()

	stop := runWriter(t, js, rollups)
	publish(t, js, clicks("ad-a", 40, now, "a")...)
	publish(t, js, clicks("ad-b", 5, old, "b")...)
	waitClicks(t, rollups, "ad-a", from, to, 40)
	waitClicks(t, rollups, "ad-b", old.Add(-time.Hour), to, 5)
	stop()

	for round, rewind := range []bool{false, true} {
		// A new consumer delivers the partition from the start again.
		if err := js.DeleteConsumer(ctx, store.StreamName, aggregator.RollupConsumerName(0)); err != nil {
			t.Fatal(err)
		}
		if rewind {
			for _, res := range testLayout {
				_, rev, err := rollups.Checkpoint(ctx, res.Unit, 0)
				if err != nil {
					t.Fatal(err)
				}
				if _, _, err := rollups.Commit(ctx, res.Unit, 0, nil, 0, rev); err != nil {
					t.Fatal(err)
				}
			}
		}
		stop := runWriter(t, js, rollups)
		publish(t, js, clicks("ad-a", 3, now, fmt.Sprintf("a-more-%d", round))...)
		want := uint64(43 + 3*round)
		agg := waitClicks(t, rollups, "ad-a", from, to, want)
		if agg.PlaybackMillis != want*1500 || agg.PlaybackCount != want {
			t.Errorf("rewind=%v: playback %d ms over %d clicks, want %d over %d", rewind, agg.PlaybackMillis, agg.PlaybackCount, want*1500, want)
		}
		if got := agg.UniqueVisitors(); got != 40 {
			t.Errorf("rewind=%v: unique visitors %d, want 40 (the new clicks repeat visitors)", rewind, got)
		}
		// The new events are the last in the partition: once they are counted,
		// the replay of everything before them is done.
		if b := sum(t, rollups, "ad-b", old.Add(-time.Hour), to); b.Clicks != 5 {
			t.Errorf("rewind=%v: ad-b has %d clicks after the replay, want 5", rewind, b.Clicks)
		}
		if a := sum(t, rollups, "ad-a", from, to); a.Clicks != want {
			t.Errorf("rewind=%v: ad-a has %d clicks after the replay, want %d", rewind, a.Clicks, want)
		}
		stop()
	}
}

// TestRollupWriterPoisonDoesNotBlock: a message that is not an event is skipped,
// and the events after it are counted.
func TestRollupWriterPoisonDoesNotBlock(t *testing.T) {
	js, rollups := setup(t)
	now := time.Now().UTC()
	runWriter(t, js, rollups)
	ctx := context.Background()
	for _, bad := range []struct{ subject, body string }{
		{"ads.events.click.ad-p", `not json`},
		{"ads.events.click.ad-p", `{"ad_id":"other-ad"}`},
		{"ads.events.bogus.ad-p", `{}`},
		{"ads.events.click.ad-p", `{"playback_time":-3}`},
	} {
		if _, err := js.Publish(ctx, bad.subject, []byte(bad.body)); err != nil {
			t.Fatal(err)
		}
	}
	publish(t, js, clicks("ad-p", 2, now, "p")...)
	waitClicks(t, rollups, "ad-p", now.Add(-time.Hour), now.Add(time.Minute), 2)
}

// TestRollupWriterTakesOverFromADeadWriter: a writer that fetched events and
// died before committing them (it holds them unacknowledged) loses the
// partition after PinnedTTL; the next writer waits for those events to come
// back (AckWait) and folds everything once, in order.
func TestRollupWriterTakesOverFromADeadWriter(t *testing.T) {
	js, rollups := setup(t)
	now := time.Now().UTC()
	ctx := context.Background()
	opts := aggregator.RollupWriterOptions{AckWait: 2 * time.Second, PinnedTTL: time.Second, BatchSize: 50}

	// Create the consumer, then let "the dead writer" take the pin and 20 events.
	stop := runWriterWith(t, js, rollups, opts)
	var cons jetstream.Consumer
	for deadline := time.Now().Add(10 * time.Second); cons == nil; {
		c, err := js.Consumer(ctx, store.StreamName, aggregator.RollupConsumerName(0))
		if err == nil {
			cons = c
		} else if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	time.Sleep(opts.PinnedTTL + 500*time.Millisecond) // the stopped writer's pin lapses
	publish(t, js, clicks("ad-t", 20, now, "t1")...)
	batch, err := cons.Fetch(20, jetstream.FetchMaxWait(time.Second), jetstream.FetchPriorityGroup("rollups"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for range batch.Messages() {
		n++ // held, never acknowledged
	}
	if n != 20 {
		t.Fatalf("the dead writer fetched %d events, want 20", n)
	}

	// More events arrive; a live writer takes over and must count all 30 once.
	publish(t, js, clicks("ad-t", 10, now, "t2")...)
	runWriterWith(t, js, rollups, opts)
	agg := waitClicks(t, rollups, "ad-t", now.Add(-time.Hour), now.Add(time.Minute), 30)
	if agg.PlaybackCount != 30 {
		t.Fatalf("playback count %d, want 30", agg.PlaybackCount)
	}
	time.Sleep(3 * time.Second) // past another AckWait: nothing is counted twice
	if agg := sum(t, rollups, "ad-t", now.Add(-time.Hour), now.Add(time.Minute)); agg.Clicks != 30 {
		t.Fatalf("%d clicks after settling, want 30", agg.Clicks)
	}
}

// TestRollupWritersShareAPartition: two writers of one partition, as in two
// processes; the pinned one stops mid-stream and the other finishes. Every
// event is counted once.
func TestRollupWritersShareAPartition(t *testing.T) {
	js, rollups := setup(t)
	now := time.Now().UTC()
	opts := aggregator.RollupWriterOptions{AckWait: 2 * time.Second, PinnedTTL: time.Second}
	stopA := runWriterWith(t, js, rollups, opts)
	runWriterWith(t, js, rollups, opts)
	publish(t, js, clicks("ad-s", 100, now, "s1")...)
	waitClicks(t, rollups, "ad-s", now.Add(-time.Hour), now.Add(time.Minute), 100)
	stopA()
	publish(t, js, clicks("ad-s", 100, now, "s2")...)
	waitClicks(t, rollups, "ad-s", now.Add(-time.Hour), now.Add(time.Minute), 200)
	time.Sleep(3 * time.Second)
	if agg := sum(t, rollups, "ad-s", now.Add(-time.Hour), now.Add(time.Minute)); agg.Clicks != 200 {
		t.Fatalf("%d clicks after settling, want 200", agg.Clicks)
	}
}

// TestRollupWriterGateIgnoresWhatOthersAcked: writer C fetches events 1-100
// and stalls; writer B fetches 101-200 and dies; writer A takes over, receives
// 1-100 again and 201-300, and then C acks its 100. A must not count C's acked
// events as its own and fold 201-300 without B's 101-200 (acking those unseen):
// it waits for B's events to come back and folds them all.
func TestRollupWriterGateIgnoresWhatOthersAcked(t *testing.T) {
	ctx := context.Background()
	srv := storetest.NATS(t)
	js, _ := storetest.JetStream(t, srv)
	jsC, _ := storetest.JetStream(t, srv)
	jsB, _ := storetest.JetStream(t, srv)
	storetest.EventStream(t, js, 1)
	rollups, err := store.CreateOrUpdateRollups(ctx, js, testLayout, 1)
	if err != nil {
		t.Fatal(err)
	}
	opts := aggregator.RollupWriterOptions{AckWait: 3 * time.Second, PinnedTTL: time.Second, BatchSize: 200}
	// Create the consumer as a writer would, then stop that writer.
	stop := runWriterWith(t, js, rollups, opts)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := js.Consumer(ctx, store.StreamName, aggregator.RollupConsumerName(0)); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatal(err)
		}
	}
	stop()
	time.Sleep(opts.PinnedTTL + 300*time.Millisecond)
	now := time.Now().UTC()
	publish(t, js, clicks("ad-c", 100, now, "c")...)
	publish(t, js, clicks("ad-b", 100, now, "b")...)
	publish(t, js, clicks("ad-a", 100, now, "a")...)

	fetch := func(js jetstream.JetStream) []jetstream.Msg {
		t.Helper()
		c, err := js.Consumer(ctx, store.StreamName, aggregator.RollupConsumerName(0))
		if err != nil {
			t.Fatal(err)
		}
		b, err := c.Fetch(100, jetstream.FetchMaxWait(time.Second), jetstream.FetchPriorityGroup("rollups"))
		if err != nil {
			t.Fatal(err)
		}
		var out []jetstream.Msg
		for m := range b.Messages() {
			out = append(out, m)
		}
		if len(out) != 100 {
			t.Fatalf("fetched %d events, want 100", len(out))
		}
		return out
	}
	t0 := time.Now()
	cMsgs := fetch(jsC) // C: 1-100, stalls
	time.Sleep(opts.PinnedTTL + 300*time.Millisecond)
	fetch(jsB) // B: 101-200, dies
	time.Sleep(time.Until(t0.Add(opts.AckWait + 100*time.Millisecond)))
	runWriterWith(t, js, rollups, opts) // A
	time.Sleep(300 * time.Millisecond)
	if err := cMsgs[len(cMsgs)-1].DoubleAck(ctx); err != nil { // C acks 1-100
		t.Fatal(err)
	}
	from, to := now.Add(-time.Hour), now.Add(time.Minute)
	waitClicks(t, rollups, "ad-b", from, to, 100)
	waitClicks(t, rollups, "ad-a", from, to, 100)
}

// TestRollupWritersBalance: two aggregator "processes" (each a Members and a
// writer per partition). The first takes every partition; once the second
// joins, the first hands partitions over until both fold events, and the
// totals stay exact.
func TestRollupWritersBalance(t *testing.T) {
	const partitions = 4
	srv := storetest.NATS(t)
	js, _ := storetest.JetStream(t, srv)
	ctx := context.Background()
	storetest.EventStream(t, js, partitions)
	rollups, err := store.CreateOrUpdateRollups(ctx, js, testLayout, 1)
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.DiscardHandler)
	type group struct {
		reg *prometheus.Registry
	}
	start := func(id string) group {
		t.Helper()
		gctx, cancel := context.WithCancel(ctx)
		members, err := aggregator.NewMembers(gctx, js, id, logger)
		if err != nil {
			t.Fatal(err)
		}
		reg := prometheus.NewRegistry()
		metrics := aggregator.NewMetrics(reg)
		done := make(chan error, partitions+1)
		go func() { done <- members.Run(gctx) }()
		for p := range partitions {
			w := aggregator.NewRollupWriter(js, rollups, logger, metrics, aggregator.RollupWriterOptions{
				Partition: p, Partitions: partitions, Members: members, PinnedTTL: time.Second, AckWait: 3 * time.Second,
				BatchSize: 50, Linger: 20 * time.Millisecond, VisitorSalt: []byte("salt"),
			})
			go func() { done <- w.Run(gctx) }()
		}
		t.Cleanup(func() {
			cancel()
			for range partitions + 1 {
				if err := <-done; err != nil {
					t.Errorf("%s: %v", id, err)
				}
			}
		})
		return group{reg: reg}
	}
	folded := func(g group) float64 {
		mfs, _ := g.reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "admetric_rollup_events_folded_total" {
				return mf.GetMetric()[0].GetCounter().GetValue()
			}
		}
		return 0
	}

	now := time.Now().UTC()
	var total uint64
	feed := func(round int) {
		for ad := range 40 {
			publish(t, js, clicks(fmt.Sprintf("ad-%02d", ad), 2, now, fmt.Sprintf("r%d-%d", round, ad))...)
			total += 2
		}
	}
	a := start("a")
	feed(0)
	b := start("b")
	deadline := time.Now().Add(30 * time.Second)
	for round := 1; folded(b) == 0; round++ {
		if time.Now().After(deadline) {
			t.Fatalf("the second aggregator never got a partition (first folded %v)", folded(a))
		}
		feed(round)
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("first folded %v, second %v", folded(a), folded(b))
	var sumClicks uint64
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		sumClicks = 0
		for ad := range 40 {
			sumClicks += sum(t, rollups, fmt.Sprintf("ad-%02d", ad), now.Add(-time.Hour), now.Add(time.Minute)).Clicks
		}
		if sumClicks == total || time.Now().After(deadline) {
			break
		}
	}
	if sumClicks != total {
		t.Fatalf("%d clicks in the rollups, want %d", sumClicks, total)
	}
}
