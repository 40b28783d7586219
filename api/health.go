package api

import (
	"context"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"
)

// Check reports whether one dependency answers; nil means ready.
type Check func(ctx context.Context) error

// RegisterHealth mounts GET /healthz (the process is alive) and GET /readyz
// (every check passes within a second; 503 naming the failures otherwise).
func RegisterHealth(r gin.IRouter, checks map[string]Check) {
	r.GET("/healthz", func(c *gin.Context) {
		c.JSON(http.StatusOK, gin.H{"status": "ok"})
	})
	r.GET("/readyz", func(c *gin.Context) {
		ctx, cancel := context.WithTimeout(c.Request.Context(), time.Second)
		defer cancel()
		results := make(map[string]string, len(checks))
		ready := true
		for name, check := range checks {
			if err := check(ctx); err != nil {
				results[name] = err.Error()
				ready = false
				continue
			}
			results[name] = "ok"
		}
		status := http.StatusOK
		if !ready {
			status = http.StatusServiceUnavailable
		}
		c.JSON(status, gin.H{"ready": ready, "checks": results})
	})
}
