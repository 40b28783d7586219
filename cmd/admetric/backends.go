package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/uptrace/bun"

	"github.com/admetric/admetric/config"
	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/devserver"
	"github.com/admetric/admetric/store/postgres"
	"github.com/admetric/admetric/store/rollup"
)

// backends are what a process of any command works with: its local state
// under DATA_DIR (the visitor salt), NATS (the embedded server, or
// NATS_URL) and PostgreSQL (the private server, or DATABASE_URL / DB_*).
type backends struct {
	cfg     *config.Config
	logger  *slog.Logger
	dataDir string // absolute
	salt    []byte
	layout  rollup.Layout

	embedded *devserver.NATS // nil with NATS_URL
	nc       *nats.Conn
	js       jetstream.JetStream
	pg       *devserver.Postgres // nil with DATABASE_URL or DB_HOST
	db       *bun.DB
}

// deadLetterMaxAge is how long poison messages wait in ADMETRIC_DLQ for someone
// to look at them.
const deadLetterMaxAge = 30 * 24 * time.Hour

// natsFirstConnect bounds how long a start waits for the first connection
// to NATS_URL before going on without it (where its role allows).
const natsFirstConnect = 3 * time.Second

// openBackends prepares DATA_DIR, connects to NATS and PostgreSQL (starting
// the embedded and private servers when configured so) and returns them. It
// neither creates streams nor migrates. On error it closes what it opened.
func openBackends(ctx context.Context, cfg *config.Config, logger *slog.Logger) (b *backends, err error) {
	b = &backends{cfg: cfg, logger: logger, layout: rollup.NewLayout(rollup.Retentions{
		Minute: cfg.MinuteRetention, Hour: cfg.HourRetention, Day: cfg.DayRetention,
	})}
	defer func() {
		if err != nil {
			b.closeAfterFailure(ctx)
			b = nil
		}
	}()
	if err := b.openDataDir(); err != nil {
		return b, err
	}
	if err := b.connectNATS(ctx); err != nil {
		return b, err
	}
	if err := b.connectPostgres(ctx); err != nil {
		return b, err
	}
	return b, nil
}

