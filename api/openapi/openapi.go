// Package openapi holds the OpenAPI 3.1 document of AdMetric's HTTP API,
// openapi.json, written by hand, and serves it at GET /openapi.json. The
// document describes every route the service answers, their parameters,
// bodies and answers, and the error shape of package respond.
//
// The tests keep it true: package openapitest checks every answer the test
// suite gets against it, so a handler cannot answer what the document does
// not describe.
//
// It imports nothing of the module.
package openapi

import (
	_ "embed"
	"net/http"

	"github.com/gin-gonic/gin"
)

//go:embed openapi.json
var document []byte

// Document returns the OpenAPI document (JSON). The caller must not modify it.
func Document() []byte { return document }

// Register mounts GET /openapi.json on r.
func Register(r gin.IRouter) {
	r.GET("/openapi.json", func(c *gin.Context) {
		c.Data(http.StatusOK, "application/json; charset=utf-8", Document())
	})
}
