package aggregator_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/admetric/admetric/aggregator"
	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/rollup"
	"github.com/admetric/admetric/store/storetest"
)

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

	w := runWriter(t, js, rollups)
	publish(t, js, clicks("ad-a", 40, now, "a")...)
	publish(t, js, clicks("ad-b", 5, old, "b")...)
	waitFolded(t, js, rollups, 1)
	w.Stop()

	for round, rewind := range []bool{false, true} {
		// A new consumer delivers the partition from the start again.
		if err := js.DeleteConsumer(ctx, store.EventStreamName(0), aggregator.RollupConsumerName(0)); err != nil {
			t.Fatal(err)
		}
		if rewind {
			rewindCheckpoints(t, rollups)
		}
		w := runWriter(t, js, rollups)
		publish(t, js, clicks("ad-a", 3, now, fmt.Sprintf("a-more-%d", round))...)
		// Every event of the partition was delivered again and acknowledged:
		// the replay is over and nothing more can come.
		waitFolded(t, js, rollups, 1)
		want := uint64(43 + 3*round)
		agg := sum(t, rollups, "ad-a", from, to)
		if agg.Clicks != want || agg.PlaybackMillis != want*1500 || agg.PlaybackCount != want {
			t.Errorf("rewind=%v: %d clicks, playback %d ms over %d clicks, want %d clicks, %d ms", rewind, agg.Clicks, agg.PlaybackMillis, agg.PlaybackCount, want, want*1500)
		}
		if got := agg.UniqueVisitors(); got != 40 {
			t.Errorf("rewind=%v: unique visitors %d, want 40 (the new clicks repeat visitors)", rewind, got)
		}
		if b := sum(t, rollups, "ad-b", old.Add(-time.Hour), to); b.Clicks != 5 {
			t.Errorf("rewind=%v: ad-b has %d clicks after the replay, want 5", rewind, b.Clicks)
		}
		// Which guard skipped the replayed events: the checkpoints (nothing
		// but the new events reaches the fold), or each rollup's MaxSeq.
		if !rewind && (w.Folded() != 3 || w.Duplicates() != 0) {
			t.Errorf("checkpoints intact: folded %v events (%v skipped by MaxSeq), want only the 3 new ones", w.Folded(), w.Duplicates())
		}
		if rewind && w.Duplicates() == 0 {
			t.Errorf("checkpoints rewound: no event was skipped by a rollup's MaxSeq (folded %v): the replay did not reach the fold", w.Folded())
		}
		w.Stop()
	}
}

// TestRollupWriterPoisonDoesNotBlock: a message that is not an event is skipped
// (acknowledged with its batch), and the events after it are counted.
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
	waitFolded(t, js, rollups, 1)
	if agg := sum(t, rollups, "ad-p", now.Add(-time.Hour), now.Add(time.Minute)); agg.Clicks != 2 {
		t.Fatalf("%d clicks, want 2", agg.Clicks)
	}
}

// nakAll gives msgs back to the consumer at once, as if the AckWait of the
// writer that holds them had passed: the test, not the clock, says when.
func nakAll(t *testing.T, msgs []jetstream.Msg) {
	t.Helper()
	for _, m := range msgs {
		if err := m.Nak(); err != nil {
			t.Fatal(err)
		}
	}
}

// fetchHeld fetches n events of partition 0 through js, as a writer in
// another process would (it takes the pin), and holds them unacknowledged.
func fetchHeld(t *testing.T, js jetstream.JetStream, n int) []jetstream.Msg {
	t.Helper()
	ctx := context.Background()
	cons, err := js.Consumer(ctx, store.EventStreamName(0), aggregator.RollupConsumerName(0))
	if err != nil {
		t.Fatal(err)
	}
	var out []jetstream.Msg
	for deadline := time.Now().Add(waitTimeout); len(out) < n && time.Now().Before(deadline); {
		b, err := cons.Fetch(n-len(out), jetstream.FetchMaxWait(time.Second), jetstream.FetchPriorityGroup("rollups"))
		if err != nil {
			t.Fatal(err)
		}
		for m := range b.Messages() {
			out = append(out, m)
		}
	}
	if len(out) != n {
		t.Fatalf("fetched %d events, want %d", len(out), n)
	}
	return out
}

