package devserver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/uptrace/bun/driver/pgdriver"
)

const (
	// startTimeout bounds how long a start waits for the server to
	// accept connections.
	startTimeout = 30 * time.Second
	// drainTimeout bounds how long a stop or a kill waits for every server
	// process (postmaster and backends) to be gone after the postmaster exited.
	drainTimeout = 10 * time.Second
	// tailLines is how many lines of server output error messages quote.
	tailLines = 30
	// portAttempts is how many free ports a start with Port 0 tries
	// when another process takes the picked port first.
	portAttempts = 3
	// database is the database StartPostgres creates, which DSN names.
	database = "admetric"
	// readyPollMin and readyPollMax bound the pause between two polls of a
	// starting server; a start takes from a few hundred milliseconds to
	// seconds.
	readyPollMin = 10 * time.Millisecond
	readyPollMax = 100 * time.Millisecond
)

// defaultSettings keep the server small; PostgresOptions.Settings
// override them.
var defaultSettings = map[string]string{
	"shared_buffers":  "32MB",
	"max_connections": "50",
}

// Postgres is a PostgreSQL server run as a child process from the machine's binaries.
// It is safe to call Stop more than once; methods are safe for concurrent use.
// A server stopped, or crashed, starts again by StartPostgres on the same Dir
// and Port (after a crash, postgres performs crash recovery).
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
type Postgres struct {
	dir         string // resolved absolute data directory
	port        int    // fixed after StartPostgres returns
	settings    map[string]string
	postgresBin string
	cred        *syscall.Credential // nil: run as the current user
	logger      *slog.Logger

	mu   sync.Mutex
	proc *process // nil when stopped
}

