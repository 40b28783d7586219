package devserver_test

import (
	"context"
	"errors"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/store/devserver"
)

const testAccountConfig = "accounts { APP { jetstream: enabled } }"

// TestNATSRefusesOpenListenerBeyondLoopback: letting clients in without
// credentials is for loopback alone.
func TestNATSRefusesOpenListenerBeyondLoopback(t *testing.T) {
	opts := devserver.NATSOptions{
		StoreDir: t.TempDir(), Listen: "0.0.0.0:0", Config: testAccountConfig, Account: "APP",
		Users: []devserver.NATSUser{{Name: "app", Password: "pw"}}, NoAuthUser: "app",
	}
	if _, err := devserver.StartNATS(context.Background(), opts); !errors.Is(err, devserver.ErrOpenListener) {
		t.Fatalf("open listener on 0.0.0.0: %v, want ErrOpenListener", err)
	}
	opts.NoAuthUser = ""
	srv, err := devserver.StartNATS(context.Background(), opts)
	if err != nil {
		t.Fatalf("with credentials required: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	if nc, err := nats.Connect(srv.ClientURL()); err == nil {
		nc.Close()
		t.Fatal("a client without credentials got in")
	}
	nc, err := nats.Connect(srv.ClientURL(), nats.UserInfo("app", "pw"))
	if err != nil {
		t.Fatalf("a client with credentials: %v", err)
	}
	nc.Close()
}

// TestNATSAdoptsTheGlobalAccountsStreams: streams a server without
// accounts kept (in the global account) are there, with their messages, in
// the configured account after the first start with it.
func TestNATSAdoptsTheGlobalAccountsStreams(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	old, err := devserver.StartNATS(ctx, devserver.NATSOptions{StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	js := connect(t, old, nil)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "KEPT", Subjects: []string{"kept.>"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "kept.1", []byte("x")); err != nil {
		t.Fatal(err)
	}
	old.Shutdown()

	srv, err := devserver.StartNATS(ctx, devserver.NATSOptions{
		StoreDir: dir, Config: testAccountConfig, Account: "APP", Users: []devserver.NATSUser{{Name: "app", Password: "pw"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	js = connect(t, srv, []nats.Option{nats.UserInfo("app", "pw")})
	s, err := js.Stream(ctx, "KEPT")
	if err != nil {
		t.Fatalf("the global account's stream in APP: %v", err)
	}
	if n := s.CachedInfo().State.Msgs; n != 1 {
		t.Fatalf("the adopted stream holds %d messages, want 1", n)
	}
}

func connect(t *testing.T, srv *devserver.NATS, opts []nats.Option) jetstream.JetStream {
	t.Helper()
	nc, err := srv.Connect(t.Name(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}
