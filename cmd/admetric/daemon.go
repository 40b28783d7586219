package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/admetric/admetric/aggregator"
	"github.com/admetric/admetric/api"
	"github.com/admetric/admetric/api/dashboard"
	"github.com/admetric/admetric/api/openapi"
	"github.com/admetric/admetric/api/rollupcache"
	"github.com/admetric/admetric/config"
	"github.com/admetric/admetric/ingest"
	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/ingest/pixel"
	"github.com/admetric/admetric/ingest/spool"
	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/postgres"
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

// daemon is the service in one process: its backends and the parts its role
// names, as workers that run until shutdown. HTTP always serves /healthz,
// /readyz and /metrics.
type daemon struct {
	*backends
	role role
	reg  *prometheus.Registry

	// Of the API role: the analytics handler, which gets the live rollups
	// once the streams are open, and the snapshot it answers from until then.
	analytics *api.AnalyticsHandler
	snapshots *rollupcache.SnapshotFile
	spool     *spool.Spool

	aggMetrics *aggregator.Metrics // of the aggregator role

	httpSrv *http.Server
	httpLn  net.Listener
	httpErr chan error

	workCtx     context.Context // the workers' context, ended by shutdown
	stopWorkers context.CancelFunc
	workers     sync.WaitGroup
	workerErr   chan error
}

// startDaemon starts every part in dependency order: the backends, the
// streams, the database, the API, what needs the streams, then HTTP. On
// error it stops what it had started and returns a nil daemon. The caller
// calls shutdown.
func startDaemon(ctx context.Context, cfg *config.Config, r role, logger *slog.Logger) (d *daemon, err error) {
	if err := checkPrivacy(cfg, r); err != nil {
		return nil, err
	}
	b, err := openBackends(ctx, cfg, logger)
	if err != nil {
		return nil, err
	}
	d = newDaemon(b, r)
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
	rollups, opened, err := d.openStreamsAtStart(ctx)
	if err != nil {
		return d, err
	}
	if err := d.prepareDatabase(ctx); err != nil {
		return d, err
	}
	engine, err := newEngine(cfg, logger)
	if err != nil {
		return d, err
	}
	if r.api {
		if err := d.startAPI(ctx, engine); err != nil {
			return d, err
		}
	}
	if opened {
		err = d.startWithStreams(ctx, rollups)
	} else {
		d.goWorker("streams", d.awaitStreams)
	}
	if err != nil {
		return d, err
	}
	d.registerOps(engine)
	if err := d.serveHTTP(engine); err != nil {
		return d, err
	}
	logger.Info("admetric is up", "http", "http://"+d.httpLn.Addr().String(), "nats", d.natsURL(),
		"api", r.api, "aggregator", r.aggregator, "partitions", cfg.Partitions)
	return d, nil
}

func newDaemon(b *backends, r role) *daemon {
	d := &daemon{backends: b, role: r, reg: prometheus.NewRegistry(),
		httpErr: make(chan error, 1), workerErr: make(chan error, b.cfg.Partitions+10)}
	d.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if r.aggregator {
		d.aggMetrics = aggregator.NewMetrics(d.reg)
	}
	d.workCtx, d.stopWorkers = context.WithCancel(context.Background())
	return d
}

// openStreamsAtStart opens the streams and buckets; opened is false when the
// process goes on without them. Only the API role may, and only against a
// NATS_URL that does not answer: intake spools and analytics answer from the
// snapshot until awaitStreams opens them.
func (d *daemon) openStreamsAtStart(ctx context.Context) (rollups *store.Rollups, opened bool, err error) {
	err = errors.New("not connected to NATS_URL")
	if d.nc.IsConnected() || !d.role.api {
		rollups, err = d.openStreams(ctx)
	}
	switch {
	case err == nil:
		return rollups, true, nil
	case d.role.api && !d.cfg.EmbeddedNATS() && !d.nc.IsConnected() && !isPermanentStreamError(err):
		d.logger.Warn("NATS is unreachable: starting without it; intake spools events and analytics answer from the last snapshot until it is back", "err", err)
		return nil, false, nil
	default:
		return nil, false, err
	}
}