// TestRollupWriterTakesOverFromADeadWriter: a writer that fetched events and
// died before committing them (it holds them unacknowledged) loses the
// partition after PinnedTTL; the next writer receives the events after them
// first, and must wait until the dead writer's come back (after AckWait;
// here forced by a nak) to fold everything once, in order. A writer that
// folded what it held without waiting would acknowledge the dead writer's
// events unseen (AckAll), and they would never be counted.
func TestRollupWriterTakesOverFromADeadWriter(t *testing.T) {
	js, rollups := setup(t)
	now := time.Now().UTC()
	from, to := now.Add(-time.Hour), now.Add(time.Minute)
	name := aggregator.RollupConsumerName(0)
	opts := aggregator.RollupWriterOptions{AckWait: time.Minute, PinnedTTL: time.Second, BatchSize: 50}

	// Create the consumer, then let "the dead writer" take the pin and 20 events.
	createConsumer(t, js, rollups, opts)
	publish(t, js, clicks("ad-t", 20, now, "t1")...)
	held := fetchHeld(t, js, 20)
	waitUnpinned(t, js, 0)

	// More events arrive; a live writer takes over and receives them while
	// the dead writer still holds the first 20.
	publish(t, js, clicks("ad-t", 10, now, "t2")...)
	live := runWriterWith(t, js, rollups, opts)
	waitConsumer(t, js, name, "the live writer holding events 21-30, the dead one 1-20", func(info *jetstream.ConsumerInfo) bool {
		return info.NumPending == 0 && info.Delivered.Stream == 30 && info.NumAckPending == 30 && info.NumRedelivered == 0
	})
	if agg := sum(t, rollups, "ad-t", from, to); agg.Clicks != 0 {
		t.Fatalf("the live writer folded %d clicks while the dead one held earlier events", agg.Clicks)
	}

	// The dead writer's events come back; everything is folded, once.
	nakAll(t, held)
	waitFolded(t, js, rollups, 1)
	if agg := sum(t, rollups, "ad-t", from, to); agg.Clicks != 30 || agg.PlaybackCount != 30 {
		t.Fatalf("%d clicks, playback count %d, want 30 and 30", agg.Clicks, agg.PlaybackCount)
	}
	if live.Folded() != 30 {
		t.Fatalf("the live writer folded %v events, want all 30", live.Folded())
	}
}

// TestRollupWritersShareAPartition: two writers of one partition, as in two
// processes. A is pinned and folds while B waits; A stops mid-batch, holding
// events it has not committed; B takes the partition over, receives the
// events published after that, waits until A's come back after AckWait, and
// folds them all. Every event is counted once.
func TestRollupWritersShareAPartition(t *testing.T) {
	js, rollups := setup(t)
	now := time.Now().UTC()
	from, to := now.Add(-time.Hour), now.Add(time.Minute)
	name := aggregator.RollupConsumerName(0)
	// A commits when it holds 100 events and otherwise lingers, even once it
	// has caught up: a smaller batch stays in its hands, uncommitted, until
	// it stops.
	a := runWriterWith(t, js, rollups, aggregator.RollupWriterOptions{AckWait: 2 * time.Second, PinnedTTL: time.Second, BatchSize: 100, Linger: time.Hour, CaughtUpWait: time.Hour})
	publish(t, js, clicks("ad-s", 100, now, "s1")...)
	waitFolded(t, js, rollups, 1)
	b := runWriterWith(t, js, rollups, aggregator.RollupWriterOptions{AckWait: 2 * time.Second, PinnedTTL: time.Second, BatchSize: 100})

	publish(t, js, clicks("ad-s", 50, now, "s2")...)
	waitConsumer(t, js, name, "A holding events 101-150", func(info *jetstream.ConsumerInfo) bool {
		return info.NumPending == 0 && info.NumAckPending == 50 && info.AckFloor.Stream == 100
	})
	a.Stop()
	publish(t, js, clicks("ad-s", 50, now, "s3")...)
	waitFolded(t, js, rollups, 1)
	if agg := sum(t, rollups, "ad-s", from, to); agg.Clicks != 200 {
		t.Fatalf("%d clicks, want 200", agg.Clicks)
	}
	// B folded what A held and what came after: the takeover was exercised.
	if a.Folded() != 100 || b.Folded() != 100 {
		t.Fatalf("A folded %v events and B %v, want 100 each", a.Folded(), b.Folded())
	}
}