// openDataDir makes DATA_DIR and reads (or creates) the visitor salt in it.
func (b *backends) openDataDir() error {
	dir, err := filepath.Abs(b.cfg.DataDir)
	if err != nil {
		return fmt.Errorf("DATA_DIR: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("DATA_DIR: %w", err)
	}
	b.dataDir = dir
	b.salt, err = dataDirSecret("VISITOR_SALT", b.cfg.VisitorSalt, dir, "visitor_salt")
	return err
}

// connectNATS connects to NATS_URL, or starts the embedded server under
// DATA_DIR/nats and connects in-process. A NATS_URL that does not answer
// yet is not an error: the connection keeps trying in the background, and
// connectNATS waits for it at most natsFirstConnect.
func (b *backends) connectNATS(ctx context.Context) error {
	connected := make(chan struct{}, 1)
	opts := []nats.Option{
		nats.Name("admetric"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ConnectHandler(func(*nats.Conn) {
			select {
			case connected <- struct{}{}:
			default:
			}
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				b.logger.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { b.logger.Info("nats reconnected", "url", nc.ConnectedUrlRedacted()) }),
	}
	var err error
	if b.cfg.EmbeddedNATS() {
		password := b.cfg.NATSPassword
		if password == "" {
			password = randomSecret() // for in-process connections alone
		}
		b.embedded, err = devserver.StartNATS(ctx, embeddedNATSOptions(b.cfg, password, filepath.Join(b.dataDir, "nats"), b.logger))
		if err != nil {
			return err
		}
		b.nc, err = b.embedded.Connect("admetric", append(opts, nats.UserInfo(store.ServiceUser, password))...)
	} else {
		b.nc, err = nats.Connect(b.cfg.NATSURL, append(opts, nats.RetryOnFailedConnect(true))...)
		if err != nil {
			err = fmt.Errorf("NATS_URL: %w", err)
		}
	}
	if err != nil {
		return err
	}
	if b.js, err = jetstream.New(b.nc); err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	if !b.nc.IsConnected() {
		t := time.NewTimer(natsFirstConnect)
		defer t.Stop()
		select {
		case <-connected:
		case <-t.C:
		case <-ctx.Done():
		}
	}
	return nil
}

// embeddedNATSOptions configure the embedded server as an external one
// should be (store.ServerConfig): AdMetric's account with its subject
// mapping, AdMetric's user with password, the publish-only user with
// NATS_PUBLISHER_PASSWORD when set and, without NATS_PASSWORD, clients
// without credentials let in as AdMetric's user (the configuration allows
// that on loopback only).
func embeddedNATSOptions(cfg *config.Config, password, storeDir string, logger *slog.Logger) devserver.NATSOptions {
	users := []devserver.NATSUser{{Name: store.ServiceUser, Password: password}}
	if cfg.NATSPublisherPassword != "" {
		pub, sub := store.PublisherPermissions()
		users = append(users, devserver.NATSUser{Name: store.PublisherUser, Password: cfg.NATSPublisherPassword, Publish: pub, Subscribe: sub})
	}
	noAuth := ""
	if cfg.NATSPassword == "" {
		noAuth = store.ServiceUser
	}
	return devserver.NATSOptions{
		StoreDir:   storeDir,
		Listen:     cfg.NATSListen,
		SyncAlways: cfg.NATSSyncAlways,
		Config:     store.ServerConfig(store.ServerConfigOptions{Partitions: cfg.Partitions}),
		Account:    store.Account,
		Users:      users,
		NoAuthUser: noAuth,
		Logger:     logger.With("component", "nats"),
	}
}

// randomSecret is 32 random bytes, hex.
func randomSecret() string {
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	return hex.EncodeToString(raw)
}

// connectPostgres connects to DATABASE_URL or DB_*, or starts the private
// server under DATA_DIR/pg and connects to it.
func (b *backends) connectPostgres(ctx context.Context) error {
	dsn := b.cfg.PostgresDSN()
	if b.cfg.LocalPostgres() {
		dir := filepath.Join(b.dataDir, "pg")
		pg, err := devserver.StartPostgres(ctx, devserver.PostgresOptions{Dir: dir, Logger: b.logger})
		if err != nil {
			return err
		}
		b.pg, dsn = pg, pg.DSN()
		b.logger.Info("private postgres started", "dir", dir)
	}
	db, err := postgres.Open(ctx, dsn)
	if err != nil {
		if b.pg != nil {
			return err
		}
		source := "DB_*"
		if b.cfg.DatabaseURL != "" {
			source = "DATABASE_URL"
		}
		return fmt.Errorf("%s: %w", source, err)
	}
	b.db = db
	return nil
}

// openStreams creates or updates the partition streams, the dead-letter
// stream and the rollup buckets, checks that the server's subject mapping
// puts each event in its partition's stream, and returns the buckets. The
// try is bounded, so that an unreachable NATS fails it rather than
// blocking; a missing mapping or a changed PARTITIONS fails it with an
// error no retry mends (isPermanentStreamError).
func (b *backends) openStreams(ctx context.Context) (*store.Rollups, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cfg := b.cfg
	err := store.CreateOrUpdateEventStreams(ctx, b.js, store.StreamOptions{
		MaxAge: cfg.StreamMaxAge, Duplicates: cfg.DuplicateWindow, Replicas: cfg.NATSReplicas, Partitions: cfg.Partitions,
	})
	if err != nil {
		return nil, err
	}
	if err := store.CheckPartitionMapping(ctx, b.nc, cfg.Partitions); err != nil {
		return nil, err
	}
	if err := store.CreateOrUpdateDeadLetterStream(ctx, b.js, deadLetterMaxAge, cfg.NATSReplicas); err != nil {
		return nil, err
	}
	if err := store.CreateOrUpdateDecisionStream(ctx, b.js, cfg.StreamMaxAge, cfg.NATSReplicas); err != nil {
		return nil, err
	}
	rollups, err := store.CreateOrUpdateRollups(ctx, b.js, b.layout, cfg.NATSReplicas)
	if err != nil {
		return nil, err
	}
	switch cfg.RollupCommits {
	case "atomic":
		rollups.UseAtomicCommits(true)
	case "keys":
		rollups.UseAtomicCommits(false)
	}
	return rollups, nil
}

// isPermanentStreamError reports whether openStreams failed for a reason
// that waiting does not mend.
func isPermanentStreamError(err error) bool {
	return errors.Is(err, store.ErrMappingMissing) || errors.Is(err, store.ErrPartitionsChanged)
}

// natsURL says where NATS is, for the start-up log.
func (b *backends) natsURL() string {
	if b.embedded != nil {
		if u := b.embedded.ClientURL(); u != "" {
			return u
		}
		return "in-process only"
	}
	return b.nc.ConnectedUrlRedacted()
}

// close closes NATS, then PostgreSQL, stopping the servers this process
// started. Parts never opened are skipped; ctx bounds the stop of the
// private PostgreSQL.
func (b *backends) close(ctx context.Context) error {
	var errs []error
	if b.nc != nil {
		b.nc.Close()
	}
	if b.embedded != nil {
		b.embedded.Shutdown()
	}
	if b.db != nil {
		if err := b.db.Close(); err != nil {
			errs = append(errs, fmt.Errorf("postgres: %w", err))
		}
	}
	if b.pg != nil {
		if err := b.pg.Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("private postgres: %w", err))
		}
	}
	return errors.Join(errs...)
}

// closeAfterFailure closes what a failed start opened, within
// SHUTDOWN_TIMEOUT, logging what fails: the start's own error is the one
// reported.
func (b *backends) closeAfterFailure(ctx context.Context) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.cfg.ShutdownTimeout)
	defer cancel()
	if err := b.close(sctx); err != nil {
		b.logger.Warn("cleaning up after a failed start", "err", err)
	}
}

// dataDirSecret returns the secret configured in the variable name, or the
// one kept in DATA_DIR/file, creating that file (32 random bytes, hex) on
// first start. Changing the visitor salt makes every visitor new; changing
// the pixel secret voids the tracking URLs already handed out.
func dataDirSecret(name, configured, dataDir, file string) ([]byte, error) {
	if configured != "" {
		return []byte(configured), nil
	}
	path := filepath.Join(dataDir, file)
	b, err := os.ReadFile(path)
	if err == nil {
		s := strings.TrimSpace(string(b))
		if len(s) < 32 {
			return nil, fmt.Errorf("%s %s is too short; delete it to generate a new one, or set %s", strings.ToLower(name), path, name)
		}
		return []byte(s), nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", strings.ToLower(name), err)
	}
	s := randomSecret()
	if err := writeNewFile(path, s+"\n"); err != nil {
		return nil, fmt.Errorf("%s: %w", strings.ToLower(name), err)
	}
	return []byte(s), nil
}

// writeNewFile creates path, which must not exist, readable by its owner
// only, with content, and syncs it.
func writeNewFile(path, content string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
