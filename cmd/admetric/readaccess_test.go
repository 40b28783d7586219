package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/admetric/admetric/config"
)

const testReadToken = "e2e-analytics-token-0123456789"

// lockedLog keeps what a daemon logs, for a test to read, and passes it on
// to the test's log.
type lockedLog struct {
	t  testing.TB
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.b.Write(p)
	l.mu.Unlock()
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startLoggedDaemon starts the whole service with env, logging at info into
// the returned log (the "starting" line with the configuration included, as
// main logs it).
func startLoggedDaemon(t *testing.T, env map[string]string) (*daemon, *lockedLog) {
	t.Helper()
	cfg, err := config.Load(lookupIn(env))
	if err != nil {
		t.Fatal(err)
	}
	logs := &lockedLog{t: t}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	logger.Info("starting", "command", "serve", "config", cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d, err := startCheckedDaemon(t, ctx, cfg, roleAll, logger)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() { stopTestDaemon(t, d) })
	return d, logs
}

// TestReadAccessDaemon: with ANALYTICS_TOKEN set, the service's reads need a
// token and a scoped one made through POST /tokens reads its ad alone, while
// what players and monitors use stays public; no token reaches the logs.
// With reads open on an address beyond loopback, start-up warns once.
func TestReadAccessDaemon(t *testing.T) {
	env := testEnv(testDataDir(t))
	env["ANALYTICS_TOKEN"] = testReadToken
	env["LOG_LEVEL"] = "info"
	d, logs := startLoggedDaemon(t, env)
	c := client{t: t, base: "http://" + d.httpAddr()}

	if status, body := c.do(http.MethodGet, "/ads/analytics", "", "", nil); status != http.StatusUnauthorized || body["field"] != "Authorization" {
		t.Errorf("analytics without a token: %d %v", status, body)
	}
	if status, _ := c.do(http.MethodGet, "/ads", "", "", nil); status != http.StatusUnauthorized {
		t.Errorf("GET /ads without a token: %d", status)
	}
	if status, body := c.do(http.MethodGet, "/ads", testReadToken, "", nil); status != http.StatusOK || num(body, "total") < 2 {
		t.Errorf("GET /ads with the shared token: %d %v", status, body)
	}
	status, created := c.do(http.MethodPost, "/tokens", testToken, "application/json", []byte(`{"name":"Acme","ad_ids":["summer-sale-15s"]}`))
	scoped, _ := created["token"].(string)
	if status != http.StatusCreated || scoped == "" {
		t.Fatalf("POST /tokens: %d %v", status, created)
	}
	if status, body := c.do(http.MethodGet, "/ads/analytics?timeframe=1h", scoped, "", nil); status != http.StatusOK || num(body, "total_ads") != 1 {
		t.Errorf("scoped analytics: %d %v, want one ad", status, body)
	}
	if status, _ := c.do(http.MethodGet, "/ads/coffee-6s", scoped, "", nil); status != http.StatusForbidden {
		t.Errorf("scoped token, another ad: %d, want 403", status)
	}
	// Public: what players, monitors and the dashboard's page need.
	for _, path := range []string{"/healthz", "/openapi.json", "/", "/vast/summer-sale-15s"} {
		resp, err := c.httpClient().Get(c.base + path)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s without a token: %d, want 200", path, resp.StatusCode)
		}
	}
	if status, _ := c.postJSON("/ads/impression", map[string]any{"ad_id": "summer-sale-15s"}); status != http.StatusAccepted {
		t.Errorf("intake without a token: %d, want 202", status)
	}
	out := logs.String()
	for _, secret := range []string{testReadToken, testToken, scoped} {
		if strings.Contains(out, secret) {
			t.Errorf("the logs hold the secret %q", secret)
		}
	}
	if !strings.Contains(out, "config.ANALYTICS_TOKEN=[redacted]") {
		t.Errorf("the configuration logged does not show ANALYTICS_TOKEN redacted")
	}
	if strings.Contains(out, "readable by anyone") {
		t.Errorf("warned about open reads with ANALYTICS_TOKEN set")
	}

	// Open reads beyond loopback: one warning.
	open := testEnv(testDataDir(t))
	open["HTTP_ADDR"] = "0.0.0.0:0"
	open["LOG_LEVEL"] = "info"
	_, logs = startLoggedDaemon(t, open)
	if n := strings.Count(logs.String(), "readable by anyone"); n != 1 {
		t.Errorf("open reads on 0.0.0.0: %d warnings, want 1", n)
	}
}
