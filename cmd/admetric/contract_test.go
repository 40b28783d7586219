package main

import (
	"context"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/gin-gonic/gin"

	"github.com/admetric/admetric/api/openapi/openapitest"
	"github.com/admetric/admetric/config"
)

// The API contract in these tests: every answer a test gets from AdMetric is
// checked against the OpenAPI document (package openapitest). An in-process
// daemon's answers are checked as it serves them (startCheckedDaemon, through
// wrapHTTP), whoever asks; a process's answers are checked by the client
// (client.do, and the load generators' transports).

// startMu serializes the daemons' starts: wrapHTTP is one variable.
var startMu sync.Mutex

// checkedAddrs holds the HTTP addresses of the in-process daemons whose
// answers are checked as they are served, so that clients need not check
// them again.
var checkedAddrs sync.Map

// startCheckedDaemon starts a daemon whose every answer is checked against
// the OpenAPI document, failing t on a departure (but for a benchmark's), and
// checks that it routes what the document describes: no more, and, for the
// whole service, no less.
func startCheckedDaemon(t testing.TB, ctx context.Context, cfg *config.Config, r role, logger *slog.Logger) (*daemon, error) {
	t.Helper()
	startMu.Lock()
	defer startMu.Unlock()
	// Benchmarks measure the service's speed: the checks would weigh on it.
	_, bench := t.(*testing.B)
	var engine *gin.Engine
	wrapHTTP = func(h http.Handler) http.Handler {
		engine, _ = h.(*gin.Engine)
		if bench {
			return h
		}
		return secureAnswers(t, openapitest.Handler(t, h))
	}
	defer func() { wrapHTTP = nil }()
	d, err := startDaemon(ctx, cfg, r, logger)
	if err != nil {
		return nil, err
	}
	if !bench {
		addr := d.httpAddr()
		checkedAddrs.Store(addr, true)
		t.Cleanup(func() { checkedAddrs.Delete(addr) })
	}
	checkRoutesDocumented(t, engine, r == roleAll)
	return d, nil
}

// checkRoutesDocumented fails t for each route engine serves that the
// OpenAPI document does not describe and, when all is set, for each the
// document describes that engine does not serve.
func checkRoutesDocumented(t testing.TB, engine *gin.Engine, all bool) {
	t.Helper()
	if engine == nil {
		t.Error("serveHTTP did not serve the Gin engine: its routes cannot be checked against the OpenAPI document")
		return
	}
	documented, err := openapitest.Operations()
	if err != nil {
		t.Error(err)
		return
	}
	var served []string
	for _, rt := range engine.Routes() {
		segs := strings.Split(rt.Path, "/")
		for i, s := range segs {
			if len(s) > 1 && (s[0] == ':' || s[0] == '*') {
				segs[i] = "{" + s[1:] + "}"
			}
		}
		served = append(served, rt.Method+" "+strings.Join(segs, "/"))
	}
	for _, op := range served {
		if !slices.Contains(documented, op) {
			t.Errorf("the service routes %s, which the OpenAPI document (api/openapi/openapi.json) does not describe", op)
		}
	}
	if !all {
		return
	}
	for _, op := range documented {
		// The preflights are routed only with CORS_ALLOWED_ORIGINS set.
		if !slices.Contains(served, op) && !strings.HasPrefix(op, http.MethodOptions+" ") {
			t.Errorf("the OpenAPI document describes %s, which the service does not route", op)
		}
	}
}

// httpClient is the client c asks with: one that checks each answer
// against the OpenAPI document, unless the daemon at c.base checks its
// answers itself.
func (c client) httpClient() *http.Client {
	if _, ok := checkedAddrs.Load(strings.TrimPrefix(c.base, "http://")); ok {
		return http.DefaultClient
	}
	return &http.Client{Transport: openapitest.Transport(c.t, nil)}
}
