package openapi_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/gin-gonic/gin"

	"github.com/admetric/admetric/api/openapi"
	"github.com/admetric/admetric/api/openapi/openapitest"
)

// TestServesTheDocument: GET /openapi.json answers the embedded document,
// as the document itself describes that answer.
func TestServesTheDocument(t *testing.T) {
	gin.SetMode(gin.TestMode)
	r := gin.New()
	openapi.Register(r)
	rec := httptest.NewRecorder()
	openapitest.Handler(t, r).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/openapi.json", nil))
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/json; charset=utf-8" || !bytes.Equal(rec.Body.Bytes(), openapi.Document()) {
		t.Errorf("GET /openapi.json: %d %v, %d bytes; want 200, JSON, the document", rec.Code, rec.Header(), rec.Body.Len())
	}
	// Gin redirects a trailing slash, rewriting the request's URL as it
	// does: the check still judges the request as it came.
	rec = httptest.NewRecorder()
	openapitest.Handler(t, r).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/openapi.json/", nil))
	if rec.Code != http.StatusMovedPermanently || rec.Header().Get("Location") != "/openapi.json" {
		t.Errorf("GET /openapi.json/: %d %v, want a redirect to /openapi.json", rec.Code, rec.Header())
	}
}

// TestDocument: the document is valid OpenAPI 3.1; every operation has an
// ID and a summary; every error answer has the one error shape of package
// respond (but for two answers that are not the service's errors), and
// every operation documents the 500 of a handler's panic.
func TestDocument(t *testing.T) {
	doc, err := openapi3.NewLoader().LoadFromData(openapi.Document())
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if doc.OpenAPI != "3.1.0" {
		t.Errorf("openapi %q, want 3.1.0", doc.OpenAPI)
	}
	errorSchema := doc.Components.Schemas["Error"]
	if errorSchema == nil {
		t.Fatal("no components/schemas/Error")
	}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			name := method + " " + path
			if op.OperationID == "" || op.Summary == "" {
				t.Errorf("%s: no operationId or summary", name)
			}
			if op.Responses.Status(http.StatusInternalServerError) == nil {
				t.Errorf("%s: the 500 of a handler's panic is not documented", name)
			}
			for code, resp := range op.Responses.Map() {
				status, err := strconv.Atoi(code)
				if err != nil {
					t.Errorf("%s: response %q is not a status", name, code)
					continue
				}
				if status < 400 {
					continue
				}
				mt := resp.Value.Content.Get("application/json")
				switch {
				case status == http.StatusInternalServerError && path == "/metrics":
					continue // also the Prometheus handler's own plain text
				case status == http.StatusServiceUnavailable && path == "/readyz":
					continue // not an error: the readiness report, as the 200
				}
				if len(resp.Value.Content) != 1 || mt == nil || mt.Schema == nil || mt.Schema.Value != errorSchema.Value {
					t.Errorf("%s: answer %d is not the Error schema as JSON alone", name, status)
				}
			}
		}
	}
}
