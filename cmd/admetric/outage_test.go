package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/aggregator"
	"github.com/admetric/admetric/api/openapi/openapitest"
	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/postgres"
	"github.com/admetric/admetric/store/storetest"
)

// buildNATSServer compiles the nats-server of go.mod (from the module cache,
// offline) for the tests that run NATS as a child process they can stop.
func buildNATSServer(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "nats-server")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/nats-io/nats-server/v2").CombinedOutput()
	if err != nil {
		t.Fatalf("go build nats-server: %v\n%s", err, out)
	}
	return bin
}

// natsProc is nats-server with JetStream running as a child process.
type natsProc struct {
	cmd    *exec.Cmd
	url    string
	exited chan error
	reaped bool
}

// Passwords of the users of the configuration `admetric nats-config` writes,
// in the servers startNATSServer starts.
const (
	testNATSPassword      = "test-nats-password"
	testPublisherPassword = "test-publisher-password"
)

// startNATSServer starts bin with JetStream on 127.0.0.1:port, its store in
// storeDir, configured as the README says (the configuration `admetric
// nats-config` writes, for partitions), and waits until it logs that it is
// ready. Its url carries AdMetric's user.
func startNATSServer(t testing.TB, bin, port, storeDir string, partitions int) *natsProc {
	t.Helper()
	conf := filepath.Join(storeDir, "admetric.conf")
	if err := os.WriteFile(conf, []byte(store.ServerConfig(store.ServerConfigOptions{Partitions: partitions, Users: true})), 0o600); err != nil {
		t.Fatal(err)
	}
	n := startNATSProcess(t, bin, "-c", conf, "-js", "-sd", storeDir, "-a", "127.0.0.1", "-p", port)
	n.url = "nats://" + store.ServiceUser + ":" + testNATSPassword + "@127.0.0.1:" + port
	return n
}

// startNATSProcess starts nats-server bin with args, the users' passwords
// in its environment, and waits until it logs that it is ready.
func startNATSProcess(t testing.TB, bin string, args ...string) *natsProc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "ADMETRIC_NATS_PASSWORD="+testNATSPassword, "ADMETRIC_PUBLISHER_PASSWORD="+testPublisherPassword)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		t.Fatal(err)
	}
	pw.Close() // the child holds its own copy: EOF once it exits
	n := &natsProc{cmd: cmd, exited: make(chan error, 1)}
	ready := make(chan struct{})
	var (
		mu   sync.Mutex
		tail []string // the last lines, for a start that fails
	)
	go func() {
		defer pr.Close()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			mu.Lock()
			tail = append(tail, line)
			if len(tail) > 30 {
				tail = tail[1:]
			}
			mu.Unlock()
			if strings.Contains(line, "Server is ready") {
				once.Do(func() { close(ready) })
			}
			// A route to a node that is down is what a cluster test expects.
			if (strings.Contains(line, "[ERR]") || strings.Contains(line, "[FTL]")) && !strings.Contains(line, "connect to route") {
				t.Logf("nats-server: %s", line)
			}
		}
		_, _ = io.Copy(io.Discard, pr)
		n.exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		if !n.reaped {
			_ = cmd.Process.Kill()
			if err := <-n.exited; err == nil {
				t.Log("nats-server exited 0 before the kill")
			}
		}
	})
	select {
	case <-ready:
		return n
	case err := <-n.exited:
		n.reaped = true
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("nats-server exited before it was ready: %v\n%s", err, strings.Join(tail, "\n"))
	case <-time.After(time.Minute):
		t.Fatal("nats-server was not ready within a minute")
	}
	return nil
}

// kill SIGKILLs nats-server and waits until it is gone.
func (n *natsProc) kill(t *testing.T) {
	t.Helper()
	if err := n.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := <-n.exited; err == nil {
		t.Log("nats-server exited 0 before the kill")
	}
	n.reaped = true
}

// stop SIGTERMs nats-server and waits until it is gone; it returns when it
// exited.
func (n *natsProc) stop(t *testing.T) time.Time {
	t.Helper()
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-n.exited:
		n.reaped = true
		if err != nil {
			t.Logf("nats-server exited after SIGTERM: %v", err)
		}
		return time.Now()
	case <-time.After(30 * time.Second):
		t.Fatal("nats-server did not exit within 30 s of SIGTERM")
	}
	return time.Time{}
}

