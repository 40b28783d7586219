package store

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/uptrace/bun/driver/pgdriver"
)

const (
	// localPGStartTimeout bounds how long a start waits for the server to
	// accept connections.
	localPGStartTimeout = 30 * time.Second
	// localPGDrainTimeout bounds how long Stop and Kill wait for every server
	// process (postmaster and backends) to be gone after the postmaster exited.
	localPGDrainTimeout = 10 * time.Second
	// localPGTailLines is how many lines of server output error messages quote.
	localPGTailLines = 30
	// localPGPortAttempts is how many free ports a start with Port 0 tries
	// when another process takes the picked port first.
	localPGPortAttempts = 3
	// localPGDefaultDatabase is the database created when Database is empty.
	localPGDefaultDatabase = "admetric"
)

// localPGDefaultSettings keep the server small; LocalPostgresOptions.Settings
// override them.
var localPGDefaultSettings = map[string]string{
	"shared_buffers":  "32MB",
	"max_connections": "50",
}

// LocalPostgres is a PostgreSQL server run as a child process from the machine's binaries.
// It is safe to call Stop more than once; methods are safe for concurrent use.
//
// The server listens on 127.0.0.1 only (no unix socket) and trusts every
// connection, so it is meant for development and tests, not production.
//
// The child is started with SysProcAttr.Pdeathsig = SIGINT, so if the parent
// process dies without calling Stop (even by SIGKILL) the server performs a
// fast shutdown. Because Linux ties the parent-death signal to the OS thread
// that forked the child, not to the process, the child is started from a
// goroutine that locks its OS thread and keeps it (blocked in wait) until the
// child has exited; no other goroutine can run on that thread and make the Go
// runtime retire it early.
//
// The server runs in its own process group, so a Ctrl-C in the terminal
// reaches only the parent, which can then drain its work and call Stop.
type LocalPostgres struct {
	dir         string // resolved absolute data directory
	port        int    // fixed after StartLocalPostgres returns
	database    string
	settings    map[string]string
	postgresBin string
	cred        *syscall.Credential // nil: run as the current user
	logger      *slog.Logger

	mu   sync.Mutex
	proc *lpgProcess // nil when stopped
}

// LocalPostgresOptions configure StartLocalPostgres.
type LocalPostgresOptions struct {
	// Dir is the data directory; it is created and initdb'd when empty or
	// missing. When running as root it must be reachable by the postgres OS
	// user (every parent directory traversable), and it is chowned to that
	// user.
	Dir string
	// Port is the TCP port on 127.0.0.1; 0 picks a free port when the server
	// is first started (Restart keeps it so the DSN stays valid).
	Port int
	// Database is created if missing (default "admetric").
	Database string
	// Settings are extra -c name=value server settings (e.g. fsync=off). They
	// override the defaults shared_buffers=32MB and max_connections=50. A
	// "port" setting is refused: use Port. When fsync is "off", initdb also
	// runs with --no-sync.
	Settings map[string]string
	// Logger receives each line of server output at debug level with
	// component=postgres, and the start of the server at info level; nil
	// discards.
	Logger *slog.Logger
}

