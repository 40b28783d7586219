package devserver_test

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/uptrace/bun/driver/pgdriver"

	"github.com/admetric/admetric/store/devserver"
	"github.com/admetric/admetric/store/storetest"
)

// testSettings make the servers of these tests fast. synchronous_commit stays
// on so that a committed row survives Kill (the WAL reaches the OS page cache
// before COMMIT returns).
var testSettings = map[string]string{"fsync": "off", "full_page_writes": "off"}

// dataDir returns a fresh directory that (unlike t.TempDir) the postgres
// user can reach when the tests run as root, removed at cleanup.
func dataDir(t *testing.T) string {
	t.Helper()
	return storetest.TempDir(t)
}

// startPG starts a server on a fresh directory and stops it at cleanup.
func startPG(t *testing.T, opts devserver.PostgresOptions) *devserver.Postgres {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = dataDir(t)
	}
	pg, err := start(t, opts)
	if err != nil {
		t.Fatal(err)
	}
	return pg
}

// start starts a server on opts.Dir and stops it at cleanup. Unlike startPG,
// it may be called from any goroutine.
func start(t *testing.T, opts devserver.PostgresOptions) (*devserver.Postgres, error) {
	if opts.Settings == nil {
		opts.Settings = testSettings
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pg, err := devserver.StartPostgres(ctx, opts)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := pg.Stop(ctx); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	return pg, nil
}

func openDB(t *testing.T, dsn string) *sql.DB {
	t.Helper()
	db := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(dsn), pgdriver.WithTracing(false)))
	t.Cleanup(func() { db.Close() })
	return db
}

func exec1(t *testing.T, db *sql.DB, query string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

func names(t *testing.T, db *sql.DB) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := db.QueryContext(ctx, "SELECT name FROM things ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func assertNames(t *testing.T, db *sql.DB, want ...string) {
	t.Helper()
	if got := names(t, db); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("names = %q, want %q", got, want)
	}
}

var errNotYet = errors.New("not yet")

// waitFor polls cond until it holds, and fails t if it does not within d.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		if cond() {
			return struct{}{}, nil
		}
		return struct{}{}, errNotYet
	}, backoff.WithBackOff(backoff.NewConstantBackOff(10*time.Millisecond)), backoff.WithMaxElapsedTime(0))
	if err != nil {
		t.Fatalf("%s: not within %s", what, d)
	}
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func portOf(t *testing.T, dsn string) int {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatal(err)
	}
	return port
}

func assertRefused(t *testing.T, dsn string) {
	t.Helper()
	u, _ := url.Parse(dsn)
	c, err := net.DialTimeout("tcp", u.Host, time.Second)
	if err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections", u.Host)
	}
}

