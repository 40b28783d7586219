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

// NATS starts an embedded nats-server with JetStream for the test, its store in
// t.TempDir(), listening on a free port of 127.0.0.1, and shuts it down with
// t.Cleanup. It never skips: if it cannot start, t.Fatal with the reason.
func NATS(t testing.TB) *devserver.NATS {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := devserver.StartNATS(ctx, devserver.NATSOptions{
		StoreDir: t.TempDir(),
		Listen:   "127.0.0.1:0",
	})
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

// EventStream creates the event stream on js with partitions partitions,
// keeping events for an hour with a two-minute duplicate window (the
// server's default), and returns it. It fails t on error.
func EventStream(t testing.TB, js jetstream.JetStream, partitions int) jetstream.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := store.CreateOrUpdateEventStream(ctx, js, store.StreamOptions{
		MaxAge: time.Hour, Duplicates: 2 * time.Minute, Replicas: 1, Partitions: partitions,
	})
	if err != nil {
		t.Fatalf("storetest: %v", err)
	}
	return s
}
