package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/admetric/admetric/api"
	"github.com/admetric/admetric/api/respond"
	"github.com/admetric/admetric/config"
	"github.com/admetric/admetric/store/postgres"
)

// newEngine returns the Gin engine every role serves: a handler's panic is a
// logged 500, unknown routes and methods are JSON errors, and X-Forwarded-For
// is believed from TRUSTED_PROXIES only.
func newEngine(cfg *config.Config, logger *slog.Logger) (*gin.Engine, error) {
	gin.SetMode(gin.ReleaseMode)
	engine := gin.New()
	engine.HandleMethodNotAllowed = true
	if err := engine.SetTrustedProxies(cfg.TrustedProxies); err != nil {
		return nil, fmt.Errorf("TRUSTED_PROXIES: %w", err)
	}
	engine.Use(recovery(logger))
	engine.NoRoute(func(c *gin.Context) { respond.Error(c, http.StatusNotFound, "", "no such route") })
	engine.NoMethod(func(c *gin.Context) {
		respond.Error(c, http.StatusMethodNotAllowed, "", "method not allowed on this route")
	})
	return engine, nil
}

// recovery turns a handler panic into a logged 500, so one bad request never
// takes the process down.
func recovery(logger *slog.Logger) gin.HandlerFunc {
	return gin.CustomRecoveryWithWriter(io.Discard, func(c *gin.Context, rec any) {
		logger.Error("handler panic", "panic", rec, "path", c.FullPath())
		respond.Error(c, http.StatusInternalServerError, "", "internal error")
	})
}

// registerOps mounts /healthz, /readyz (NATS and PostgreSQL) and /metrics.
func (d *daemon) registerOps(engine *gin.Engine) {
	api.RegisterHealth(engine, map[string]api.Check{
		"nats": func(context.Context) error {
			if s := d.nc.Status(); s != nats.CONNECTED {
				return fmt.Errorf("nats is %s", strings.ToLower(s.String()))
			}
			return nil
		},
		"postgres": func(ctx context.Context) error { return postgres.Ping(ctx, d.db) },
	})
	engine.GET("/metrics", gin.WrapH(promhttp.HandlerFor(d.reg, promhttp.HandlerOpts{Registry: d.reg})))
}

// wrapHTTP, when set, wraps the handler serveHTTP serves: the tests check
// every answer of an in-process daemon against the OpenAPI document through
// it. It is nil in the service; serveHTTP reads it once, as it starts.
var wrapHTTP func(http.Handler) http.Handler

// serveHTTP listens on HTTP_ADDR and serves engine until shutdown, with
// timeouts that keep slow clients from holding connections.
func (d *daemon) serveHTTP(engine *gin.Engine) error {
	ln, err := net.Listen("tcp", d.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("HTTP_ADDR: %w", err)
	}
	handler := engine.Handler()
	if wrapHTTP != nil {
		handler = wrapHTTP(handler)
	}
	d.httpLn = ln
	d.httpSrv = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(d.logger.Handler(), slog.LevelWarn),
	}
	go func() { d.httpErr <- d.httpSrv.Serve(ln) }()
	return nil
}
