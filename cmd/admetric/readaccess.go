package main

import (
	"context"

	"github.com/gin-gonic/gin"

	"github.com/admetric/admetric/api/access"
	"github.com/admetric/admetric/store/postgres"
)

// startReadAccess loads the scoped read tokens, starts their refresh, mounts
// the /tokens routes on engine and returns the guard the read routes stand
// behind. With reads open (no ANALYTICS_TOKEN) on an address beyond loopback
// it warns once.
func (d *daemon) startReadAccess(ctx context.Context, engine *gin.Engine) (*access.Guard, error) {
	tokens := access.NewTokens(postgres.NewReadTokens(d.db), d.logger.With("component", "read-tokens"))
	if err := tokens.Refresh(ctx); err != nil {
		return nil, err
	}
	d.goWorker("read-tokens", func(ctx context.Context) error { return tokens.Run(ctx, d.cfg.ReadTokenRefresh) })
	access.NewTokenHandlers(tokens, d.cfg.AdminToken, d.logger).Register(engine)
	guard := access.NewGuard(d.cfg.AnalyticsToken, d.cfg.AdminToken, tokens)
	if !guard.Closed() && !d.cfg.HTTPLoopback() {
		d.logger.Warn("analytics and the ad list are readable by anyone who can reach HTTP_ADDR: set ANALYTICS_TOKEN to require a bearer token",
			"http_addr", d.cfg.HTTPAddr)
	}
	return guard, nil
}