// TestRollupWriterGateIgnoresWhatOthersAcked: writer C fetches events 1-100
// and stalls; writer B fetches 101-200 and dies; C's events come back and
// writer A takes over, receiving 1-100 again and 201-300; then C acks its
// 100. A must not count C's acked events as its own and fold 201-300 without
// B's 101-200 (acking those unseen): it drops what C acked and waits for
// B's events to come back, then folds 101-300.
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
	name := aggregator.RollupConsumerName(0)
	opts := aggregator.RollupWriterOptions{AckWait: time.Minute, PinnedTTL: time.Second, BatchSize: 200}
	createConsumer(t, js, rollups, opts)
	now := time.Now().UTC()
	publish(t, js, clicks("ad-c", 100, now, "c")...)
	publish(t, js, clicks("ad-b", 100, now, "b")...)
	publish(t, js, clicks("ad-a", 100, now, "a")...)

	cMsgs := fetchHeld(t, jsC, 100) // C: 1-100, stalls
	waitUnpinned(t, js, 0)
	bMsgs := fetchHeld(t, jsB, 100) // B: 101-200, dies
	waitUnpinned(t, js, 0)
	nakAll(t, cMsgs)                    // C's events come back, as after its AckWait
	runWriterWith(t, js, rollups, opts) // A
	waitConsumer(t, js, name, "A holding 1-100 again and 201-300", func(info *jetstream.ConsumerInfo) bool {
		return info.NumRedelivered == 100 && info.NumPending == 0 && info.Delivered.Stream == 300 && info.AckFloor.Stream == 0
	})
	// C, unaware that its events were given back, acks 1-100. Its client
	// refuses to ack a message it nakked, so the ack goes out as C's would
	// have: to the message's reply subject.
	if err := jsC.Conn().Publish(cMsgs[len(cMsgs)-1].Reply(), []byte("+ACK")); err != nil {
		t.Fatal(err)
	}
	waitConsumer(t, js, name, "C's ack", func(info *jetstream.ConsumerInfo) bool { return info.AckFloor.Stream >= 100 })
	nakAll(t, bMsgs) // B's events come back
	waitFolded(t, js, rollups, 1)
	from, to := now.Add(-time.Hour), now.Add(time.Minute)
	for ad, want := range map[string]uint64{"ad-a": 100, "ad-b": 100, "ad-c": 0} {
		if got := sum(t, rollups, ad, from, to).Clicks; got != want {
			t.Errorf("%s: %d clicks, want %d (ad-c's events were acked by C, which A must take as committed)", ad, got, want)
		}
	}
}

// TestRollupWritersBalance: two aggregator "processes" (each a Members and a
// writer per partition). The first takes every partition; once the second
// joins, the first hands partitions over until both fold events, and the
// totals stay exact.
func TestRollupWritersBalance(t *testing.T) {
	const partitions = 4
	srv := storetest.NATSPartitions(t, partitions)
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
		members, err := aggregator.NewMembers(gctx, js, id, 1, logger)
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
	folded := func(g group) float64 { return counter(t, g.reg, "admetric_rollup_events_folded_total") }

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
	waitFolded(t, js, rollups, partitions)
	if folded(a) != float64(total) {
		t.Fatalf("alone, the first aggregator folded %v events, want all %d", folded(a), total)
	}
	b := start("b")
	deadline := time.Now().Add(30 * time.Second)
	for round := 1; folded(b) == 0; round++ {
		if time.Now().After(deadline) {
			t.Fatalf("the second aggregator never got a partition (first folded %v)", folded(a))
		}
		feed(round)
		time.Sleep(200 * time.Millisecond)
	}
	waitFolded(t, js, rollups, partitions)
	t.Logf("first folded %v, second %v", folded(a), folded(b))
	var sumClicks uint64
	for ad := range 40 {
		sumClicks += sum(t, rollups, fmt.Sprintf("ad-%02d", ad), now.Add(-time.Hour), now.Add(time.Minute)).Clicks
	}
	if sumClicks != total {
		t.Fatalf("%d clicks in the rollups, want %d", sumClicks, total)
	}
}

