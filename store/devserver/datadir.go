package devserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
)

// initDataDir prepares dir (see prepareDataDir) and, when it is empty,
// initialises it. It returns the absolute path with symlinks resolved.
func initDataDir(ctx context.Context, dir, initdbBin string, cred *syscall.Credential, noSync bool) (string, error) {
	resolved, needInit, err := prepareDataDir(dir, cred)
	if err != nil {
		return "", err
	}
	if needInit {
		if err := initdb(ctx, initdbBin, resolved, cred, noSync); err != nil {
			return "", err
		}
	}
	return resolved, nil
}

// initdb initialises dir, trying the C.UTF-8 locale first and plain C when
// the system lacks it.
func initdb(ctx context.Context, initdbBin, dir string, cred *syscall.Credential, noSync bool) error {
	var errs []error
	for _, locale := range []string{"C.UTF-8", "C"} {
		out, err := runInitdb(ctx, initdbBin, dir, cred, locale, noSync)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return pgErrorf("initdb %s: %w", dir, ctx.Err())
		}
		errs = append(errs, fmt.Errorf("initdb --locale=%s: %w; output:\n%s", locale, err, lastLines(out, tailLines)))
		// initdb removed what it created in dir; it is empty again.
	}
	return pgErrorf("initialise %s: %w", dir, errors.Join(errs...))
}

// runInitdb runs initdb once with locale and returns its output. When ctx
// is done first, it kills initdb and its children.
func runInitdb(ctx context.Context, initdbBin, dir string, cred *syscall.Credential, locale string, noSync bool) (string, error) {
	args := []string{
		"-D", dir,
		"-A", "trust",
		"-U", "postgres",
		"--encoding=UTF8",
		"--locale=" + locale,
		"--no-instructions",
	}
	if noSync {
		args = append(args, "--no-sync")
	}
	var out bytes.Buffer
	cmd := exec.Command(initdbBin, args...)
	cmd.Dir = "/"
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true,
		Pdeathsig:  syscall.SIGKILL,
		Credential: cred,
	}
	c, err := startChild(cmd)
	if err != nil {
		return "", pgErrorf("start %s: %w", initdbBin, err)
	}
	select {
	case <-c.done:
	case <-ctx.Done():
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
		return "", ctx.Err()
	}
	return out.String(), c.err
}

// findBinaries returns the postgres and initdb executables: from the
// directory of postgres on PATH, else from the highest version under
// /usr/lib/postgresql.
func findBinaries() (postgresBin, initdbBin string, err error) {
	if p, err := exec.LookPath("postgres"); err == nil {
		if resolved, err := filepath.EvalSymlinks(p); err == nil {
			p = resolved
		}
		if p, err := filepath.Abs(p); err == nil {
			initdb := filepath.Join(filepath.Dir(p), "initdb")
			if isExecutable(initdb) {
				return p, initdb, nil
			}
			if initdb, err := exec.LookPath("initdb"); err == nil {
				return p, initdb, nil
			}
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	bestVersion := -1.0
	for _, d := range dirs {
		v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(d)), 64)
		if err != nil {
			continue
		}
		if v > bestVersion && isExecutable(filepath.Join(d, "postgres")) && isExecutable(filepath.Join(d, "initdb")) {
			bestVersion = v
			postgresBin, initdbBin = filepath.Join(d, "postgres"), filepath.Join(d, "initdb")
		}
	}
	if postgresBin == "" {
		return "", "", pgErrorf("no PostgreSQL server binaries (postgres, initdb) on PATH or in /usr/lib/postgresql/*/bin; install the postgresql package")
	}
	return postgresBin, initdbBin, nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// postgresCredential returns nil when not running as root; as root (which
// initdb and postgres refuse) it returns the credential of the postgres user.
func postgresCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, pgErrorf("running as root, which postgres refuses, and no postgres OS user to run it as (create one, e.g. useradd --system postgres): %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, pgErrorf("postgres user uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, pgErrorf("postgres user gid %q: %w", u.Gid, err)
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
	if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			if g, err := strconv.ParseUint(id, 10, 32); err == nil {
				cred.Groups = append(cred.Groups, uint32(g))
			}
		}
	}
	return cred, nil
}