// awaitStreams opens the streams once NATS answers, then starts what needs
// them. It returns nil when shutdown comes first.
func (d *daemon) awaitStreams(ctx context.Context) error {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = 500*time.Millisecond, 5*time.Second
	rollups, err := backoff.Retry(ctx, func() (*store.Rollups, error) {
		r, err := d.openStreams(ctx)
		if isPermanentStreamError(err) {
			return nil, backoff.Permanent(err)
		}
		return r, err
	},
		backoff.WithBackOff(b), backoff.WithMaxElapsedTime(0),
		backoff.WithNotify(func(err error, _ time.Duration) { d.logger.Debug("NATS still unreachable", "err", err) }))
	if isPermanentStreamError(err) {
		return err
	}
	if err != nil {
		return nil
	}
	d.logger.Info("NATS is reachable: streams and rollups open")
	return d.startWithStreams(ctx, rollups)
}

// prepareDatabase applies the migrations and, into an empty ads table,
// the demo ads.
func (d *daemon) prepareDatabase(ctx context.Context) error {
	applied, err := postgres.Migrate(ctx, d.db)
	if err != nil {
		return err
	}
	if len(applied) > 0 {
		d.logger.Info("database migrated", "applied", applied)
	}
	n, err := postgres.NewAds(d.db).SeedDemoAds(ctx)
	if err != nil {
		return err
	}
	if n > 0 {
		d.logger.Info("inserted demo ads into the empty ads table", "count", n)
	}
	return nil
}

// startAPI mounts the ads, analytics, intake, VAST, dashboard and OpenAPI
// routes on engine and starts the ad catalog's refresh and the spool's
// replayer. The OpenAPI document describes these routes, so only the API
// role serves it.
func (d *daemon) startAPI(ctx context.Context, engine *gin.Engine) error {
	ads := postgres.NewAds(d.db)
	catalog := api.NewCatalog(ads, d.logger.With("component", "catalog"))
	if err := catalog.Refresh(ctx); err != nil {
		return err
	}
	d.goWorker("catalog", func(ctx context.Context) error { return catalog.Run(ctx, d.cfg.CatalogRefresh) })
	adHandlers := api.NewAdHandlers(ads, catalog, d.cfg.AdminToken, d.logger)
	if !adHandlers.ManagementEnabled() {
		d.logger.Warn("ad management is disabled: POST, PUT and DELETE /ads answer 403 until ADMIN_TOKEN is set")
	}
	// Read access: the guard before the reads, and the /tokens routes.
	readGuard, err := d.startReadAccess(ctx, engine)
	if err != nil {
		return err
	}
	adHandlers.Register(engine, readGuard.Require)
	d.snapshots = rollupcache.NewSnapshotFile(filepath.Join(d.dataDir, "analytics.snapshot"), d.layout)
	d.analytics = api.NewAnalyticsHandler(nil, d.layout, catalog, d.logger, api.AnalyticsOptions{
		LiveUp:   d.nc.IsConnected,
		Snapshot: d.latestSnapshot,
	})
	d.analytics.Register(engine, readGuard.Require)
	pub, err := d.startIntake()
	if err != nil {
		return err
	}
	intake := ingest.NewHandlers(pub, catalog, ingest.HandlersOptions{Limits: d.eventLimits(), AllowedOrigins: d.cfg.CORSAllowedOrigins, Logger: d.logger,
		RateLimits: d.rateLimits(), Registerer: d.reg,
		TruncateIPs: d.cfg.IPTruncate, VisitorSalt: d.salt})
	intake.Register(engine)
	// Only the API signs and checks tracking URLs: the secret is its own.
	secret, err := dataDirSecret("PIXEL_SECRET", d.cfg.PixelSecret, d.dataDir, "pixel_secret")
	if err != nil {
		return err
	}
	signer, err := pixel.NewSigner(secret)
	if err != nil {
		return fmt.Errorf("PIXEL_SECRET: %w", err)
	}
	api.NewVASTHandler(catalog, signer, d.cfg.PublicURL, d.cfg.DuplicateWindow, d.logger).Register(engine)
	// Pixels need not wait for their PubAcks: a detached publisher batches
	// them, and spools what the stream does not take.
	detached, err := ingest.NewDetachedPublisher(pub)
	if err != nil {
		return err
	}
	d.goWorker("pixel-publisher", detached.Run)
	ingest.NewPixelHandlers(intake, detached, signer, catalog, d.reg).Register(engine)
	board, err := dashboard.New()
	if err != nil {
		return fmt.Errorf("dashboard: %w", err)
	}
	board.Register(engine)
	openapi.Register(engine)
	return nil
}

