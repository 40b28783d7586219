package openapitest_test

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/admetric/admetric/api/openapi/openapitest"
)

// fakeTB records what the checks report.
type fakeTB struct {
	mu   sync.Mutex
	errs []string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Errorf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs = append(f.errs, fmt.Sprintf(format, args...))
}

func (f *fakeTB) reported() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.errs...)
}

// answer is a handler that answers status, with contentType and body.
func answer(status int, contentType, body string, headers ...string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		for i := 0; i+1 < len(headers); i += 2 {
			w.Header().Set(headers[i], headers[i+1])
		}
		if contentType != "" {
			w.Header().Set("Content-Type", contentType)
		}
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	})
}

const (
	jsonType = "application/json; charset=utf-8"
	ad       = `{"id":"ad-1","title":"T","advertiser":"","video_url":"","click_url":"","duration_seconds":15,` +
		`"video_type":"video/mp4","video_width":640,"video_height":360,"video_delivery":"progressive",` +
		`"vast_tag_url":"","created_at":"2026-11-25T12:00:00Z","updated_at":"2026-11-25T12:00:00.123456Z"}`
	counts = `"impressions":2,"clicks":1,"unique_visitors":2,"avg_playback_time":3.5,"ctr":0.5,"starts":0,` +
		`"first_quartiles":0,"midpoints":0,"third_quartiles":0,"completes":0,"skips":0,"completion_rate":null,` +
		`"vast_errors":0,"servings":0,"serving_clicks":0,"clicks_per_serving":null,"invalid":0,` +
		`"invalid_by_reason":{"bot":0,"duplicate_click":0,"rate":0,"click_without_impression":0,"playback":0,"signature":0},"ivt_rate":0`
	report = `{"timeframe":"1h","from":"2026-11-25T11:01:00Z","to":"2026-11-25T12:01:00Z","interval":"hour","tz":"UTC",` +
		`"resolutions":["minute"],"stale":false,"include_invalid":false,"total_ads":1,"limit":1000,"offset":0,` +
		`"total":{` + counts + `,"series":[{"from":"2026-11-25T11:00:00Z","to":"2026-11-25T12:00:00Z",` + counts + `}]},` +
		`"ads":[{"ad_id":"ad-1",` + counts + `}]}`
)

