package storetest

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/uptrace/bun"

	"github.com/admetric/admetric/store/devserver"
	"github.com/admetric/admetric/store/postgres"
)

// settings returns the server settings of every Postgres (a new map each time):
// durability against power loss is traded for speed (fsync off), which is fine
// for data that dies with the test. synchronous_commit stays on, so a COMMIT
// has reached the WAL in the OS and survives a crash (SIGKILL) of the server:
// crash tests rely on that.
//
// max_wal_size bounds the WAL a busy test can pile up between checkpoints,
// which matters when the data lives in memory (see Postgres). Dynamic shared
// memory lives in files of the data directory (mmap) rather than in /dev/shm,
// where a killed server would leave its segments behind.
func settings() map[string]string {
	return map[string]string{
		"fsync":                      "off",
		"full_page_writes":           "off",
		"max_wal_size":               "128MB",
		"dynamic_shared_memory_type": "mmap",
	}
}

// dirEnv names an environment variable that, when set, chooses the directory
// that holds the data directories of Postgres (every parent of it must be
// traversable by the postgres user when the tests run as root).
const dirEnv = "ADMETRIC_TEST_PGDIR"

const (
	// dirPrefix names the per-test data directories: dirPrefix<pid>-<random>.
	dirPrefix = "admetric-pg-"
	// templatePrefix names the per-process template: templatePrefix<pid>-<random>.
	templatePrefix = "admetric-pg-template-"
	startTimeout   = 2 * time.Minute
	stopTimeout    = 30 * time.Second
	// shmDir is used when it is a tmpfs with at least shmMinFree bytes free.
	shmDir     = "/dev/shm"
	shmMinFree = 2 << 30
	tmpfsMagic = 0x01021994
)

// dataRoot returns where the data directories go (see Postgres), removing at
// first use what dead test processes left there.
var dataRoot = sync.OnceValue(func() string {
	root := chooseDataRoot()
	sweepStale(root)
	if tmp := os.TempDir(); tmp != root {
		sweepStale(tmp) // where an earlier choice may have put them
	}
	return root
})

// template returns the data directory every Postgres of this process copies,
// made at first use.
var template = sync.OnceValues(func() (string, error) {
	return makeTemplate(dataRoot())
})

// TempDir returns a fresh empty directory, removed at cleanup, in which
// devserver.StartPostgres can make a data directory. Unlike t.TempDir, it is
// reachable by the postgres user that runs the server when the tests run as
// root. It is in the same place as the directories of Postgres.
func TempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp(dataRoot(), fmt.Sprintf("%s%d-*", dirPrefix, os.Getpid()))
	if err != nil {
		t.Fatalf("storetest: %v", err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("storetest: remove postgres data: %v", err)
		}
	})
	return dir
}

