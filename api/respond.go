// Package api is the read side and the ad management of the HTTP API: ads,
// analytics from the rollups, health and readiness. Event intake lives in
// package ingest.
package api

import (
	"github.com/gin-gonic/gin"
)

// errorBody is the JSON of every 4xx and 5xx: what is wrong and, when one field
// is at fault, which.
type errorBody struct {
	Error string `json:"error"`
	Field string `json:"field,omitempty"`
}

func fail(c *gin.Context, status int, field, msg string) {
	c.AbortWithStatusJSON(status, errorBody{Error: msg, Field: field})
}
