package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/storetest"
)

// natsNode is one nats-server process of a test cluster, restartable on the
// same ports and store.
type natsNode struct {
	name, port, monitor, dir, conf string
	proc                           *natsProc
}

// natsCluster is a three-node nats-server cluster on loopback, configured as
// the README says: the cluster block, and the account block `admetric
// nats-config` prints.
type natsCluster struct {
	t     *testing.T
	bin   string
	nodes []*natsNode
}

func startNATSCluster(t *testing.T, partitions int) *natsCluster {
	t.Helper()
	c := &natsCluster{t: t, bin: buildNATSServer(t)}
	routes := make([]string, 3)
	clusterPorts := make([]string, 3)
	for i := range 3 {
		clusterPorts[i] = freePort(t)
		routes[i] = "nats-route://127.0.0.1:" + clusterPorts[i]
	}
	for i := range 3 {
		n := &natsNode{name: fmt.Sprintf("n%d", i+1), port: freePort(t), monitor: freePort(t), dir: t.TempDir()}
		n.conf = filepath.Join(n.dir, "node.conf")
		conf := fmt.Sprintf(`server_name: %s
listen: 127.0.0.1:%s
http: 127.0.0.1:%s
jetstream { store_dir: %q }
cluster {
  name: admetric-test
  listen: 127.0.0.1:%s
  routes: [%s]
}
%s`, n.name, n.port, n.monitor, filepath.Join(n.dir, "js"), clusterPorts[i], strings.Join(routes, ", "),
			store.ServerConfig(store.ServerConfigOptions{Partitions: partitions, Users: true}))
		if err := os.WriteFile(n.conf, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, n)
	}
	for _, n := range c.nodes {
		c.start(n)
	}
	c.waitMetaLeader("")
	return c
}

func (c *natsCluster) start(n *natsNode) {
	c.t.Helper()
	n.proc = startNATSProcess(c.t, c.bin, "-c", n.conf)
}

// urls is every node's client URL with AdMetric's user, comma-separated.
func (c *natsCluster) urls() string {
	urls := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		urls[i] = "nats://" + store.ServiceUser + ":" + testNATSPassword + "@127.0.0.1:" + n.port
	}
	return strings.Join(urls, ",")
}

func (c *natsCluster) node(name string) *natsNode {
	c.t.Helper()
	for _, n := range c.nodes {
		if n.name == name {
			return n
		}
	}
	c.t.Fatalf("no node %q", name)
	return nil
}

// metaLeader asks node n's monitoring endpoint who leads the JetStream
// meta group; "" when it does not know or does not answer.
func (n *natsNode) metaLeader() string {
	hc := http.Client{Timeout: 2 * time.Second}
	resp, err := hc.Get("http://127.0.0.1:" + n.monitor + "/jsz")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var jsz struct {
		Meta *struct {
			Leader string `json:"leader"`
		} `json:"meta_cluster"`
	}
	if json.NewDecoder(resp.Body).Decode(&jsz) != nil || jsz.Meta == nil {
		return ""
	}
	return jsz.Meta.Leader
}