// Postgres starts a throwaway PostgreSQL for the test (fsync off), registers
// its Stop and the removal of its directory with t.Cleanup, and returns it.
// It never skips: if it cannot start, t.Fatal with the reason.
//
// The server listens on a free port of 127.0.0.1 and has an empty database
// "admetric", with the settings of this package. Tests may Stop and Restart
// it.
//
// To keep suites fast, initdb runs once per test process: the first call
// initialises a template data directory (and creates the database in it),
// and every call copies the template with `cp -a` to a fresh directory and
// starts a server there.
//
// The directories go to $ADMETRIC_TEST_PGDIR if set, else to /dev/shm if it is
// a tmpfs with at least 2 GiB free (creating the ~1300 files of a data
// directory is several times cheaper there than on a disk, and the data dies
// with the test anyway), else to os.TempDir(); all of these are reachable by
// the postgres user, unlike t.TempDir().
//
// The template is admetric-pg-template-<pid>-* in that directory; nothing can
// remove it when the test process exits, so the first call of each process
// removes the templates and data directories (admetric-pg-<pid>-*) left by
// processes that are no longer running.
func Postgres(t testing.TB) *PostgresServer {
	t.Helper()
	tmpl, err := template()
	if err != nil {
		t.Fatalf("storetest: %v", err)
	}
	dir := TempDir(t)
	// Copies the contents and the attributes of the template directory
	// itself, so dir ends up owned by the postgres user with mode 0700.
	if out, err := exec.Command("cp", "-a", tmpl+"/.", dir+"/").CombinedOutput(); err != nil {
		t.Fatalf("storetest: copy postgres template: %v: %s", err, out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	s, err := startServer(ctx, devserver.PostgresOptions{Dir: dir, Settings: settings()})
	if err != nil {
		t.Fatalf("storetest: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		defer cancel()
		if err := s.Stop(ctx); err != nil {
			t.Errorf("storetest: %v", err)
		}
	})
	return s
}

// PostgresServer is a PostgreSQL started by Postgres. Its methods are safe
// for concurrent use.
type PostgresServer struct {
	opts devserver.PostgresOptions // its Port that of the first start
	dsn  string

	mu  sync.Mutex
	srv *devserver.Postgres // the latest start
}

// startServer starts a server with opts and fixes its port for restarts.
func startServer(ctx context.Context, opts devserver.PostgresOptions) (*PostgresServer, error) {
	srv, err := devserver.StartPostgres(ctx, opts)
	if err != nil {
		return nil, err
	}
	s := &PostgresServer{opts: opts, dsn: srv.DSN(), srv: srv}
	u, err := url.Parse(s.dsn)
	if err == nil {
		s.opts.Port, err = strconv.Atoi(u.Port())
	}
	if err != nil {
		_ = srv.Stop(ctx)
		return nil, fmt.Errorf("port of %s: %w", s.dsn, err)
	}
	return s, nil
}

// DSN returns the postgres:// URL of the database, the same across restarts.
func (s *PostgresServer) DSN() string { return s.dsn }

// Stop stops the server (see devserver.Postgres.Stop). It does nothing when
// the server is stopped.
func (s *PostgresServer) Stop(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.srv.Stop(ctx)
}

// Restart stops the server if it runs, and starts it again on the same data
// directory and port, so that the DSN stays valid (for outage tests). It
// fails if another process took the port meanwhile.
func (s *PostgresServer) Restart(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.srv.Stop(ctx); err != nil {
		return fmt.Errorf("storetest: restart: %w", err)
	}
	srv, err := devserver.StartPostgres(ctx, s.opts)
	if err != nil {
		return fmt.Errorf("storetest: restart: %w", err)
	}
	s.srv = srv
	return nil
}

// makeTemplate initialises a data directory and runs a server on it once, so
// that it holds the database and has been shut down cleanly.
func makeTemplate(parent string) (string, error) {
	// Not TempDir: the template outlives the test that makes it.
	dir, err := os.MkdirTemp(parent, fmt.Sprintf("%s%d-*", templatePrefix, os.Getpid()))
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	pg, err := devserver.StartPostgres(ctx, devserver.PostgresOptions{Dir: dir, Settings: settings()})
	if err == nil {
		err = pg.Stop(ctx)
	}
	if err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("prepare postgres template: %w", err)
	}
	return dir, nil
}

var staleDirName = regexp.MustCompile(`^admetric-pg-(?:template-)?([0-9]+)-[0-9]+$`)

// sweepStale removes the templates and data directories of test processes
// that are gone (killed, or timed out), unless a server still runs on them.
func sweepStale(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		m := staleDirName.FindStringSubmatch(e.Name())
		if m == nil || !e.IsDir() {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || pid == os.Getpid() || processAlive(pid) {
			continue
		}
		stale := filepath.Join(dir, e.Name())
		if b, err := os.ReadFile(filepath.Join(stale, "postmaster.pid")); err == nil {
			first, _, _ := strings.Cut(string(b), "\n")
			if pgPid, err := strconv.Atoi(strings.TrimSpace(first)); err == nil && processAlive(pgPid) {
				continue
			}
		}
		os.RemoveAll(stale)
	}
}

// processAlive reports whether a process with that pid exists (or may: a pid
// of another user's process counts).
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// chooseDataRoot chooses the directory for the data directories, see Postgres.
func chooseDataRoot() string {
	if d := os.Getenv(dirEnv); d != "" {
		return d
	}
	var st syscall.Statfs_t
	if fi, err := os.Stat(shmDir); err == nil && fi.IsDir() && fi.Mode().Perm()&0o003 == 0o003 &&
		syscall.Statfs(shmDir, &st) == nil && st.Type == tmpfsMagic &&
		st.Bavail*uint64(st.Bsize) >= shmMinFree {
		return shmDir
	}
	return os.TempDir()
}

// DB opens a bun handle on pg, applies the migrations, and closes the handle
// with t.Cleanup.
func DB(t testing.TB, pg *PostgresServer) *bun.DB {
	t.Helper()
	ctx := context.Background()
	db, err := postgres.Open(ctx, pg.DSN())
	if err != nil {
		t.Fatalf("storetest: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	if _, err := postgres.Migrate(ctx, db); err != nil {
		t.Fatalf("storetest: %v", err)
	}
	return db
}