// TestRollupWriterWaitsForADeliveryItMissed: a message the server delivers
// under the writer's pin that never reaches the writer (as when a fetch gives
// up before the server's answer, or the connection drops with deliveries in
// flight) must not be acknowledged unseen by the writer's next AckAll. Here
// another client pulls with the writer's pin ID and takes one event; the
// writer receives the events after it, sees the gap in the delivery
// sequence, and waits until the missed event comes back to fold everything.
func TestRollupWriterWaitsForADeliveryItMissed(t *testing.T) {
	js, rollups := setup(t)
	now := time.Now().UTC()
	from, to := now.Add(-time.Hour), now.Add(time.Minute)
	name := aggregator.RollupConsumerName(0)
	w := runWriterWith(t, js, rollups, aggregator.RollupWriterOptions{AckWait: time.Minute, PinnedTTL: 5 * time.Second, BatchSize: 5, Linger: 10 * time.Millisecond})

	// The writer folds a first batch and so verifies its pin.
	publish(t, js, clicks("ad-m", 5, now, "m1")...)
	waitFolded(t, js, rollups, 1)
	var pin string
	for _, g := range consumerInfo(t, js, name).PriorityGroups {
		pin = g.PinnedClientID
	}
	if pin == "" {
		t.Fatal("the writer holds no pin after folding")
	}

	// Another client pulls under that pin and keeps what it gets.
	nc := js.Conn()
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	req, _ := json.Marshal(map[string]any{"batch": 1, "expires": int64(time.Minute), "group": "rollups", "id": pin})
	if err := nc.PublishRequest("$JS.API.CONSUMER.MSG.NEXT."+store.EventStreamName(0)+"."+name, inbox, req); err != nil {
		t.Fatal(err)
	}
	// The writer's pull waiting before it takes what comes first; its next
	// one queues behind, so an event soon goes to the other client.
	var missed *nats.Msg
	for i := 0; missed == nil; i++ {
		if i == 50 {
			t.Fatal("the other client never received an event under the writer's pin")
		}
		publish(t, js, clicks("ad-m", 1, now, fmt.Sprintf("m2-%d", i))...)
		m, err := sub.NextMsg(200 * time.Millisecond)
		if errors.Is(err, nats.ErrTimeout) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if m.Reply == "" {
			t.Fatalf("the other client got a status instead of an event: %v", m.Header)
		}
		missed = m
	}
	published := lastSeq(t, js, 0)

	// The writer receives the events after the missed one, under its pin.
	publish(t, js, clicks("ad-m", 5, now, "m3")...)
	published += 5
	waitConsumer(t, js, name, "the writer holding events past the missed one", func(info *jetstream.ConsumerInfo) bool {
		return info.NumPending == 0 && info.Delivered.Stream == published
	})

	// The missed event comes back (as after AckWait); now all is folded once.
	if err := missed.Nak(); err != nil {
		t.Fatal(err)
	}
	waitFolded(t, js, rollups, 1)
	if agg := sum(t, rollups, "ad-m", from, to); agg.Clicks != published || w.Folded() != float64(published) {
		t.Fatalf("%d clicks in the rollups, %v events folded; want %d", agg.Clicks, w.Folded(), published)
	}
}

// TestRollupWriterWaitsForItsStream: a writer that cannot set up its
// consumer (here the event stream is not there yet, as while NATS starts)
// does not stop: it retries, counting each failure, and folds once it can.
func TestRollupWriterWaitsForItsStream(t *testing.T) {
	js, _ := storetest.JetStream(t, storetest.NATS(t))
	rollups, err := store.CreateOrUpdateRollups(context.Background(), js, testLayout, 1)
	if err != nil {
		t.Fatal(err)
	}
	w := runWriterWith(t, js, rollups, aggregator.RollupWriterOptions{})
	waitFor(t, func() bool { return counter(t, w.reg, "admetric_consumer_restarts_total") >= 2 },
		func() string { return "no retried consumer set-up counted" })

	storetest.EventStream(t, js, 1)
	publish(t, js, clicks("ad-w", 5, time.Now().UTC(), "w")...)
	waitFor(t, func() bool { return w.Folded() == 5 },
		func() string { return fmt.Sprintf("%v events folded, want 5", w.Folded()) })
}

// TestRollupWriterOutlivesItsConsumer: a rollup consumer deleted under a
// running writer (by an operator, or lost with a stream's state) is set up
// again by the writer, counted in admetric_consumer_restarts_total, and the
// events after it are counted once.
func TestRollupWriterOutlivesItsConsumer(t *testing.T) {
	js, rollups := setup(t)
	now := time.Now().UTC()
	w := runWriter(t, js, rollups)
	publish(t, js, clicks("ad-d", 10, now, "d1")...)
	waitFolded(t, js, rollups, 1)
	if err := js.DeleteConsumer(context.Background(), store.EventStreamName(0), aggregator.RollupConsumerName(0)); err != nil {
		t.Fatal(err)
	}
	publish(t, js, clicks("ad-d", 5, now, "d2")...)
	waitFor(t, func() bool { return counter(t, w.reg, "admetric_consumer_restarts_total") >= 1 },
		func() string { return "the writer never set its consumer up again" })
	waitFolded(t, js, rollups, 1)
	if got := sum(t, rollups, "ad-d", now.Add(-time.Hour), now.Add(time.Hour)).Clicks; got != 15 {
		t.Fatalf("ad-d has %d clicks, want 15", got)
	}
}

