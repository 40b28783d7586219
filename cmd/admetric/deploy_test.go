package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/store"
)

// TestDeployNATSConfiguration: deploy/nats/admetric.conf is what `admetric
// nats-config` prints for compose.yaml's PARTITIONS (8), and nats-server
// accepts the single-node and the cluster configurations that include it.
func TestDeployNATSConfiguration(t *testing.T) {
	var out bytes.Buffer
	if code := run(context.Background(), []string{"nats-config"}, lookupIn(map[string]string{"PARTITIONS": "8"}), &out, io.Discard); code != 0 {
		t.Fatalf("admetric nats-config exited %d", code)
	}
	dir := filepath.Join("..", "..", "deploy", "nats")
	committed, err := os.ReadFile(filepath.Join(dir, "admetric.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(committed, out.Bytes()) {
		t.Fatalf("deploy/nats/admetric.conf differs from `PARTITIONS=8 admetric nats-config`; write it again with that command:\n%s", out.String())
	}
	natsBin := buildNATSServer(t)
	for _, conf := range []string{"single.conf", "cluster.conf"} {
		cmd := exec.Command(natsBin, "-t", "-c", conf)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "ADMETRIC_NATS_PASSWORD=p1", "ADMETRIC_PUBLISHER_PASSWORD=p2", "NATS_SERVER_NAME=nats-1")
		if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "is valid") {
			t.Errorf("nats-server -t -c %s: %v\n%s", conf, err, out)
		}
	}
}

// TestComposeFile: compose.yaml validates, with and without the cluster
// profile, and the cluster profile has the three NATS nodes, two
// aggregators and two API instances.
func TestComposeFile(t *testing.T) {
	compose, err := exec.LookPath("docker-compose")
	if err != nil {
		t.Fatal("docker-compose is not installed (scripts/test installs it): ", err)
	}
	for _, args := range [][]string{{"config", "-q"}, {"--profile", "cluster", "config", "-q"}} {
		cmd := exec.Command(compose, append([]string{"-f", filepath.Join("..", "..", "compose.yaml")}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("docker-compose %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	out, err := exec.Command(compose, "-f", filepath.Join("..", "..", "compose.yaml"), "--profile", "cluster", "config", "--services").Output()
	if err != nil {
		t.Fatal(err)
	}
	services := strings.Fields(string(out))
	for _, want := range []string{"postgres", "nats-1", "nats-2", "nats-3", "aggregator-1", "aggregator-2", "api-1", "api-2"} {
		if !strings.Contains(" "+strings.Join(services, " ")+" ", " "+want+" ") {
			t.Errorf("the cluster profile has no service %s (it has %v)", want, services)
		}
	}
}

// TestEmbeddedNATSUsers: the embedded server runs AdMetric's account with
// the publish-only user NATS_PUBLISHER_PASSWORD configures: its events are
// counted, it can read nothing, and with NATS_PASSWORD set a client without
// credentials is refused.
func TestEmbeddedNATSUsers(t *testing.T) {
	env := testEnv(testDataDir(t))
	env["NATS_PASSWORD"] = "embedded-service-password"
	env["NATS_PUBLISHER_PASSWORD"] = "embedded-publisher-password"
	d := startTestDaemon(t, env)
	t.Cleanup(func() { stopTestDaemon(t, d) })
	url := d.embedded.ClientURL()

	if nc, err := nats.Connect(url); err == nil {
		nc.Close()
		t.Fatal("a client without credentials got in although NATS_PASSWORD is set")
	}
	violations := make(chan error, 4)
	pc, err := nats.Connect(url, nats.UserInfo(store.PublisherUser, env["NATS_PUBLISHER_PASSWORD"]),
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
	if _, err := pjs.Publish(context.Background(), "ads.events.click.coffee-6s", []byte(`{"ip":"198.51.100.7","user_agent":"`+personUA+`","playback_time":2}`),
		jetstream.WithMsgID("publisher-click-1")); err != nil {
		t.Fatalf("the publisher's event: %v", err)
	}
	c := client{t: t, base: "http://" + d.httpAddr()}
	c.analytics("timeframe=1h&ad_id=coffee-6s", func(a map[string]any) bool { return num(a, "clicks") == 1 })

	if _, err := pc.SubscribeSync("ads.events.>"); err != nil {
		t.Fatal(err)
	}
	if err := pc.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-violations:
		if !errors.Is(err, nats.ErrPermissionViolation) {
			t.Fatalf("subscribing to the events: %v, want a permissions violation", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the publisher subscribed to the events")
	}
}
