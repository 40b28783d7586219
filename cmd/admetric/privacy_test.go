package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/config"
	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/devserver"
	"github.com/admetric/admetric/store/postgres"
	"github.com/admetric/admetric/store/storetest"
)

// syncBuffer is a log destination read while the service writes to it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestIPTruncation runs the service with IP_TRUNCATE on and sends it
// viewers' addresses every way they come: JSON events, a batch, VAST
// pixels (through a trusted proxy's X-Forwarded-For), an event spooled
// while NATS is down, an event published straight to NATS, and a poison
// message that is dead-lettered. No full address is then in the archive,
// the spool files, the dead-letter stream or the logs (at debug level),
// while unique visitors still count full addresses: two of one /24 are two.
func TestIPTruncation(t *testing.T) {
	ctx := context.Background()
	const partitions = 4
	natsDir, natsListen := t.TempDir(), "127.0.0.1:"+freePort(t)
	startNATS := func() *devserver.NATS {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		srv, err := devserver.StartNATS(sctx, storetest.NATSOptions(natsDir, natsListen, partitions))
		if err != nil {
			t.Fatal(err)
		}
		return srv
	}
	ns := startNATS()
	t.Cleanup(func() { ns.Shutdown() })
	pg := storetest.Postgres(t)
	dataDir := testDataDir(t)
	env := outageEnv("nats://"+natsListen, dataDir, pg.DSN())
	env["IP_TRUNCATE"] = "true"
	env["TRUSTED_PROXIES"] = "127.0.0.1"
	env["LOG_LEVEL"] = "debug"
	env["PUBLISH_TIMEOUT"] = "500ms"
	cfg, err := config.Load(lookupIn(withRateLimitsOff(env)))
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	d, err := startCheckedDaemon(t, sctx, cfg, roleAll, logger)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			stopTestDaemon(t, d)
		}
	})
	defer func() {
		if t.Failed() {
			t.Logf("the service's log:\n%s", logs.String())
		}
	}()
	c := client{t: t, base: "http://" + d.httpAddr()}

	const ad = "car-launch-20s" // a demo ad
	full := []string{"198.51.100.17", "198.51.100.18", "198.51.100.19", "2001:db8:1234:5678::9", "198.51.100.20", "198.51.100.21", "198.51.100.22", "198.51.100.23"}
	// The addresses' full forms as they could be written anywhere; the
	// truncated ones are 198.51.100.0, ::ffff:198.51.100.0, 2001:db8:1234::.
	leaks := append(append([]string{}, full...), "2001:db8:1234:5678", "5678::9", "cb00:7113")
	checkNoLeak := func(where, text string) {
		t.Helper()
		for _, a := range leaks {
			if strings.Contains(text, a) {
				t.Errorf("%s holds the full address %s", where, a)
			}
		}
	}

	// JSON: two viewers of one /24.
	for i, ip := range full[:2] {
		if status, body := c.postJSON("/ads/impression", map[string]any{"ad_id": ad, "event_id": fmt.Sprintf("json-%d", i), "ip": ip}); status != http.StatusAccepted {
			t.Fatalf("impression from %s: %d %v", ip, status, body)
		}
	}
	// A client may not bring its own visitor hash.
	if status, body := c.postJSON("/ads/impression", map[string]any{"ad_id": ad, "ip": full[0], "visitor": "0123456789abcdef"}); status != http.StatusBadRequest || body["field"] != "visitor" {
		t.Fatalf("impression with a visitor: %d %v, want 400 on visitor", status, body)
	}
	// A batch: a viewer seen already, an IPv4-mapped and an IPv6 one.
	batch := []map[string]any{
		{"type": "impression", "ad_id": ad, "event_id": "batch-0", "ip": full[0]},
		{"type": "impression", "ad_id": ad, "event_id": "batch-1", "ip": "::ffff:" + full[2]},
		{"type": "impression", "ad_id": ad, "event_id": "batch-2", "ip": full[3]},
		{"type": "impression", "ad_id": ad, "event_id": "batch-3", "ip": full[0], "visitor": "0123456789abcdef"},
	}
	if status, body := c.postJSON("/ads/events", batch); status != http.StatusOK || num(body, "accepted") != 3 || num(body, "rejected") != 1 {
		t.Fatalf("batch: %d %v", status, body)
	}
	// VAST pixels of the other demo ad, through the trusted proxy.
	resp, err := http.Get(c.base + "/vast/coffee-6s")
	if err != nil {
		t.Fatal(err)
	}
	var doc bytes.Buffer
	_, _ = doc.ReadFrom(resp.Body)
	resp.Body.Close()
	vast := parseVAST(t, doc.Bytes())
	for _, u := range []string{fill(vast.texts["Impression"][0], "-1"), fill(vast.tracking["start"], "00:00:01.000")} {
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		req.Header.Set("X-Forwarded-For", full[4])
		req.Header.Set("User-Agent", "e2e-player/1.0")
		resp, err := c.httpClient().Do(req)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("pixel %s: %v %v", u, resp, err)
		}
		resp.Body.Close()
	}

	// NATS down: the event is spooled, its address truncated in the spool.
	ns.Shutdown()
	if status, body := c.postJSON("/ads/impression", map[string]any{"ad_id": ad, "event_id": "spooled-0", "ip": full[5]}); status != http.StatusAccepted || body["status"] != "spooled" {
		t.Fatalf("impression while NATS is down: %d %v, want spooled", status, body)
	}
	var spooled bytes.Buffer
	err = filepath.WalkDir(filepath.Join(dataDir, "spool"), func(path string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		spooled.Write(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(spooled.String(), "spooled-0") || !strings.Contains(spooled.String(), `"ip":"198.51.100.0"`) {
		t.Fatalf("the spool does not hold the spooled event with its truncated address: %q", spooled.String())
	}
	checkNoLeak("the spool", spooled.String())
	ns = startNATS()

	// Another service publishes straight to NATS: one event with a full
	// address, one poison message with another.
	nc, err := nats.Connect("nats://" + natsListen)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	publish := func(id string, ev map[string]any) {
		t.Helper()
		data, _ := json.Marshal(ev)
		msg := nats.NewMsg("ads.events.impression." + ad)
		msg.Data = data
		msg.Header.Set(jetstream.MsgIDHeader, id)
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if _, err := js.PublishMsg(pctx, msg); err != nil {
			t.Fatalf("publish %s: %v", id, err)
		}
	}
	publish("direct-0", map[string]any{"type": "impression", "ad_id": ad, "ip": full[7], "user_agent": "e2e-player/1.0"})
	publish("poison-0", map[string]any{"type": "impression", "ad_id": "coffee-6s", "IP": full[6]})

	// Unique visitors count the six full addresses of ad's seven
	// impressions, though four share one /24 and the archive's address.
	var last map[string]any
	for deadline := time.Now().Add(60 * time.Second); ; {
		status, body := c.do(http.MethodGet, "/ads/analytics?timeframe=24h&ad_id="+ad, "", "", nil)
		if ads, _ := body["ads"].([]any); status == http.StatusOK && len(ads) == 1 {
			last = ads[0].(map[string]any)
			if num(last, "impressions") == 7 && num(last, "unique_visitors") == 6 && body["stale"] == false {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("analytics of %s: last %d %v; want 7 impressions by 6 unique visitors", ad, status, body)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The archive: every event, with its visitor hash and no full address.
	var rows []struct {
		EventID string `bun:"event_id"`
		IP      string `bun:"ip"`
		Visitor *int64 `bun:"visitor"`
		Row     string `bun:"row"`
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		rows = rows[:0]
		if err := d.db.NewRaw(`SELECT event_id, host(ip) AS ip, visitor, events::text AS row FROM events ORDER BY event_id`).Scan(ctx, &rows); err != nil {
			t.Fatal(err)
		}
		if len(rows) >= 9 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(rows) != 9 {
		t.Fatalf("archived %d events, want 9: %+v", len(rows), rows)
	}
	for _, r := range rows {
		checkNoLeak("archive row "+r.EventID, r.Row)
		if r.Visitor == nil || *r.Visitor == 0 {
			t.Errorf("archive row %s has no visitor hash: %s", r.EventID, r.Row)
		}
		switch r.IP {
		case "198.51.100.0", "::ffff:198.51.100.0", "2001:db8:1234::":
		default:
			t.Errorf("archive row %s: address %q", r.EventID, r.IP)
		}
	}

	// The dead-letter stream: the poison message, its address truncated.
	dlq, err := d.js.Stream(ctx, store.DeadLetterStream)
	if err != nil {
		t.Fatal(err)
	}
	var dead strings.Builder
	for deadline := time.Now().Add(30 * time.Second); ; {
		info, err := dlq.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs > 0 || time.Now().After(deadline) {
			for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
				m, err := dlq.GetMsg(ctx, seq)
				if err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(&dead, "%s %v %s\n", m.Subject, m.Header, m.Data)
			}
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(dead.String(), `"IP":"198.51.100.0"`) {
		t.Fatalf("the dead-letter stream does not hold the poison message with its address truncated: %s", dead.String())
	}
	checkNoLeak("the dead-letter stream", dead.String())

	stopTestDaemon(t, d) // so that the log is the whole run's
	stopped = true
	checkNoLeak("the log", logs.String())
	if !strings.Contains(logs.String(), "poison message moved to the dead-letter stream") {
		t.Errorf("the log lacks the dead-lettering; it is not the log of the whole run")
	}
}

// TestArchiveRetention: events of four months, sent through the intake and
// folded and archived; the partition keeper with a retention that has two
// of those months expire drops their partitions whole: the other months'
// archived rows are intact, and the analytics (the rollups) answer the same
// before and after.
func TestArchiveRetention(t *testing.T) {
	ctx := context.Background()
	d := startTestDaemon(t, testEnv(testDataDir(t)))
	c := client{t: t, base: "http://" + d.httpAddr()}
	const ad = "car-launch-20s"
	now := time.Now().UTC()
	thisMonth := postgres.MonthPartition(now).From
	var sent int
	for k := range 4 { // this month and the three before
		at := thisMonth.AddDate(0, -k, 0).Add(36 * time.Hour)
		if k == 0 {
			at = now.Add(-time.Minute)
		}
		for i := range 3 {
			ev := map[string]any{"ad_id": ad, "event_id": fmt.Sprintf("m%d-%d", k, i), "ip": fmt.Sprintf("192.0.2.%d", 10*k+i),
				"timestamp": at.Add(time.Duration(i) * time.Minute).Format(time.RFC3339)}
			if status, body := c.postJSON("/ads/impression", ev); status != http.StatusAccepted {
				t.Fatalf("impression %v: %d %v", ev, status, body)
			}
			sent++
		}
	}
	from, to := thisMonth.AddDate(0, -4, 0), now.Add(time.Hour).Truncate(time.Hour)
	query := fmt.Sprintf("from=%s&to=%s&ad_id=%s&interval=day", from.Format(time.RFC3339), to.Format(time.RFC3339), ad)
	analytics := func() string {
		t.Helper()
		status, body := c.do(http.MethodGet, "/ads/analytics?"+query, "", "", nil)
		if status != http.StatusOK {
			t.Fatalf("analytics: %d %v", status, body)
		}
		delete(body, "as_of")
		b, _ := json.Marshal(body)
		return string(b)
	}
	archived := func() []string {
		t.Helper()
		var rows []string
		if err := d.db.NewRaw(`SELECT events::text FROM events ORDER BY event_id`).Scan(ctx, &rows); err != nil {
			t.Fatal(err)
		}
		return rows
	}
	var before []string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if before = archived(); len(before) == sent || time.Now().After(deadline) {
			break
		}
	}
	if len(before) != sent {
		t.Fatalf("archived %d of %d events", len(before), sent)
	}
	c.analytics(query, func(a map[string]any) bool { return num(a, "impressions") == float64(sent) })
	rollups := analytics()

	// The retention ends at the first of last month: the two months before
	// it expire.
	keeper := d.partitionKeeper()
	keeper.Retention = time.Since(thisMonth.AddDate(0, -1, 0))
	if err := keeper.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	parts, err := postgres.NewArchive(d.db).Partitions(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range parts {
		if p.To.Before(thisMonth) {
			t.Errorf("partition %s [%v, %v) is still there", p.Name, p.From, p.To)
		}
	}
	after := archived()
	var kept []string
	for _, r := range before {
		if strings.HasPrefix(r, "(m0-") || strings.HasPrefix(r, "(m1-") {
			kept = append(kept, r)
		}
	}
	if strings.Join(after, "\n") != strings.Join(kept, "\n") || len(kept) != 6 {
		t.Fatalf("archive after the drop:\n%s\nwant the rows of this month and the last:\n%s", strings.Join(after, "\n"), strings.Join(kept, "\n"))
	}
	if got := analytics(); got != rollups {
		t.Fatalf("analytics after the drop:\n%s\nbefore:\n%s", got, rollups)
	}
}