// StartLocalPostgres initialises Dir if needed (initdb -A trust -U postgres
// --encoding=UTF8 --locale=C.UTF-8, falling back to --locale=C), starts
// `postgres -D Dir -p Port -c listen_addresses=127.0.0.1 -c unix_socket_directories=`
// (TCP only, so the path length of Dir never matters) as a child process,
// waits until it accepts connections (up to 30 s or ctx's deadline, failing
// fast with the tail of the server output if the child exits), creates
// Database if missing, and returns. Errors are wrapped with
// "store: local postgres: ...".
//
// The binaries are looked up on PATH first, then in the highest version of
// /usr/lib/postgresql/*/bin. When running as root (initdb and postgres refuse
// to), the children run as the postgres OS user; Dir must then be reachable by
// that user, which is checked up front.
//
// ctx only bounds the start; the server keeps running after ctx is done,
// until Stop or Kill or the death of this process (see LocalPostgres). A stale
// postmaster.pid left by a killed server does not prevent the start: postgres
// ignores a lock file whose process is gone.
func StartLocalPostgres(ctx context.Context, opts LocalPostgresOptions) (*LocalPostgres, error) {
	if opts.Dir == "" {
		return nil, lpgErrorf("no data directory given")
	}
	if opts.Port < 0 || opts.Port > 65535 {
		return nil, lpgErrorf("invalid port %d", opts.Port)
	}
	settings := make(map[string]string, len(localPGDefaultSettings)+len(opts.Settings))
	maps.Copy(settings, localPGDefaultSettings)
	for k, v := range opts.Settings {
		if k == "" || strings.ContainsAny(k, "= \t\n") {
			return nil, lpgErrorf("invalid setting name %q", k)
		}
		if strings.EqualFold(k, "port") {
			return nil, lpgErrorf("setting %q is not allowed: use LocalPostgresOptions.Port", k)
		}
		settings[k] = v
	}
	database := opts.Database
	if database == "" {
		database = localPGDefaultDatabase
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}

	postgresBin, initdbBin, err := lpgFindBinaries()
	if err != nil {
		return nil, err
	}
	cred, err := lpgCredential()
	if err != nil {
		return nil, err
	}
	dir, needInit, err := lpgPrepareDataDir(opts.Dir, cred)
	if err != nil {
		return nil, err
	}
	if needInit {
		noSync := strings.EqualFold(settings["fsync"], "off")
		if err := lpgInitdb(ctx, initdbBin, dir, cred, noSync); err != nil {
			return nil, err
		}
	}

	p := &LocalPostgres{
		dir:         dir,
		port:        opts.Port,
		database:    database,
		settings:    settings,
		postgresBin: postgresBin,
		cred:        cred,
		logger:      logger,
	}
	autoPort := opts.Port == 0
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.startLocked(ctx, autoPort); err != nil {
		return nil, err
	}
	if err := p.createDatabase(ctx); err != nil {
		_ = p.killLocked()
		return nil, err
	}
	return p, nil
}

// DSN returns a postgres:// URL for Database on 127.0.0.1:port, user postgres, sslmode=disable.
func (p *LocalPostgres) DSN() string {
	return p.dsnFor(p.database)
}

// Stop asks for a fast shutdown (SIGINT) and waits up to ctx's deadline (or
// until ctx is cancelled), then SIGKILLs the server. Returns nil when the
// server exited after the fast shutdown or was not running (Stop is
// idempotent); when it had to be killed, the returned error wraps ctx.Err()
// (the server is gone all the same).
func (p *LocalPostgres) Stop(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	proc := p.proc
	if proc == nil {
		return nil
	}
	p.proc = nil
	select {
	case <-proc.child.done:
		proc.waitDrained(localPGDrainTimeout)
		return nil
	default:
	}
	if err := proc.child.cmd.Process.Signal(syscall.SIGINT); err != nil && !errors.Is(err, os.ErrProcessDone) {
		proc.kill()
		return lpgErrorf("stop: %w", err)
	}
	select {
	case <-proc.child.done:
		if !proc.waitDrained(localPGDrainTimeout) {
			return lpgErrorf("stop: postmaster exited but server processes are still running after %s", localPGDrainTimeout)
		}
		return nil
	case <-ctx.Done():
		proc.kill()
		return lpgErrorf("stop: fast shutdown did not finish in time, server killed: %w", ctx.Err())
	}
}

// Kill sends SIGKILL to the postmaster (a crash; used by crash tests) and
// waits until it and its backends, which notice its death and exit at once,
// are gone. Clients see their connections terminated. It returns nil when the
// server was not running. A later Restart performs crash recovery, despite the
// stale postmaster.pid left behind.
func (p *LocalPostgres) Kill() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.killLocked()
}

// Restart starts a stopped (or killed, or crashed) server again on the same
// Dir and Port (for outage tests); the DSN stays valid. It fails if the server
// is running, or if another process took the port meanwhile.
func (p *LocalPostgres) Restart(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc != nil {
		select {
		case <-p.proc.child.done:
			p.proc.waitDrained(localPGDrainTimeout)
			p.proc = nil
		default:
			return lpgErrorf("restart: server is running on port %d", p.port)
		}
	}
	return p.startLocked(ctx, false)
}

func (p *LocalPostgres) killLocked() error {
	proc := p.proc
	if proc == nil {
		return nil
	}
	p.proc = nil
	if !proc.kill() {
		return lpgErrorf("kill: server processes are still running after %s", localPGDrainTimeout)
	}
	return nil
}

