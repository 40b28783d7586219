package storetest_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/uptrace/bun/driver/pgdriver"

	"github.com/admetric/admetric/store/devserver"
	"github.com/admetric/admetric/store/storetest"
)

func openDB(t testing.TB, dsn string) *sql.DB {
	t.Helper()
	db := sql.OpenDB(pgdriver.NewConnector(pgdriver.WithDSN(dsn), pgdriver.WithTracing(false)))
	t.Cleanup(func() { db.Close() })
	return db
}

func mustExec(t testing.TB, db *sql.DB, query string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, query); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

func count(t testing.TB, db *sql.DB) int {
	t.Helper()
	var n int
	if err := db.QueryRow("SELECT count(*) FROM things").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestPostgres(t *testing.T) {
	pg := storetest.Postgres(t)
	db := openDB(t, pg.DSN())
	var name, fsync, syncCommit string
	if err := db.QueryRow("SELECT current_database(), current_setting('fsync'), current_setting('synchronous_commit')").
		Scan(&name, &fsync, &syncCommit); err != nil {
		t.Fatal(err)
	}
	if name != "admetric" || fsync != "off" || syncCommit != "on" {
		t.Fatalf("database %q fsync %q synchronous_commit %q", name, fsync, syncCommit)
	}
	mustExec(t, db, "CREATE TABLE things (id int PRIMARY KEY)")
	mustExec(t, db, "INSERT INTO things SELECT generate_series(1, 100)")
	if n := count(t, db); n != 100 {
		t.Fatalf("count = %d", n)
	}

	// Outage: stop and restart; the DSN stays valid and the data stays.
	if err := pg.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := pg.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	db = openDB(t, pg.DSN())
	if n := count(t, db); n != 100 {
		t.Fatalf("count after restart = %d", n)
	}

	// A restart of a running server, and one after a crash (with crash
	// recovery): the committed rows stay.
	mustExec(t, db, "INSERT INTO things VALUES (101)")
	if err := pg.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	crash(t, pg)
	if err := pg.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	db = openDB(t, pg.DSN())
	if n := count(t, db); n != 101 {
		t.Fatalf("count after a crash and a restart = %d", n)
	}
}

// Each call gets its own server and its own data, started from the same
// template.
func TestPostgresIsolation(t *testing.T) {
	a, b := storetest.Postgres(t), storetest.Postgres(t)
	if a.DSN() == b.DSN() {
		t.Fatalf("same DSN %s", a.DSN())
	}
	dbA, dbB := openDB(t, a.DSN()), openDB(t, b.DSN())
	mustExec(t, dbA, "CREATE TABLE things (id int PRIMARY KEY)")
	mustExec(t, dbA, "INSERT INTO things VALUES (1)")
	var exists bool
	if err := dbB.QueryRow("SELECT to_regclass('things') IS NOT NULL").Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if exists {
		t.Fatal("table created in one server is visible in the other")
	}
}

func TestPostgresParallel(t *testing.T) {
	for i := range 3 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			db := openDB(t, storetest.Postgres(t).DSN())
			mustExec(t, db, "CREATE TABLE things (id int PRIMARY KEY)")
			mustExec(t, db, fmt.Sprintf("INSERT INTO things SELECT generate_series(1, %d)", i+1))
			if n := count(t, db); n != i+1 {
				t.Fatalf("count = %d", n)
			}
		})
	}
}

