package aggregator_test

// Helpers shared by the tests of this package: NATS and the rollup buckets,
// writers and archivers run until the test ends, and the waits. A test waits
// on the state it needs (a consumer with nothing pending and its ack floor at
// the last sequence, the checkpoints, a row count, a pin that lapsed), never
// on a sleep.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/uptrace/bun"

	"github.com/admetric/admetric/aggregator"
	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/postgres"
	"github.com/admetric/admetric/store/rollup"
	"github.com/admetric/admetric/store/rollup/rolluptest"
	"github.com/admetric/admetric/store/storetest"
)

var testLayout = rolluptest.Layout

// waitTimeout bounds every wait on state: generous, since the machine may be
// busy with other tests; a wait returns as soon as its condition holds.
const waitTimeout = 30 * time.Second

// setup starts NATS with a one-partition event stream, the dead-letter
// stream and the rollup buckets.
func setup(t *testing.T) (jetstream.JetStream, *store.Rollups) {
	t.Helper()
	js, rollups := setupWithoutEventStreams(t, 1)
	storetest.EventStream(t, js, 1)
	return js, rollups
}

// setupWithoutEventStreams starts NATS mapping events onto partitions
// partition streams, and makes the dead-letter and decision streams and the
// rollup buckets, but not the event streams.
func setupWithoutEventStreams(t *testing.T, partitions int) (jetstream.JetStream, *store.Rollups) {
	t.Helper()
	js, _ := storetest.JetStream(t, storetest.NATSPartitions(t, partitions))
	ctx := context.Background()
	if err := store.CreateOrUpdateDeadLetterStream(ctx, js, time.Hour, 1); err != nil {
		t.Fatal(err)
	}
	if err := store.CreateOrUpdateDecisionStream(ctx, js, time.Hour, 1); err != nil {
		t.Fatal(err)
	}
	rollups, err := store.CreateOrUpdateRollups(ctx, js, testLayout, 1)
	if err != nil {
		t.Fatal(err)
	}
	return js, rollups
}

// publish publishes evs with their IDs as Nats-Msg-Id and waits for each ack.
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

// testWriter is a rollup writer running in the background.
type testWriter struct {
	t    *testing.T
	reg  *prometheus.Registry
	stop func()
}

// Stop cancels the writer and waits until Run returned; it may be called
// more than once.
func (w *testWriter) Stop() { w.stop() }

// Folded is how many events the writer has folded and committed.
func (w *testWriter) Folded() float64 {
	return counter(w.t, w.reg, "admetric_rollup_events_folded_total")
}

// Duplicates is how many event-resolution pairs the writer skipped because
// the rollup already held them.
func (w *testWriter) Duplicates() float64 {
	return counter(w.t, w.reg, "admetric_rollup_duplicates_skipped_total")
}

func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			var n float64
			for _, m := range mf.GetMetric() {
				n += m.GetCounter().GetValue()
			}
			return n
		}
	}
	return 0
}

// runWriter runs a rollup writer of partition 0 until it is stopped or the
// test ends.
func runWriter(t *testing.T, js jetstream.JetStream, rollups *store.Rollups) *testWriter {
	t.Helper()
	return runWriterWith(t, js, rollups, aggregator.RollupWriterOptions{})
}

func runWriterWith(t *testing.T, js jetstream.JetStream, rollups *store.Rollups, opts aggregator.RollupWriterOptions) *testWriter {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	opts.VisitorSalt = []byte("salt")
	if opts.BatchSize == 0 {
		opts.BatchSize = 7
	}
	reg := prometheus.NewRegistry()
	w := aggregator.NewRollupWriter(js, rollups, slog.New(slog.DiscardHandler), aggregator.NewMetrics(reg), opts)
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once bool
	stop := func() {
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
	return &testWriter{t: t, reg: reg, stop: stop}
}

// runArchiver runs an archiver into db until the test ends, and returns the
// registry of its metrics.
func runArchiver(t *testing.T, js jetstream.JetStream, db *bun.DB, opts aggregator.ArchiverOptions) *prometheus.Registry {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	reg := prometheus.NewRegistry()
	a := aggregator.NewArchiver(js, postgres.NewArchive(db), slog.New(slog.DiscardHandler), aggregator.NewMetrics(reg), opts)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("archiver: %v", err)
		}
	})
	return reg
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

// waitFor polls cond every few milliseconds until it holds, and fails the
// test with what describe says when it has not held within waitTimeout.
func waitFor(t *testing.T, cond func() bool, describe func() string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s: %s", waitTimeout, describe())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func countRows(t *testing.T, db *bun.DB) int {
	t.Helper()
	n, err := db.NewSelect().Model((*postgres.ArchivedEvent)(nil)).Count(context.Background())
	if err != nil {
		return -1 // the server is down; the caller waits
	}
	return int(n)
}