// startLocked starts the postmaster and waits until it accepts connections.
// With autoPort, a fresh free port is picked and, if another process grabs it
// before postgres binds it, retried with another one.
func (p *LocalPostgres) startLocked(ctx context.Context, autoPort bool) error {
	ctx, cancel := context.WithTimeout(ctx, localPGStartTimeout)
	defer cancel()
	for attempt := 1; ; attempt++ {
		if autoPort {
			port, err := lpgFreePort()
			if err != nil {
				return err
			}
			p.port = port
		}
		begin := time.Now()
		proc, err := p.spawn()
		if err != nil {
			return err
		}
		err = p.waitReady(ctx, proc)
		if err == nil {
			p.proc = proc
			p.logger.Info("local postgres started",
				"component", "postgres",
				"dir", p.dir,
				"port", p.port,
				"pid", proc.child.cmd.Process.Pid,
				"elapsed", time.Since(begin))
			return nil
		}
		proc.kill()
		if autoPort && attempt < localPGPortAttempts && proc.bindFailed() && ctx.Err() == nil {
			continue
		}
		return err
	}
}

// spawn starts the postmaster without waiting for it to be ready.
func (p *LocalPostgres) spawn() (*lpgProcess, error) {
	args := []string{
		"-D", p.dir,
		"-p", strconv.Itoa(p.port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories=",
	}
	for _, k := range slices.Sorted(maps.Keys(p.settings)) {
		args = append(args, "-c", k+"="+p.settings[k])
	}
	cmd := exec.Command(p.postgresBin, args...)
	cmd.Dir = "/" // the parent's working directory may be unreachable for the postgres user
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:    true,
		Pdeathsig:  syscall.SIGINT,
		Credential: p.cred,
	}
	// The output goes to a pipe of our own rather than through exec's copying
	// goroutine, so that Wait does not depend on backends that outlive a
	// killed postmaster, and so that the end of the output tells when every
	// server process (all of which inherit the pipe) is gone.
	r, w, err := os.Pipe()
	if err != nil {
		return nil, lpgErrorf("start: %w", err)
	}
	cmd.Stdout = w
	cmd.Stderr = w
	child, err := lpgStartChild(cmd)
	w.Close()
	if err != nil {
		r.Close()
		return nil, lpgErrorf("start %s: %w", p.postgresBin, err)
	}
	proc := &lpgProcess{
		child:   child,
		drained: make(chan struct{}),
		tail:    &lpgOutputTail{max: localPGTailLines},
	}
	go proc.readOutput(r, p.logger)
	return proc, nil
}

// waitReady polls the server with `SELECT 1` until it answers, the child
// exits, or ctx is done.
func (p *LocalPostgres) waitReady(ctx context.Context, proc *lpgProcess) error {
	db := p.openDB("postgres")
	defer db.Close()
	var lastErr error
	for {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		var one int
		err := db.QueryRowContext(qctx, "SELECT 1").Scan(&one)
		cancel()
		if err == nil {
			return nil
		}
		lastErr = err
		select {
		case <-proc.child.done:
			proc.waitDrained(time.Second)
			return lpgErrorf("postgres exited during startup (%v); output:\n%s", proc.child.err, proc.tail.String())
		case <-ctx.Done():
			return lpgErrorf("postgres on port %d not ready (last error: %v); output:\n%s: %w",
				p.port, lastErr, proc.tail.String(), ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (p *LocalPostgres) createDatabase(ctx context.Context) error {
	db := p.openDB("postgres")
	defer db.Close()
	ctx, cancel := context.WithTimeout(ctx, localPGStartTimeout)
	defer cancel()
	var exists bool
	if err := db.QueryRowContext(ctx,
		"SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", p.database).Scan(&exists); err != nil {
		return lpgErrorf("look up database %q: %w", p.database, err)
	}
	if exists {
		return nil
	}
	if _, err := db.ExecContext(ctx, "CREATE DATABASE "+lpgQuoteIdent(p.database)); err != nil {
		return lpgErrorf("create database %q: %w", p.database, err)
	}
	return nil
}

func (p *LocalPostgres) openDB(database string) *sql.DB {
	return sql.OpenDB(pgdriver.NewConnector(
		pgdriver.WithNetwork("tcp"),
		pgdriver.WithAddr(p.addr()),
		pgdriver.WithUser("postgres"),
		pgdriver.WithDatabase(database),
		pgdriver.WithInsecure(true),
		pgdriver.WithDialTimeout(time.Second),
		pgdriver.WithTracing(false),
	))
}

func (p *LocalPostgres) addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port))
}

func (p *LocalPostgres) dsnFor(database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     p.addr(),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// lpgProcess is one run of the postmaster.
type lpgProcess struct {
	child   *lpgChild
	drained chan struct{} // closed at the end of the output: every server process is gone
	tail    *lpgOutputTail
}

// readOutput logs each line of server output and keeps the last ones for
// error messages.
func (proc *lpgProcess) readOutput(r *os.File, logger *slog.Logger) {
	defer close(proc.drained)
	defer r.Close()
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadString('\n')
		line = strings.TrimRight(line, "\r\n")
		if line != "" {
			proc.tail.add(line)
			logger.Debug(line, "component", "postgres")
		}
		if err != nil {
			return
		}
	}
}

// kill SIGKILLs the postmaster and waits for it and, up to
// localPGDrainTimeout, for the other server processes (each of which postgres
// puts in a session of its own, so they are not signalled; they exit when
// they notice the postmaster's death). It reports whether they are all gone.
func (proc *lpgProcess) kill() bool {
	_ = proc.child.cmd.Process.Kill() // os.ErrProcessDone once reaped
	<-proc.child.done
	return proc.waitDrained(localPGDrainTimeout)
}

func (proc *lpgProcess) waitDrained(timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-proc.drained:
		return true
	case <-t.C:
		return false
	}
}

