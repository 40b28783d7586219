package dashboard_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gin-gonic/gin"

	"github.com/admetric/admetric/api/dashboard"
)

func TestDashboardFiles(t *testing.T) {
	gin.SetMode(gin.TestMode)
	d, err := dashboard.New()
	if err != nil {
		t.Fatal(err)
	}
	r := gin.New()
	d.Register(r)
	for _, tc := range []struct {
		path, wantType, wantBody string
		wantStatus               int
	}{
		{"/", "text/html; charset=utf-8", `<script src="/ui/app.js" defer></script>`, http.StatusOK},
		{"/ui/app.js", "text/javascript; charset=utf-8", `"use strict";`, http.StatusOK},
		{"/ui/app.css", "text/css; charset=utf-8", ":root", http.StatusOK},
		{"/ui/favicon.svg", "image/svg+xml", "<svg", http.StatusOK},
		{"/ui/index.html", "application/json; charset=utf-8", `"field":"file"`, http.StatusNotFound},
		{"/ui/nope.js", "application/json; charset=utf-8", `"field":"file"`, http.StatusNotFound},
	} {
		t.Run(tc.path, func(t *testing.T) {
			rec := httptest.NewRecorder()
			r.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path, nil))
			if rec.Code != tc.wantStatus || rec.Header().Get("Content-Type") != tc.wantType || !strings.Contains(rec.Body.String(), tc.wantBody) {
				t.Fatalf("%d %q %.80q; want %d %q with %q", rec.Code, rec.Header().Get("Content-Type"), rec.Body.String(), tc.wantStatus, tc.wantType, tc.wantBody)
			}
			if tc.wantStatus != http.StatusOK {
				var e struct{ Error, Field string }
				if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error == "" {
					t.Fatalf("error body %q: %v", rec.Body.String(), err)
				}
				return
			}
			if got := rec.Header().Get("Content-Security-Policy"); got != dashboard.Policy {
				t.Errorf("Content-Security-Policy %q", got)
			}
			if rec.Header().Get("X-Content-Type-Options") != "nosniff" || rec.Header().Get("ETag") == "" {
				t.Errorf("headers %v", rec.Header())
			}
			// The same file again with its ETag: 304, no body.
			req := httptest.NewRequest(http.MethodGet, tc.path, nil)
			req.Header.Set("If-None-Match", rec.Header().Get("ETag"))
			again := httptest.NewRecorder()
			r.ServeHTTP(again, req)
			if again.Code != http.StatusNotModified || again.Body.Len() != 0 {
				t.Errorf("with If-None-Match: %d, %d bytes", again.Code, again.Body.Len())
			}
		})
	}
}

// TestPageHasNoInlineScriptOrStyle: the policy allows the dashboard's own
// files only, so an inline script or style in the page would not run.
func TestPageHasNoInlineScriptOrStyle(t *testing.T) {
	d, err := dashboard.New()
	if err != nil {
		t.Fatal(err)
	}
	r := gin.New()
	d.Register(r)
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	page := rec.Body.String()
	for _, bad := range []string{"<script>", "<style", " style=", " onclick=", " onload=", "javascript:"} {
		if strings.Contains(page, bad) {
			t.Errorf("the page holds %q", bad)
		}
	}
	if !strings.Contains(dashboard.Policy, "script-src 'self'") || strings.Contains(dashboard.Policy, "unsafe-inline") {
		t.Errorf("policy %q", dashboard.Policy)
	}
}