// startWithStreams starts what needs the streams: the aggregation, and the
// rollup cache that the analytics read.
func (d *daemon) startWithStreams(ctx context.Context, rollups *store.Rollups) error {
	if d.role.aggregator {
		if err := d.startAggregation(ctx, rollups); err != nil {
			return err
		}
	}
	if d.analytics != nil {
		cache, err := d.startCache(rollups)
		if err != nil {
			return err
		}
		d.analytics.SetLive(cache)
	}
	return nil
}

// startAggregation starts the membership heartbeat, a rollup writer per
// partition, the archiver and, on a cluster, the leader spreader.
func (d *daemon) startAggregation(ctx context.Context, rollups *store.Rollups) error {
	members, err := aggregator.NewMembers(ctx, d.js, instanceID(), d.cfg.NATSReplicas, d.logger)
	if err != nil {
		return err
	}
	d.goWorker("members", members.Run)
	var rules *aggregator.Rules // nil: the rules are off
	if d.cfg.IVTRules {
		if rules, err = ivtRules(d.cfg); err != nil {
			return err
		}
	}
	for p := range d.cfg.Partitions {
		opts := aggregator.RollupWriterOptions{
			Partition: p, Partitions: d.cfg.Partitions, Members: members, VisitorSalt: d.salt, Rules: rules,
		}
		if writersAsBefore12 {
			opts.SettleAtVisitors, opts.CaughtUpWait, opts.CoarseEvery = -1, -1, -1
		}
		w := aggregator.NewRollupWriter(d.js, rollups, d.logger, d.aggMetrics, opts)
		d.goWorker("rollup-writer", w.Run)
	}
	archiveOpts := aggregator.ArchiverOptions{Partitions: d.cfg.Partitions, Decisions: true,
		TruncateIPs: d.cfg.IPTruncate, VisitorSalt: d.salt, Retention: d.cfg.ArchiveRetention}
	if writersAsBefore12 {
		archiveOpts.Linger = 50 * time.Millisecond
	}
	archiver := aggregator.NewArchiver(d.js, postgres.NewArchive(d.db), d.logger, d.aggMetrics, archiveOpts)
	if d.cfg.NATSReplicas > 1 {
		spreader := &aggregator.LeaderSpreader{JS: d.js, Partitions: d.cfg.Partitions, Every: d.cfg.LeaderSpreadInterval, Logger: d.logger}
		d.goWorker("leader-spreader", spreader.Run)
	}
	d.goWorker("archiver", archiver.Run)
	d.goWorker("archive-partitions", d.partitionKeeper().Run)
	return nil
}

// ivtRules are the invalid-traffic rules cfg sets. A serving's impression is remembered as long as its tracking URLs stay
// valid (the duplicate window, see NewVASTHandler's ttl): a click after
// that has an expired signature anyway.
func ivtRules(cfg *config.Config) (*aggregator.Rules, error) {
	bots, err := aggregator.LoadBots(cfg.IVTBotPatterns)
	if err != nil {
		return nil, err
	}
	return &aggregator.Rules{
		Bots: bots, DuplicateClickWindow: cfg.IVTDuplicateClickWindow,
		RatePerMinute: cfg.IVTRatePerMinute, ServingWindow: cfg.DuplicateWindow,
	}, nil
}

