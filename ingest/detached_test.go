package ingest_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/ingest"
	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/ingest/spool"
	"github.com/admetric/admetric/store/storetest"
)

// TestDetachedPublisherLosesNothingOnStop: events handed to a detached
// publisher are all in the stream once Run has returned, or in the spool
// when the stream went away with them in flight, from where the replayer
// publishes them once it is back, each once.
func TestDetachedPublisherLosesNothingOnStop(t *testing.T) {
	for _, tc := range []struct {
		name        string
		natsGoesOff bool
	}{
		{"stream up", false},
		{"stream gone with events in flight", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := startRestartableNATS(t)
			nc := ns.connect(t)
			js, err := jetstream.New(nc)
			if err != nil {
				t.Fatal(err)
			}
			stream := storetest.EventStream(t, js, 1)
			sp, err := spool.Open(t.TempDir(), spool.Options{MaxBytes: 64 << 20})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = sp.Close() })
			pub, err := ingest.NewPublisher(nc, ingest.PublisherOptions{Timeout: 2 * time.Second, MaxPending: 1024, Spool: sp})
			if err != nil {
				t.Fatal(err)
			}
			detached, err := ingest.NewDetachedPublisher(pub)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- detached.Run(ctx) }()

			if tc.natsGoesOff {
				ns.stop() // the client may not know yet: publishes wait for acks that never come
			}
			const n = 300
			now := time.Now().UTC()
			for i := range n {
				ev := event.Event{EventID: fmt.Sprintf("d-%d", i), Type: event.Start, AdID: "ad-1", Timestamp: now}
				if err := detached.Publish(&ev); err != nil {
					t.Fatalf("event %d: %v", i, err)
				}
			}
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("Run = %v", err)
				}
			case <-time.After(time.Minute):
				t.Fatal("Run did not return after its context ended")
			}
			if got := detached.InFlight(); got != 0 {
				t.Fatalf("%d events in flight after Run returned", got)
			}
			// Published after the stop: spooled at once.
			late := event.Event{EventID: "d-late", Type: event.Start, AdID: "ad-1", Timestamp: now}
			if err := detached.Publish(&late); err != nil || sp.Empty() {
				t.Fatalf("a publish after the stop: %v, spool empty %v; want it spooled", err, sp.Empty())
			}

			if tc.natsGoesOff {
				ns.start()
			}
			rep, err := ingest.NewReplayer(nc, sp, slog.New(slog.DiscardHandler), nil)
			if err != nil {
				t.Fatal(err)
			}
			rctx, rcancel := context.WithCancel(context.Background())
			rdone := make(chan error, 1)
			go func() { rdone <- rep.Run(rctx) }()
			t.Cleanup(func() {
				rcancel()
				if err := <-rdone; err != nil {
					t.Error(err)
				}
			})
			waitFor(t, "the replay", 30*time.Second, sp.Empty)
			ids := streamIDs(t, stream)
			if len(ids) != n+1 {
				t.Errorf("the stream holds %d events, want %d", len(ids), n+1)
			}
			for id, k := range ids {
				if k != 1 {
					t.Errorf("%s is in the stream %d times", id, k)
				}
			}
		})
	}
}
