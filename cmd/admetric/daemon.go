package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/uptrace/bun"

	"github.com/admetric/admetric/aggregator"
	"github.com/admetric/admetric/api"
	"github.com/admetric/admetric/config"
	"github.com/admetric/admetric/ingest"
	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/ingest/spool"
	"github.com/admetric/admetric/store"
)

// role is what a process runs: the whole service, or one side of it.
type role struct {
	// api serves intake, ads and analytics over HTTP.
	api bool
	// aggregator runs the rollup writers and the archiver.
	aggregator bool
}

var (
	roleAll        = role{api: true, aggregator: true}
	roleAPI        = role{api: true}
	roleAggregator = role{aggregator: true}
)

// daemon is the service in one process: NATS (embedded or remote), PostgreSQL
// (private or remote), and the parts its role names. HTTP always serves
// /healthz, /readyz and /metrics.
type daemon struct {
	cfg    *config.Config
	role   role
	logger *slog.Logger

	embedded *store.EmbeddedNATS
	nc       *nats.Conn
	pg       *store.LocalPostgres
	db       *bun.DB
	spool    *spool.Spool

	httpSrv *http.Server
	httpLn  net.Listener
	httpErr chan error

	// For the maintenance commands (rebuild): what the roles use.
	js      jetstream.JetStream
	rollups *store.Rollups
	salt    []byte

	stopWorkers context.CancelFunc
	workers     sync.WaitGroup
	workerErr   chan error
}

// deadLetterMaxAge is how long poison messages wait in ADMETRIC_DLQ for someone
// to look at them.
const deadLetterMaxAge = 30 * 24 * time.Hour

// startDaemon starts every part in dependency order. On error it stops what it
// had started and returns a nil daemon. The caller calls shutdown.
func startDaemon(ctx context.Context, cfg *config.Config, r role, logger *slog.Logger) (d *daemon, err error) {
	d = &daemon{cfg: cfg, role: r, logger: logger, httpErr: make(chan error, 1), workerErr: make(chan error, cfg.Partitions+5)}
	defer func() {
		if err != nil {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
			defer cancel()
			if serr := d.shutdown(sctx); serr != nil {
				logger.Warn("cleaning up after a failed start", "err", serr)
			}
			d = nil
		}
	}()

	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return d, fmt.Errorf("DATA_DIR: %w", err)
	}
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return d, fmt.Errorf("DATA_DIR: %w", err)
	}
	salt, err := visitorSalt(cfg.VisitorSalt, dataDir)
	if err != nil {
		return d, err
	}

	if err := d.startNATS(ctx, dataDir); err != nil {
		return d, err
	}
	js, err := jetstream.New(d.nc)
	if err != nil {
		return d, fmt.Errorf("jetstream: %w", err)
	}
	if _, err := store.EnsureStream(ctx, js, store.StreamOptions{MaxAge: cfg.StreamMaxAge, Duplicates: cfg.DuplicateWindow, Replicas: cfg.NATSReplicas, Partitions: cfg.Partitions}); err != nil {
		return d, err
	}
	if err := store.EnsureDeadLetterStream(ctx, js, deadLetterMaxAge, cfg.NATSReplicas); err != nil {
		return d, err
	}
	layout := store.NewLayout(store.Retentions{Minute: cfg.MinuteRetention, Hour: cfg.HourRetention, Day: cfg.DayRetention})
	rollups, err := store.OpenRollups(ctx, js, layout, cfg.NATSReplicas)
	if err != nil {
		return d, err
	}
	d.js, d.rollups, d.salt = js, rollups, salt

	if err := d.startPostgres(ctx, dataDir); err != nil {
		return d, err
	}
	applied, err := store.Migrate(ctx, d.db)
	if err != nil {
		return d, err
	}
	if len(applied) > 0 {
		logger.Info("database migrated", "applied", applied)
	}
	ads := store.NewAds(d.db)
	if n, err := ads.SeedDemoAds(ctx); err != nil {
		return d, err
	} else if n > 0 {
		logger.Info("inserted demo ads into the empty ads table", "count", n)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	workCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	d.stopWorkers = stop

	if r.aggregator {
		metrics := aggregator.NewMetrics(reg)
		members, err := aggregator.NewMembers(ctx, js, instanceID(), logger)
		if err != nil {
			return d, err
		}
		d.goWorker(workCtx, "members", members.Run)
		for p := range cfg.Partitions {
			w := aggregator.NewRollupWriter(js, rollups, logger, metrics, aggregator.RollupWriterOptions{
				Partition: p, Partitions: cfg.Partitions, Members: members, VisitorSalt: salt,
			})
			d.goWorker(workCtx, "rollup-writer", w.Run)
		}
		d.goWorker(workCtx, "archiver", aggregator.NewArchiver(js, store.NewArchive(d.db), logger, metrics, aggregator.ArchiverOptions{}).Run)
	}

	if !r.api && !r.aggregator {
		return d, nil // a maintenance command: no HTTP
	}

	gin.SetMode(gin.ReleaseMode)
	engine := gin.New()
	engine.HandleMethodNotAllowed = true
	if err := engine.SetTrustedProxies(cfg.TrustedProxies); err != nil {
		return d, fmt.Errorf("TRUSTED_PROXIES: %w", err)
	}
	engine.Use(recovery(logger))
	engine.NoRoute(func(c *gin.Context) { c.JSON(http.StatusNotFound, gin.H{"error": "no such route"}) })
	engine.NoMethod(func(c *gin.Context) {
		c.JSON(http.StatusMethodNotAllowed, gin.H{"error": "method not allowed on this route"})
	})

	if r.api {
		catalog := store.NewCatalog(ads, logger.With("component", "catalog"))
		if err := catalog.Refresh(ctx); err != nil {
			return d, err
		}
		d.goWorker(workCtx, "catalog", func(ctx context.Context) error { return catalog.Run(ctx, cfg.CatalogRefresh) })
		adHandlers := api.NewAdHandlers(ads, catalog, cfg.AdminToken, logger)
		if !adHandlers.ManagementEnabled() {
			logger.Warn("ad management is disabled: POST, PUT and DELETE /ads answer 403 until ADMIN_TOKEN is set")
		}
		adHandlers.Register(engine)
		api.NewAnalyticsHandler(rollups, layout, catalog, logger, api.AnalyticsOptions{}).Register(engine)
		limits := event.Limits{MaxAge: layout.MaxRetention()}
		pub, err := d.startIntake(workCtx, dataDir, reg)
		if err != nil {
			return d, err
		}
		ingest.NewHandlers(pub, catalog, limits, logger).Register(engine)
	}
	api.RegisterHealth(engine, map[string]api.Check{
		"nats": func(context.Context) error {
			if s := d.nc.Status(); s != nats.CONNECTED {
				return fmt.Errorf("nats is %s", strings.ToLower(s.String()))
			}
			return nil
		},
		"postgres": func(ctx context.Context) error { return store.Ping(ctx, d.db) },
	})
	engine.GET("/metrics", gin.WrapH(promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})))

	d.httpLn, err = net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return d, fmt.Errorf("HTTP_ADDR: %w", err)
	}
	d.httpSrv = &http.Server{
		Handler:           engine.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	go func() { d.httpErr <- d.httpSrv.Serve(d.httpLn) }()
	logger.Info("admetric is up", "http", "http://"+d.httpLn.Addr().String(), "nats", d.natsURL(),
		"api", r.api, "aggregator", r.aggregator, "partitions", cfg.Partitions, "atomic_commits", rollups.Atomic())
	return d, nil
}

