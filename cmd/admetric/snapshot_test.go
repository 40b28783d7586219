package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/admetric/admetric/api/rollupcache"
	"github.com/admetric/admetric/config"
	"github.com/admetric/admetric/store/rollup"
	"github.com/admetric/admetric/store/storetest"
)

// TestAnalyticsFromSnapshotWhileNATSDown: with the external nats-server
// stopped, analytics answer from the snapshot, marked stale with its time;
// the service also starts without NATS and answers so; once NATS is back the
// answers are fresh again and include what was spooled meanwhile.
func TestAnalyticsFromSnapshotWhileNATSDown(t *testing.T) {
	bin := buildBinary(t)
	natsBin := buildNATSServer(t)
	natsPort, natsDir := freePort(t), t.TempDir()
	ns := startNATSServer(t, natsBin, natsPort, natsDir, 4)
	pg := storetest.Postgres(t)
	dataDir := testDataDir(t)
	env := outageEnv(ns.url, dataDir, pg.DSN())
	env["SNAPSHOT_INTERVAL"] = "500ms"
	p := startProc(t, bin, env)
	c := client{t: t, base: "http://" + p.httpAddr}

	const ad = "coffee-6s" // a demo ad
	for i := range 7 {
		if status, body := c.postJSON("/ads/click", map[string]any{"ad_id": ad, "event_id": "snap-" + string(rune('a'+i)), "ip": fmt.Sprintf("192.0.2.%d", 10+i), "playback_time": 2}); status != http.StatusAccepted || body["status"] != "accepted" {
			t.Fatalf("click %d: %d %v", i, status, body)
		}
	}
	query := "timeframe=24h&ad_id=" + ad
	fresh, _ := c.analytics(query, func(a map[string]any) bool { return num(a, "clicks") == 7 })
	if fresh["stale"] != false {
		t.Fatalf("with NATS up: stale %v", fresh["stale"])
	}
	// A live answer is current to about a second (the cache asks the
	// buckets how far they are every second).
	if asOf, err := time.Parse(time.RFC3339Nano, fmt.Sprint(fresh["as_of"])); err != nil || time.Since(asOf) > 30*time.Second {
		t.Fatalf("with NATS up: as_of %v (%v), want within seconds of now", fresh["as_of"], err)
	}
	waitSnapshotClicks(t, env, ad, 7)

	staleAnswer := func(when string, wantClicks float64) time.Time {
		t.Helper()
		status, body := c.do(http.MethodGet, "/ads/analytics?"+query, "", "", nil)
		if status != http.StatusOK {
			t.Fatalf("%s: status %d %v", when, status, body)
		}
		ads := body["ads"].([]any)
		if body["stale"] != true || len(ads) != 1 || num(ads[0].(map[string]any), "clicks") != wantClicks {
			t.Fatalf("%s: stale %v, ads %v; want stale with %v clicks", when, body["stale"], ads, wantClicks)
		}
		asOf, err := time.Parse(time.RFC3339Nano, body["as_of"].(string))
		if err != nil || time.Since(asOf) > time.Minute || asOf.After(time.Now()) {
			t.Fatalf("%s: as_of %v (%v)", when, body["as_of"], err)
		}
		return asOf
	}

	ns.stop(t)
	began := time.Now() // NATS is gone by now: nothing the cache holds is newer
	staleAnswer("NATS down", 7)
	t.Logf("stale answer %s after NATS stopped", time.Since(began).Round(time.Millisecond))
	// Several snapshots written during the outage still say the data is as
	// of no later than when NATS went away.
	waitSnapshotWrites(t, env, 4)
	if asOf := staleAnswer("NATS down for several snapshots", 7); asOf.After(began) {
		t.Fatalf("as_of %v is after NATS went away at %v", asOf, began)
	}
	if status, body := c.postJSON("/ads/click", map[string]any{"ad_id": ad, "event_id": "snap-spooled", "ip": "192.0.2.2", "playback_time": 4}); status != http.StatusAccepted || body["status"] != "spooled" {
		t.Fatalf("click with NATS down: %d %v", status, body)
	}

	// A restart while NATS is still down: the service starts and answers from
	// the snapshot it wrote at shutdown.
	if _, err := p.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("stop: %v", err)
	}
	p = startProc(t, bin, env)
	c = client{t: t, base: "http://" + p.httpAddr}
	if asOf := staleAnswer("started without NATS", 7); asOf.After(began) {
		t.Fatalf("after a restart without NATS: as_of %v is after NATS went away at %v", asOf, began)
	}

	startNATSServer(t, natsBin, natsPort, natsDir, 4)
	back, took := c.analytics(query, func(a map[string]any) bool { return num(a, "clicks") == 8 })
	if back["stale"] != false {
		t.Fatalf("after NATS returned: stale %v", back["stale"])
	}
	t.Logf("fresh again, with the spooled click, %s after NATS restarted", took.Round(time.Millisecond))
}

// waitSnapshotClicks waits until the snapshot file in env's DATA_DIR holds
// want clicks of ad over the last 24 hours.
func waitSnapshotClicks(t *testing.T, env map[string]string, ad string, want uint64) {
	t.Helper()
	layout := serviceLayout(t, env)
	file := rollupcache.NewSnapshotFile(filepath.Join(env["DATA_DIR"], "analytics.snapshot"), layout)
	var got uint64
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if snap, err := file.Read(); err == nil {
			now := time.Now()
			tiling, err := layout.Tile(now.Add(-24*time.Hour), now, now)
			if err != nil {
				t.Fatal(err)
			}
			agg, err := snap.Sum(context.Background(), ad, tiling.Cells)
			if err != nil {
				t.Fatal(err)
			}
			if got = agg.Clicks; got == want {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the snapshot holds %d clicks of %s, want %d", got, ad, want)
		}
	}
}

// waitSnapshotWrites waits until the snapshot file in env's DATA_DIR has
// been replaced n times (each write renames a new file over it).
func waitSnapshotWrites(t *testing.T, env map[string]string, n int) {
	t.Helper()
	path := filepath.Join(env["DATA_DIR"], "analytics.snapshot")
	var last os.FileInfo
	seen := 0
	for deadline := time.Now().Add(time.Minute); seen < n; time.Sleep(20 * time.Millisecond) {
		if fi, err := os.Stat(path); err == nil && (last == nil || !os.SameFile(fi, last)) {
			if last != nil {
				seen++
			}
			last = fi
		}
		if time.Now().After(deadline) {
			t.Fatalf("the snapshot was replaced %d times in a minute, want %d", seen, n)
		}
	}
}

// serviceLayout is the rollup layout of the service run with env.
func serviceLayout(t *testing.T, env map[string]string) rollup.Layout {
	t.Helper()
	cfg, err := config.Load(func(name string) (string, bool) {
		v, ok := env[name]
		return v, ok
	})
	if err != nil {
		t.Fatal(err)
	}
	return rollup.NewLayout(rollup.Retentions{Minute: cfg.MinuteRetention, Hour: cfg.HourRetention, Day: cfg.DayRetention})
}