// writersAsBefore12, set only by BenchmarkCPUPerEvent for its baseline,
// runs the rollup writers and the archiver as they ran before issue #12:
// every visitor set kept in its rollup, a commit as soon as a writer has
// caught up, every bucket at every commit, archive batches of 50 ms (with
// ROLLUP_COMMITS=atomic, the commits of then).
var writersAsBefore12 bool

// startCache puts the rollup cache in front of rollups, warmed from the last
// snapshot when there is one, and starts its watch and the snapshot writer.
func (d *daemon) startCache(rollups *store.Rollups) (*rollupcache.Cache, error) {
	cache, err := rollupcache.New(rollups, rollupcache.Options{
		MaxBytes: int64(d.cfg.CacheMaxBytes), Idle: d.cfg.CacheIdle, Registerer: d.reg,
		Logger: d.logger.With("component", "rollup-cache"),
	})
	if err != nil {
		return nil, err
	}
	if snap, err := d.snapshots.Read(); err == nil {
		cache.Warm(snap)
		d.logger.Info("rollup cache warmed from the snapshot", "rollups", snap.Len(), "as_of", snap.AsOf())
	}
	d.goWorker("rollup-cache", cache.Run)
	d.goWorker("snapshot-writer", func(ctx context.Context) error {
		return cache.WriteSnapshots(ctx, d.snapshots.Path(), d.cfg.SnapshotInterval)
	})
	return cache, nil
}

// latestSnapshot is what analytics answer from when the live rollups do not.
func (d *daemon) latestSnapshot() (api.StaleReader, error) {
	snap, err := d.snapshots.Read()
	if err != nil {
		return nil, err
	}
	return snap, nil
}

// startIntake opens the spool under DATA_DIR and starts its replayer, and
// returns the publisher that falls back on it.
func (d *daemon) startIntake() (*ingest.Publisher, error) {
	sp, err := spool.Open(filepath.Join(d.dataDir, "spool"), spool.Options{
		MaxBytes: int64(d.cfg.SpoolMaxBytes),
		Logger:   d.logger.With("component", "spool"),
		Metrics:  spool.NewMetrics(d.reg),
	})
	if err != nil {
		return nil, err
	}
	d.spool = sp
	if !sp.Empty() {
		d.logger.Warn("the spool holds events from an earlier run; replaying them", "bytes", sp.Bytes())
	}
	metrics := ingest.NewMetrics(d.reg)
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
	d.goWorker("spool-replayer", replayer.Run)
	return pub, nil
}

// eventLimits bound the timestamps the intake accepts: no older than the
// longest rollup retention.
func (d *daemon) eventLimits() event.Limits {
	return event.Limits{MaxAge: d.layout.MaxRetention()}
}

// goWorker runs a long-running part until shutdown; an error it returns is
// reported on workerErr (and logged by main) so the daemon stops instead of
// running half-alive.
func (d *daemon) goWorker(name string, run func(context.Context) error) {
	d.workers.Go(func() {
		if err := run(d.workCtx); err != nil {
			d.workerErr <- fmt.Errorf("%s: %w", name, err)
		}
	})
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

// shutdown stops the parts in order: HTTP (in-flight requests finish), then
// the workers (each consumer finishes its batch), then the spool, then NATS,
// then PostgreSQL. Parts never started are skipped. Every step shares ctx's
// deadline.
func (d *daemon) shutdown(ctx context.Context) error {
	var errs []error
	if d.httpSrv != nil {
		if err := d.httpSrv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("http: %w", err))
		}
	}
	d.stopWorkers()
	done := make(chan struct{})
	go func() { d.workers.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		errs = append(errs, errors.New("consumers did not stop in time"))
	}
	if d.spool != nil {
		// After HTTP: no request can append any more.
		if err := d.spool.Close(); err != nil {
			errs = append(errs, fmt.Errorf("spool: %w", err))
		}
	}
	errs = append(errs, d.close(ctx)) // the backends, last
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