func (d *daemon) startNATS(ctx context.Context, dataDir string) error {
	opts := []nats.Option{
		nats.Name("admetric"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				d.logger.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { d.logger.Info("nats reconnected", "url", nc.ConnectedUrlRedacted()) }),
	}
	if !d.cfg.EmbeddedNATS() {
		nc, err := nats.Connect(d.cfg.NATSURL, append(opts, nats.RetryOnFailedConnect(true))...)
		if err != nil {
			return fmt.Errorf("NATS_URL: %w", err)
		}
		d.nc = nc
		return nil
	}
	emb, err := store.StartEmbeddedNATS(ctx, store.EmbeddedNATSOptions{
		StoreDir:   filepath.Join(dataDir, "nats"),
		Listen:     d.cfg.NATSListen,
		SyncAlways: d.cfg.NATSSyncAlways,
		Logger:     d.logger.With("component", "nats"),
	})
	if err != nil {
		return err
	}
	d.embedded = emb
	d.nc, err = emb.Connect("admetric", opts...)
	return err
}

func (d *daemon) startPostgres(ctx context.Context, dataDir string) error {
	dsn := d.cfg.PostgresDSN()
	if d.cfg.LocalPostgres() {
		pg, err := store.StartLocalPostgres(ctx, store.LocalPostgresOptions{
			Dir:    filepath.Join(dataDir, "pg"),
			Logger: d.logger,
		})
		if err != nil {
			return err
		}
		d.pg = pg
		dsn = pg.DSN()
		d.logger.Info("private postgres started", "dir", filepath.Join(dataDir, "pg"))
	}
	db, err := store.OpenPostgres(ctx, dsn)
	if err != nil {
		if !d.cfg.LocalPostgres() {
			source := "DB_*"
			if d.cfg.DatabaseURL != "" {
				source = "DATABASE_URL"
			}
			return fmt.Errorf("%s: %w", source, err)
		}
		return err
	}
	d.db = db
	return nil
}

// goWorker runs a long-running part; an error it returns is reported on
// workerErr (and logged by main) so the daemon stops instead of running half-alive.
func (d *daemon) goWorker(ctx context.Context, name string, run func(context.Context) error) {
	d.workers.Add(1)
	go func() {
		defer d.workers.Done()
		if err := run(ctx); err != nil {
			d.workerErr <- fmt.Errorf("%s: %w", name, err)
		}
	}()
}