// PostgresOptions configure StartPostgres.
type PostgresOptions struct {
	// Dir is the data directory; it is created and initdb'd when empty or
	// missing. When running as root it must be reachable by the postgres OS
	// user (every parent directory traversable), and it is chowned to that
	// user.
	Dir string
	// Port is the TCP port on 127.0.0.1; 0 picks a free one (see DSN). A
	// server started again on the same Dir and Port has the same DSN.
	Port int
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

// StartPostgres initialises Dir if needed (initdb -A trust -U postgres
// --encoding=UTF8 --locale=C.UTF-8, falling back to --locale=C), starts
// `postgres -D Dir -p Port -c listen_addresses=127.0.0.1 -c unix_socket_directories=`
// (TCP only, so the path length of Dir never matters) as a child process,
// waits until it accepts connections (up to 30 s or ctx's deadline, failing
// fast with the tail of the server output if the child exits), creates
// the database "admetric" if missing, and returns. Errors are wrapped with
// "devserver: postgres: ...".
//
// The binaries are looked up on PATH first, then in the highest version of
// /usr/lib/postgresql/*/bin. When running as root (initdb and postgres refuse
// to), the children run as the postgres OS user; Dir must then be reachable by
// that user, which is checked up front.
//
// ctx only bounds the start; the server keeps running after ctx is done,
// until Stop or the death of this process (see Postgres). A stale
// postmaster.pid left by a killed server does not prevent the start: postgres
// ignores a lock file whose process is gone.
func StartPostgres(ctx context.Context, opts PostgresOptions) (*Postgres, error) {
	p, initdbBin, err := newPostgres(opts)
	if err != nil {
		return nil, err
	}
	noSync := strings.EqualFold(p.settings["fsync"], "off")
	if p.dir, err = initDataDir(ctx, opts.Dir, initdbBin, p.cred, noSync); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.startLocked(ctx, opts.Port == 0); err != nil {
		return nil, err
	}
	if err := p.createDatabase(ctx); err != nil {
		_ = p.killLocked()
		return nil, err
	}
	return p, nil
}

// newPostgres checks opts, finds the binaries and the OS user to run them
// as, and returns a stopped server with the defaults filled in, its data
// directory still to prepare, and the initdb to prepare it with.
func newPostgres(opts PostgresOptions) (p *Postgres, initdbBin string, err error) {
	if opts.Dir == "" {
		return nil, "", pgErrorf("no data directory given")
	}
	if opts.Port < 0 || opts.Port > 65535 {
		return nil, "", pgErrorf("invalid port %d", opts.Port)
	}
	p = &Postgres{
		port:   opts.Port,
		logger: opts.Logger,
	}
	if p.logger == nil {
		p.logger = slog.New(slog.DiscardHandler)
	}
	if p.settings, err = serverSettings(opts.Settings); err != nil {
		return nil, "", err
	}
	if p.postgresBin, initdbBin, err = findBinaries(); err != nil {
		return nil, "", err
	}
	if p.cred, err = postgresCredential(); err != nil {
		return nil, "", err
	}
	return p, initdbBin, nil
}

// serverSettings returns defaultSettings overridden by extra, refusing a
// name postgres could not take and the port, which has an option of its own.
func serverSettings(extra map[string]string) (map[string]string, error) {
	settings := make(map[string]string, len(defaultSettings)+len(extra))
	maps.Copy(settings, defaultSettings)
	for k, v := range extra {
		if k == "" || strings.ContainsAny(k, "= \t\n") {
			return nil, pgErrorf("invalid setting name %q", k)
		}
		if strings.EqualFold(k, "port") {
			return nil, pgErrorf("setting %q is not allowed: use PostgresOptions.Port", k)
		}
		settings[k] = v
	}
	return settings, nil
}

// DSN returns the postgres:// URL of the database "admetric" on
// 127.0.0.1:port, user postgres, sslmode=disable.
func (p *Postgres) DSN() string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     p.addr(),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Stop asks for a fast shutdown (SIGINT) and waits up to ctx's deadline (or
// until ctx is cancelled), then SIGKILLs the server. Returns nil when the
// server exited after the fast shutdown or was not running (Stop is
// idempotent); when it had to be killed, the returned error wraps ctx.Err()
// (the server is gone all the same).
func (p *Postgres) Stop(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	proc := p.proc
	if proc == nil {
		return nil
	}
	p.proc = nil
	select {
	case <-proc.child.done:
		proc.waitDrained(drainTimeout)
		return nil
	default:
	}
	if err := proc.child.cmd.Process.Signal(syscall.SIGINT); err != nil && !errors.Is(err, os.ErrProcessDone) {
		proc.kill()
		return pgErrorf("stop: %w", err)
	}
	select {
	case <-proc.child.done:
		if !proc.waitDrained(drainTimeout) {
			return pgErrorf("stop: postmaster exited but server processes are still running after %s", drainTimeout)
		}
		return nil
	case <-ctx.Done():
		proc.kill()
		return pgErrorf("stop: fast shutdown did not finish in time, server killed: %w", ctx.Err())
	}
}

// killLocked sends SIGKILL to the postmaster (a crash) and waits until it and
// its backends, which notice its death and exit at once, are gone. Clients see
// their connections terminated. It returns nil when the server was not running.
func (p *Postgres) killLocked() error {
	proc := p.proc
	if proc == nil {
		return nil
	}
	p.proc = nil
	if !proc.kill() {
		return pgErrorf("kill: server processes are still running after %s", drainTimeout)
	}
	return nil
}

// startLocked starts the postmaster and waits until it accepts connections.
// With autoPort, a fresh free port is picked for each attempt, and when
// another process grabs it before postgres binds it, the start is tried
// again on another (portAttempts in all).
func (p *Postgres) startLocked(ctx context.Context, autoPort bool) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	var last error
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		var portTaken bool
		portTaken, last = p.startOnce(ctx, autoPort)
		if last != nil && !portTaken {
			return struct{}{}, backoff.Permanent(last)
		}
		return struct{}{}, last
	},
		backoff.WithBackOff(&backoff.ZeroBackOff{}), // a port taken is no reason to wait
		backoff.WithMaxTries(portAttempts),
		backoff.WithMaxElapsedTime(0), // ctx bounds it
	)
	if err != nil {
		return last // rather than the bare context error Retry may give
	}
	return nil
}