func TestPostgresStartQueryStopStartAgain(t *testing.T) {
	dir := dataDir(t)
	pg := startPG(t, devserver.PostgresOptions{Dir: dir})
	dsn := pg.DSN()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	if u.Scheme != "postgres" || u.User.Username() != "postgres" || u.Hostname() != "127.0.0.1" ||
		u.Path != "/admetric" || u.Query().Get("sslmode") != "disable" || portOf(t, dsn) == 0 {
		t.Fatalf("unexpected DSN %s", dsn)
	}

	db := openDB(t, dsn)
	var current string
	if err := db.QueryRow("SELECT current_database()").Scan(&current); err != nil {
		t.Fatal(err)
	}
	if current != "admetric" {
		t.Fatalf("current_database() = %q", current)
	}
	exec1(t, db, "CREATE TABLE things (id serial PRIMARY KEY, name text NOT NULL)")
	exec1(t, db, "INSERT INTO things (name) VALUES ($1), ($2)", "a", "b")
	assertNames(t, db, "a", "b")

	// A second server on a data directory in use does not start.
	if _, err := devserver.StartPostgres(ctxTimeout(t, time.Minute), devserver.PostgresOptions{Dir: dir, Settings: testSettings}); err == nil ||
		!strings.Contains(err.Error(), "postmaster.pid") {
		t.Fatalf("start on the directory of a running server: err = %v, want postgres refusing its lock file", err)
	}

	if err := pg.Stop(ctxTimeout(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	assertRefused(t, dsn)
	if err := db.Ping(); err == nil {
		t.Fatal("ping succeeded on a stopped server")
	}

	pg = startPG(t, devserver.PostgresOptions{Dir: dir, Port: portOf(t, dsn)})
	if pg.DSN() != dsn {
		t.Fatalf("DSN changed across a start on the same directory and port: %s -> %s", dsn, pg.DSN())
	}
	// The same *sql.DB recovers: the DSN stays valid.
	assertNames(t, db, "a", "b")
	exec1(t, db, "INSERT INTO things (name) VALUES ('c')")
	assertNames(t, db, "a", "b", "c")
}

// After a crash (SIGKILL), a start on the same directory performs crash
// recovery despite the stale postmaster.pid: every committed row is there.
func TestPostgresKillStartAgain(t *testing.T) {
	dir := dataDir(t)
	pg := startPG(t, devserver.PostgresOptions{Dir: dir})
	db := openDB(t, pg.DSN())
	exec1(t, db, "CREATE TABLE things (id serial PRIMARY KEY, name text NOT NULL)")
	exec1(t, db, "INSERT INTO things (name) VALUES ('before-kill')")

	if err := pg.Kill(); err != nil {
		t.Fatal(err)
	}
	assertRefused(t, pg.DSN())
	pidFile := filepath.Join(dir, "postmaster.pid")
	if _, err := os.Stat(pidFile); err != nil {
		t.Fatalf("expected a stale %s after SIGKILL: %v", pidFile, err)
	}
	if err := pg.Kill(); err != nil {
		t.Fatalf("second Kill: %v", err)
	}

	pg = startPG(t, devserver.PostgresOptions{Dir: dir, Port: portOf(t, pg.DSN())})
	// The pool's connection died with the old server: start afresh, as a
	// client reconnecting after a crash would.
	db.Close()
	db = openDB(t, pg.DSN())
	assertNames(t, db, "before-kill")
	exec1(t, db, "INSERT INTO things (name) VALUES ('after-restart')")
	assertNames(t, db, "before-kill", "after-restart")
}

// A stale postmaster.pid naming a pid that is not running (here: one that
// never was a postgres) does not prevent a start.
func TestPostgresStalePidFile(t *testing.T) {
	dir := dataDir(t)
	pg := startPG(t, devserver.PostgresOptions{Dir: dir})
	if err := pg.Stop(ctxTimeout(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(dir, "postmaster.pid")
	if _, err := os.Stat(pidFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("postmaster.pid after a clean stop: %v", err)
	}
	// A pid that is dead: a child we started and reaped.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	stale := fmt.Sprintf("%d\n%s\n1700000000\n%d\n\n127.0.0.1\n  5432001    123456\nready   \n",
		cmd.Process.Pid, dir, portOf(t, pg.DSN()))
	if err := os.WriteFile(pidFile, []byte(stale), 0o600); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if err := os.Chown(pidFile, int(st.Uid), int(st.Gid)); err != nil {
		t.Fatal(err)
	}

	// StartPostgres on the same, now initialised, directory.
	pg2 := startPG(t, devserver.PostgresOptions{Dir: dir})
	db := openDB(t, pg2.DSN())
	if err := db.Ping(); err != nil {
		t.Fatal(err)
	}
}

func TestPostgresTwoServers(t *testing.T) {
	// One on a port chosen by the test, one on a port chosen by
	// StartPostgres, started at once.
	dirA, dirB := dataDir(t), dataDir(t)
	var a, b *devserver.Postgres
	var fixed int
	var errA, errB error
	var wg sync.WaitGroup
	wg.Go(func() { a, fixed, errA = startOnPickedPort(t, dirA) })
	wg.Go(func() { b, errB = start(t, devserver.PostgresOptions{Dir: dirB}) })
	wg.Wait()
	if err := errors.Join(errA, errB); err != nil {
		t.Fatal(err)
	}
	if portOf(t, a.DSN()) != fixed {
		t.Fatalf("a.DSN() = %s, want port %d", a.DSN(), fixed)
	}
	if portOf(t, a.DSN()) == portOf(t, b.DSN()) {
		t.Fatalf("same port: %s %s", a.DSN(), b.DSN())
	}
	dbA, dbB := openDB(t, a.DSN()), openDB(t, b.DSN())
	exec1(t, dbA, "CREATE TABLE things (id serial PRIMARY KEY, name text NOT NULL)")
	exec1(t, dbB, "CREATE TABLE things (id serial PRIMARY KEY, name text NOT NULL)")
	exec1(t, dbA, "INSERT INTO things (name) VALUES ('in-a')")
	exec1(t, dbB, "INSERT INTO things (name) VALUES ('in-b')")
	assertNames(t, dbA, "in-a")
	assertNames(t, dbB, "in-b")

	// Stopping one leaves the other alone.
	if err := a.Stop(ctxTimeout(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	assertNames(t, dbB, "in-b")
}

// startOnPickedPort starts a server on dir on a port the test picks. Another
// process on this shared machine may take the port between the pick and the
// server's bind: then it picks another, three times at most.
func startOnPickedPort(t *testing.T, dir string) (pg *devserver.Postgres, port int, err error) {
	pg, err = backoff.Retry(context.Background(), func() (*devserver.Postgres, error) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, backoff.Permanent(err)
		}
		port = l.Addr().(*net.TCPAddr).Port
		l.Close()
		pg, err := start(t, devserver.PostgresOptions{Dir: dir, Port: port})
		if err != nil && !strings.Contains(err.Error(), "could not bind") {
			return nil, backoff.Permanent(err)
		}
		return pg, err
	}, backoff.WithBackOff(&backoff.ZeroBackOff{}), backoff.WithMaxTries(3), backoff.WithMaxElapsedTime(0))
	return pg, port, err
}

func TestPostgresStopIdempotent(t *testing.T) {
	pg := startPG(t, devserver.PostgresOptions{})
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { errs[i] = pg.Stop(ctxTimeout(t, 30*time.Second)) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("concurrent Stop %d: %v", i, err)
		}
	}
	if err := pg.Stop(ctxTimeout(t, 30*time.Second)); err != nil {
		t.Fatalf("Stop after Stop: %v", err)
	}
	if err := pg.Kill(); err != nil {
		t.Fatalf("Kill after Stop: %v", err)
	}
	assertRefused(t, pg.DSN())
}

// Stop with a context that is already done kills the server and says so; the
// server starts again.
func TestPostgresStopDeadline(t *testing.T) {
	dir := dataDir(t)
	pg := startPG(t, devserver.PostgresOptions{Dir: dir})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := pg.Stop(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Stop(done ctx) = %v, want an error wrapping context.Canceled", err)
	}
	assertRefused(t, pg.DSN())
	pg = startPG(t, devserver.PostgresOptions{Dir: dir, Port: portOf(t, pg.DSN())})
	if err := openDB(t, pg.DSN()).Ping(); err != nil {
		t.Fatal(err)
	}
}

func TestPostgresLogger(t *testing.T) {
	var buf syncBuffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	pg := startPG(t, devserver.PostgresOptions{Logger: logger})
	if err := pg.Stop(ctxTimeout(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"level=DEBUG", "component=postgres", "ready to accept connections", "database system is shut down"} {
		if !strings.Contains(out, want) {
			t.Errorf("log output lacks %q:\n%s", want, out)
		}
	}
}

func TestPostgresBadSetting(t *testing.T) {
	dir := dataDir(t)
	_, err := devserver.StartPostgres(ctxTimeout(t, time.Minute), devserver.PostgresOptions{
		Dir:      dir,
		Settings: map[string]string{"fsync": "off", "no_such_setting": "1"},
	})
	if err == nil {
		t.Fatal("started with an unknown setting")
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "devserver: postgres: ") || !strings.Contains(msg, "no_such_setting") {
		t.Fatalf("error does not carry the server output: %v", err)
	}

	_, err = devserver.StartPostgres(ctxTimeout(t, time.Minute), devserver.PostgresOptions{
		Dir:      dir,
		Settings: map[string]string{"port": "5432"},
	})
	if err == nil || !strings.Contains(err.Error(), "Port") {
		t.Fatalf("port setting: err = %v", err)
	}
}

func TestPostgresNotADataDir(t *testing.T) {
	dir := dataDir(t)
	if err := os.WriteFile(filepath.Join(dir, "junk"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := devserver.StartPostgres(ctxTimeout(t, time.Minute), devserver.PostgresOptions{Dir: dir})
	if err == nil || !strings.Contains(err.Error(), "PG_VERSION") {
		t.Fatalf("err = %v, want a complaint about a non-empty non-data directory", err)
	}
}

// As root, a data directory below a root-only directory (t.TempDir is 0700)
// is refused with advice; as another user it simply works.
func TestPostgresUnreachableDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pgdata")
	pg, err := devserver.StartPostgres(ctxTimeout(t, time.Minute), devserver.PostgresOptions{
		Dir:      dir,
		Settings: testSettings,
	})
	if os.Geteuid() != 0 {
		if err != nil {
			t.Fatal(err)
		}
		if err := pg.Stop(ctxTimeout(t, 30*time.Second)); err != nil {
			t.Fatal(err)
		}
		return
	}
	if err == nil {
		_ = pg.Stop(ctxTimeout(t, 30*time.Second))
		t.Fatal("started in a directory the postgres user cannot reach")
	}
	for _, want := range []string{"not reachable by the postgres user", "not traversable", "DATA_DIR"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}

// As root, an existing data directory owned by root (e.g. restored from a
// backup) is handed to the postgres user.
func TestPostgresChownsDataDir(t *testing.T) {
	dir := dataDir(t)
	pg := startPG(t, devserver.PostgresOptions{Dir: dir})
	if err := pg.Stop(ctxTimeout(t, 30*time.Second)); err != nil {
		t.Fatal(err)
	}
	uid := os.Geteuid()
	if uid == 0 {
		if err := filepath.Walk(dir, func(path string, _ os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(path, 0, 0)
		}); err != nil {
			t.Fatal(err)
		}
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatal(err)
		}
		uid, _ = strconv.Atoi(u.Uid)
	}
	pg2 := startPG(t, devserver.PostgresOptions{Dir: dir})
	if err := openDB(t, pg2.DSN()).Ping(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "base"))
	if err != nil {
		t.Fatal(err)
	}
	if got := int(fi.Sys().(*syscall.Stat_t).Uid); got != uid {
		t.Fatalf("base owned by uid %d, want %d", got, uid)
	}
}

const helperEnv = "ADMETRIC_DEVSERVER_HELPER_DIR"

// churnThreads is how many OS threads the helper of TestPostgresParentDeath
// has the runtime terminate while the server runs.
const churnThreads = 20

// When the process that started the server dies by SIGKILL, Pdeathsig makes
// the server shut down cleanly; until then, the runtime terminating OS
// threads of that process must not, although Linux sends the signal when the
// thread that forked the child exits: that thread must stay, waiting for the
// child. The test runs itself as that process, and is a child subreaper
// meanwhile so that the orphaned postmaster becomes its child: it can then
// wait for it and check its exit status.
func TestPostgresParentDeath(t *testing.T) {
	if dir := os.Getenv(helperEnv); dir != "" {
		parentDeathHelper(dir)
		return
	}
	setSubreaper(t, true)
	t.Cleanup(func() { setSubreaper(t, false) })

	dir := dataDir(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestPostgresParentDeath$", "-test.count=1", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pgPid := 0
	t.Cleanup(func() { // after a failure: do not leave the helper or the server behind
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if pgPid != 0 {
			_ = syscall.Kill(pgPid, syscall.SIGKILL)
			var ws syscall.WaitStatus
			_, _ = syscall.Wait4(pgPid, &ws, 0, nil)
		}
	})

	// The helper starts a server, then has the runtime terminate
	// churnThreads OS threads, each gone before the next.
	dsn, line := "", ""
	sc := bufio.NewScanner(stdout)
	for !strings.HasPrefix(line, "CHURNED ") {
		if !sc.Scan() {
			t.Fatalf("helper ended before churning threads: %q (scan error: %v)", line, sc.Err())
		}
		line = sc.Text()
		t.Logf("helper: %s", line)
		if s, ok := strings.CutPrefix(line, "DSN "); ok {
			dsn = s
		}
	}
	go func() { // keep the helper's stdout drained
		for sc.Scan() {
		}
	}()
	pidFile := filepath.Join(dir, "postmaster.pid")
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	if pgPid, err = strconv.Atoi(first); err != nil {
		t.Fatalf("postmaster.pid: %v", err)
	}
	assertNoShutdownRequested(t, dsn)

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait() // killed: an error

	// The postmaster is now our child: wait for it.
	exited := make(chan syscall.WaitStatus, 1)
	go func() {
		var ws syscall.WaitStatus
		for {
			_, err := syscall.Wait4(pgPid, &ws, 0, nil)
			if !errors.Is(err, syscall.EINTR) {
				break
			}
		}
		exited <- ws
	}()
	select {
	case ws := <-exited:
		if !ws.Exited() || ws.ExitStatus() != 0 {
			t.Fatalf("postmaster did not shut down cleanly: wait status %#x", ws)
		}
		pgPid = 0
	case <-time.After(30 * time.Second):
		t.Fatal("server still running 30s after its parent was killed")
	}
	// A fast shutdown removes postmaster.pid as its last step.
	if _, err := os.Stat(pidFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s after shutdown: %v", pidFile, err)
	}
	assertRefused(t, dsn)
}

// assertNoShutdownRequested fails t if the server at dsn was asked to shut
// down before this call (by a parent-death signal: the kernel sends it when
// the thread exits, before the thread is gone from /proc).
//
// A signal the postmaster has not handled yet would go unseen by a mere
// query, so it is made to handle its signals first: pg_reload_conf sends
// it a SIGHUP, and a new connection sees the reloaded setting only once
// the postmaster has handled the SIGHUP, and with it any signal that was
// pending before. The connection after that is refused if one of those was a
// shutdown request.
func assertNoShutdownRequested(t *testing.T, dsn string) {
	t.Helper()
	db := openDB(t, dsn)
	db.SetMaxIdleConns(0) // every query on a new connection, a new backend
	exec1(t, db, "ALTER SYSTEM SET work_mem = '5MB'")
	exec1(t, db, "SELECT pg_reload_conf()")
	waitFor(t, 30*time.Second, "new connections to see the reloaded work_mem", func() bool {
		var workMem string
		if err := db.QueryRow("SHOW work_mem").Scan(&workMem); err != nil {
			t.Fatalf("server stopped answering: %v", err)
		}
		return workMem == "5MB"
	})
	if err := db.Ping(); err != nil {
		t.Fatalf("server asked to shut down while its parent lives: %v", err)
	}
}

// setSubreaper makes this process adopt its orphaned descendants.
func setSubreaper(t *testing.T, on bool) {
	t.Helper()
	const prSetChildSubreaper = 36
	arg := uintptr(0)
	if on {
		arg = 1
	}
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, arg, 0); errno != 0 {
		t.Fatalf("prctl(PR_SET_CHILD_SUBREAPER): %v", errno)
	}
}

// parentDeathHelper starts a server on dir and prints its DSN, then has the
// runtime terminate churnThreads OS threads, each gone before the next. It
// prints CHURNED once the thread that forked the server is seen waiting for
// it, its exit being what would signal the server; then it waits to be
// killed. It prints ERROR and exits when something fails.
func parentDeathHelper(dir string) {
	fail := func(err error) {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	pg, err := devserver.StartPostgres(context.Background(), devserver.PostgresOptions{Dir: dir, Settings: testSettings})
	if err != nil {
		fail(err)
	}
	fmt.Println("DSN " + pg.DSN())
	forker := pg.ForkThread()
	for retired := 0; retired < churnThreads; {
		// A child process run meanwhile blocks a thread in wait, so that
		// the runtime starts new ones.
		done := make(chan error, 1)
		go func() { done <- exec.Command("true").Run() }()
		ok, err := retireThread()
		if err != nil {
			fail(err)
		}
		if err := <-done; err != nil {
			fail(err)
		}
		if ok {
			retired++
		}
	}
	if err := waitingForChild(forker); err != nil {
		fail(err)
	}
	fmt.Printf("CHURNED %d threads; thread %d, which forked the server, waits for it\n", churnThreads, forker)
	select {}
}

// waitingForChild waits until the thread tid of this process is seen blocked
// in a wait system call (waitid on a pidfd, or wait4), as a thread that
// waits for its child is. It fails at once if the thread is gone.
func waitingForChild(tid int) error {
	file := fmt.Sprintf("/proc/self/task/%d/syscall", tid)
	var seen string
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		b, err := os.ReadFile(file)
		if errors.Is(err, fs.ErrNotExist) {
			return struct{}{}, backoff.Permanent(fmt.Errorf("thread %d, which forked the server, is gone", tid))
		}
		if err != nil {
			return struct{}{}, backoff.Permanent(err)
		}
		seen, _, _ = strings.Cut(string(b), " ")
		if nr, err := strconv.Atoi(seen); err == nil && (nr == syscall.SYS_WAITID || nr == syscall.SYS_WAIT4) {
			return struct{}{}, nil
		}
		return struct{}{}, errNotYet
	}, backoff.WithBackOff(backoff.NewConstantBackOff(time.Millisecond)), backoff.WithMaxElapsedTime(0))
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("thread %d, which forked the server, is not waiting for it (system call %s): %w", tid, strings.TrimSpace(seen), err)
	}
	return err
}

// retireThread ends a goroutine with its OS thread locked, which makes the
// runtime terminate the thread, and waits until the thread is gone. It
// reports false when the goroutine ran on the main thread, which the runtime
// keeps.
func retireThread() (bool, error) {
	tids := make(chan int, 1)
	go func() {
		runtime.LockOSThread() // never unlocked
		tids <- syscall.Gettid()
	}()
	tid := <-tids
	if tid == os.Getpid() {
		return false, nil
	}
	task := fmt.Sprintf("/proc/self/task/%d", tid)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		_, err := os.Stat(task)
		if errors.Is(err, fs.ErrNotExist) {
			return struct{}{}, nil
		}
		return struct{}{}, errNotYet
	}, backoff.WithBackOff(backoff.NewConstantBackOff(time.Millisecond)), backoff.WithMaxElapsedTime(0))
	if err != nil {
		return false, fmt.Errorf("thread %d not gone: %w", tid, err)
	}
	return true, nil
}

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