// bindFailed reports whether the server could not listen on its port.
func (proc *lpgProcess) bindFailed() bool {
	s := proc.tail.String()
	return strings.Contains(s, "could not bind") ||
		strings.Contains(s, "could not create any TCP/IP sockets") ||
		strings.Contains(s, "Address already in use")
}

// lpgOutputTail keeps the last max lines of output.
type lpgOutputTail struct {
	mu    sync.Mutex
	max   int
	lines []string
}

func (t *lpgOutputTail) add(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == t.max {
		t.lines = slices.Delete(t.lines, 0, 1)
	}
	t.lines = append(t.lines, line)
}

func (t *lpgOutputTail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == 0 {
		return "(no output)"
	}
	return strings.Join(t.lines, "\n")
}

// lpgChild is a process started from a dedicated OS thread, so that its
// Pdeathsig fires only when this process dies. The thread stays locked to its
// goroutine, which blocks in Wait, until the child has exited; the goroutine
// then exits without unlocking, so the runtime retires the thread instead of
// reusing it.
type lpgChild struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when Wait returned
	err  error         // Wait's result; read only after done is closed
}

func lpgStartChild(cmd *exec.Cmd) (*lpgChild, error) {
	c := &lpgChild{cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Deliberately never unlocked, see lpgChild.
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		c.err = cmd.Wait()
		close(c.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return c, nil
}

// lpgInitdb initialises dir, trying the C.UTF-8 locale first and plain C when
// the system lacks it.
func lpgInitdb(ctx context.Context, initdbBin, dir string, cred *syscall.Credential, noSync bool) error {
	var errs []error
	for _, locale := range []string{"C.UTF-8", "C"} {
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
		c, err := lpgStartChild(cmd)
		if err != nil {
			return lpgErrorf("start %s: %w", initdbBin, err)
		}
		select {
		case <-c.done:
		case <-ctx.Done():
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-c.done
			return lpgErrorf("initdb %s: %w", dir, ctx.Err())
		}
		if c.err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("initdb --locale=%s: %w; output:\n%s", locale, c.err, lpgLastLines(out.String(), localPGTailLines)))
		// initdb removed what it created in dir; it is empty again.
	}
	return lpgErrorf("initialise %s: %w", dir, errors.Join(errs...))
}

// lpgFindBinaries returns the postgres and initdb executables: from the
// directory of postgres on PATH, else from the highest version under
// /usr/lib/postgresql.
func lpgFindBinaries() (postgresBin, initdbBin string, err error) {
	if p, err := exec.LookPath("postgres"); err == nil {
		if resolved, err := filepath.EvalSymlinks(p); err == nil {
			p = resolved
		}
		if p, err := filepath.Abs(p); err == nil {
			initdb := filepath.Join(filepath.Dir(p), "initdb")
			if lpgIsExecutable(initdb) {
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
		if v > bestVersion && lpgIsExecutable(filepath.Join(d, "postgres")) && lpgIsExecutable(filepath.Join(d, "initdb")) {
			bestVersion = v
			postgresBin, initdbBin = filepath.Join(d, "postgres"), filepath.Join(d, "initdb")
		}
	}
	if postgresBin == "" {
		return "", "", lpgErrorf("no PostgreSQL server binaries (postgres, initdb) on PATH or in /usr/lib/postgresql/*/bin; install the postgresql package")
	}
	return postgresBin, initdbBin, nil
}

func lpgIsExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// lpgCredential returns nil when not running as root; as root (which
// initdb and postgres refuse) it returns the credential of the postgres user.
func lpgCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, lpgErrorf("running as root, which postgres refuses, and no postgres OS user to run it as (create one, e.g. useradd --system postgres): %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, lpgErrorf("postgres user uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, lpgErrorf("postgres user gid %q: %w", u.Gid, err)
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

// lpgPrepareDataDir creates dir if missing, hands it to the postgres user when
// running as root, and reports whether it still needs initdb. It returns the
// absolute path with symlinks resolved.
func lpgPrepareDataDir(dir string, cred *syscall.Credential) (string, bool, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", false, lpgErrorf("data directory %s: %w", dir, err)
	}
	if cred != nil {
		// Check the ancestors that exist before creating anything.
		existing := filepath.Dir(abs)
		for {
			if _, err := os.Stat(existing); err == nil || existing == filepath.Dir(existing) {
				break
			}
			existing = filepath.Dir(existing)
		}
		if err := lpgCheckTraversable(abs, existing, cred); err != nil {
			return "", false, err
		}
	}
	// Parents are made world-traversable: the postgres user must reach dir.
	if err := os.MkdirAll(filepath.Dir(abs), 0o755); err != nil {
		return "", false, lpgErrorf("data directory: %w", err)
	}
	if err := os.Mkdir(abs, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", false, lpgErrorf("data directory: %w", err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", false, lpgErrorf("data directory: %w", err)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", false, lpgErrorf("data directory: %w", err)
	}
	if !fi.IsDir() {
		return "", false, lpgErrorf("data directory %s is not a directory", real)
	}
	entries, err := os.ReadDir(real)
	if err != nil {
		return "", false, lpgErrorf("data directory: %w", err)
	}
	needInit := len(entries) == 0
	if !needInit {
		if _, err := os.Stat(filepath.Join(real, "PG_VERSION")); err != nil {
			return "", false, lpgErrorf("data directory %s is neither empty nor a PostgreSQL data directory (no PG_VERSION)", real)
		}
	}
	if cred != nil {
		if err := lpgCheckTraversable(real, filepath.Dir(real), cred); err != nil {
			return "", false, err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != cred.Uid {
			if err := lpgChownTree(real, int(cred.Uid), int(cred.Gid)); err != nil {
				return "", false, lpgErrorf("give data directory %s to the postgres user: %w", real, err)
			}
		}
	}
	// postgres refuses a data directory with more than 0750 permissions.
	if fi.Mode().Perm()&0o027 != 0 {
		if err := os.Chmod(real, 0o700); err != nil {
			return "", false, lpgErrorf("data directory: %w", err)
		}
	}
	return real, needInit, nil
}

// lpgCheckTraversable checks that the user of cred may search from, an
// ancestor of the data directory dir, and every ancestor of from, by their
// permission bits.
func lpgCheckTraversable(dir, from string, cred *syscall.Credential) error {
	for d := from; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return lpgErrorf("data directory: %w", err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if ok && !lpgCanSearch(st, fi.Mode(), cred) {
			return lpgErrorf("data directory %s is not reachable by the postgres user (uid %d), which runs the server because we run as root: "+
				"%s (mode %04o, owner uid %d) is not traversable by it; "+
				"use a DATA_DIR outside root-only directories such as /root or a test's t.TempDir() (e.g. under /var/lib or /tmp)",
				dir, cred.Uid, d, fi.Mode().Perm(), st.Uid)
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

func lpgCanSearch(st *syscall.Stat_t, mode fs.FileMode, cred *syscall.Credential) bool {
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

func lpgChownTree(root string, uid, gid int) error {
	return filepath.WalkDir(root, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, uid, gid)
	})
}

// lpgFreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func lpgFreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, lpgErrorf("pick a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func lpgQuoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

func lpgLastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func lpgErrorf(format string, args ...any) error {
	return fmt.Errorf("store: local postgres: "+format, args...)
}
