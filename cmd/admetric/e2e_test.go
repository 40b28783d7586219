package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/config"
	"github.com/admetric/admetric/store/postgres"
	"github.com/admetric/admetric/store/storetest"
)

const testToken = "e2e-admin-token"

// testDataDir is a DATA_DIR the postgres user can reach: t.TempDir is root-only.
func testDataDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "admetric-e2e-*")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func testEnv(dataDir string) map[string]string {
	return map[string]string{
		"HTTP_ADDR":   "127.0.0.1:0",
		"NATS_LISTEN": "127.0.0.1:0",
		"DATA_DIR":    dataDir,
		"ADMIN_TOKEN": testToken,
		"LOG_LEVEL":   "warn",
	}
}

func lookupIn(env map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := env[k]; return v, ok }
}

// startTestDaemon runs the whole service in-process on random ports; its
// every answer is checked against the OpenAPI document (startCheckedDaemon).
func startTestDaemon(t testing.TB, env map[string]string) *daemon {
	t.Helper()
	cfg, err := config.Load(lookupIn(withRateLimitsOff(env)))
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: cfg.LogLevel}))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d, err := startCheckedDaemon(t, ctx, cfg, roleAll, logger)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			stopTestDaemon(t, d)
		}
	})
	return d
}

// httpAddr is where d's HTTP listens.
func (d *daemon) httpAddr() string { return d.httpLn.Addr().String() }

func stopTestDaemon(t testing.TB, d *daemon) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
}

type testLogWriter struct{ t testing.TB }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

type client struct {
	t    *testing.T
	base string
}

func (c client) do(method, path, token, contentType string, body []byte) (int, map[string]any) {
	c.t.Helper()
	req, err := http.NewRequest(method, c.base+path, bytes.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("User-Agent", "e2e-player/1.0")
	resp, err := c.httpClient().Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &out); err != nil {
			c.t.Fatalf("%s %s: status %d, body not a JSON object: %q", method, path, resp.StatusCode, raw)
		}
	}
	return resp.StatusCode, out
}

func (c client) postJSON(path string, body any) (int, map[string]any) {
	c.t.Helper()
	b, err := json.Marshal(body)
	if err != nil {
		c.t.Fatal(err)
	}
	return c.do(http.MethodPost, path, "", "application/json", b)
}

