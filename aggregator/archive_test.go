package aggregator_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/admetric/admetric/aggregator"
	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/storetest"
)

// TestArchiverSurvivesPostgresOutage: events published while PostgreSQL is
// down are archived once it is back, each exactly once, and a message
// delivered twice (here: published twice without a Nats-Msg-Id, as a
// redelivery after a lost ack would be) adds no row.
func TestArchiverSurvivesPostgresOutage(t *testing.T) {
	js, _ := setup(t)
	pg := storetest.Postgres(t)
	ctx := context.Background()
	db := storetest.DB(t, pg)

	reg := runArchiver(t, js, db, aggregator.ArchiverOptions{BatchSize: 50, AckWait: 2 * time.Second})

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
	// The archiver holds a batch it cannot insert, and retries.
	waitFor(t, func() bool { return counter(t, reg, "admetric_archive_errors_total") >= 2 },
		func() string { return "the archiver never failed an insert twice while PostgreSQL was down" })
	if err := pg.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	// Every message acknowledged: nothing can come back and add a row.
	waitConsumed(t, js, aggregator.ArchiveConsumerName)
	if n := countRows(t, db); n != 250 {
		t.Fatalf("archive holds %d rows, want 250", n)
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
	// Every message is acknowledged or terminated, each poison one only once
	// the dead-letter stream took it.
	waitConsumed(t, js, aggregator.ArchiveConsumerName)
	if n := countRows(t, db); n != 3 {
		t.Fatalf("archive holds %d rows, want 3", n)
	}

	dlq, err := js.Stream(ctx, store.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := dlq.Info(ctx); err != nil {
		t.Fatal(err)
	} else if info.State.Msgs != uint64(len(bad)) {
		t.Fatalf("dead-letter stream holds %d messages, want %d", info.State.Msgs, len(bad))
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

// TestArchiverOutlivesItsConsumer: a NATS failure under the archiver (here
// its consumer deleted, as a lost consumer leader can leave it) does not
// stop it: it sets the consumer up again, counts the restart, and archives
// what comes next, the events before kept once.
func TestArchiverOutlivesItsConsumer(t *testing.T) {
	js, _ := setup(t)
	db := storetest.DB(t, storetest.Postgres(t))
	reg := runArchiver(t, js, db, aggregator.ArchiverOptions{})
	now := time.Now().UTC()
	publish(t, js, clicks("ad-x", 5, now, "before")...)
	waitRows(t, db, 5)
	waitConsumed(t, js, aggregator.ArchiveConsumerName)

	if err := js.DeleteConsumer(context.Background(), store.EventStreamName(0), aggregator.ArchiveConsumerName); err != nil {
		t.Fatal(err)
	}
	publish(t, js, clicks("ad-x", 7, now, "after")...)
	waitRows(t, db, 12)
	if n := counter(t, reg, "admetric_consumer_restarts_total"); n < 1 {
		t.Errorf("admetric_consumer_restarts_total = %v, want the restart counted", n)
	}
}

// TestWrongPartitionIsPoison: an event published straight to a partition
// subject, past the mapping, into a partition its ad does not hash to, would
// give that ad's rollups a second writer: the rollup writer skips it and the
// archiver dead-letters it (reason partition); the events around it count.
func TestWrongPartitionIsPoison(t *testing.T) {
	const partitions = 2
	ctx := context.Background()
	js, rollups := setupWithoutEventStreams(t, partitions)
	storetest.EventStream(t, js, partitions)
	db := storetest.DB(t, storetest.Postgres(t))
	runArchiver(t, js, db, aggregator.ArchiverOptions{Partitions: partitions})
	ad := "ad-w"
	wrong := 1 - store.PartitionOf(ad, partitions)
	w := runWriterWith(t, js, rollups, aggregator.RollupWriterOptions{Partition: wrong, Partitions: partitions})
	now := time.Now().UTC()
	stray := clicks(ad, 1, now, "stray")[0]
	data, _ := stray.Marshal()
	subject := fmt.Sprintf("ads.events.%d.click.%s", wrong, ad)
	if ack, err := js.Publish(ctx, subject, data); err != nil || ack.Stream != store.EventStreamName(wrong) {
		t.Fatalf("publish to %s: %+v, %v", subject, ack, err)
	}
	other := "ad-v"
	for store.PartitionOf(other, partitions) != wrong {
		other += "v"
	}
	publish(t, js, clicks(other, 3, now, "good")...)
	waitConsumed(t, js, aggregator.RollupConsumerName(wrong))
	if got := sum(t, rollups, ad, now.Add(-time.Hour), now.Add(time.Hour)).Clicks; got != 0 {
		t.Errorf("the stray event was folded: %s has %d clicks", ad, got)
	}
	if got := sum(t, rollups, other, now.Add(-time.Hour), now.Add(time.Hour)).Clicks; got != 3 {
		t.Errorf("%s has %d clicks, want 3", other, got)
	}
	if w.Folded() != 3 {
		t.Errorf("the writer folded %v events, want 3", w.Folded())
	}
	waitRows(t, db, 3)
	waitFor(t, func() bool {
		m, err := js.Stream(ctx, store.DeadLetterStream)
		return err == nil && m.CachedInfo().State.Msgs == 1
	}, func() string { return "the stray event never reached the dead-letter stream" })
	dlq, _ := js.Stream(ctx, store.DeadLetterStream)
	m, err := dlq.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != "ads.dlq."+aggregator.ReasonPartition {
		t.Errorf("dead letter on %s, want ads.dlq.%s", m.Subject, aggregator.ReasonPartition)
	}
}