// prepareDataDir creates dir if missing, hands it to the postgres user when
// running as root, and reports whether it still needs initdb. It returns the
// absolute path with symlinks resolved.
func prepareDataDir(dir string, cred *syscall.Credential) (resolved string, needInit bool, err error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", false, pgErrorf("data directory %s: %w", dir, err)
	}
	if cred != nil {
		// Check the ancestors that exist before creating anything.
		if err := checkTraversable(abs, existingAncestor(abs), cred); err != nil {
			return "", false, err
		}
	}
	resolved, fi, err := makeDataDir(abs)
	if err != nil {
		return "", false, err
	}
	if needInit, err = needsInitdb(resolved); err != nil {
		return "", false, err
	}
	if cred != nil {
		if err := handToPostgresUser(resolved, fi, cred); err != nil {
			return "", false, err
		}
	}
	// postgres refuses a data directory with more than 0750 permissions.
	if fi.Mode().Perm()&0o027 != 0 {
		if err := os.Chmod(resolved, 0o700); err != nil {
			return "", false, pgErrorf("data directory: %w", err)
		}
	}
	return resolved, needInit, nil
}

// existingAncestor returns the nearest ancestor of the absolute path abs that
// exists (the root at the latest).
func existingAncestor(abs string) string {
	d := filepath.Dir(abs)
	for {
		if _, err := os.Stat(d); err == nil || d == filepath.Dir(d) {
			return d
		}
		d = filepath.Dir(d)
	}
}

// makeDataDir creates abs (0700) and its parents (0755: world-traversable,
// as the postgres user must reach abs) where missing, and returns it with
// symlinks resolved and its file info.
func makeDataDir(abs string) (string, fs.FileInfo, error) {
	if err := os.MkdirAll(filepath.Dir(abs), 0o755); err != nil {
		return "", nil, pgErrorf("data directory: %w", err)
	}
	if err := os.Mkdir(abs, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", nil, pgErrorf("data directory: %w", err)
	}
	resolved, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", nil, pgErrorf("data directory: %w", err)
	}
	fi, err := os.Stat(resolved)
	if err != nil {
		return "", nil, pgErrorf("data directory: %w", err)
	}
	if !fi.IsDir() {
		return "", nil, pgErrorf("data directory %s is not a directory", resolved)
	}
	return resolved, fi, nil
}

// needsInitdb reports whether dir is empty; a directory that is not must be
// a data directory already.
func needsInitdb(dir string) (bool, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false, pgErrorf("data directory: %w", err)
	}
	if len(entries) == 0 {
		return true, nil
	}
	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); err != nil {
		return false, pgErrorf("data directory %s is neither empty nor a PostgreSQL data directory (no PG_VERSION)", dir)
	}
	return false, nil
}

// handToPostgresUser checks that the user of cred can reach dir and makes
// it the owner of everything in dir, unless it owns dir already.
func handToPostgresUser(dir string, fi fs.FileInfo, cred *syscall.Credential) error {
	if err := checkTraversable(dir, filepath.Dir(dir), cred); err != nil {
		return err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != cred.Uid {
		if err := chownTree(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return pgErrorf("give data directory %s to the postgres user: %w", dir, err)
		}
	}
	return nil
}

// checkTraversable checks that the user of cred may search from, an
// ancestor of the data directory dir, and every ancestor of from, by their
// permission bits.
func checkTraversable(dir, from string, cred *syscall.Credential) error {
	for d := from; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return pgErrorf("data directory: %w", err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if ok && !canSearch(st, fi.Mode(), cred) {
			return pgErrorf("data directory %s is not reachable by the postgres user (uid %d), which runs the server because we run as root: "+
				"%s (mode %04o, owner uid %d) is not traversable by it; "+
				"use a DATA_DIR outside root-only directories such as /root or a test's t.TempDir() (e.g. under /var/lib or /tmp)",
				dir, cred.Uid, d, fi.Mode().Perm(), st.Uid)
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

func canSearch(st *syscall.Stat_t, mode fs.FileMode, cred *syscall.Credential) bool {
	perm := mode.Perm()
	switch {
	case st.Uid == cred.Uid:
		return perm&0o100 != 0
	case st.Gid == cred.Gid || slices.Contains(cred.Groups, st.Gid):
		return perm&0o010 != 0
	default:
		return perm&0o001 != 0
	}
}

func chownTree(root string, uid, gid int) error {
	return filepath.WalkDir(root, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, uid, gid)
	})
}