// createCrashAds creates the ads newWorkload spreads its events over.
func createCrashAds(t *testing.T, c client, ads int) {
	t.Helper()
	for i := range ads {
		body, _ := json.Marshal(map[string]any{"id": fmt.Sprintf("crash-ad-%03d", i), "title": "outage"})
		if status, resp := c.do(http.MethodPost, "/ads", testToken, "application/json", body); status != http.StatusCreated {
			t.Fatalf("create ad: %d %v", status, resp)
		}
	}
}

// answer is what one POST of an event got, and when.
type answer struct {
	sent, answered time.Time
	code           int
	status         string // the body's status: "accepted", "spooled", ...
	err            error
}

// postOnce posts the events first..last-1 of w exactly once each (no retry),
// from workers goroutines, no faster than perSecond in all (0: no bound), and
// records each answer in answers[i]. answered counts the answers so far.
func (w *workload) postOnce(t *testing.T, base string, first, last, workers int, perSecond float64, answers []answer, answered *atomic.Int64) {
	t.Helper()
	hc := &http.Client{Timeout: 15 * time.Second, Transport: openapitest.Transport(t, &http.Transport{MaxIdleConnsPerHost: workers})}
	defer hc.CloseIdleConnections()
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range next {
				a := &answers[i] // this worker's alone
				a.sent = time.Now()
				resp, err := hc.Post(base+w.paths[i], "application/json", bytes.NewReader(w.bodies[i]))
				if err != nil {
					a.err = err
				} else {
					var body struct {
						EventID string `json:"event_id"`
						Status  string `json:"status"`
					}
					raw, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					a.code = resp.StatusCode
					if json.Unmarshal(raw, &body) != nil {
						a.err = fmt.Errorf("body not JSON: %q", raw)
					} else if a.status = body.Status; resp.StatusCode == http.StatusAccepted && !strings.Contains(string(w.bodies[i]), `"event_id":"`+body.EventID+`"`) {
						a.err = fmt.Errorf("answer names event %q: %s", body.EventID, raw)
					} else if resp.StatusCode != http.StatusAccepted {
						a.err = fmt.Errorf("%s", raw)
					}
				}
				a.answered = time.Now()
				answered.Add(1)
			}
		})
	}
	start := time.Now()
	for i := first; i < last; i++ {
		if perSecond > 0 {
			if d := time.Until(start.Add(time.Duration(float64(i-first) / perSecond * float64(time.Second)))); d > 0 {
				time.Sleep(d) // pacing, so that the load spans the outage
			}
		}
		next <- i
	}
	close(next)
	wg.Wait()
}

// backgroundLoad is a workload's events posted once each, in the background
// (postOnce): a test strikes its faults at chosen points of it.
type backgroundLoad struct {
	answers  []answer
	answered atomic.Int64
	done     chan struct{} // closed once every event has its answer
}

// startLoad starts posting every event of w to base from workers goroutines,
// no faster than perSecond.
func startLoad(t *testing.T, w *workload, base string, workers int, perSecond float64) *backgroundLoad {
	l := &backgroundLoad{answers: make([]answer, len(w.bodies)), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		w.postOnce(t, base, 0, len(w.bodies), workers, perSecond, l.answers, &l.answered)
	}()
	return l
}

