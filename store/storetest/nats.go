package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/store"
)

// NATS starts an embedded nats-server with JetStream for the test, its store in
// t.TempDir(), listening on a free port of 127.0.0.1, and shuts it down with
// t.Cleanup. It never skips: if it cannot start, t.Fatal with the reason.
func NATS(t testing.TB) *store.EmbeddedNATS {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := store.StartEmbeddedNATS(ctx, store.EmbeddedNATSOptions{
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
func JetStream(t testing.TB, srv *store.EmbeddedNATS) (jetstream.JetStream, *nats.Conn) {
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
