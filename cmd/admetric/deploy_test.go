package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
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
