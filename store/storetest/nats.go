package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/devserver"
)

// NATS starts an embedded nats-server with JetStream for the test, configured
// as AdMetric configures its own for one partition: see NATSPartitions.
func NATS(t testing.TB) *devserver.NATS {
	t.Helper()
	return NATSPartitions(t, 1)
}

// NATSPartitions starts an embedded nats-server with JetStream for the test,
// its store in t.TempDir(), listening on a free port of 127.0.0.1, with
// AdMetric's account and its subject mapping onto partitions partition
// streams; a client without credentials is AdMetric's user, and
// PublisherPassword is the publish-only user's password. The server is shut
// down with t.Cleanup. It never skips: if it cannot start, t.Fatal with the
// reason.
func NATSPartitions(t testing.TB, partitions int) *devserver.NATS {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := devserver.StartNATS(ctx, NATSOptions(t.TempDir(), "127.0.0.1:0", partitions))
	if err != nil {
		t.Fatalf("storetest: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	return srv
}

// JetStream connects to srv in-process and returns the JetStream context; the
// connection is closed with t.Cleanup.
func JetStream(t testing.TB, srv *devserver.NATS) (jetstream.JetStream, *nats.Conn) {
	t.Helper()
	nc, err := srv.Connect(t.Name())
	if err != nil {
		t.Fatalf("storetest: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("storetest: jetstream: %v", err)
	}
	return js, nc
}

// NATSOptions configure an embedded server as NATSPartitions does, its
// store in dir, listening on listen.
func NATSOptions(dir, listen string, partitions int) devserver.NATSOptions {
	pub, sub := store.PublisherPermissions()
	return devserver.NATSOptions{
		StoreDir: dir,
		Listen:   listen,
		Config:   store.ServerConfig(store.ServerConfigOptions{Partitions: partitions}),
		Account:  store.Account,
		Users: []devserver.NATSUser{
			{Name: store.ServiceUser, Password: "storetest-service"},
			{Name: store.PublisherUser, Password: PublisherPassword, Publish: pub, Subscribe: sub},
		},
		NoAuthUser: store.ServiceUser,
	}
}

// PublisherPassword is the password of the publish-only user
// (store.PublisherUser) of the servers NATS and NATSPartitions start.
const PublisherPassword = "storetest-publisher"

// EventStream creates the partition streams on js, keeping events for an
// hour with a two-minute duplicate window (the server's default), and
// returns partition 0's: the only one when partitions is 1. It fails t on
// error.
func EventStream(t testing.TB, js jetstream.JetStream, partitions int) jetstream.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := store.CreateOrUpdateEventStreams(ctx, js, store.StreamOptions{
		MaxAge: time.Hour, Duplicates: 2 * time.Minute, Replicas: 1, Partitions: partitions,
	})
	if err != nil {
		t.Fatalf("storetest: %v", err)
	}
	s, err := js.Stream(ctx, store.EventStreamName(0))
	if err != nil {
		t.Fatalf("storetest: %v", err)
	}
	return s
}

// LegacyEventStream creates the single event stream of AdMetric before the
// partition streams, as it was configured (every event subject, partitioned
// by a subject transform), for migration tests. It fails t on error.
func LegacyEventStream(t testing.TB, js jetstream.JetStream, partitions int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src, dst := store.PartitionMapping(partitions)
	_, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:             store.LegacyStreamName,
		Subjects:         []string{"ads.events.>"},
		Storage:          jetstream.FileStorage,
		MaxAge:           time.Hour,
		Duplicates:       2 * time.Minute,
		SubjectTransform: &jetstream.SubjectTransformConfig{Source: src, Destination: dst},
	})
	if err != nil {
		t.Fatalf("storetest: legacy stream: %v", err)
	}
}
