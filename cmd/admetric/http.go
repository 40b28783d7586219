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
	"github.com/admetric/admetric/ingest"
	"github.com/admetric/admetric/ingest/ratelimit"
	"github.com/admetric/admetric/store/postgres"
)

// newEngine returns the Gin engine every role serves: a handler's panic is a
// logged 500, unknown routes and methods are JSON errors, and X-Forwarded-For
// is believed from TRUSTED_PROXIES only. A URL longer than maxURLBytes is
// answered 414.
func newEngine(cfg *config.Config, logger *slog.Logger) (*gin.Engine, error) {
	gin.SetMode(gin.ReleaseMode)
	engine := gin.New()
	engine.HandleMethodNotAllowed = true
	if err := engine.SetTrustedProxies(cfg.TrustedProxies); err != nil {
		return nil, fmt.Errorf("TRUSTED_PROXIES: %w", err)
	}
	engine.Use(recovery(logger), limitURL)
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
	handler = secureHeaders(handler)
	d.httpLn = ln
	d.httpSrv = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		MaxHeaderBytes:    maxHeaderBytes,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(d.logger.Handler(), slog.LevelWarn),
	}
	go func() { d.httpErr <- d.httpSrv.Serve(ln) }()
	return nil
}

// Abuse limits: sizes, security headers and the intake's rate limits.

const (
	// maxHeaderBytes bounds a request's header block (and request line):
	// net/http answers 431 beyond it (plus its 4 KiB of slack), before any
	// handler runs. 32 KiB is four times what common proxies allow by
	// default, so nothing a real player or browser sends comes near it.
	maxHeaderBytes = 32 << 10
	// maxURLBytes bounds a request's path and query: 414 beyond it. The
	// longest a client has reason to send, an analytics query naming many
	// ads, holds about a hundred 64-character ad IDs in it.
	maxURLBytes = 8 << 10
)

// limitURL answers 414 to a request whose path and query are longer than
// maxURLBytes.
func limitURL(c *gin.Context) {
	if len(c.Request.RequestURI) > maxURLBytes {
		respond.Error(c, http.StatusRequestURITooLong, "", fmt.Sprintf("the URL is longer than %d bytes", maxURLBytes))
	}
}

// Security headers of every answer. The dashboard's HTML sets its own
// Content-Security-Policy, which replaces apiPolicy: nothing else the
// service answers is a page, so nothing else may load or frame anything.
const apiPolicy = "default-src 'none'; frame-ancestors 'none'"

// secureHeaders sets the security headers on every answer of h, the
// router's redirects and unknown routes included: no MIME sniffing, no
// referrer, apiPolicy unless the handler sets its own. The service sets no
// cookies.
func secureHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hdr := w.Header()
		hdr.Set("X-Content-Type-Options", "nosniff")
		hdr.Set("Referrer-Policy", "no-referrer")
		hdr.Set("Content-Security-Policy", apiPolicy)
		h.ServeHTTP(w, r)
	})
}

// rateLimits are the intake's per-client limits of the configuration.
func (d *daemon) rateLimits() ingest.RateLimits {
	return ingest.RateLimits{
		Events: ratelimit.New(float64(d.cfg.IntakeRateLimit), d.cfg.IntakeRateBurst, d.cfg.RateLimitMaxClients),
		Pixels: ratelimit.New(float64(d.cfg.PixelRateLimit), d.cfg.PixelRateBurst, d.cfg.RateLimitMaxClients),
	}
}