// waitAnswers waits until n events have their answer; it fails t if the load
// ends first, since what was to happen at n would miss it.
func (l *backgroundLoad) waitAnswers(t *testing.T, n int64, what string) {
	t.Helper()
	for l.answered.Load() < n {
		select {
		case <-l.done:
			t.Fatalf("the load finished before %s", what)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// checkAnswers fails the test for every answer but 202 "accepted" or
// "spooled" (the first few in detail) and returns how many of each there were.
func checkAnswers(t *testing.T, answers []answer) (accepted, spooled int) {
	t.Helper()
	bad := 0
	for i, a := range answers {
		switch {
		case a.err == nil && a.code == http.StatusAccepted && a.status == "accepted":
			accepted++
		case a.err == nil && a.code == http.StatusAccepted && a.status == "spooled":
			spooled++
		default:
			if bad++; bad <= 10 {
				t.Errorf("event %d: status %d %q after %s: %v", i, a.code, a.status, a.answered.Sub(a.sent).Round(time.Millisecond), a.err)
			}
		}
	}
	if bad > 10 {
		t.Errorf("... %d events in all were not answered 202 accepted or spooled", bad)
	}
	return accepted, spooled
}

// spoolSegments lists the segment files in dataDir/spool.
func spoolSegments(t *testing.T, dataDir string) []string {
	t.Helper()
	segs, err := filepath.Glob(filepath.Join(dataDir, "spool", "*.seg"))
	if err != nil {
		t.Fatal(err)
	}
	return segs
}

// waitSettled waits until the 30-day analytics match w exactly and the spool
// in dataDir is drained, then until the archive holds exactly one row per
// event of w. It returns how long the analytics took.
func waitSettled(t *testing.T, c client, w *workload, env map[string]string, timeout time.Duration) time.Duration {
	t.Helper()
	dataDir, dsn := env["DATA_DIR"], env["DATABASE_URL"]
	start := time.Now()
	deadline := start.Add(timeout)
	var mismatch string
	var segs []string
	for {
		segs = spoolSegments(t, dataDir)
		mismatch = checkCrashAnalytics(t, c, w)
		if mismatch == "" && len(segs) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if mismatch != "" {
		logArchiveCounts(t, dsn, w)
		logRollupCounts(t, env, w)
		t.Fatalf("analytics after %s: %s", time.Since(start).Round(time.Millisecond), mismatch)
	}
	if len(segs) != 0 {
		t.Fatalf("the spool still holds %v after %s", segs, time.Since(start).Round(time.Millisecond))
	}
	took := time.Since(start)

	db, err := postgres.Open(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	want := len(w.bodies)
	for {
		var rows, distinct int
		if err := db.NewRaw("SELECT count(*), count(DISTINCT event_id) FROM events").Scan(context.Background(), &rows, &distinct); err != nil {
			t.Fatal(err)
		}
		if rows == want && distinct == want {
			break
		}
		if rows > want || time.Now().After(deadline) {
			t.Fatalf("archive holds %d rows (%d distinct), want %d", rows, distinct, want)
		}
		time.Sleep(250 * time.Millisecond)
	}
	return took
}

// logArchiveCounts logs, for each ad whose archived clicks or impressions
// differ from the workload's, both counts: when analytics disagree with the
// workload, this tells an event lost before the stream from one the fold or
// the read cache missed.
func logArchiveCounts(t *testing.T, dsn string, w *workload) {
	t.Helper()
	db, err := postgres.Open(context.Background(), dsn)
	if err != nil {
		t.Logf("archive: %v", err)
		return
	}
	defer db.Close()
	var rows []struct {
		AdID   string `bun:"ad_id"`
		Type   string `bun:"type"`
		Events uint64 `bun:"events"`
	}
	if err := db.NewRaw("SELECT ad_id, type, count(*) AS events FROM events GROUP BY ad_id, type").Scan(context.Background(), &rows); err != nil {
		t.Logf("archive: %v", err)
		return
	}
	archived := make(map[string]map[string]uint64)
	for _, r := range rows {
		if archived[r.AdID] == nil {
			archived[r.AdID] = make(map[string]uint64)
		}
		archived[r.AdID][r.Type] = r.Events
	}
	for ad, want := range w.want {
		got := archived[ad]
		if got["click"] != want.clicks || got["impression"] != want.impressions {
			t.Logf("archive: %s holds %d clicks %d impressions, workload %d and %d", ad, got["click"], got["impression"], want.clicks, want.impressions)
		}
	}
}

// logRollupCounts logs, for each ad whose 30-day clicks or impressions in
// the rollup buckets differ from the workload's, both counts, and the state
// of every rollup consumer with its checkpoints: when analytics disagree with
// the workload, this tells an event the fold missed from one the read cache
// missed.
func logRollupCounts(t *testing.T, env map[string]string, w *workload) {
	t.Helper()
	ctx := context.Background()
	layout := serviceLayout(t, env)
	nc, err := nats.Connect(env["NATS_URL"])
	if err != nil {
		t.Logf("rollups: %v", err)
		return
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Logf("rollups: %v", err)
		return
	}
	rollups, err := store.CreateOrUpdateRollups(ctx, js, layout, 1)
	if err != nil {
		t.Logf("rollups: %v", err)
		return
	}
	now := time.Now()
	tiling, err := layout.Tile(now.Add(-30*24*time.Hour), now, now)
	if err != nil {
		t.Fatal(err)
	}
	for ad, want := range w.want {
		agg, err := rollups.Sum(ctx, ad, tiling.Cells)
		if err != nil {
			t.Logf("rollups: %s: %v", ad, err)
			continue
		}
		if agg.Clicks != want.clicks || agg.Impressions != want.impressions {
			t.Logf("rollups: %s holds %d clicks %d impressions, workload %d and %d", ad, agg.Clicks, agg.Impressions, want.clicks, want.impressions)
		}
	}
	partitions, _ := strconv.Atoi(env["PARTITIONS"])
	for p := range partitions {
		line := fmt.Sprintf("partition %d:", p)
		if cons, err := js.Consumer(ctx, store.EventStreamName(p), aggregator.RollupConsumerName(p)); err == nil {
			if info, err := cons.Info(ctx); err == nil {
				line += fmt.Sprintf(" pending %d, ack pending %d, redelivered %d, ack floor %d, delivered %d;",
					info.NumPending, info.NumAckPending, info.NumRedelivered, info.AckFloor.Stream, info.Delivered.Stream)
			}
		}
		for _, res := range layout {
			seq, _, err := rollups.Checkpoint(ctx, res.Unit, p)
			line += fmt.Sprintf(" %s checkpoint %d (%v)", res.Unit, seq, err)
		}
		t.Log(line)
	}
}

// outageEnv is the environment of admetric against an external nats-server.
func outageEnv(natsURL, dataDir, dsn string) map[string]string {
	return map[string]string{
		"HTTP_ADDR":    "127.0.0.1:0",
		"NATS_URL":     natsURL,
		"DATA_DIR":     dataDir,
		"DATABASE_URL": dsn,
		"ADMIN_TOKEN":  testToken,
		"VISITOR_SALT": "outage-test-salt-outage-test-salt-01",
		"PARTITIONS":   "4",
		"LOG_LEVEL":    "info", // startProc waits for the info line "admetric is up"
	}
}

// TestNATSOutageSpools stops the external nats-server for more than 10 seconds
// in the middle of a paced load of 24,000 events posted once each, and starts
// it again on the same port and store. Every POST is answered 202, "accepted"
// or "spooled"; none sent while NATS was down is answered "accepted"; once
// NATS is back events are accepted again, the spool drains, each ad's 30-day
// analytics equal the events exactly, and the archive holds one row per event.
func TestNATSOutageSpools(t *testing.T) {
	const (
		events    = 24_000
		ads       = 100
		visitors  = 5_000
		workers   = 32
		perSecond = 1_000
		outageAt  = events / 4 // answers before NATS is stopped
		minOutage = 10 * time.Second
	)
	bin := buildBinary(t)
	natsBin := buildNATSServer(t)
	natsPort, natsDir := freePort(t), t.TempDir()
	ns := startNATSServer(t, natsBin, natsPort, natsDir, 4)
	pg := storetest.Postgres(t)
	dataDir := testDataDir(t)
	p := startProc(t, bin, outageEnv(ns.url, dataDir, pg.DSN()))
	c := client{t: t, base: "http://" + p.httpAddr}
	createCrashAds(t, c, ads)

	seed := uint64(time.Now().UnixNano())
	t.Logf("workload seed %d", seed)
	w := newWorkload(events, ads, visitors, seed)
	loadStart := time.Now()
	load := startLoad(t, w, c.base, workers, perSecond)
	load.waitAnswers(t, outageAt, "the outage")
	stopAt := time.Now()
	downAt := ns.stop(t)
	t.Logf("nats-server stopped after %d answers (%s after SIGTERM)", load.answered.Load(), downAt.Sub(stopAt).Round(time.Millisecond))
	select {
	case <-load.done:
		t.Fatal("the load finished during the outage")
	case <-time.After(time.Until(downAt.Add(minOutage))):
	}
	restartAt := time.Now()
	answeredAtRestart := load.answered.Load()
	startNATSServer(t, natsBin, natsPort, natsDir, 4) // same port and store
	upAt := time.Now()
	t.Logf("nats-server down %s (SIGTERM to ready again %s); restarted after %d answers",
		restartAt.Sub(downAt).Round(time.Millisecond), upAt.Sub(stopAt).Round(time.Millisecond), answeredAtRestart)
	if answeredAtRestart >= events-workers {
		t.Fatal("the load was over before NATS came back")
	}
	<-load.done
	t.Logf("load of %d events took %s", events, time.Since(loadStart).Round(time.Millisecond))

	answers := load.answers
	accepted, spooled := checkAnswers(t, answers)
	var downSent, downSpooled, downAccepted, afterAccepted, afterSpooled int
	for _, a := range answers {
		if a.sent.After(downAt) && a.answered.Before(restartAt) {
			// Sent once the server was gone, answered before the new one
			// existed: nobody could have acknowledged it.
			downSent++
			switch a.status {
			case "spooled":
				downSpooled++
			case "accepted":
				downAccepted++
			}
		}
		if a.sent.After(upAt) {
			switch a.status {
			case "accepted":
				afterAccepted++
			case "spooled":
				afterSpooled++
			}
		}
	}
	t.Logf("answers: %d accepted, %d spooled; sent and answered while NATS was down: %d, of which %d spooled; sent after it was back: %d accepted, %d spooled",
		accepted, spooled, downSent, downSpooled, afterAccepted, afterSpooled)
	if spooled == 0 || downSpooled == 0 {
		t.Errorf("no event was spooled (%d in all, %d while NATS was down)", spooled, downSpooled)
	}
	if downAccepted > 0 {
		t.Errorf("%d events sent while NATS was down were answered accepted", downAccepted)
	}
	if afterAccepted == 0 {
		t.Errorf("no event sent after NATS was back was accepted (%d spooled)", afterSpooled)
	}
	if t.Failed() {
		t.FailNow()
	}

	took := waitSettled(t, c, w, outageEnv(ns.url, dataDir, pg.DSN()), 90*time.Second)
	t.Logf("analytics exact and spool drained %s after the load", took.Round(time.Millisecond))
}

// TestSpooledEventsSurviveSIGKILL: events spooled while NATS is down survive a
// SIGKILL of admetric in its spool segments, and the next start on the same
// DATA_DIR replays them once NATS is back: every event counted and archived
// exactly once.
func TestSpooledEventsSurviveSIGKILL(t *testing.T) {
	const (
		before  = 20 // posted while NATS is up
		spooled = 500
		ads     = 10
		workers = 8
	)
	bin := buildBinary(t)
	natsBin := buildNATSServer(t)
	natsPort, natsDir := freePort(t), t.TempDir()
	ns := startNATSServer(t, natsBin, natsPort, natsDir, 4)
	pg := storetest.Postgres(t)
	dataDir := testDataDir(t)
	env := outageEnv(ns.url, dataDir, pg.DSN())
	p := startProc(t, bin, env)
	c := client{t: t, base: "http://" + p.httpAddr}
	createCrashAds(t, c, ads)

	seed := uint64(time.Now().UnixNano())
	t.Logf("workload seed %d", seed)
	w := newWorkload(before+spooled, ads, 200, seed)
	answers := make([]answer, len(w.bodies))
	var answered atomic.Int64
	w.postOnce(t, c.base, 0, before, 1, 0, answers, &answered)
	if accepted, _ := checkAnswers(t, answers[:before]); accepted != before {
		t.Fatalf("%d of %d events accepted while NATS was up", accepted, before)
	}

	ns.stop(t)
	start := time.Now()
	w.postOnce(t, c.base, before, before+spooled, workers, 0, answers, &answered)
	accepted, nSpooled := checkAnswers(t, answers[before:])
	t.Logf("%d events spooled in %s while NATS was down", nSpooled, time.Since(start).Round(time.Millisecond))
	if nSpooled != spooled {
		t.Fatalf("%d of %d events spooled while NATS was down (%d accepted)", nSpooled, spooled, accepted)
	}

	p.kill(t)
	segs := spoolSegments(t, dataDir)
	var size int64
	for _, s := range segs {
		if info, err := os.Stat(s); err == nil {
			size += info.Size()
		}
	}
	t.Logf("after SIGKILL the spool holds %d segments, %d bytes", len(segs), size)
	if len(segs) == 0 || size == 0 {
		t.Fatalf("no spool segment with data under %s after the SIGKILL: %v", dataDir, segs)
	}

	startNATSServer(t, natsBin, natsPort, natsDir, 4) // same port and store
	p = startProc(t, bin, env)
	c = client{t: t, base: "http://" + p.httpAddr}
	took := waitSettled(t, c, w, env, 45*time.Second)
	t.Logf("analytics exact and spool drained %s after the restart", took.Round(time.Millisecond))
}