// startOnce is one attempt of startLocked. It reports whether it failed
// because another process took the port it picked, which is worth another
// attempt on another port.
func (p *Postgres) startOnce(ctx context.Context, autoPort bool) (portTaken bool, err error) {
	if autoPort {
		port, err := freePort()
		if err != nil {
			return false, err
		}
		p.port = port
	}
	begin := time.Now()
	proc, err := p.spawn()
	if err != nil {
		return false, err
	}
	if err := p.waitReady(ctx, proc); err != nil {
		proc.kill()
		return autoPort && proc.bindFailed() && ctx.Err() == nil, err
	}
	p.proc = proc
	p.logger.Info("postgres started",
		"component", "postgres",
		"dir", p.dir,
		"port", p.port,
		"pid", proc.child.cmd.Process.Pid,
		"elapsed", time.Since(begin))
	return false, nil
}

// spawn starts the postmaster without waiting for it to be ready.
func (p *Postgres) spawn() (*process, error) {
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
		return nil, pgErrorf("start: %w", err)
	}
	cmd.Stdout = w
	cmd.Stderr = w
	child, err := startChild(cmd)
	w.Close()
	if err != nil {
		r.Close()
		return nil, pgErrorf("start %s: %w", p.postgresBin, err)
	}
	proc := &process{
		child:   child,
		drained: make(chan struct{}),
		tail:    &outputTail{max: tailLines},
	}
	go proc.readOutput(r, p.logger)
	return proc, nil
}

// waitReady polls the server with `SELECT 1`, at growing intervals up to
// readyPollMax, until it answers, the child exits (an error with the tail of
// its output, at once: retrying cannot help), or ctx is done.
func (p *Postgres) waitReady(ctx context.Context, proc *process) error {
	db := p.maintenanceDB()
	defer db.Close()
	var lastErr, exited error
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		var one int
		if lastErr = db.QueryRowContext(qctx, "SELECT 1").Scan(&one); lastErr == nil {
			return struct{}{}, nil
		}
		select {
		case <-proc.child.done:
			proc.waitDrained(time.Second) // for the last lines of output
			exited = pgErrorf("postgres exited during startup (%v); output:\n%s", proc.child.err, proc.tail.String())
			return struct{}{}, backoff.Permanent(exited)
		default:
			return struct{}{}, lastErr
		}
	},
		backoff.WithBackOff(&backoff.ExponentialBackOff{
			InitialInterval:     readyPollMin,
			RandomizationFactor: backoff.DefaultRandomizationFactor,
			Multiplier:          backoff.DefaultMultiplier,
			MaxInterval:         readyPollMax,
		}),
		backoff.WithMaxElapsedTime(0), // ctx bounds it
	)
	switch {
	case err == nil:
		return nil
	case exited != nil:
		return exited
	default: // ctx is done
		return pgErrorf("postgres on port %d not ready (last error: %v); output:\n%s: %w",
			p.port, lastErr, proc.tail.String(), ctx.Err())
	}
}

// createDatabase creates the database unless it exists.
func (p *Postgres) createDatabase(ctx context.Context) error {
	db := p.maintenanceDB()
	defer db.Close()
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	var exists bool
	if err := db.QueryRowContext(ctx,
		"SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", database).Scan(&exists); err != nil {
		return pgErrorf("look up database %q: %w", database, err)
	}
	if exists {
		return nil
	}
	if _, err := db.ExecContext(ctx, "CREATE DATABASE "+database); err != nil {
		return pgErrorf("create database %q: %w", database, err)
	}
	return nil
}

// maintenanceDB returns a handle on the database "postgres", which initdb
// creates. The caller closes it.
func (p *Postgres) maintenanceDB() *sql.DB {
	return sql.OpenDB(pgdriver.NewConnector(
		pgdriver.WithNetwork("tcp"),
		pgdriver.WithAddr(p.addr()),
		pgdriver.WithUser("postgres"),
		pgdriver.WithDatabase("postgres"),
		pgdriver.WithInsecure(true),
		pgdriver.WithDialTimeout(time.Second),
		pgdriver.WithTracing(false),
	))
}

func (p *Postgres) addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port))
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, pgErrorf("pick a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func pgErrorf(format string, args ...any) error {
	return fmt.Errorf("devserver: postgres: "+format, args...)
}
