package aggregator_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/uptrace/bun"

	"github.com/admetric/admetric/aggregator"
	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/postgres"
	"github.com/admetric/admetric/store/storetest"
)

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
	deadline := time.Now().Add(30 * time.Second)
	for countRows(t, db) != want {
		if time.Now().After(deadline) {
			t.Fatalf("archive holds %d rows, want %d", countRows(t, db), want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runArchiver runs an archiver into db until the test ends.
func runArchiver(t *testing.T, js jetstream.JetStream, db *bun.DB, opts aggregator.ArchiverOptions) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	a := aggregator.NewArchiver(js, postgres.NewArchive(db), slog.New(slog.DiscardHandler), aggregator.NewMetrics(prometheus.NewRegistry()), opts)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("archiver: %v", err)
		}
	})
}

// TestArchiverSurvivesPostgresOutage: events published while PostgreSQL is
// down are archived once it is back, each exactly once, and a message
// redelivered (here: published twice without a Nats-Msg-Id) adds no row.
func TestArchiverSurvivesPostgresOutage(t *testing.T) {
	js, _ := setup(t)
	pg := storetest.Postgres(t)
	ctx := context.Background()
	db := storetest.DB(t, pg)

	runArchiver(t, js, db, aggregator.ArchiverOptions{BatchSize: 50, AckWait: 2 * time.Second})

	now := time.Now().UTC()
	publish(t, js, clicks("ad-x", 100, now, "x")...)
	waitRows(t, db, 100)

	if err := pg.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	publish(t, js, clicks("ad-y", 150, now, "y")...)
	// The same event again, without a Nats-Msg-Id the stream cannot drop it:
	// the archive must.
	dup := clicks("ad-y", 1, now, "y")[0]
	data, _ := dup.Marshal()
	if _, err := js.Publish(ctx, dup.Subject(), data); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2500 * time.Millisecond) // longer than AckWait: redeliveries happen during the outage
	if err := pg.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	waitRows(t, db, 250)
	time.Sleep(300 * time.Millisecond)
	if n := countRows(t, db); n != 250 {
		t.Fatalf("archive holds %d rows after settling, want 250", n)
	}
}

// TestArchiverDeadLetters: messages that are not valid events go to
// ads.dlq.<reason> with the reason and origin in headers, and the events after
// them are archived.
func TestArchiverDeadLetters(t *testing.T) {
	js, _ := setup(t)
	pg := storetest.Postgres(t)
	ctx := context.Background()
	db := storetest.DB(t, pg)
	runArchiver(t, js, db, aggregator.ArchiverOptions{})

	bad := map[string]string{ // body published on ads.events.click.ad-p → reason
		`not json`:               aggregator.ReasonDecode,
		`{"ad_id":"other-ad"}`:   aggregator.ReasonSubject,
		`{"playback_time":-3}`:   aggregator.ReasonInvalid,
		`{"ip":"fe80::1%eth0"}`:  aggregator.ReasonInvalid,
		`{"event_id":"$forged"}`: aggregator.ReasonInvalid,
	}
	for body := range bad {
		if _, err := js.Publish(ctx, "ads.events.click.ad-p", []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	publish(t, js, clicks("ad-p", 3, time.Now().UTC(), "p")...)
	waitRows(t, db, 3)

	dlq, err := js.Stream(ctx, store.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := dlq.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs == uint64(len(bad)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dead-letter stream holds %d messages, want %d", info.State.Msgs, len(bad))
		}
		time.Sleep(50 * time.Millisecond)
	}
	for seq := uint64(1); seq <= uint64(len(bad)); seq++ {
		m, err := dlq.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		want, ok := bad[string(m.Data)]
		if !ok || m.Subject != "ads.dlq."+want {
			t.Errorf("dead letter %q on %s, want reason %q", m.Data, m.Subject, want)
		}
		if m.Header.Get(store.HeaderPoisonReason) == "" || m.Header.Get(store.HeaderOriginSubject) != "ads.events.0.click.ad-p" {
			t.Errorf("dead letter %q: headers %v", m.Data, m.Header)
		}
	}
}