// analytics polls the one-ad analytics until cond holds or 15 s pass, and
// returns the last answer and how long it took.
func (c client) analytics(query string, cond func(ad map[string]any) bool) (map[string]any, time.Duration) {
	c.t.Helper()
	start := time.Now()
	var last map[string]any
	for time.Since(start) < 15*time.Second {
		status, body := c.do(http.MethodGet, "/ads/analytics?"+query, "", "", nil)
		if status != http.StatusOK {
			c.t.Fatalf("analytics: status %d: %v", status, body)
		}
		last = body
		ads := body["ads"].([]any)
		if len(ads) == 1 && cond(ads[0].(map[string]any)) {
			return body, time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatalf("analytics never satisfied the condition; last answer: %v", last)
	return nil, 0
}

func num(m map[string]any, k string) float64 {
	v, _ := m[k].(float64)
	return v
}

// TestEndToEnd drives the whole service in-process: ad management, events over
// HTTP and over NATS, analytics and the archive, and the answers to bad input.
func TestEndToEnd(t *testing.T) {
	d := startTestDaemon(t, testEnv(testDataDir(t)))
	c := client{t: t, base: "http://" + d.httpAddr()}

	// Ad management.
	ad := map[string]any{"id": "e2e-ad", "title": "E2E ad", "advertiser": "Tests", "duration_seconds": 15}
	adJSON, _ := json.Marshal(ad)
	if status, _ := c.do(http.MethodPost, "/ads", "", "application/json", adJSON); status != http.StatusUnauthorized {
		t.Fatalf("create without token: status %d, want 401", status)
	}
	if status, _ := c.do(http.MethodPost, "/ads", "wrong", "application/json", adJSON); status != http.StatusUnauthorized {
		t.Fatalf("create with a wrong token: status %d, want 401", status)
	}
	if status, body := c.do(http.MethodPost, "/ads", testToken, "application/json", adJSON); status != http.StatusCreated || body["id"] != "e2e-ad" {
		t.Fatalf("create: status %d body %v", status, body)
	}
	if status, _ := c.do(http.MethodPost, "/ads", testToken, "application/json", adJSON); status != http.StatusConflict {
		t.Fatalf("create twice: status %d, want 409", status)
	}
	if status, body := c.do(http.MethodGet, "/ads/e2e-ad", "", "", nil); status != http.StatusOK || body["title"] != "E2E ad" {
		t.Fatalf("get: status %d body %v", status, body)
	}
	if status, body := c.do(http.MethodGet, "/ads?limit=2", "", "", nil); status != http.StatusOK || num(body, "total") != 5 || len(body["ads"].([]any)) != 2 {
		t.Fatalf("list: status %d body %v (want 4 demo ads + 1, 2 on the page)", status, body)
	}

	// Impressions from four visitors, clicks from three, over HTTP.
	for i := range 10 {
		status, body := c.postJSON("/ads/impression", map[string]any{"ad_id": "e2e-ad", "ip": fmt.Sprintf("198.51.100.%d", 1+i%4)})
		if status != http.StatusAccepted || body["status"] != "accepted" || body["event_id"] == "" {
			t.Fatalf("impression %d: status %d body %v", i, status, body)
		}
	}
	for i, pt := range []float64{2.5, 5, 7.5, 10} {
		status, body := c.postJSON("/ads/click", map[string]any{"ad_id": "e2e-ad", "ip": fmt.Sprintf("198.51.100.%d", 1+i%3), "playback_time": pt})
		if status != http.StatusAccepted {
			t.Fatalf("click %d: status %d body %v", i, status, body)
		}
	}
	// A retried POST with the same event_id is accepted and counted once.
	for range 2 {
		status, body := c.postJSON("/ads/click", map[string]any{"event_id": "retried-click-1", "ad_id": "e2e-ad", "ip": "198.51.100.1", "playback_time": 5})
		if status != http.StatusAccepted || body["event_id"] != "retried-click-1" {
			t.Fatalf("retried click: status %d body %v", status, body)
		}
	}
	// One click from another program, published straight to JetStream with only
	// what the subject does not say.
	nc, err := nats.Connect(d.natsURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(context.Background(), "ads.events.click.e2e-ad",
		[]byte(`{"ip":"198.51.100.9","user_agent":"e2e-player/1.0","playback_time":30}`), jetstream.WithMsgID("nats-click-1")); err != nil {
		t.Fatal(err)
	}

	// 10 impressions; 6 clicks (4 + 1 retried + 1 NATS), of which visitor
	// .1's second and third (within 30 s of its first) are duplicate clicks;
	// visitors .1 .2 .3 .4 .9 with one user agent; playback of the valid
	// clicks (2.5+5+7.5+30)/4 = 11.25.
	body, took := c.analytics("timeframe=1h&ad_id=e2e-ad", func(a map[string]any) bool { return num(a, "clicks")+num(a, "invalid") >= 6 })
	t.Logf("all events visible in analytics %s after the last was accepted", took)
	got := body["ads"].([]any)[0].(map[string]any)
	want := map[string]float64{"impressions": 10, "clicks": 4, "invalid": 2, "unique_visitors": 5, "avg_playback_time": 11.25, "ctr": 0.4}
	for k, v := range want {
		if num(got, k) != v {
			t.Errorf("%s = %v, want %v (answer %v)", k, got[k], v, got)
		}
	}
	if r := got["invalid_by_reason"].(map[string]any); num(r, "duplicate_click") != 2 || num(got, "ivt_rate") != 2.0/16 {
		t.Errorf("invalid by reason %v, ivt_rate %v: want 2 duplicate clicks of 16 events", r, got["ivt_rate"])
	}
	if total := body["total"].(map[string]any); num(total, "clicks") != 4 || num(total, "impressions") != 10 {
		t.Errorf("total = %v, want the one ad's counts", total)
	}
	if status, all := c.do(http.MethodGet, "/ads/analytics?timeframe=1h&ad_id=e2e-ad&include_invalid=true", "", "", nil); status != http.StatusOK ||
		num(all["total"].(map[string]any), "clicks") != 6 || num(all["total"].(map[string]any), "ctr") != 0.6 || all["include_invalid"] != true {
		t.Errorf("include_invalid=true: %d %v, want the 6 clicks and ctr 0.6", status, all["total"])
	}
	for _, tf := range []string{"6h", "24h", "7d", "30d"} {
		body, _ := c.analytics("timeframe="+tf+"&ad_id=e2e-ad", func(a map[string]any) bool { return true })
		a := body["ads"].([]any)[0].(map[string]any)
		if num(a, "clicks") != 4 || num(a, "invalid") != 2 || num(a, "impressions") != 10 || num(a, "unique_visitors") != 5 {
			t.Errorf("timeframe %s: %v, want the same counts as 1h", tf, a)
		}
	}
	// All ads: the demo ads have no events and come after e2e-ad (sorted by clicks).
	if status, body := c.do(http.MethodGet, "/ads/analytics?timeframe=24h", "", "", nil); status != http.StatusOK {
		t.Fatalf("all ads: status %d", status)
	} else if ads := body["ads"].([]any); len(ads) != 5 || ads[0].(map[string]any)["ad_id"] != "e2e-ad" {
		t.Errorf("all ads: %v", ads)
	} else if demo := ads[1].(map[string]any); demo["ctr"] != nil || demo["avg_playback_time"] != nil {
		t.Errorf("an ad without impressions or clicks must have null ctr and avg_playback_time: %v", demo)
	}

	// The archive holds each event once: 10 + 4 + 1 + 1.
	waitArchived(t, d, "e2e-ad", 16)

	// Bad input: a 4xx naming the field, never a 500.
	big := `{"ad_id":"e2e-ad","user_agent":"` + strings.Repeat("x", 70<<10) + `"}`
	badCases := []struct {
		name, path, contentType, body string
		status                        int
		field                         string
	}{
		{"malformed JSON", "/ads/click", "application/json", `{"ad_id":`, 400, ""},
		{"not an object", "/ads/click", "application/json", `[1,2]`, 400, ""},
		{"missing ad_id", "/ads/click", "application/json", `{"playback_time":1}`, 400, "ad_id"},
		{"malformed ad_id", "/ads/click", "application/json", `{"ad_id":"no spaces"}`, 400, "ad_id"},
		{"ad_id not a string", "/ads/click", "application/json", `{"ad_id":7}`, 400, "ad_id"},
		{"unknown ad", "/ads/click", "application/json", `{"ad_id":"nope"}`, 404, "ad_id"},
		{"negative playback_time", "/ads/click", "application/json", `{"ad_id":"e2e-ad","playback_time":-1}`, 400, "playback_time"},
		{"unparsable timestamp", "/ads/click", "application/json", `{"ad_id":"e2e-ad","timestamp":"yesterday"}`, 400, "timestamp"},
		{"future timestamp", "/ads/impression", "application/json", `{"ad_id":"e2e-ad","timestamp":"2999-01-01T00:00:00Z"}`, 400, "timestamp"},
		{"bad ip", "/ads/impression", "application/json", `{"ad_id":"e2e-ad","ip":"999.1.1.1"}`, 400, "ip"},
		{"ip with a zone", "/ads/impression", "application/json", `{"ad_id":"e2e-ad","ip":"fe80::1%eth0"}`, 400, "ip"},
		{"control character in user_agent", "/ads/impression", "application/json", `{"ad_id":"e2e-ad","user_agent":"a\u0000b"}`, 400, "user_agent"},
		{"reserved event_id", "/ads/click", "application/json", `{"ad_id":"e2e-ad","event_id":"$ADMETRIC_EVENTS:1"}`, 400, "event_id"},
		{"type mismatch", "/ads/impression", "application/json", `{"ad_id":"e2e-ad","type":"click"}`, 400, "type"},
		{"invalid_reason from a client", "/ads/click", "application/json", `{"ad_id":"e2e-ad","invalid_reason":"signature"}`, 400, "invalid_reason"},
		{"error_code on a click", "/ads/click", "application/json", `{"ad_id":"e2e-ad","error_code":402}`, 400, "error_code"},
		{"serving_id with a space", "/ads/click", "application/json", `{"ad_id":"e2e-ad","serving_id":"a b"}`, 400, "serving_id"},
		{"body over 64 KiB", "/ads/click", "application/json", big, 413, ""},
		{"not JSON", "/ads/click", "application/xml", `{"ad_id":"e2e-ad"}`, 415, ""},
		{"bad timeframe", "/ads/analytics?timeframe=2w", "", "", 400, "timeframe"},
		{"analytics unknown ad", "/ads/analytics?ad_id=nope", "", "", 404, "ad_id"},
		{"analytics bad ad_id", "/ads/analytics?ad_id=a.b", "", "", 400, "ad_id"},
		{"bad limit", "/ads?limit=0", "", "", 400, "limit"},
		{"unknown ad by id", "/ads/nope", "", "", 404, "id"},
		{"NUL in an ad's id", "/ads/coffee-6s%00", "", "", 404, "id"},
	}
	for _, tc := range badCases {
		t.Run(tc.name, func(t *testing.T) {
			method := http.MethodPost
			if tc.body == "" {
				method = http.MethodGet
			}
			status, body := client{t: t, base: c.base}.do(method, tc.path, "", tc.contentType, []byte(tc.body))
			if status != tc.status {
				t.Fatalf("status %d, want %d (body %v)", status, tc.status, body)
			}
			if msg, _ := body["error"].(string); msg == "" {
				t.Errorf("no error message: %v", body)
			}
			if field, _ := body["field"].(string); field != tc.field {
				t.Errorf("field %q, want %q (body %v)", field, tc.field, body)
			}
		})
	}
	// None of the rejected requests counted.
	body, _ = c.analytics("timeframe=1h&ad_id=e2e-ad", func(a map[string]any) bool { return true })
	if a := body["ads"].([]any)[0].(map[string]any); num(a, "clicks") != 4 || num(a, "invalid") != 2 || num(a, "impressions") != 10 {
		t.Errorf("after bad input: %v, want the counts unchanged", a)
	}

	// A long non-ASCII User-Agent header is cut to fit, on a character
	// boundary, and the event is counted and archived like any other.
	req, _ := http.NewRequest(http.MethodPost, c.base+"/ads/click", strings.NewReader(`{"ad_id":"e2e-ad","ip":"198.51.100.1"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", strings.Repeat("€", 400))
	if resp, err := http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("click with a long user agent: status %d", resp.StatusCode)
	}
	c.analytics("timeframe=1h&ad_id=e2e-ad", func(a map[string]any) bool { return num(a, "clicks") == 5 })
	waitArchived(t, d, "e2e-ad", 17)

	// An ad cannot take the name of a route under /ads.
	reserved, _ := json.Marshal(map[string]any{"id": "analytics", "title": "x"})
	if status, body := c.do(http.MethodPost, "/ads", testToken, "application/json", reserved); status != http.StatusBadRequest || body["field"] != "id" {
		t.Fatalf("create an ad named analytics: status %d body %v, want 400 on id", status, body)
	}

	// Update and delete.
	upd, _ := json.Marshal(map[string]any{"title": "E2E ad, renamed"})
	if status, body := c.do(http.MethodPut, "/ads/e2e-ad", testToken, "application/json", upd); status != http.StatusOK || body["title"] != "E2E ad, renamed" {
		t.Fatalf("update: status %d body %v", status, body)
	}
	if status, _ := c.do(http.MethodDelete, "/ads/e2e-ad", testToken, "", nil); status != http.StatusNoContent {
		t.Fatalf("delete: status %d", status)
	}
	if status, _ := c.postJSON("/ads/click", map[string]any{"ad_id": "e2e-ad"}); status != http.StatusNotFound {
		t.Fatalf("click on a deleted ad: status %d, want 404", status)
	}
	if status, body := c.do(http.MethodGet, "/readyz", "", "", nil); status != http.StatusOK || body["ready"] != true {
		t.Fatalf("readyz: status %d body %v", status, body)
	}
}

func waitArchived(t *testing.T, d *daemon, adID string, want int64) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var n int64
	for time.Now().Before(deadline) {
		var err error
		n, err = d.db.NewSelect().Model((*postgres.ArchivedEvent)(nil)).Where("ad_id = ?", adID).Count(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if n == want {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("archive holds %d events of %s, want %d", n, adID, want)
}

// TestAdManagementDisabled: without ADMIN_TOKEN, management answers 403.
func TestAdManagementDisabled(t *testing.T) {
	env := testEnv(testDataDir(t))
	delete(env, "ADMIN_TOKEN")
	d := startTestDaemon(t, env)
	c := client{t: t, base: "http://" + d.httpAddr()}
	body, _ := json.Marshal(map[string]any{"id": "x", "title": "x"})
	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		path := "/ads/x"
		if method == http.MethodPost {
			path = "/ads"
		}
		if status, resp := c.do(method, path, "anything", "application/json", body); status != http.StatusForbidden {
			t.Errorf("%s %s: status %d, want 403 (%v)", method, path, status, resp)
		}
	}
}

// TestExternalServers: with NATS_URL and DATABASE_URL (or the DB_* parts) the
// service uses those servers and starts none of its own.
func TestExternalServers(t *testing.T) {
	natsSrv := storetest.NATSPartitions(t, 8) // the service's default PARTITIONS
	pg := storetest.Postgres(t)
	u, err := url.Parse(pg.DSN())
	if err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		name string
		db   map[string]string
	}{
		{"DATABASE_URL", map[string]string{"DATABASE_URL": pg.DSN()}},
		{"DB parts", map[string]string{"DB_HOST": u.Hostname(), "DB_PORT": u.Port(), "DB_USER": u.User.Username(), "DB_NAME": strings.TrimPrefix(u.Path, "/")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			env := testEnv(dir)
			env["NATS_URL"] = natsSrv.ClientURL()
			for k, v := range tc.db {
				env[k] = v
			}
			d := startTestDaemon(t, env)
			if d.embedded != nil || d.pg != nil {
				t.Fatal("started its own NATS or PostgreSQL despite the configuration")
			}
			c := client{t: t, base: "http://" + d.httpAddr()}
			if status, body := c.postJSON("/ads/click", map[string]any{"ad_id": "coffee-6s", "event_id": "ext-" + tc.name[:2], "ip": fmt.Sprintf("192.0.2.%d", 1+i)}); status != http.StatusAccepted {
				t.Fatalf("click: status %d body %v", status, body)
			}
			// Both runs share the servers: the second sees the first's click too.
			c.analytics("timeframe=1h&ad_id=coffee-6s", func(a map[string]any) bool { return num(a, "clicks") == float64(i+1) })
			// No NATS or PostgreSQL store: only the secrets and the intake's spool.
			var names []string
			entries, _ := os.ReadDir(dir)
			for _, e := range entries {
				names = append(names, e.Name())
			}
			if !slices.Equal(names, []string{"pixel_secret", "spool", "visitor_salt"}) {
				t.Errorf("DATA_DIR holds %v, want only the pixel secret, the spool and the visitor salt", names)
			}
			stopTestDaemon(t, d)
		})
	}
}

// TestInvalidConfigurationExits: a bad value stops the start with exit code 2
// and a message naming the variable.
func TestInvalidConfigurationExits(t *testing.T) {
	for name, env := range map[string]map[string]string{
		"LOG_LEVEL": {"LOG_LEVEL": "loud"},
		"HTTP_ADDR": {"HTTP_ADDR": "nowhere"},
		"NATS_URL":  {"NATS_URL": "http://example.com"},
	} {
		var stderr bytes.Buffer
		if code := run(context.Background(), nil, lookupIn(env), io.Discard, &stderr); code != 2 {
			t.Errorf("%s: exit code %d, want 2", name, code)
		}
		if !strings.Contains(stderr.String(), name) {
			t.Errorf("%s: message does not name the variable: %q", name, stderr.String())
		}
	}
}

// TestBadDatabaseURLExits: a DATABASE_URL the driver cannot use (it would
// panic) stops the start with a message naming the variable, not a crash.
func TestBadDatabaseURLExits(t *testing.T) {
	env := testEnv(t.TempDir())
	env["NATS_LISTEN"] = ""
	env["DATABASE_URL"] = "postgres://u@127.0.0.1:1/db?sslmode=bogus"
	var stderr bytes.Buffer
	if code := run(context.Background(), nil, lookupIn(env), io.Discard, &stderr); code != 1 {
		t.Errorf("exit code %d, want 1; stderr:\n%s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "DATABASE_URL") || strings.Contains(stderr.String(), "panic") {
		t.Errorf("want an error naming DATABASE_URL and no panic; stderr:\n%s", stderr.String())
	}
}

// TestPostgresOutage stops PostgreSQL in the middle of a load: intake and
// analytics keep working, and once PostgreSQL is back the archive holds every
// event exactly once.
func TestPostgresOutage(t *testing.T) {
	pg := storetest.Postgres(t)
	env := testEnv(t.TempDir())
	env["DATABASE_URL"] = pg.DSN()
	d := startTestDaemon(t, env)
	c := client{t: t, base: "http://" + d.httpAddr()}

	const perPhase = 1000
	post := func(phase int) {
		t.Helper()
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Go(func() {
				for i := w; i < perPhase; i += 8 {
					body := fmt.Sprintf(`{"event_id":"pg-%d-%d","ad_id":"coffee-6s","ip":"198.51.100.%d","user_agent":%q}`, phase, i, i%250, personUA)
					resp, err := http.Post(c.base+"/ads/impression", "application/json", strings.NewReader(body))
					if err != nil {
						t.Errorf("impression: %v", err)
						return
					}
					resp.Body.Close()
					if resp.StatusCode != http.StatusAccepted {
						t.Errorf("impression during phase %d: status %d", phase, resp.StatusCode)
						return
					}
				}
			})
		}
		wg.Wait()
	}
	post(1)
	if err := pg.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	post(2)
	body, _ := c.analytics("timeframe=1h&ad_id=coffee-6s", func(a map[string]any) bool { return num(a, "impressions") == 2*perPhase })
	t.Logf("during the outage analytics answer: %v impressions", body["ads"].([]any)[0].(map[string]any)["impressions"])
	if status, ready := c.do(http.MethodGet, "/readyz", "", "", nil); status != http.StatusServiceUnavailable {
		t.Errorf("readyz during the outage: %d %v, want 503", status, ready)
	}
	// The ads are served from the in-memory catalog.
	if status, list := c.do(http.MethodGet, "/ads?limit=2", "", "", nil); status != http.StatusOK || len(list["ads"].([]any)) != 2 || num(list, "total") < 4 {
		t.Errorf("GET /ads during the outage: %d %v, want 2 of the demo ads and their total", status, list)
	}
	if status, ad := c.do(http.MethodGet, "/ads/coffee-6s", "", "", nil); status != http.StatusOK || ad["id"] != "coffee-6s" || ad["title"] == "" {
		t.Errorf("GET /ads/coffee-6s during the outage: %d %v", status, ad)
	}
	if err := pg.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	post(3)
	var rows, distinct int
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		err := d.db.NewRaw("SELECT count(*), count(DISTINCT event_id) FROM events").Scan(context.Background(), &rows, &distinct)
		if err == nil && rows == 3*perPhase || time.Now().After(deadline) {
			break
		}
	}
	if rows != 3*perPhase || distinct != rows {
		t.Fatalf("archive holds %d rows (%d distinct), want %d", rows, distinct, 3*perPhase)
	}
}
