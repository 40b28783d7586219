package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/devserver"
	"github.com/admetric/admetric/store/storetest"
)

var testStreamOptions = store.StreamOptions{MaxAge: time.Hour, Duplicates: time.Minute, Replicas: 1}

func streamOptions(partitions int) store.StreamOptions {
	o := testStreamOptions
	o.Partitions = partitions
	return o
}

// TestPartitionStreams: with the server's mapping, every event lands in the
// stream of the partition its ad hashes to (PartitionOf agrees with the
// server), the mapping check passes, and it fails, naming the cause, when
// the server partitions into another number or has no mapping.
func TestPartitionStreams(t *testing.T) {
	const partitions = 8
	ctx := context.Background()
	js, nc := storetest.JetStream(t, storetest.NATSPartitions(t, partitions))
	if err := store.CreateOrUpdateEventStreams(ctx, js, streamOptions(partitions)); err != nil {
		t.Fatal(err)
	}
	if err := store.CheckPartitionMapping(ctx, nc, partitions); err != nil {
		t.Fatalf("mapping check: %v", err)
	}
	for i := range 200 {
		ad := fmt.Sprintf("ad-%d", i)
		ack, err := js.Publish(ctx, "ads.events.click."+ad, []byte(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		if want := store.EventStreamName(store.PartitionOf(ad, partitions)); ack.Stream != want {
			t.Fatalf("%s landed in %s, want %s", ad, ack.Stream, want)
		}
	}
	// The probes stored nothing: 200 events in all.
	var total uint64
	for p := range partitions {
		s, err := js.Stream(ctx, store.EventStreamName(p))
		if err != nil {
			t.Fatal(err)
		}
		total += s.CachedInfo().State.Msgs
	}
	if total != 200 {
		t.Errorf("the partition streams hold %d events, want 200 (the probes must not be stored)", total)
	}

	t.Run("server mapping into another number of partitions", func(t *testing.T) {
		js, nc := storetest.JetStream(t, storetest.NATSPartitions(t, 4))
		if err := store.CreateOrUpdateEventStreams(ctx, js, streamOptions(partitions)); err != nil {
			t.Fatal(err)
		}
		err := store.CheckPartitionMapping(ctx, nc, partitions)
		if !errors.Is(err, store.ErrMappingMissing) || !strings.Contains(err.Error(), "lands in stream") {
			t.Fatalf("mapping check: %v, want ErrMappingMissing naming the stream it lands in", err)
		}
	})
	t.Run("server without the mapping", func(t *testing.T) {
		srv, err := devserver.StartNATS(ctx, devserver.NATSOptions{StoreDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(srv.Shutdown)
		js, nc := storetest.JetStream(t, srv)
		if err := store.CreateOrUpdateEventStreams(ctx, js, streamOptions(2)); err != nil {
			t.Fatal(err)
		}
		err = store.CheckPartitionMapping(ctx, nc, 2)
		if !errors.Is(err, store.ErrMappingMissing) || !strings.Contains(err.Error(), "lands in no stream") {
			t.Fatalf("mapping check: %v, want ErrMappingMissing: lands in no stream", err)
		}
	})
}

// TestPartitionCountCannotChange: the partition streams remember how many
// partitions they were made for; another PARTITIONS, larger or smaller, is
// refused.
func TestPartitionCountCannotChange(t *testing.T) {
	ctx := context.Background()
	js, _ := storetest.JetStream(t, storetest.NATSPartitions(t, 4))
	if err := store.CreateOrUpdateEventStreams(ctx, js, streamOptions(4)); err != nil {
		t.Fatal(err)
	}
	if err := store.CreateOrUpdateEventStreams(ctx, js, streamOptions(4)); err != nil {
		t.Fatalf("the same partitions again: %v", err)
	}
	for _, p := range []int{2, 8} {
		if err := store.CreateOrUpdateEventStreams(ctx, js, streamOptions(p)); !errors.Is(err, store.ErrPartitionsChanged) {
			t.Errorf("PARTITIONS %d after 4: %v, want ErrPartitionsChanged", p, err)
		}
	}
}

// TestLegacyStreamIsSealed: the first CreateOrUpdateEventStreams takes the
// legacy stream's subjects away and starts the partition streams past its
// last sequence; RetireLegacyStream deletes it only once every consumer of it
// has nothing left.
func TestLegacyStreamIsSealed(t *testing.T) {
	const partitions = 2
	ctx := context.Background()
	js, _ := storetest.JetStream(t, storetest.NATSPartitions(t, partitions))
	storetest.LegacyEventStream(t, js, partitions)
	for i := range 10 {
		if _, err := js.Publish(ctx, fmt.Sprintf("ads.events.click.ad-%d", i), []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, store.LegacyStreamName, jetstream.ConsumerConfig{Durable: "old", AckPolicy: jetstream.AckAllPolicy})
	if err != nil {
		t.Fatal(err)
	}
	if err := store.RetireLegacyStream(ctx, js); !errors.Is(err, store.ErrLegacyNotDrained) {
		t.Fatalf("retiring an unsealed legacy stream: %v, want ErrLegacyNotDrained", err)
	}
	if err := store.CreateOrUpdateEventStreams(ctx, js, streamOptions(partitions)); err != nil {
		t.Fatal(err)
	}
	ack, err := js.Publish(ctx, "ads.events.click.ad-0", []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	if ack.Stream == store.LegacyStreamName || ack.Sequence != 11 {
		t.Fatalf("after the switch an event landed in %s at %d, want a partition stream at 11", ack.Stream, ack.Sequence)
	}
	if err := store.CreateOrUpdateEventStreams(ctx, js, streamOptions(3)); !errors.Is(err, store.ErrPartitionsChanged) {
		t.Fatalf("another PARTITIONS with a sealed legacy stream: %v, want ErrPartitionsChanged", err)
	}
	if err := store.RetireLegacyStream(ctx, js); !errors.Is(err, store.ErrLegacyNotDrained) {
		t.Fatalf("retiring with 10 events undelivered: %v, want ErrLegacyNotDrained", err)
	}
	msgs, err := cons.Fetch(10, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var last jetstream.Msg
	for m := range msgs.Messages() {
		last = m
	}
	if err := last.DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
	if err := store.RetireLegacyStream(ctx, js); err != nil {
		t.Fatalf("retiring the drained legacy stream: %v", err)
	}
	if ok, err := store.LegacyStreamExists(ctx, js); ok || err != nil {
		t.Fatalf("legacy stream exists after retiring: %v, %v", ok, err)
	}
}

// TestPublisherPermissions: the publish-only user publishes events and gets
// their acknowledgements on its inbox prefix; the server refuses it
// everything else: reading the event subjects, another inbox, a bucket, the
// JetStream API.
func TestPublisherPermissions(t *testing.T) {
	ctx := context.Background()
	srv := storetest.NATS(t)
	js, _ := storetest.JetStream(t, srv)
	if err := store.CreateOrUpdateEventStreams(ctx, js, streamOptions(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "ADMETRIC_ROLLUPS_TEST"}); err != nil {
		t.Fatal(err)
	}
	violations := make(chan error, 16)
	pc, err := nats.Connect(srv.ClientURL(), nats.UserInfo(store.PublisherUser, storetest.PublisherPassword),
		nats.CustomInboxPrefix(store.PublisherInboxPrefix),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { violations <- err }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pc.Close)
	pjs, err := jetstream.New(pc)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := pjs.Publish(ctx, "ads.events.click.ad-1", []byte(`{"event_id":"p-1"}`))
	if err != nil || ack.Stream != store.EventStreamName(0) {
		t.Fatalf("the publisher's event: %+v, %v; want it stored in %s", ack, err, store.EventStreamName(0))
	}

	wantViolation := func(what string) {
		t.Helper()
		if err := pc.Flush(); err != nil {
			t.Fatalf("%s: flush: %v", what, err)
		}
		select {
		case err := <-violations:
			if !errors.Is(err, nats.ErrPermissionViolation) {
				t.Fatalf("%s: %v, want a permissions violation", what, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: the server did not refuse it", what)
		}
	}
	for _, subject := range []string{"ads.events.>", "ads.events.0.click.ad-1", "_INBOX.>", "$KV.ADMETRIC_ROLLUPS_TEST.>"} {
		if _, err := pc.SubscribeSync(subject); err != nil {
			t.Fatalf("subscribe %s: %v", subject, err)
		}
		wantViolation("subscribe " + subject)
	}
	// The JetStream API: deleting the stream, reading a bucket, making a
	// consumer. Each request's publish is refused.
	for _, subject := range []string{
		"$JS.API.STREAM.DELETE." + store.EventStreamName(0),
		"$JS.API.DIRECT.GET.KV_ADMETRIC_ROLLUPS_TEST.$KV.ADMETRIC_ROLLUPS_TEST.k",
		"$JS.API.CONSUMER.CREATE." + store.EventStreamName(0),
	} {
		_, err := pc.Request(subject, nil, 500*time.Millisecond)
		if err == nil {
			t.Fatalf("%s: answered", subject)
		}
		wantViolation("publish " + subject)
	}
	if s, err := js.Stream(ctx, store.EventStreamName(0)); err != nil || s.CachedInfo().State.Msgs != 1 {
		t.Fatalf("after the refusals the stream: %v; want it there with the publisher's one event", err)
	}
}
