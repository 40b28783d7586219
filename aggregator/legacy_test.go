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
	"github.com/admetric/admetric/store/postgres"
	"github.com/admetric/admetric/store/storetest"
)

// TestLegacyStreamDrainAndSwitch: the switch from the single stream to the
// partition streams, as an upgrade meets it. Writers and the archiver have
// folded and archived part of the legacy stream (phase 1) and stopped; more
// events reach it (phase 2); the streams are switched (the legacy stream
// sealed, the partition streams made past its last sequence) and events
// go on to the partition streams (phase 3). Aggregation started again drains
// the legacy stream, deletes it, and goes on with the partition streams:
// every event counted and archived exactly once.
func TestLegacyStreamDrainAndSwitch(t *testing.T) {
	const partitions = 3
	ctx := context.Background()
	js, rollups := setupWithoutEventStreams(t, partitions)
	storetest.LegacyEventStream(t, js, partitions)
	db := storetest.DB(t, storetest.Postgres(t))
	now := time.Now().UTC()
	ads := []string{"ad-a", "ad-b", "ad-c", "ad-d", "ad-e", "ad-f"}
	want := map[string]uint64{}
	published := 0
	feed := func(phase string, n int) {
		t.Helper()
		for _, ad := range ads {
			publish(t, js, clicks(ad, n, now, phase+"-"+ad)...)
			want[ad] += uint64(n)
			published += n
		}
	}
	run := func() (stop func()) {
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, partitions+1)
		metrics := aggregator.NewMetrics(prometheus.NewRegistry())
		logger := slog.New(slog.DiscardHandler)
		for p := range partitions {
			w := aggregator.NewRollupWriter(js, rollups, logger, metrics, aggregator.RollupWriterOptions{
				Partition: p, Partitions: partitions, BatchSize: 20, Linger: 10 * time.Millisecond, VisitorSalt: []byte("salt"),
			})
			go func() { done <- w.Run(rctx) }()
		}
		archiver := aggregator.NewArchiver(js, postgres.NewArchive(db), logger, metrics, aggregator.ArchiverOptions{Partitions: partitions, BatchSize: 25, AckWait: 2 * time.Second})
		go func() { done <- archiver.Run(rctx) }()
		stopped := false
		stop = func() {
			if stopped {
				return
			}
			stopped = true
			cancel()
			for range partitions + 1 {
				if err := <-done; err != nil {
					t.Error(err)
				}
			}
		}
		t.Cleanup(stop)
		return stop
	}
	total := func() uint64 {
		var n uint64
		for _, ad := range ads {
			n += sum(t, rollups, ad, now.Add(-time.Hour), now.Add(time.Hour)).Clicks
		}
		return n
	}

	// Phase 1: the legacy layout, partly folded and archived.
	feed("one", 30)
	stop := run()
	waitFor(t, func() bool { return total() == uint64(published) && countRows(t, db) == published },
		func() string {
			return fmt.Sprintf("phase 1: %d counted, %d archived, want %d", total(), countRows(t, db), published)
		})
	stop()
	// Phase 2: more events reach the legacy stream while nothing aggregates.
	feed("two", 20)
	legacyLast := legacyLastSeq(t, js)
	// Phase 3: the switch, then events on the partition streams.
	if err := store.CreateOrUpdateEventStreams(ctx, js, store.StreamOptions{MaxAge: time.Hour, Duplicates: time.Minute, Replicas: 1, Partitions: partitions}); err != nil {
		t.Fatal(err)
	}
	feed("three", 10)
	for p := range partitions {
		if s, err := js.Stream(ctx, store.EventStreamName(p)); err != nil || s.CachedInfo().State.FirstSeq <= legacyLast {
			t.Fatalf("partition stream %d: %v; want its first sequence past the legacy stream's last, %d", p, err, legacyLast)
		}
	}

	run()
	waitFor(t, func() bool {
		exists, err := store.LegacyStreamExists(ctx, js)
		return err == nil && !exists
	}, func() string { return "the legacy stream was never retired" })
	waitFolded(t, js, rollups, partitions)
	waitRows(t, db, published)
	for _, ad := range ads {
		if got := sum(t, rollups, ad, now.Add(-time.Hour), now.Add(time.Hour)).Clicks; got != want[ad] {
			t.Errorf("%s: %d clicks, want %d", ad, got, want[ad])
		}
	}
	for p := range partitions {
		waitFor(t, func() bool { return archiveDone(t, js, p) },
			func() string { return fmt.Sprintf("partition %d's archive consumer never acknowledged everything", p) })
	}
	if n := countRows(t, db); n != published {
		t.Errorf("the archive holds %d rows, want %d", n, published)
	}
	// One more event after the switch is counted once, in its partition.
	publish(t, js, event.Event{EventID: "after", Type: event.Click, AdID: "ad-a", Timestamp: now, IP: "10.9.9.9", UserAgent: "ua", PlaybackTime: 1})
	want["ad-a"]++
	waitFor(t, func() bool {
		return sum(t, rollups, "ad-a", now.Add(-time.Hour), now.Add(time.Hour)).Clicks == want["ad-a"]
	},
		func() string { return "the event after the switch was not counted" })
}

func legacyLastSeq(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), store.LegacyStreamName)
	if err != nil {
		t.Fatal(err)
	}
	return s.CachedInfo().State.LastSeq
}

// archiveDone reports whether partition p's archive consumer has
// acknowledged everything its stream holds.
func archiveDone(t *testing.T, js jetstream.JetStream, p int) bool {
	t.Helper()
	cons, err := js.Consumer(context.Background(), store.EventStreamName(p), aggregator.ArchiveConsumerName)
	if err != nil {
		return false
	}
	info, err := cons.Info(context.Background())
	return err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Stream == lastSeq(t, js, p)
}
