package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/admetric/admetric/store/storetest"
)

// viewerUA is a viewer's browser: the events the test sends must count as
// valid traffic, and headless Chromium's own user agent is a bot's.
const viewerUA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"

// TestDashboardInABrowser drives the dashboard in a real headless Chromium
// against the whole service (an external nats-server, a throwaway
// PostgreSQL): the totals, the table and the chart show the events sent, a
// timeframe switch changes them, the keyboard opens one ad and its funnel, an
// ad is created, edited and deleted in the page, with NATS stopped the page
// says its numbers are stale, and offline that the service is unreachable. The page must log no console error or exception. It
// saves screenshots (desktop and phone width) in ADMETRIC_SCREENSHOTS, or in
// a temporary directory it logs.
func TestDashboardInABrowser(t *testing.T) {
	chrome := findChromium(t)
	natsBin := buildNATSServer(t)
	natsPort, natsDir := freePort(t), t.TempDir()
	ns := startNATSServer(t, natsBin, natsPort, natsDir, 4)
	pg := storetest.Postgres(t)
	env := outageEnv(ns.url, testDataDir(t), pg.DSN())
	env["LOG_LEVEL"] = "warn"
	env["SNAPSHOT_INTERVAL"] = "500ms"
	d := startTestDaemon(t, env)
	base := "http://" + d.httpAddr()
	c := client{t: t, base: base}
	shots := os.Getenv("ADMETRIC_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	}

	// Known traffic: within the last hour, dash-a has 5 impressions, a
	// funnel of 4, 3, 3, 2, 2 and 2 clicks; dash-b 3 impressions and 1
	// click; and dash-b has one more impression 3 hours ago, which the 6h
	// view counts and the 1h view does not.
	for _, id := range []string{"dash-a", "dash-b"} {
		ad := fmt.Sprintf(`{"id":%q,"title":"Dashboard %s","duration_seconds":10}`, id, id)
		if status, body := c.do(http.MethodPost, "/ads", testToken, "application/json", []byte(ad)); status != http.StatusCreated {
			t.Fatalf("create %s: %d %v", id, status, body)
		}
	}
	now := time.Now()
	var evs []map[string]any
	add := func(typ, ad string, visitor int, at time.Time) {
		evs = append(evs, map[string]any{"type": typ, "ad_id": ad, "ip": fmt.Sprintf("192.0.2.%d", visitor),
			"user_agent": viewerUA, "timestamp": at.UnixMilli(), "playback_time": 1})
	}
	recent := now.Add(-10 * time.Minute)
	for v, steps := range [][]string{
		{"impression", "start", "firstQuartile", "midpoint", "thirdQuartile", "complete", "click"},
		{"impression", "start", "firstQuartile", "midpoint", "thirdQuartile", "complete", "click"},
		{"impression", "start", "firstQuartile", "midpoint"},
		{"impression", "start"},
		{"impression"},
	} {
		for _, typ := range steps {
			add(typ, "dash-a", v+1, recent)
		}
	}
	for v := range 3 {
		add("impression", "dash-b", 20+v, recent)
	}
	add("click", "dash-b", 20, recent)
	add("impression", "dash-b", 30, now.Add(-3*time.Hour))
	if status, body := c.postJSON("/ads/events", evs); status != http.StatusOK || num(body, "accepted") != float64(len(evs)) {
		t.Fatalf("events: %d %v", status, body)
	}
	c.analytics("timeframe=6h&ad_id=dash-b", func(a map[string]any) bool { return num(a, "impressions") == 4 })
	c.analytics("timeframe=1h&ad_id=dash-a", func(a map[string]any) bool { return num(a, "completes") == 2 && num(a, "clicks") == 2 })

	b := startBrowser(t, chrome)
	b.do(chromedp.EmulateViewport(1280, 900))
	b.do(chromedp.Navigate(base + "/#tf=1h"))
	b.waitFor("the 1h totals", `document.getElementById("t-impressions").textContent === "8" && document.getElementById("t-clicks").textContent === "3"`)
	b.waitFor("the CTR and completion", `document.getElementById("t-ctr").textContent === "37.5%" && document.getElementById("t-completion_rate").textContent === "50%"`)
	b.waitFor("the table by clicks", `(() => {
		const rows = [...document.querySelectorAll("#ads-table tbody tr")].map(r => [...r.cells].map(c => c.textContent));
		return rows.length >= 2 && rows[0][0] === "dash-aDashboard dash-a" && rows[0][1] === "5" && rows[0][2] === "2" &&
			rows[1][0] === "dash-bDashboard dash-b" && rows[1][1] === "3" && rows[1][2] === "1";
	})()`)
	b.waitFor("the chart", `(() => {
		const c = document.getElementById("chart");
		return c.querySelector("svg path.line-imp") !== null && c.querySelectorAll("svg rect.bar-clk").length > 0 &&
			c.getAttribute("aria-label").includes("per minute: 8 impressions, 3 clicks");
	})()`)
	b.screenshot(filepath.Join(shots, "dashboard-desktop.png"))

	// A timeframe switch, by the picker.
	b.do(chromedp.Click(chromedp.CSS(`button[data-timeframe="6h"]`)))
	b.waitFor("the 6h totals", `document.getElementById("t-impressions").textContent === "9" && location.hash.includes("tf=6h") &&
		document.querySelector('button[data-timeframe="6h"]').getAttribute("aria-pressed") === "true"`)

	// One ad, opened from the keyboard: its funnel, and no table.
	b.do(chromedp.Focus(chromedp.CSS(`#ads-table tbody a[data-ad="dash-a"]`)), chromedp.KeyEvent(kb.Enter))
	b.waitFor("dash-a's view", `document.getElementById("view-title").textContent === "Dashboard dash-a (dash-a)" &&
		document.getElementById("ads-panel").hidden && !document.getElementById("funnel-panel").hidden &&
		[...document.querySelectorAll("#funnel .n")].map(e => e.textContent).join(",") === "5,4,3,3,2,2,2"`)

	// Phone width: everything fits the screen's width, and the totals show.
	b.do(chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile))
	b.waitFor("a phone-width layout", `document.documentElement.scrollWidth <= window.innerWidth && document.getElementById("t-impressions").getBoundingClientRect().width > 0 &&
		+document.querySelector("#chart svg").getAttribute("width") <= window.innerWidth`)
	b.screenshot(filepath.Join(shots, "dashboard-phone.png"))
	b.do(chromedp.EmulateViewport(1280, 900))

	// Ad management with the admin token entered in the page.
	b.do(chromedp.Click(chromedp.ID("home-link")), chromedp.Click(chromedp.ID("manage-toggle")))
	b.do(chromedp.SendKeys(chromedp.ID("admin-token"), testToken), chromedp.Click(chromedp.CSS(`#token-form button[type="submit"]`)))
	b.waitFor("the token kept for the tab", `document.getElementById("token-state").textContent === "A token is set for this tab."`)
	b.do(chromedp.SendKeys(chromedp.ID("f-id"), "dash-new"), chromedp.SendKeys(chromedp.ID("f-title"), "Made in the browser"),
		chromedp.Click(chromedp.ID("ad-save")))
	b.waitFor("the created ad", `document.getElementById("ad-form-done").textContent === "Created dash-new." &&
		document.querySelector('#ads-table tbody a[data-ad="dash-new"]') !== null`)
	if status, body := c.do(http.MethodGet, "/ads/dash-new", "", "", nil); status != http.StatusOK || body["title"] != "Made in the browser" {
		t.Fatalf("the ad created in the page: %d %v", status, body)
	}
	// Edited from its own view, then deleted (the page asks twice).
	b.do(chromedp.Click(chromedp.CSS(`#ads-table tbody a[data-ad="dash-new"]`)))
	b.waitFor("dash-new's view", `document.getElementById("view-title").textContent === "Made in the browser (dash-new)"`)
	b.do(chromedp.Click(chromedp.CSS(`#ad-links button`)))
	b.waitFor("the edit form", `document.getElementById("ad-form-legend").textContent === "Edit dash-new" && document.getElementById("f-title").value === "Made in the browser"`)
	b.do(chromedp.SetValue(chromedp.ID("f-title"), "Renamed in the browser"), chromedp.Click(chromedp.ID("ad-save")))
	b.waitFor("the saved title", `document.getElementById("ad-form-done").textContent === "Saved dash-new." &&
		document.getElementById("view-title").textContent === "Renamed in the browser (dash-new)"`)
	b.do(chromedp.Click(chromedp.ID("ad-delete")))
	b.waitFor("the delete armed", `document.getElementById("ad-delete").textContent === "Really delete dash-new?"`)
	b.do(chromedp.Click(chromedp.ID("ad-delete")))
	b.waitFor("the ad deleted", `document.getElementById("ad-form-done").textContent === "Deleted dash-new." && !location.hash.includes("ad=") &&
		document.querySelector('#ads-table tbody a[data-ad="dash-a"]') !== null && document.querySelector('#ads-table tbody a[data-ad="dash-new"]') === null`)
	if status, body := c.do(http.MethodGet, "/ads/dash-new", "", "", nil); status != http.StatusNotFound {
		t.Fatalf("the ad deleted in the page: %d %v", status, body)
	}

	// NATS stops: the numbers stay, and the page says they are stale.
	ns.stop(t)
	b.waitFor("the stale notice", `(() => {
		const n = document.getElementById("notice");
		return !n.hidden && n.textContent.startsWith("These numbers are stale") && document.getElementById("t-impressions").textContent === "9";
	})()`)
	b.screenshot(filepath.Join(shots, "dashboard-stale.png"))
	startNATSServer(t, natsBin, natsPort, natsDir, 4)
	b.waitFor("the notice gone once NATS is back", `document.getElementById("notice").hidden`)
	b.checkConsole()

	// The service unreachable (the browser offline): the last numbers stay,
	// and the page says so, then recovers by itself. (The browser logs each
	// failed request, so the console is checked before this.)
	b.offline(true)
	b.waitFor("the unreachable notice", `(() => {
		const n = document.getElementById("notice");
		return !n.hidden && n.textContent.startsWith("AdMetric is unreachable") && document.getElementById("t-impressions").textContent === "9";
	})()`)
	b.offline(false)
	b.waitFor("the notice gone once the service answers", `document.getElementById("notice").hidden`)
	t.Logf("screenshots in %s", shots)
}

