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
	"github.com/admetric/admetric/store/storetest"
)

var testLayout = store.NewLayout(store.Retentions{Minute: 72 * time.Hour, Hour: 2400 * time.Hour, Day: 43800 * time.Hour})

func setup(t *testing.T) (jetstream.JetStream, *store.Rollups) {
	t.Helper()
	js, _ := storetest.JetStream(t, storetest.NATS(t))
	ctx := context.Background()
	if _, err := store.EnsureStream(ctx, js, store.StreamOptions{MaxAge: time.Hour}); err != nil {
		t.Fatal(err)
	}
	rollups, err := store.OpenRollups(ctx, js, testLayout, 1)
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

// runWriter runs a rollup writer until the returned stop is called.
func runWriter(t *testing.T, js jetstream.JetStream, rollups *store.Rollups) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := aggregator.NewRollupWriter(js, rollups, slog.New(slog.DiscardHandler), aggregator.NewMetrics(prometheus.NewRegistry()),
		aggregator.RollupWriterOptions{VisitorSalt: []byte("salt"), BatchSize: 7})
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

func sum(t *testing.T, rollups *store.Rollups, adID string, from, to time.Time) *store.Aggregate {
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

func waitClicks(t *testing.T, rollups *store.Rollups, adID string, from, to time.Time, want uint64) *store.Aggregate {
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

// TestRollupWriterResumesWithoutDoubleCounting stops the writer, rewinds every
// checkpoint to zero (as if the writer had crashed after saving its keys and
// before its checkpoints), and restarts it: the replayed events are skipped by
// each rollup's MaxSeq, and only the new ones are added.
func TestRollupWriterResumesWithoutDoubleCounting(t *testing.T) {
	js, rollups := setup(t)
	now := time.Now().UTC()
	from, to := now.Add(-2*time.Hour), now.Add(time.Minute)
	old := now.Add(-5 * 24 * time.Hour) // beyond the minute retention: hour and day only

	stop := runWriter(t, js, rollups)
	publish(t, js, clicks("ad-a", 40, now, "a")...)
	publish(t, js, clicks("ad-b", 5, old, "b")...)
	waitClicks(t, rollups, "ad-a", from, to, 40)
	waitClicks(t, rollups, "ad-b", old.Add(-time.Hour), to, 5)
	stop()

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

	runWriter(t, js, rollups)
	publish(t, js, clicks("ad-a", 3, now, "a-more")...)
	agg := waitClicks(t, rollups, "ad-a", from, to, 43)
	if agg.PlaybackMillis != 43*1500 || agg.PlaybackCount != 43 {
		t.Errorf("playback %d ms over %d clicks, want %d over 43", agg.PlaybackMillis, agg.PlaybackCount, 43*1500)
	}
	if got := agg.UniqueVisitors(); got != 40 {
		t.Errorf("unique visitors %d, want 40 (the 3 new clicks repeat visitors)", got)
	}
	// Give the writer time to (wrongly) re-add the replayed old events, then check.
	time.Sleep(300 * time.Millisecond)
	if b := sum(t, rollups, "ad-b", old.Add(-time.Hour), to); b.Clicks != 5 {
		t.Errorf("ad-b: %d clicks after replay, want 5", b.Clicks)
	}
	if a := sum(t, rollups, "ad-a", from, to); a.Clicks != 43 {
		t.Errorf("ad-a: %d clicks after replay, want 43", a.Clicks)
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
