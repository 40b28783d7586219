package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/aggregator"
	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/postgres"
	"github.com/admetric/admetric/store/storetest"
)

// TestTwoAggregatorProcesses runs the roles apart against one NATS and one
// PostgreSQL: an `admetric api` process and two `admetric aggregator`
// processes. Half the events are folded, the aggregator holding the partitions
// is SIGKILLed, the other takes them over, and the totals are exact: each
// ad's valid clicks and invalid ones by reason equal a reference computed
// apart from the events in stream order (referenceCounts). Each visitor
// clicks its ad 25 times a phase, so most clicks are duplicates or beyond
// the rate, decided by the rules' state the second aggregator takes over.
func TestTwoAggregatorProcesses(t *testing.T) {
	const ads, perPhase = 20, 5000
	bin := buildBinary(t)
	natsSrv := storetest.NATSPartitions(t, 4)
	pg := storetest.Postgres(t)
	common := map[string]string{
		"NATS_URL":     natsSrv.ClientURL(),
		"DATABASE_URL": pg.DSN(),
		"VISITOR_SALT": "roles-test-salt-roles-test-salt-0123",
		"PARTITIONS":   "4",
		"ADMIN_TOKEN":  testToken,
		"LOG_LEVEL":    "info",
	}
	procEnv := func() map[string]string {
		env := map[string]string{"HTTP_ADDR": "127.0.0.1:0", "DATA_DIR": t.TempDir()}
		for k, v := range common {
			env[k] = v
		}
		return env
	}
	apiProc := startRole(t, bin, "api", procEnv())
	c := client{t: t, base: "http://" + apiProc.httpAddr}
	for i := range ads {
		body, _ := json.Marshal(map[string]any{"id": fmt.Sprintf("roles-ad-%02d", i), "title": "roles"})
		if status, resp := c.do(http.MethodPost, "/ads", testToken, "application/json", body); status != http.StatusCreated {
			t.Fatalf("create ad: %d %v", status, resp)
		}
	}
	// The first aggregator takes every partition; the second waits.
	first := startRole(t, bin, "aggregator", procEnv())
	startRole(t, bin, "aggregator", procEnv())

	js, _ := storetest.JetStream(t, natsSrv)
	publishPhase := func(phase int) {
		for i := range perPhase {
			ad := fmt.Sprintf("roles-ad-%02d", i%ads)
			body := fmt.Sprintf(`{"ip":"192.0.2.%d","user_agent":%q,"playback_time":1}`, i%200, personUA)
			if _, err := js.PublishAsync("ads.events.click."+ad, []byte(body), jetstream.WithMsgID(fmt.Sprintf("roles-%d-%d", phase, i))); err != nil {
				t.Fatal(err)
			}
			if i%1000 == 999 { // stay under the client's bound on acks in flight
				select {
				case <-js.PublishAsyncComplete():
				case <-time.After(30 * time.Second):
					t.Fatal("publishing stalled")
				}
			}
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(30 * time.Second):
			t.Fatal("publishing did not complete")
		}
	}
	waitTotals := func() {
		t.Helper()
		want, _ := referenceCounts(t, js, 4)
		waitReference(t, c, want)
	}

	publishPhase(1)
	waitTotals()
	first.kill(t)
	publishPhase(2)
	waitTotals()
	// Every partition's consumer has acknowledged its last event: nothing can
	// come again and be counted twice.
	for p := range 4 {
		waitAcknowledged(t, js, store.EventStreamName(p), aggregator.RollupConsumerName(p))
	}
	waitTotals()

	// The archive holds each event once (it may still be catching up after the kill).
	db, err := postgres.Open(context.Background(), pg.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var rows int
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if err := db.NewRaw("SELECT count(*) FROM events").Scan(context.Background(), &rows); err != nil {
			t.Fatal(err)
		}
		if rows == 2*perPhase || time.Now().After(deadline) {
			break
		}
	}
	if rows != 2*perPhase {
		t.Fatalf("archive holds %d rows, want %d", rows, 2*perPhase)
	}
}

// startRole starts bin with a role subcommand.
func startRole(t *testing.T, bin, role string, env map[string]string) *proc {
	t.Helper()
	return startProcArgs(t, bin, []string{role}, env)
}

// waitAcknowledged waits until the durable consumer name of stream has
// nothing pending, nothing awaiting an ack, and its ack floor at the
// stream's last event (0 when there is none).
func waitAcknowledged(t *testing.T, js jetstream.JetStream, stream, name string) {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	var info *jetstream.ConsumerInfo
	var last uint64
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		cons, err := s.Consumer(ctx, name)
		if err == nil {
			info, err = cons.Info(ctx)
		}
		if err == nil {
			var si *jetstream.StreamInfo
			if si, err = s.Info(ctx); err == nil {
				last = si.State.LastSeq
			}
		}
		if err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Stream == last {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer %s of %s: not everything acknowledged (last event %d, info %+v, err %v)", name, stream, last, info, err)
		}
	}
}
