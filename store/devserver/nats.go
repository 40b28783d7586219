package devserver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// NATSOptions configures the in-process nats-server used in development
// and tests.
type NATSOptions struct {
	// StoreDir holds the JetStream files.
	StoreDir string
	// Listen is host:port for clients outside the process (the nats CLI, local
	// publishers); port 0 picks a free one. Empty: in-process connections only.
	Listen string
	// SyncAlways makes JetStream fsync every write instead of every two minutes:
	// it survives an OS crash or power cut, at a cost in publish latency.
	SyncAlways bool
	// Config is nats-server configuration text applied first: the accounts
	// block AdMetric needs (store.ServerConfig).
	Config string
	// Account is the account of Config that holds JetStream and Users. The
	// first start with it moves the streams of the global account (where
	// AdMetric kept them before it had an account) into it.
	Account string
	// Users are the users of Account.
	Users []NATSUser
	// NoAuthUser, when set, is the user a client without credentials
	// connects as; it is refused with a Listen address that is not loopback.
	NoAuthUser string
	// Logger receives the server's log lines, without a component attribute:
	// the caller names it (e.g. logger.With("component", "nats")). Nil
	// discards them.
	Logger *slog.Logger
}

// NATSUser is a user of the embedded server's account. Publish and
// Subscribe, when not nil, are the only subjects it may publish and
// subscribe to; nil allows everything.
type NATSUser struct {
	Name, Password     string
	Publish, Subscribe []string
}

// NATS is a nats-server with JetStream running inside this process.
type NATS struct {
	srv *server.Server
}

// StartNATS starts the server and waits until it accepts connections.
func StartNATS(ctx context.Context, opts NATSOptions) (*NATS, error) {
	sopts := &server.Options{}
	if err := configure(sopts, opts); err != nil {
		return nil, err
	}
	sopts.ServerName = "admetric"
	sopts.JetStream = true
	sopts.StoreDir = opts.StoreDir
	sopts.SyncAlways = opts.SyncAlways
	sopts.NoSigs = true
	// The server's own limit is 1 MiB already; say so here, because the
	// rollup codec relies on it.
	sopts.MaxPayload = 1 << 20
	if opts.Listen == "" {
		sopts.DontListen = true
	} else {
		host, port, err := net.SplitHostPort(opts.Listen)
		if err != nil {
			return nil, fmt.Errorf("devserver: nats listen address %q: %w", opts.Listen, err)
		}
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("devserver: nats listen port %q: %w", port, err)
		}
		if p == 0 {
			p = server.RANDOM_PORT
		}
		if opts.NoAuthUser != "" && !isLoopback(host) {
			return nil, fmt.Errorf("%w: the embedded nats-server listens on %s without credentials", ErrOpenListener, opts.Listen)
		}
		sopts.Host, sopts.Port = host, p
	}
	srv, err := server.NewServer(sopts)
	if err != nil {
		return nil, fmt.Errorf("devserver: nats server: %w", err)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	srv.SetLoggerV2(&natsLogger{l: logger}, logger.Enabled(ctx, slog.LevelDebug), false, false)
	go srv.Start()
	deadline := 30 * time.Second
	if d, ok := ctx.Deadline(); ok {
		deadline = time.Until(d)
	}
	if !srv.ReadyForConnections(deadline) {
		srv.Shutdown()
		if opts.Listen != "" {
			return nil, fmt.Errorf("devserver: nats server not ready within %s (is %s free?)", deadline, opts.Listen)
		}
		return nil, fmt.Errorf("devserver: nats server not ready within %s", deadline)
	}
	return &NATS{srv: srv}, nil
}

// ClientURL is the URL clients outside the process use; empty when not listening.
func (n *NATS) ClientURL() string {
	if n.srv.Addr() == nil {
		return ""
	}
	return n.srv.ClientURL()
}

// Connect opens an in-process client connection (no TCP). The caller closes it.
func (n *NATS) Connect(name string, opts ...nats.Option) (*nats.Conn, error) {
	opts = append([]nats.Option{nats.Name(name), nats.InProcessServer(n.srv), nats.MaxReconnects(-1)}, opts...)
	nc, err := nats.Connect("", opts...)
	if err != nil {
		return nil, fmt.Errorf("devserver: connect to embedded nats: %w", err)
	}
	return nc, nil
}

// Shutdown stops the server and waits until it has flushed and closed its stores.
// Safe to call more than once.
func (n *NATS) Shutdown() {
	n.srv.Shutdown()
	n.srv.WaitForShutdown()
}

// natsLogger routes nats-server logging through slog.
type natsLogger struct{ l *slog.Logger }

func (n *natsLogger) Noticef(format string, v ...any) { n.l.Info(fmt.Sprintf(format, v...)) }
func (n *natsLogger) Warnf(format string, v ...any)   { n.l.Warn(fmt.Sprintf(format, v...)) }
func (n *natsLogger) Fatalf(format string, v ...any)  { n.l.Error(fmt.Sprintf(format, v...)) }
func (n *natsLogger) Errorf(format string, v ...any)  { n.l.Error(fmt.Sprintf(format, v...)) }
func (n *natsLogger) Debugf(format string, v ...any)  { n.l.Debug(fmt.Sprintf(format, v...)) }
func (n *natsLogger) Tracef(format string, v ...any)  { n.l.Debug(fmt.Sprintf(format, v...)) }

// ErrOpenListener is returned for a listener beyond loopback that would let
// clients in without credentials.
var ErrOpenListener = errors.New("devserver: refusing to listen beyond loopback without credentials")

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// configure applies opts' configuration text, account and users to sopts.
func configure(sopts *server.Options, opts NATSOptions) error {
	if opts.Config != "" {
		if err := sopts.ProcessConfigString(opts.Config); err != nil {
			return fmt.Errorf("devserver: nats configuration: %w", err)
		}
	}
	if opts.Account == "" {
		return nil
	}
	var acc *server.Account
	for _, a := range sopts.Accounts {
		if a.Name == opts.Account {
			acc = a
		}
	}
	if acc == nil {
		return fmt.Errorf("devserver: nats configuration has no account %s", opts.Account)
	}
	for _, u := range opts.Users {
		user := &server.User{Username: u.Name, Password: u.Password, Account: acc}
		if u.Publish != nil || u.Subscribe != nil {
			user.Permissions = &server.Permissions{
				Publish:   &server.SubjectPermission{Allow: u.Publish},
				Subscribe: &server.SubjectPermission{Allow: u.Subscribe},
			}
		}
		sopts.Users = append(sopts.Users, user)
	}
	sopts.NoAuthUser = opts.NoAuthUser
	return adoptGlobalStreams(filepath.Join(opts.StoreDir, "jetstream"), opts.Account)
}

// adoptGlobalStreams moves the JetStream files of the global account ($G)
// to account's directory when account has none: the streams and buckets a
// server without accounts kept come back in account, each under its name
// (a stream's files carry its name, not its account's).
func adoptGlobalStreams(jsDir, account string) error {
	from, to := filepath.Join(jsDir, server.DEFAULT_GLOBAL_ACCOUNT), filepath.Join(jsDir, account)
	if _, err := os.Stat(from); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if _, err := os.Stat(to); err == nil {
		return nil
	}
	if err := os.Rename(from, to); err != nil {
		return fmt.Errorf("devserver: moving the global account's streams to %s: %w", account, err)
	}
	return nil
}