func waitRows(t *testing.T, db *bun.DB, want int) {
	t.Helper()
	waitFor(t, func() bool { return countRows(t, db) == want },
		func() string { return fmt.Sprintf("archive holds %d rows, want %d", countRows(t, db), want) })
}

// consumerInfo returns the durable consumer's state; nil while it does not
// exist yet.
func consumerInfo(t *testing.T, js jetstream.JetStream, name string) *jetstream.ConsumerInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := js.Consumer(ctx, store.EventStreamName(streamOf(name)), name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// waitConsumer waits until the durable consumer exists and cond holds of its
// state, and returns that state.
func waitConsumer(t *testing.T, js jetstream.JetStream, name, what string, cond func(*jetstream.ConsumerInfo) bool) *jetstream.ConsumerInfo {
	t.Helper()
	var info *jetstream.ConsumerInfo
	waitFor(t, func() bool {
		info = consumerInfo(t, js, name)
		return info != nil && cond(info)
	}, func() string {
		if info == nil {
			return fmt.Sprintf("consumer %s does not exist (waiting for %s)", name, what)
		}
		return fmt.Sprintf("consumer %s: want %s; pending %d, ack pending %d, redelivered %d, delivered %d, ack floor %d",
			name, what, info.NumPending, info.NumAckPending, info.NumRedelivered, info.Delivered.Stream, info.AckFloor.Stream)
	})
	return info
}

// lastSeq is the sequence of the last message of partition p's stream, or
// 0 when there is none.
func lastSeq(t *testing.T, js jetstream.JetStream, p int) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, store.EventStreamName(p))
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// streamOf is the partition stream a test's consumer reads: rollups-p<N>
// reads partition N's; every other consumer of these tests, partition 0's.
func streamOf(name string) int {
	if n, ok := strings.CutPrefix(name, "rollups-p"); ok {
		if p, err := strconv.Atoi(n); err == nil {
			return p
		}
	}
	return 0
}

// waitConsumed waits until the durable consumer has nothing pending, nothing
// awaiting an ack, and its ack floor at the last sequence of the stream
// among the subjects it reads: every event published so far is acknowledged
// and none can come back. It returns that sequence.
func waitConsumed(t *testing.T, js jetstream.JetStream, name string) uint64 {
	t.Helper()
	var last uint64
	waitConsumer(t, js, name, "everything acknowledged", func(info *jetstream.ConsumerInfo) bool {
		last = lastSeq(t, js, streamOf(name))
		return info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Stream == last
	})
	return last
}

// waitFolded waits until the rollup writers of partitions 0..partitions-1
// have acknowledged every event of their partition (waitConsumed) and every
// bucket's checkpoint of each partition is at its last sequence: nothing is
// in flight, so the rollups are final until more is published.
func waitFolded(t *testing.T, js jetstream.JetStream, rollups *store.Rollups, partitions int) {
	t.Helper()
	ctx := context.Background()
	for p := range partitions {
		last := waitConsumed(t, js, aggregator.RollupConsumerName(p))
		for _, res := range rollups.Layout() {
			// A writer commits its checkpoints before it acknowledges.
			cp, _, err := rollups.Checkpoint(ctx, res.Unit, p)
			if err != nil {
				t.Fatal(err)
			}
			if cp < last {
				t.Fatalf("partition %d: %s checkpoint %d below the acknowledged sequence %d", p, res.Unit, cp, last)
			}
		}
	}
}

// waitUnpinned waits until no client holds partition p's rollup consumer
// pinned: the pinned one stopped fetching PinnedTTL ago.
func waitUnpinned(t *testing.T, js jetstream.JetStream, p int) {
	t.Helper()
	waitConsumer(t, js, aggregator.RollupConsumerName(p), "no pinned client", func(info *jetstream.ConsumerInfo) bool {
		for _, g := range info.PriorityGroups {
			if g.PinnedClientID != "" {
				return false
			}
		}
		return true
	})
}

// createConsumer creates partition 0's rollup consumer as a writer with opts
// does, and stops that writer: with nothing delivered it held no pin, so the
// next client to pull takes the partition.
func createConsumer(t *testing.T, js jetstream.JetStream, rollups *store.Rollups, opts aggregator.RollupWriterOptions) {
	t.Helper()
	w := runWriterWith(t, js, rollups, opts)
	waitConsumer(t, js, aggregator.RollupConsumerName(0), "the consumer", func(*jetstream.ConsumerInfo) bool { return true })
	w.Stop()
	waitUnpinned(t, js, 0)
}

// rewindCheckpoints sets partition 0's checkpoint in every bucket back to
// zero, as if no commit had reached it.
func rewindCheckpoints(t *testing.T, rollups *store.Rollups) {
	t.Helper()
	ctx := context.Background()
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