// findChromium returns the path of a Chromium or Chrome; scripts/test
// installs Debian's chromium when none is there.
func findChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("no chromium on PATH: the browser tests need one (scripts/test installs Debian's chromium)")
	return ""
}

// browser is one headless Chromium tab with its console collected.
type browser struct {
	t       *testing.T
	ctx     context.Context
	mu      sync.Mutex
	console []string
}

func startBrowser(t *testing.T, exe string) *browser {
	t.Helper()
	// No sandbox: it refuses root, and as another user it needs user
	// namespaces that containers and CI machines often forbid; the browser
	// opens only the test's own service.
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe),
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.NoSandbox)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	b := &browser{t: t, ctx: ctx}
	// The tab lives as long as the context of the first action, so that one
	// gets the test's context, not a timeout of its own; the tab exists from
	// here, so the console has it all.
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start %s: %v", exe, err)
	}
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleWarning || m.IsException() {
				b.mu.Lock()
				b.console = append(b.console, fmt.Sprintf("%s (%s:%d)", m, m.URL, m.Line))
				b.mu.Unlock()
			}
		}
	}()
	return b
}

func (b *browser) do(steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("browser: %v", err)
	}
}

// waitFor polls the page until the JavaScript expression is true; on a
// timeout it fails with what the page showed.
func (b *browser) waitFor(what, expr string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 40*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(30*time.Second))); err != nil {
		shown, _ := chromedp.Run(b.ctx, chromedp.Evaluate[string](`location.hash + "\n" + document.body.innerText`))
		b.t.Fatalf("waiting for %s: %v\nthe page showed:\n%s\nconsole: %v", what, err, shown, b.consoleLines())
	}
}

