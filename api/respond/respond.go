// Package respond writes what every AdMetric HTTP answer of an error shares:
// a JSON body {"error": "what is wrong", "field": "the field at fault"}. The
// intake (package ingest), the read side (package api) and the routes the
// service itself answers (unknown route, wrong method, a handler's panic) use
// it, so that a client parses one shape.
//
// It imports nothing of the module.
package respond

import "github.com/gin-gonic/gin"

// ErrorBody is the JSON of every 4xx and 5xx answer.
type ErrorBody struct {
	// Error says what is wrong, for a person to read.
	Error string `json:"error"`
	// Field names the request field at fault (a JSON field, a query
	// parameter or a header); empty when none is.
	Field string `json:"field,omitempty"`
}

// Error aborts the request with status and an ErrorBody of field and msg.
func Error(c *gin.Context, status int, field, msg string) {
	c.AbortWithStatusJSON(status, ErrorBody{Error: msg, Field: field})
}
