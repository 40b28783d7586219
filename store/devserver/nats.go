package devserver

import (
	"context"
	"fmt"
	"log/slog"
	"net"
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
	// Logger receives the server's log lines, without a component attribute:
	// the caller names it (e.g. logger.With("component", "nats")). Nil
	// discards them.
	Logger *slog.Logger
}

// NATS is a nats-server with JetStream running inside this process.
type NATS struct {
	srv *server.Server
}

// StartNATS starts the server and waits until it accepts connections.
func StartNATS(ctx context.Context, opts NATSOptions) (*NATS, error) {
	sopts := &server.Options{
		ServerName: "admetric",
		JetStream:  true,
		StoreDir:   opts.StoreDir,
		SyncAlways: opts.SyncAlways,
		NoSigs:     true,
		// The server's own limit is 1 MiB already; say so here, because the
		// rollup codec relies on it.
		MaxPayload: 1 << 20,
	}
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