// offline cuts the tab off the network, or puts it back.
func (b *browser) offline(off bool) {
	b.t.Helper()
	b.do(chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
			return err
		}
		_, err := chromedp.Call(ctx, network.EmulateNetworkConditionsByRule, network.EmulateNetworkConditionsByRuleParams{
			MatchedNetworkConditions: []*network.Conditions{{Offline: off, DownloadThroughput: -1, UploadThroughput: -1}},
		})
		return err
	}))
}

func (b *browser) screenshot(path string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot: %v", err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

func (b *browser) consoleLines() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.console...)
}

// checkConsole fails the test when the page logged an error, a warning or
// an exception, other than those holding one of expected.
func (b *browser) checkConsole(expected ...string) {
	b.t.Helper()
	var bad []string
	for _, line := range b.consoleLines() {
		if !slices.ContainsFunc(expected, func(e string) bool { return strings.Contains(line, e) }) {
			bad = append(bad, line)
		}
	}
	if len(bad) > 0 {
		b.t.Errorf("the page's console:\n%s", strings.Join(bad, "\n"))
	}
}

// TestDashboardWithAReadToken: when the service's reads need a token
// (ANALYTICS_TOKEN), the dashboard asks for one; a scoped token entered there
// shows that token's ads alone, and no admin token is needed to read.
func TestDashboardWithAReadToken(t *testing.T) {
	chrome := findChromium(t)
	env := testEnv(testDataDir(t))
	env["ANALYTICS_TOKEN"] = testReadToken
	d := startTestDaemon(t, env)
	base := "http://" + d.httpAddr()
	c := client{t: t, base: base}
	evs := []map[string]any{
		{"type": "impression", "ad_id": "coffee-6s", "ip": "192.0.2.1", "user_agent": viewerUA},
		{"type": "impression", "ad_id": "coffee-6s", "ip": "192.0.2.2", "user_agent": viewerUA},
		{"type": "impression", "ad_id": "summer-sale-15s", "ip": "192.0.2.3", "user_agent": viewerUA},
	}
	if status, body := c.postJSON("/ads/events", evs); status != http.StatusOK || num(body, "accepted") != 3 {
		t.Fatalf("events: %d %v", status, body)
	}
	status, created := c.do(http.MethodPost, "/tokens", testToken, "application/json", []byte(`{"name":"Coffee","ad_ids":["coffee-6s"]}`))
	scoped, _ := created["token"].(string)
	if status != http.StatusCreated || scoped == "" {
		t.Fatalf("POST /tokens: %d %v", status, created)
	}

	b := startBrowser(t, chrome)
	b.do(chromedp.EmulateViewport(1280, 900), chromedp.Navigate(base+"/#tf=1h"))
	b.waitFor("the read token form", `!document.getElementById("read-token-form").hidden &&
		document.getElementById("notice").textContent === "A read token is needed to see the figures."`)
	b.do(chromedp.SendKeys(chromedp.ID("read-token"), scoped), chromedp.Click(chromedp.CSS(`#read-token-form button[type="submit"]`)))
	b.waitFor("the scoped token's figures", `document.getElementById("read-token-form").hidden && document.getElementById("notice").hidden &&
		document.getElementById("t-impressions").textContent === "2" &&
		[...document.querySelectorAll("#ads-table tbody a")].map(a => a.dataset.ad).join(",") === "coffee-6s"`)
	// The browser logs the refused reads (401) as failed loads; nothing else.
	b.checkConsole("the server responded with a status of 401")
}
