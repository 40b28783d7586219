// Package storetest provides throwaway servers for the tests of packages that
// need a database.
package storetest

import (
	"context"
	"errors"
	"fmt"
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

// Settings returns the server settings of every Postgres (a new map each time):
// durability against power loss is traded for speed (fsync off), which is fine
// for data that dies with the test. synchronous_commit stays on, so a COMMIT
// has reached the WAL in the OS and survives a Kill (SIGKILL) of the server:
// crash tests rely on that.
//
// max_wal_size bounds the WAL a busy test can pile up between checkpoints,
// which matters when the data lives in memory (see Postgres). Dynamic shared
// memory lives in files of the data directory (mmap) rather than in /dev/shm,
// where a killed server would leave its segments behind.
func Settings() map[string]string {
	return map[string]string{
		"fsync":                      "off",
		"full_page_writes":           "off",
		"max_wal_size":               "128MB",
		"dynamic_shared_memory_type": "mmap",
	}
}

// DirEnv names an environment variable that, when set, chooses the directory
// that holds the data directories of Postgres (every parent of it must be
// traversable by the postgres user when the tests run as root).
const DirEnv = "ADMETRIC_TEST_PGDIR"

const (
	// pgDirPrefix names the per-test data directories: pgDirPrefix-<pid>-<random>.
	pgDirPrefix = "admetric-pg-"
	// pgTemplatePrefix names the per-process template: pgTemplatePrefix-<pid>-<random>.
	pgTemplatePrefix = "admetric-pg-template-"
	pgStartTimeout   = 2 * time.Minute
	pgStopTimeout    = 30 * time.Second
	// pgShmDir is used when it is a tmpfs with at least pgShmMinFree bytes free.
	pgShmDir     = "/dev/shm"
	pgShmMinFree = 2 << 30
	pgTmpfsMagic = 0x01021994
)

var (
	pgRootOnce sync.Once
	pgRoot     string // where the data directories go, see Postgres

	pgTemplate struct {
		once sync.Once
		dir  string
		err  error
	}
)

// pgDataRoot returns where the data directories go, removing at first use what
// dead test processes left there.
func pgDataRoot() string {
	pgRootOnce.Do(func() {
		pgRoot = pgChooseRoot()
		pgSweepStale(pgRoot)
		if tmp := os.TempDir(); tmp != pgRoot {
			pgSweepStale(tmp) // where an earlier choice may have put them
		}
	})
	return pgRoot
}

// TempDir returns a fresh empty directory, removed at cleanup, in which
// devserver.StartPostgres can make a data directory. Unlike t.TempDir, it is
// reachable by the postgres user that runs the server when the tests run as
// root. It is in the same place as the directories of Postgres.
func TempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp(pgDataRoot(), fmt.Sprintf("%s%d-*", pgDirPrefix, os.Getpid()))
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

// Postgres starts a throwaway PostgreSQL for the test (fsync off), registers its Stop and the removal of its directory with t.Cleanup, and returns it. It never skips: if it cannot start, t.Fatal with the reason.
//
// The server listens on a free port of 127.0.0.1 and has an empty database
// "admetric" (see LocalPostgres.DSN), with the Settings of this package.
// Tests may Stop, Kill and Restart it.
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
func Postgres(t testing.TB) *devserver.Postgres {
	t.Helper()
	pgTemplate.once.Do(func() {
		pgTemplate.dir, pgTemplate.err = pgMakeTemplate(pgDataRoot())
	})
	if pgTemplate.err != nil {
		t.Fatalf("storetest: %v", pgTemplate.err)
	}

	dir := TempDir(t)
	// Copies the contents and the attributes of the template directory
	// itself, so dir ends up owned by the postgres user with mode 0700.
	if out, err := exec.Command("cp", "-a", pgTemplate.dir+"/.", dir+"/").CombinedOutput(); err != nil {
		t.Fatalf("storetest: copy postgres template: %v: %s", err, out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), pgStartTimeout)
	defer cancel()
	pg, err := devserver.StartPostgres(ctx, devserver.PostgresOptions{Dir: dir, Settings: Settings()})
	if err != nil {
		t.Fatalf("storetest: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), pgStopTimeout)
		defer cancel()
		if err := pg.Stop(ctx); err != nil {
			t.Errorf("storetest: %v", err)
		}
	})
	return pg
}

// pgMakeTemplate initialises a data directory and runs a server on it once, so
// that it holds the database and has been shut down cleanly.
func pgMakeTemplate(parent string) (string, error) {
	// Not TempDir: the template outlives the test that makes it.
	dir, err := os.MkdirTemp(parent, fmt.Sprintf("%s%d-*", pgTemplatePrefix, os.Getpid()))
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), pgStartTimeout)
	defer cancel()
	pg, err := devserver.StartPostgres(ctx, devserver.PostgresOptions{Dir: dir, Settings: Settings()})
	if err == nil {
		err = pg.Stop(ctx)
	}
	if err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("prepare postgres template: %w", err)
	}
	return dir, nil
}

var pgStaleName = regexp.MustCompile(`^admetric-pg-(?:template-)?([0-9]+)-[0-9]+$`)

// pgSweepStale removes the templates and data directories of test processes
// that are gone (killed, or timed out), unless a server still runs on them.
func pgSweepStale(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		m := pgStaleName.FindStringSubmatch(e.Name())
		if m == nil || !e.IsDir() {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || pid == os.Getpid() || pgAlive(pid) {
			continue
		}
		stale := filepath.Join(dir, e.Name())
		if b, err := os.ReadFile(filepath.Join(stale, "postmaster.pid")); err == nil {
			first, _, _ := strings.Cut(string(b), "\n")
			if pgPid, err := strconv.Atoi(strings.TrimSpace(first)); err == nil && pgAlive(pgPid) {
				continue
			}
		}
		os.RemoveAll(stale)
	}
}

// pgAlive reports whether a process with that pid exists (or may: a pid of
// another user's process counts).
func pgAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// pgChooseRoot chooses the directory for the data directories, see Postgres.
func pgChooseRoot() string {
	if d := os.Getenv(DirEnv); d != "" {
		return d
	}
	var st syscall.Statfs_t
	if fi, err := os.Stat(pgShmDir); err == nil && fi.IsDir() && fi.Mode().Perm()&0o003 == 0o003 &&
		syscall.Statfs(pgShmDir, &st) == nil && st.Type == pgTmpfsMagic &&
		st.Bavail*uint64(st.Bsize) >= pgShmMinFree {
		return pgShmDir
	}
	return os.TempDir()
}

// DB opens a bun handle on pg, applies the migrations, and closes the handle
// with t.Cleanup.
func DB(t testing.TB, pg *devserver.Postgres) *bun.DB {
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