func (d *daemon) httpAddr() string {
	if d.httpLn == nil {
		return ""
	}
	return d.httpLn.Addr().String()
}

func (d *daemon) natsURL() string {
	if d.embedded != nil {
		if u := d.embedded.ClientURL(); u != "" {
			return u
		}
		return "in-process only"
	}
	return d.nc.ConnectedUrlRedacted()
}

// wait blocks until ctx ends or a part fails.
func (d *daemon) wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-d.httpErr:
		return fmt.Errorf("http: %w", err)
	case err := <-d.workerErr:
		return err
	}
}

// startIntake opens the spool under dataDir and starts its replayer, and returns
// the publisher that falls back on it.
func (d *daemon) startIntake(workCtx context.Context, dataDir string, reg prometheus.Registerer) (*ingest.Publisher, error) {
	sp, err := spool.Open(filepath.Join(dataDir, "spool"), spool.Options{
		MaxBytes: int64(d.cfg.SpoolMaxBytes),
		Logger:   d.logger.With("component", "spool"),
		Metrics:  spool.NewMetrics(reg),
	})
	if err != nil {
		return nil, err
	}
	d.spool = sp
	if !sp.Empty() {
		d.logger.Warn("the spool holds events from an earlier run; replaying them", "bytes", sp.Bytes())
	}
	metrics := ingest.NewMetrics(reg)
	pub, err := ingest.NewPublisher(d.nc, ingest.PublisherOptions{
		Timeout: d.cfg.PublishTimeout, MaxPending: d.cfg.MaxPendingPublishes, Spool: sp, Logger: d.logger, Metrics: metrics,
	})
	if err != nil {
		return nil, err
	}
	replayer, err := ingest.NewReplayer(d.nc, sp, d.logger, metrics)
	if err != nil {
		return nil, err
	}
	d.goWorker(workCtx, "spool-replayer", replayer.Run)
	return pub, nil
}

// shutdown stops the parts in order: HTTP (in-flight requests finish), then the
// consumers (each finishes its batch), then NATS, then PostgreSQL. Parts never
// started are skipped. Every step shares ctx's deadline.
func (d *daemon) shutdown(ctx context.Context) error {
	var errs []error
	if d.httpSrv != nil {
		if err := d.httpSrv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("http: %w", err))
		}
	}
	if d.stopWorkers != nil {
		d.stopWorkers()
		done := make(chan struct{})
		go func() { d.workers.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			errs = append(errs, errors.New("consumers did not stop in time"))
		}
	}
	if d.spool != nil {
		// After HTTP: no request can append any more.
		if err := d.spool.Close(); err != nil {
			errs = append(errs, fmt.Errorf("spool: %w", err))
		}
	}
	if d.nc != nil {
		d.nc.Close()
	}
	if d.embedded != nil {
		d.embedded.Shutdown()
	}
	if d.db != nil {
		if err := d.db.Close(); err != nil {
			errs = append(errs, fmt.Errorf("postgres: %w", err))
		}
	}
	if d.pg != nil {
		if err := d.pg.Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("private postgres: %w", err))
		}
	}
	return errors.Join(errs...)
}

// instanceID names this process among the aggregators: host, pid and a random
// suffix, so that a restarted process is a new member.
func instanceID() string {
	host, _ := os.Hostname()
	raw := make([]byte, 4)
	_, _ = rand.Read(raw)
	id := fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(raw))
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, id)
}

// visitorSalt returns VISITOR_SALT or the salt kept in DATA_DIR/visitor_salt,
// creating that file on first start. Changing the salt makes every visitor new.
func visitorSalt(configured, dataDir string) ([]byte, error) {
	if configured != "" {
		return []byte(configured), nil
	}
	path := filepath.Join(dataDir, "visitor_salt")
	b, err := os.ReadFile(path)
	if err == nil {
		s := strings.TrimSpace(string(b))
		if len(s) < 32 {
			return nil, fmt.Errorf("visitor salt %s is too short; delete it to generate a new one, or set VISITOR_SALT", path)
		}
		return []byte(s), nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("visitor salt: %w", err)
	}
	raw := make([]byte, 32)
	_, _ = rand.Read(raw)
	s := hex.EncodeToString(raw)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("visitor salt: %w", err)
	}
	if _, err := f.WriteString(s + "\n"); err != nil {
		f.Close()
		return nil, fmt.Errorf("visitor salt: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, fmt.Errorf("visitor salt: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("visitor salt: %w", err)
	}
	return []byte(s), nil
}

// recovery turns a handler panic into a logged 500, so one bad request never
// takes the process down.
func recovery(logger *slog.Logger) gin.HandlerFunc {
	return gin.CustomRecoveryWithWriter(io.Discard, func(c *gin.Context, rec any) {
		logger.Error("handler panic", "panic", rec, "path", c.FullPath())
		c.AbortWithStatusJSON(http.StatusInternalServerError, gin.H{"error": "internal error"})
	})
}
