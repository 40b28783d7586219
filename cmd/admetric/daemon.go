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
	"github.com/admetric/admetric/api/rollupcache"
	"github.com/admetric/admetric/config"
	"github.com/admetric/admetric/ingest"
	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/ingest/spool"
	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/devserver"
	"github.com/admetric/admetric/store/postgres"
	"github.com/admetric/admetric/store/rollup"
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

	embedded *devserver.NATS
	nc       *nats.Conn
	pg       *devserver.Postgres
	db       *bun.DB
	spool    *spool.Spool

	httpSrv *http.Server
	httpLn  net.Listener
	httpErr chan error

	// For the maintenance commands (rebuild): what the roles use. rollups is
	// nil until NATS is reachable, when the API started without it.
	js      jetstream.JetStream
	mu      sync.Mutex
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
	d = &daemon{cfg: cfg, role: r, logger: logger, httpErr: make(chan error, 1), workerErr: make(chan error, cfg.Partitions+10)}
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
	layout := rollup.NewLayout(rollup.Retentions{Minute: cfg.MinuteRetention, Hour: cfg.HourRetention, Day: cfg.DayRetention})
	d.js, d.salt = js, salt
	var rollups *store.Rollups
	if !cfg.EmbeddedNATS() {
		// The first connection attempt runs in the background; give it a moment.
		for i := 0; i < 30 && !d.nc.IsConnected(); i++ {
			sleepFor(ctx, 100*time.Millisecond)
		}
	}
	if d.nc.IsConnected() || !r.api {
		rollups, err = d.openStreams(ctx, layout)
	} else {
		err = errors.New("not connected to NATS_URL")
	}
	if err != nil {
		// The API can start without NATS: intake spools, analytics answer from
		// the snapshot. Anything else needs the streams.
		if !r.api || cfg.EmbeddedNATS() || d.nc.IsConnected() {
			return d, err
		}
		logger.Warn("NATS is unreachable: starting without it; intake spools events and analytics answer from the last snapshot until it is back", "err", err)
	}
	d.rollups = rollups

	if err := d.startPostgres(ctx, dataDir); err != nil {
		return d, err
	}
	applied, err := postgres.Migrate(ctx, d.db)
	if err != nil {
		return d, err
	}
	if len(applied) > 0 {
		logger.Info("database migrated", "applied", applied)
	}
	ads := postgres.NewAds(d.db)
	if n, err := ads.SeedDemoAds(ctx); err != nil {
		return d, err
	} else if n > 0 {
		logger.Info("inserted demo ads into the empty ads table", "count", n)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	workCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	d.stopWorkers = stop

	var aggMetrics *aggregator.Metrics
	if r.aggregator {
		aggMetrics = aggregator.NewMetrics(reg)
	}
	// What needs the streams starts now, or once NATS is reachable.
	var analytics *api.AnalyticsHandler
	snapshots := &snapshotFile{path: filepath.Join(dataDir, "analytics.snapshot"), layout: layout}
	withStreams := func(ctx context.Context, rollups *store.Rollups) error {
		if r.aggregator {
			if err := d.startAggregation(ctx, workCtx, rollups, aggMetrics); err != nil {
				return err
			}
		}
		if analytics != nil {
			cache, err := d.startCache(workCtx, rollups, snapshots, reg)
			if err != nil {
				return err
			}
			analytics.SetLive(cache)
		}
		return nil
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
		catalog := api.NewCatalog(ads, logger.With("component", "catalog"))
		if err := catalog.Refresh(ctx); err != nil {
			return d, err
		}
		d.goWorker(workCtx, "catalog", func(ctx context.Context) error { return catalog.Run(ctx, cfg.CatalogRefresh) })
		adHandlers := api.NewAdHandlers(ads, catalog, cfg.AdminToken, logger)
		if !adHandlers.ManagementEnabled() {
			logger.Warn("ad management is disabled: POST, PUT and DELETE /ads answer 403 until ADMIN_TOKEN is set")
		}
		adHandlers.Register(engine)
		analytics = api.NewAnalyticsHandler(nil, layout, catalog, logger, api.AnalyticsOptions{
			LiveUp:   d.nc.IsConnected,
			Snapshot: snapshots.latest,
		})
		analytics.Register(engine)
		limits := event.Limits{MaxAge: layout.MaxRetention()}
		pub, err := d.startIntake(workCtx, dataDir, reg)
		if err != nil {
			return d, err
		}
		ingest.NewHandlers(pub, catalog, limits, logger).Register(engine)
	}
	if rollups != nil {
		if err := withStreams(ctx, rollups); err != nil {
			return d, err
		}
	} else {
		d.goWorker(workCtx, "streams", func(ctx context.Context) error {
			for {
				if !sleepFor(ctx, 2*time.Second) {
					return nil
				}
				rollups, err := d.openStreams(ctx, layout)
				if err != nil {
					if ctx.Err() != nil {
						return nil
					}
					logger.Debug("NATS still unreachable", "err", err)
					continue
				}
				logger.Info("NATS is reachable: streams and rollups open")
				d.mu.Lock()
				d.rollups = rollups
				d.mu.Unlock()
				return withStreams(ctx, rollups)
			}
		})
	}
	api.RegisterHealth(engine, map[string]api.Check{
		"nats": func(context.Context) error {
			if s := d.nc.Status(); s != nats.CONNECTED {
				return fmt.Errorf("nats is %s", strings.ToLower(s.String()))
			}
			return nil
		},
		"postgres": func(ctx context.Context) error { return postgres.Ping(ctx, d.db) },
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
	commits := "unknown until NATS is reachable"
	if rollups != nil {
		commits = "per key"
		if rollups.Atomic() {
			commits = "atomic batches"
		}
	}
	logger.Info("admetric is up", "http", "http://"+d.httpLn.Addr().String(), "nats", d.natsURL(),
		"api", r.api, "aggregator", r.aggregator, "partitions", cfg.Partitions, "commits", commits)
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
	emb, err := devserver.StartNATS(ctx, devserver.NATSOptions{
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
		pg, err := devserver.StartPostgres(ctx, devserver.PostgresOptions{
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
	db, err := postgres.Open(ctx, dsn)
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

// openStreams creates or checks the event stream, the dead-letter stream and
// the rollup buckets. Each try is bounded, so that an unreachable NATS fails
// it rather than blocking start-up.
func (d *daemon) openStreams(ctx context.Context, layout rollup.Layout) (*store.Rollups, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cfg := d.cfg
	if _, err := store.CreateOrUpdateEventStream(ctx, d.js, store.StreamOptions{MaxAge: cfg.StreamMaxAge, Duplicates: cfg.DuplicateWindow, Replicas: cfg.NATSReplicas, Partitions: cfg.Partitions}); err != nil {
		return nil, err
	}
	if err := store.CreateOrUpdateDeadLetterStream(ctx, d.js, deadLetterMaxAge, cfg.NATSReplicas); err != nil {
		return nil, err
	}
	return store.CreateOrUpdateRollups(ctx, d.js, layout, cfg.NATSReplicas)
}

// startAggregation starts the rollup writers, the archiver and the membership
// heartbeat as workers under workCtx.
func (d *daemon) startAggregation(ctx, workCtx context.Context, rollups *store.Rollups, metrics *aggregator.Metrics) error {
	members, err := aggregator.NewMembers(ctx, d.js, instanceID(), d.logger)
	if err != nil {
		return err
	}
	d.goWorker(workCtx, "members", members.Run)
	for p := range d.cfg.Partitions {
		w := aggregator.NewRollupWriter(d.js, rollups, d.logger, metrics, aggregator.RollupWriterOptions{
			Partition: p, Partitions: d.cfg.Partitions, Members: members, VisitorSalt: d.salt,
		})
		d.goWorker(workCtx, "rollup-writer", w.Run)
	}
	d.goWorker(workCtx, "archiver", aggregator.NewArchiver(d.js, postgres.NewArchive(d.db), d.logger, metrics, aggregator.ArchiverOptions{}).Run)
	return nil
}

// startCache puts the rollup cache in front of rollups, warmed from the last
// snapshot when there is one, and starts its watch and the snapshot writer.
func (d *daemon) startCache(workCtx context.Context, rollups *store.Rollups, snapshots *snapshotFile, reg prometheus.Registerer) (*rollupcache.Cache, error) {
	cache, err := rollupcache.New(rollups, rollupcache.Options{
		MaxBytes: int64(d.cfg.CacheMaxBytes), Idle: d.cfg.CacheIdle, Registerer: reg,
		Logger: d.logger.With("component", "rollup-cache"),
	})
	if err != nil {
		return nil, err
	}
	if snap, err := snapshots.read(); err == nil {
		cache.Warm(snap)
		d.logger.Info("rollup cache warmed from the snapshot", "rollups", snap.Len(), "as_of", snap.AsOf())
	}
	d.goWorker(workCtx, "rollup-cache", cache.Run)
	d.goWorker(workCtx, "snapshot-writer", func(ctx context.Context) error {
		for sleepFor(ctx, d.cfg.SnapshotInterval) {
			if err := cache.WriteSnapshot(snapshots.path); err != nil {
				d.logger.Warn("writing the analytics snapshot", "err", err)
			}
		}
		// A last one at shutdown, so that a restart without NATS has it.
		if err := cache.WriteSnapshot(snapshots.path); err != nil {
			d.logger.Warn("writing the analytics snapshot", "err", err)
		}
		return nil
	})
	return cache, nil
}

// snapshotFile reads the analytics snapshot when a query needs it, and again
// only when the file has changed.
type snapshotFile struct {
	path   string
	layout rollup.Layout

	mu      sync.Mutex
	modTime time.Time
	snap    *rollupcache.Snapshot
}

// latest is read as the analytics handler's fallback.
func (f *snapshotFile) latest() (api.StaleReader, error) {
	snap, err := f.read()
	if err != nil {
		return nil, err
	}
	return snap, nil
}

func (f *snapshotFile) read() (*rollupcache.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fi, err := os.Stat(f.path)
	if err != nil {
		return nil, fmt.Errorf("analytics snapshot: %w", err)
	}
	if f.snap == nil || !fi.ModTime().Equal(f.modTime) {
		snap, err := rollupcache.ReadSnapshot(f.path, f.layout)
		if err != nil {
			return nil, err
		}
		f.snap, f.modTime = snap, fi.ModTime()
	}
	return f.snap, nil
}

// sleepFor waits d or until ctx ends, reporting whether ctx is still live.
func sleepFor(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
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