// TestRollupWriterCommitsOnceCaughtUp: a batch far from full is committed
// as soon as the writer holds everything its stream has, without waiting
// out Linger (an hour here): waiting longer would only add lag.
func TestRollupWriterCommitsOnceCaughtUp(t *testing.T) {
	js, rollups := setup(t)
	now := time.Now().UTC()
	runWriterWith(t, js, rollups, aggregator.RollupWriterOptions{BatchSize: 1000, Linger: time.Hour})
	publish(t, js, clicks("ad-c", 5, now, "c")...)
	waitFolded(t, js, rollups, 1)
	if got := sum(t, rollups, "ad-c", now.Add(-time.Hour), now.Add(time.Hour)).Clicks; got != 5 {
		t.Fatalf("ad-c has %d clicks, want 5", got)
	}
}

// A writer that gets nothing new after the minute bucket took a batch
// commits the hour and day buckets and acknowledges without waiting for
// CoarseEvery (here an hour).
func TestRollupWriterCommitsCoarseBucketsOnceQuiet(t *testing.T) {
	js, rollups := setup(t)
	ctx := context.Background()
	now := time.Now().UTC()
	runWriterWith(t, js, rollups, aggregator.RollupWriterOptions{BatchSize: 1000, CoarseEvery: time.Hour})
	publish(t, js, clicks("ad-q", 1, now, "q-first")...) // the first commit is to every bucket
	waitFolded(t, js, rollups, 1)
	publish(t, js, clicks("ad-q", 5, now, "q")...)
	last := lastSeq(t, js, 0)
	waitFor(t, func() bool {
		for _, u := range []rollup.Unit{rollup.Hour, rollup.Day} {
			if cp, _, err := rollups.Checkpoint(ctx, u, 0); err != nil || cp < last {
				return false
			}
		}
		return consumerInfo(t, js, aggregator.RollupConsumerName(0)).AckFloor.Stream == last
	}, func() string {
		info := consumerInfo(t, js, aggregator.RollupConsumerName(0))
		return fmt.Sprintf("the hour and day buckets never took the quiet batch up to %d (ack floor %d)", last, info.AckFloor.Stream)
	})
	for _, u := range []rollup.Unit{rollup.Hour, rollup.Day} {
		key, slot := u.Locate("ad-q", now)
		v, _, err := rollups.Load(ctx, u, key)
		if err != nil || v.Slots[slot] == nil || v.Slots[slot].Clicks != 6 {
			t.Errorf("%s: %+v (%v), want 6 clicks", u, v, err)
		}
	}
}

// TestRollupWriterCommitsCoarseBucketsLater: while events keep coming, the
// minute bucket takes each batch and the hour and day buckets take them
// every CoarseEvery; the events stay unacknowledged until every bucket has
// them, and a writer that stops commits them to all first.
func TestRollupWriterCommitsCoarseBucketsLater(t *testing.T) {
	js, rollups := setup(t)
	ctx := context.Background()
	now := time.Now().UTC()
	w := runWriterWith(t, js, rollups, aggregator.RollupWriterOptions{BatchSize: 1000, CoarseEvery: time.Hour, CoarseIdle: -1})
	publish(t, js, clicks("ad-k", 1, now, "k-first")...) // the first commit is to every bucket
	waitFolded(t, js, rollups, 1)
	publish(t, js, clicks("ad-k", 5, now, "k")...)
	last := lastSeq(t, js, 0)

	minuteKey, _ := rollup.Minute.Locate("ad-k", now)
	waitFor(t, func() bool {
		v, _, err := rollups.Load(ctx, rollup.Minute, minuteKey)
		return err == nil && v.MaxSeq == last
	}, func() string { return "the minute bucket never took the batch" })
	for _, u := range []rollup.Unit{rollup.Hour, rollup.Day} {
		if cp, _, err := rollups.Checkpoint(ctx, u, 0); err != nil || cp >= last {
			t.Errorf("%s checkpoint %d (%v) with the minute bucket just committed: want it below %d", u, cp, err, last)
		}
	}
	if info := consumerInfo(t, js, aggregator.RollupConsumerName(0)); info.AckFloor.Stream >= last || info.NumAckPending == 0 {
		t.Errorf("ack floor %d, %d pending: the batch was acknowledged before the hour and day buckets had it", info.AckFloor.Stream, info.NumAckPending)
	}

	w.Stop()
	waitFolded(t, js, rollups, 1)
	for _, u := range []rollup.Unit{rollup.Hour, rollup.Day} {
		key, slot := u.Locate("ad-k", now)
		v, _, err := rollups.Load(ctx, u, key)
		if err != nil || v.Slots[slot] == nil || v.Slots[slot].Clicks != 6 {
			t.Errorf("%s after the writer stopped: %+v (%v), want 6 clicks", u, v, err)
		}
	}
}