// waitMetaLeader waits until every running node names the same meta leader,
// other than not, and returns it.
func (c *natsCluster) waitMetaLeader(not string) string {
	c.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		leader, agreed := "", true
		for _, n := range c.nodes {
			if n.proc.reaped {
				continue
			}
			l := n.metaLeader()
			if l == "" || l == not || leader != "" && l != leader {
				agreed = false
				break
			}
			leader = l
		}
		if agreed && leader != "" {
			return leader
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("the nodes never agreed on a meta leader other than %q", not)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// streamLeader returns the leader of stream, "" while it has none or does
// not answer within a second.
func streamLeader(js jetstream.JetStream, stream string) string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil || s.CachedInfo().Cluster == nil {
		return ""
	}
	return s.CachedInfo().Cluster.Leader
}

// streamLeaders returns, by stream, the leader of each partition stream
// ("" while it has none).
func streamLeaders(js jetstream.JetStream, partitions int) map[string]string {
	leaders := make(map[string]string, partitions)
	for p := range partitions {
		leaders[store.EventStreamName(p)] = streamLeader(js, store.EventStreamName(p))
	}
	return leaders
}

// TestClusterFailover runs AdMetric as production does on a three-node NATS
// cluster: R3 partition streams and buckets, one `admetric api` and two
// `admetric aggregator` processes. Under a paced load of 20,000 events, each
// posted once, the meta leader's node is SIGKILLed (and started again once
// another leads), then the node leading a partition stream, then one
// aggregator. Every POST is answered 202 (accepted or spooled); afterwards
// every ad's counts are exact, the archive holds each event once, the spool
// is empty, and no AdMetric process exited on its own. The partition
// streams' leaders are spread over the nodes at the start and again after
// the restarts.
func TestClusterFailover(t *testing.T) {
	const (
		partitions = 4
		events     = 20_000
		ads        = 50
		visitors   = 5_000
		workers    = 16
		perSecond  = 600
	)
	bin := buildBinary(t)
	cluster := startNATSCluster(t, partitions)
	pg := storetest.Postgres(t)
	common := map[string]string{
		"HTTP_ADDR":              "127.0.0.1:0",
		"NATS_URL":               cluster.urls(),
		"NATS_REPLICAS":          "3",
		"PARTITIONS":             fmt.Sprint(partitions),
		"LEADER_SPREAD_INTERVAL": "2s",
		"DATABASE_URL":           pg.DSN(),
		"ADMIN_TOKEN":            testToken,
		"VISITOR_SALT":           "cluster-test-salt-cluster-test-salt-0",
		"LOG_LEVEL":              "info",
	}
	envFor := func() map[string]string {
		env := map[string]string{"DATA_DIR": testDataDir(t)}
		for k, v := range common {
			env[k] = v
		}
		return env
	}
	apiEnv := envFor()
	api := startRole(t, bin, "api", apiEnv)
	aggregators := []*proc{startRole(t, bin, "aggregator", envFor()), startRole(t, bin, "aggregator", envFor())}
	c := client{t: t, base: "http://" + api.httpAddr}
	createCrashAds(t, c, ads)

	nc, err := nats.Connect(cluster.urls(), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	waitSpread := func(when string) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for {
			counts := map[string]int{}
			for _, n := range cluster.nodes {
				counts[n.name] = 0
			}
			leaders := streamLeaders(js, partitions)
			for _, l := range leaders {
				counts[l]++
			}
			most, least := 0, partitions
			for name, n := range counts {
				if name == "" {
					continue
				}
				most, least = max(most, n), min(least, n)
			}
			if counts[""] == 0 && most-least <= 1 {
				t.Logf("partition stream leaders %s: %v", when, leaders)
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("partition stream leaders %s not spread within a minute: %v", when, leaders)
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	waitSpread("at the start")

	seed := uint64(time.Now().UnixNano())
	t.Logf("workload seed %d", seed)
	w := newWorkload(events, ads, visitors, seed)
	load := startLoad(t, w, c.base, workers, perSecond)
	// Each fault must strike while events are still being posted.
	underLoad := func(what string) {
		t.Helper()
		if n := load.answered.Load(); n >= events-workers {
			t.Fatalf("%s came after the load (%d answers): the test did not exercise it", what, n)
		}
	}

	load.waitAnswers(t, events/10, "the meta leader's kill")
	meta := cluster.node(cluster.waitMetaLeader(""))
	meta.proc.kill(t)
	underLoad("the meta leader's kill")
	next := cluster.waitMetaLeader(meta.name)
	t.Logf("killed %s, the meta leader, after %d answers; %s leads now", meta.name, load.answered.Load(), next)
	cluster.start(meta)

	load.waitAnswers(t, events*3/10, "the stream leader's kill")
	stream := store.EventStreamName(0)
	var lead *natsNode
	for deadline := time.Now().Add(time.Minute); lead == nil; time.Sleep(100 * time.Millisecond) {
		if l := streamLeader(js, stream); l != "" {
			lead = cluster.node(l)
		} else if time.Now().After(deadline) {
			t.Fatalf("%s has no leader", stream)
		}
	}
	lead.proc.kill(t)
	underLoad("the stream leader's kill")
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if l := streamLeader(js, stream); l != "" && l != lead.name {
			t.Logf("killed %s, the leader of %s, after %d answers; %s leads it now", lead.name, stream, load.answered.Load(), l)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s got no new leader within a minute of %s's kill", stream, lead.name)
		}
	}
	cluster.start(lead)

	load.waitAnswers(t, events/2, "the aggregator's kill")
	aggregators[0].kill(t)
	underLoad("the aggregator's kill")
	t.Logf("killed an aggregator after %d answers", load.answered.Load())
	<-load.done

	accepted, spooled := checkAnswers(t, load.answers)
	t.Logf("answers: %d accepted, %d spooled", accepted, spooled)
	if t.Failed() {
		t.FailNow()
	}
	took := waitSettled(t, c, w, apiEnv, 3*time.Minute)
	t.Logf("analytics exact, spool drained and archive complete %s after the load", took.Round(time.Millisecond))
	// The invalid traffic too, across an aggregator killed mid-load: every
	// ad's valid and invalid counts by reason as the reference decides them
	// from the streams in stream order.
	want, _ := referenceCounts(t, js, partitions)
	waitReference(t, c, want)
	waitSpread("after the restarts")
	for i, p := range []*proc{api, aggregators[1]} {
		select {
		case err := <-p.exited:
			p.reaped = true
			t.Errorf("process %d exited on its own: %v", i, err)
		default:
		}
	}
}