// The cleanup stops the server and removes its data directory, whether the
// server still runs, was stopped by the test, or crashed.
func TestPostgresCleanup(t *testing.T) {
	var pids []int
	for _, tc := range []struct {
		name string
		end  func(t *testing.T, pg *storetest.PostgresServer)
	}{
		{"running", func(*testing.T, *storetest.PostgresServer) {}},
		{"stopped", func(t *testing.T, pg *storetest.PostgresServer) {
			if err := pg.Stop(context.Background()); err != nil {
				t.Fatal(err)
			}
		}},
		{"crashed", crash},
	} {
		if !t.Run(tc.name, func(t *testing.T) {
			pg := storetest.Postgres(t)
			pids = append(pids, postmasterPid(t, pg))
			tc.end(t, pg)
		}) {
			t.FailNow() // the subtest failed, or its cleanup did
		}
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Fatalf("postmaster %d still there after its test's cleanup (kill 0: %v)", pid, err)
		}
	}
	for _, root := range []string{os.Getenv(storetest.DirEnv), "/dev/shm", os.TempDir()} {
		if root == "" {
			continue
		}
		matches, err := filepath.Glob(filepath.Join(root, fmt.Sprintf("admetric-pg-%d-*", os.Getpid())))
		if err != nil {
			t.Fatal(err)
		}
		if len(matches) != 0 {
			t.Fatalf("data directories left behind: %v", matches)
		}
	}
}

// postmasterPid returns the pid of pg's postmaster, from its postmaster.pid.
func postmasterPid(t *testing.T, pg *storetest.PostgresServer) int {
	t.Helper()
	var dataDir string
	if err := openDB(t, pg.DSN()).QueryRow("SHOW data_directory").Scan(&dataDir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(first)
	if err != nil {
		t.Fatalf("postmaster.pid: %v", err)
	}
	return pid
}

// crash SIGKILLs pg's postmaster behind its back, as the OOM killer would,
// and waits until it is gone (its listening socket with it: backends do not
// keep it).
func crash(t *testing.T, pg *storetest.PostgresServer) {
	t.Helper()
	pid := postmasterPid(t, pg)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Gone once reaped, which the server's owner does at once: it waits on
	// its child.
	waitFor(t, 30*time.Second, "postmaster gone after SIGKILL", func() bool {
		return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
	})
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

// cleanupTB runs Postgres outside the test's own cleanup, so that a benchmark
// can start and stop one server per iteration.
type cleanupTB struct {
	testing.TB
	fns []func()
}

func (c *cleanupTB) Cleanup(f func()) { c.fns = append(c.fns, f) }

func (c *cleanupTB) runCleanups() {
	for i := len(c.fns) - 1; i >= 0; i-- {
		c.fns[i]()
	}
	c.fns = nil
}

// BenchmarkPostgres measures one Postgres(t) (copy of the template, start,
// ready, database present) and its cleanup (stop, removal).
func BenchmarkPostgres(b *testing.B) {
	storetest.Postgres(b) // the template is made once, not measured
	var start, stop time.Duration
	for b.Loop() {
		tb := &cleanupTB{TB: b}
		t0 := time.Now()
		storetest.Postgres(tb)
		t1 := time.Now()
		tb.runCleanups()
		start += t1.Sub(t0)
		stop += time.Since(t1)
	}
	b.ReportMetric(float64(start.Milliseconds())/float64(b.N), "start-ms/op")
	b.ReportMetric(float64(stop.Milliseconds())/float64(b.N), "stop-ms/op")
}

// BenchmarkPostgresNoTemplate measures what Postgres(t) would cost without
// the template: initdb, start, ready, CREATE DATABASE; then stop and removal.
// The directory is in $ADMETRIC_TEST_PGDIR, or else os.TempDir().
func BenchmarkPostgresNoTemplate(b *testing.B) {
	var start, stop time.Duration
	for b.Loop() {
		dir, err := os.MkdirTemp(os.Getenv(storetest.DirEnv), "admetric-pg-bench-*")
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		pg, err := devserver.StartPostgres(context.Background(), devserver.PostgresOptions{Dir: dir, Settings: storetest.Settings()})
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := pg.Stop(context.Background()); err != nil {
			b.Fatal(err)
		}
		os.RemoveAll(dir)
		start += t1.Sub(t0)
		stop += time.Since(t1)
	}
	b.ReportMetric(float64(start.Milliseconds())/float64(b.N), "start-ms/op")
	b.ReportMetric(float64(stop.Milliseconds())/float64(b.N), "stop-ms/op")
}