// TestCheckerFailsOnWhatTheDocumentDoesNotDescribe: each answer here departs
// from the document in one way, and the check reports it, naming the request
// and what is wrong; the well-formed answers beside them pass.
func TestCheckerFailsOnWhatTheDocumentDoesNotDescribe(t *testing.T) {
	tests := []struct {
		name         string
		method, path string
		h            http.Handler
		want         string // in the report; "" for none
	}{
		{"a documented answer", "GET", "/ads/ad-1", answer(200, jsonType, ad), ""},
		{"a documented error", "GET", "/ads/nope", answer(404, jsonType, `{"error":"no such ad","field":"id"}`), ""},
		{"a report with nulls and a series", "GET", "/ads/analytics?interval=hour", answer(200, jsonType, report), ""},
		{"an undocumented status", "GET", "/ads/ad-1", answer(418, jsonType, `{"error":"teapot"}`),
			"GET /ads/{id} does not document status 418"},
		{"a 500 where only a panic may give one, with another shape", "GET", "/ads", answer(500, "text/plain", "boom"),
			"GET /ads"},
		{"a missing required field", "GET", "/ads/ad-1", answer(200, jsonType, strings.Replace(ad, `"title":"T",`, "", 1)),
			"title"},
		{"a wrong type", "GET", "/ads/ad-1", answer(200, jsonType, strings.Replace(ad, `"video_width":640`, `"video_width":"640"`, 1)),
			"video_width"},
		{"a string where a nullable number is", "GET", "/ads/analytics", answer(200, jsonType, strings.Replace(report, `"ctr":0.5`, `"ctr":"0.5"`, 1)),
			"ctr"},
		{"an undocumented field in a point of a series", "GET", "/ads/analytics", answer(200, jsonType, strings.Replace(report, `"to":"2026-11-25T12:00:00Z",`, `"to":"2026-11-25T12:00:00Z","extra":1,`, 1)),
			"extra"},
		{"a value outside the enum", "POST", "/ads/click", answer(202, jsonType, `{"event_id":"e1","status":"queued"}`),
			"status"},
		{"an error without its message", "GET", "/ads/nope", answer(404, jsonType, `{"field":"id"}`),
			"error"},
		{"a missing required header", "POST", "/ads/click", answer(503, jsonType, `{"error":"down"}`),
			"Retry-After"},
		{"the wrong content type", "GET", "/healthz", answer(200, "text/plain", "ok"),
			"Content-Type"},
		{"a body where the document has none", "OPTIONS", "/ads/click", answer(200, "text/plain", "nothing to allow"),
			"no body in the document"},
		{"an undocumented route answered 200", "GET", "/nowhere", answer(200, jsonType, `{}`),
			"GET /nowhere (a path the document does not describe) does not document status 200"},
		{"an undocumented method answered 200", "PATCH", "/ads/ad-1", answer(200, jsonType, ad),
			"PATCH /ads/{id} (a method the path does not take) does not document status 200"},
		{"an unknown route answered as the service does", "GET", "/nowhere", answer(404, jsonType, `{"error":"no such route"}`), ""},
		{"an unknown route answered in plain text", "GET", "/nowhere", answer(404, "text/plain", "404 page not found"),
			"Content-Type"},
		{"an unknown method answered as the service does", "PATCH", "/ads/ad-1",
			answer(405, jsonType, `{"error":"method not allowed on this route"}`, "Allow", "GET, PUT, DELETE"), ""},
		{"a trailing slash redirected", "GET", "/ads/", answer(301, "text/html; charset=utf-8", `<a href="/ads">Moved Permanently</a>.`, "Location", "/ads"), ""},
		{"a trailing slash redirected for a POST", "POST", "/ads/click/", answer(307, "", "", "Location", "/ads/click"), ""},
		{"a path that is no route redirected", "GET", "/nowhere/", answer(301, "text/html; charset=utf-8", "", "Location", "/nowhere"),
			"GET /nowhere/ (a path the document does not describe) does not document status 301"},
		{"an unknown method answered without Allow", "PATCH", "/ads/ad-1", answer(405, jsonType, `{"error":"method not allowed on this route"}`),
			"Allow"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Server side.
			var fake fakeTB
			rec := httptest.NewRecorder()
			openapitest.Handler(&fake, tc.h).ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, nil))
			checkReported(t, "Handler", fake.reported(), tc.method, tc.want)

			// Client side, over a real connection.
			srv := httptest.NewServer(tc.h)
			defer srv.Close()
			var fakeClient fakeTB
			req, err := http.NewRequest(tc.method, srv.URL+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			hc := &http.Client{
				Transport:     openapitest.Transport(&fakeClient, nil),
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			checkReported(t, "Transport", fakeClient.reported(), tc.method, tc.want)
			if testing.Verbose() {
				t.Logf("reported: %q", fakeClient.reported())
			}
		})
	}
}

func checkReported(t *testing.T, side string, got []string, method, want string) {
	t.Helper()
	switch {
	case want == "" && len(got) > 0:
		t.Errorf("%s reported a departure where there is none: %q", side, got)
	case want != "" && len(got) != 1:
		t.Errorf("%s reported %d departures, want one mentioning %q: %q", side, len(got), want, got)
	case want != "" && (!strings.Contains(got[0], want) || !strings.Contains(got[0], method+" ")):
		t.Errorf("%s reported %q, want it to name the request and mention %q", side, got[0], want)
	}
}

// TestCheckReturnsTheDeparture: Check is the error-returning form the
// wrappers report from.
func TestCheckReturnsTheDeparture(t *testing.T) {
	req := httptest.NewRequest(http.MethodGet, "/healthz", nil)
	h := http.Header{"Content-Type": {jsonType}}
	if err := openapitest.Check(req, 200, h, []byte(`{"status":"ok"}`)); err != nil {
		t.Errorf("a good answer: %v", err)
	}
	err := openapitest.Check(req, 200, h, []byte(`{"status":"fine"}`))
	if err == nil || !strings.Contains(err.Error(), "GET /healthz answered 200") {
		t.Errorf("an answer outside the const: %v, want an error naming GET /healthz and 200", err)
	}
}

// TestGzipAnswersAreCheckedDecompressed: /metrics answers gzip when the
// client accepts it; the server-side check reads the body decompressed.
func TestGzipAnswersAreCheckedDecompressed(t *testing.T) {
	var zipped bytes.Buffer
	zw := gzip.NewWriter(&zipped)
	_, _ = zw.Write([]byte("# HELP up 1\n"))
	_ = zw.Close()
	h := http.Header{"Content-Type": {"text/plain; version=0.0.4; charset=utf-8"}, "Content-Encoding": {"gzip"}}
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	if err := openapitest.Check(req, 200, h, zipped.Bytes()); err != nil {
		t.Errorf("gzip metrics: %v", err)
	}
	if err := openapitest.Check(req, 200, h, []byte("# HELP up 1\n")); err == nil || !strings.Contains(err.Error(), "not gzip") {
		t.Errorf("a plain body said to be gzip: %v, want an error", err)
	}
}
