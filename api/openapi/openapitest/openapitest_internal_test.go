package openapitest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
)

// answerCase is an answer to a request, to check.
type answerCase struct {
	name         string
	method, path string
	status       int
	header       http.Header
	body         string
	valid        bool
}

func jsonHeader(kv ...string) http.Header {
	h := http.Header{"Content-Type": {"application/json; charset=utf-8"}}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return h
}

// counts is the figures of an ad (or an interval, or all ads), n making
// them differ.
func counts(n int) map[string]any {
	impressions := 1000 + 37*n
	clicks := 20 + n%7
	m := map[string]any{
		"impressions": impressions, "clicks": clicks, "unique_visitors": impressions * 8 / 10,
		"avg_playback_time": 11.25 + float64(n%5), "ctr": float64(clicks) / float64(impressions),
		"starts": 900 + n, "first_quartiles": 800, "midpoints": 700, "third_quartiles": 600, "completes": 500 + n%11,
		"skips": 40, "completion_rate": 0.55, "vast_errors": 3, "vast_errors_by_code": map[string]any{"303": 2, "unknown": 1},
		"servings": 1200, "serving_clicks": 18, "clicks_per_serving": 0.015, "invalid": 9,
		"invalid_by_reason": map[string]any{"bot": 4, "duplicate_click": 2, "rate": 1, "click_without_impression": 1, "playback": 1, "signature": 0},
		"ivt_rate":          0.004,
	}
	if n%9 == 0 { // an interval with no traffic
		for k, v := range m {
			switch v.(type) {
			case int:
				m[k] = 0
			case float64:
				m[k] = nil
			}
		}
		m["avg_playback_time"], m["ivt_rate"] = nil, nil
		delete(m, "vast_errors_by_code")
		m["invalid_by_reason"] = map[string]any{"bot": 0, "duplicate_click": 0, "rate": 0, "click_without_impression": 0, "playback": 0, "signature": 0}
	}
	return m
}

// realisticReport is what the dashboard asks most: the last 24 hours by
// hour, for a page of ads, each with its series.
func realisticReport(ads int) string {
	to := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	from := to.Add(-24 * time.Hour)
	series := func(seed int) []any {
		var points []any
		for h := range 24 {
			p := counts(seed + h)
			p["from"] = from.Add(time.Duration(h) * time.Hour).Format(time.RFC3339)
			p["to"] = from.Add(time.Duration(h+1) * time.Hour).Format(time.RFC3339)
			points = append(points, p)
		}
		return points
	}
	total := counts(1)
	total["series"] = series(100)
	var page []any
	for i := range ads {
		m := counts(i + 2)
		m["ad_id"] = fmt.Sprintf("ad-%d", i+1)
		m["series"] = series(i * 24)
		page = append(page, m)
	}
	b, err := json.Marshal(map[string]any{
		"timeframe": "24h", "from": from.Format(time.RFC3339), "to": to.Format(time.RFC3339), "interval": "hour", "tz": "UTC",
		"resolutions": []string{"hour", "minute"}, "stale": false, "as_of": to.Add(-30 * time.Second).Format(time.RFC3339Nano),
		"include_invalid": false, "total_ads": ads, "limit": 50, "offset": 0, "total": total, "ads": page,
	})
	if err != nil {
		panic(err)
	}
	return string(b)
}

// smallReport is a report as the tests mostly get: one ad, one interval.
var smallReport = func() string {
	c, err := json.Marshal(counts(1))
	if err != nil {
		panic(err)
	}
	fields := strings.TrimSuffix(strings.TrimPrefix(string(c), "{"), "}")
	return `{"timeframe":"1h","from":"2026-11-25T11:01:00Z","to":"2026-11-25T12:01:00Z","interval":"hour","tz":"UTC",` +
		`"resolutions":["minute"],"stale":false,"include_invalid":false,"total_ads":1,"limit":1000,"offset":0,` +
		`"total":{` + fields + `,"series":[{"from":"2026-11-25T11:00:00Z","to":"2026-11-25T12:00:00Z",` + fields + `}]},` +
		`"ads":[{"ad_id":"ad-1",` + fields + `}]}`
}()

const accepted = `{"event_id":"0193a3c5-7f2e-7c4a-9d1b-2f6e8a9b0c1d","status":"accepted"}`

func answers() []answerCase {
	report, small := realisticReport(3), smallReport
	ad := `{"id":"ad-1","title":"T","advertiser":"","video_url":"","click_url":"","duration_seconds":15,` +
		`"video_type":"video/mp4","video_width":640,"video_height":360,"video_delivery":"progressive",` +
		`"vast_tag_url":"","created_at":"2026-11-25T12:00:00Z","updated_at":"2026-11-25T12:00:00.123456Z"}`
	return []answerCase{
		{"a report", "GET", "/ads/analytics?timeframe=24h&interval=hour", 200, jsonHeader(), report, true},
		{"a small report", "GET", "/ads/analytics?timeframe=1h&interval=hour", 200, jsonHeader(), small, true},
		{"a report with a string for a number", "GET", "/ads/analytics", 200, jsonHeader(), strings.Replace(small, `"skips":40`, `"skips":"40"`, 1), false},
		{"a report with an extra field in a point", "GET", "/ads/analytics", 200, jsonHeader(), strings.Replace(small, `"to":"2026-11-25T12:00:00Z"`, `"to":"2026-11-25T12:00:00Z","extra":1`, 1), false},
		{"a report with a bad error code", "GET", "/ads/analytics", 200, jsonHeader(), strings.Replace(small, `"303":2`, `"E303":2`, 1), false},
		{"a report with a bad date-time", "GET", "/ads/analytics", 200, jsonHeader(), strings.Replace(small, `"from":"2026-11-25T11:00:00Z"`, `"from":"2026-11-25 11:00:00"`, 1), false},
		{"a report with an impossible date", "GET", "/ads/analytics", 200, jsonHeader(), strings.Replace(small, `"from":"2026-11-25T11:00:00Z"`, `"from":"2026-02-30T11:00:00Z"`, 1), false},
		{"a report with a negative count", "GET", "/ads/analytics", 200, jsonHeader(), strings.Replace(small, `"skips":40`, `"skips":-40`, 1), false},
		{"a report with a bad ad ID", "GET", "/ads/analytics", 200, jsonHeader(), strings.Replace(small, `"ad_id":"ad-1"`, `"ad_id":"ad 1"`, 1), false},
		{"a report that is not JSON", "GET", "/ads/analytics", 200, jsonHeader(), small[:100], false},
		{"an ad", "GET", "/ads/ad-1", 200, jsonHeader(), ad, true},
		{"an ad without its title", "GET", "/ads/ad-1", 200, jsonHeader(), strings.Replace(ad, `"title":"T",`, "", 1), false},
		{"an accepted event", "POST", "/ads/click", 202, jsonHeader(), accepted, true},
		{"an event with an odd status", "POST", "/ads/click", 202, jsonHeader(), `{"event_id":"e1","status":"queued"}`, false},
		{"an event with an extra field", "POST", "/ads/impression", 202, jsonHeader(), `{"event_id":"e1","status":"spooled","x":1}`, false},
		{"an error", "GET", "/ads/nope", 404, jsonHeader(), `{"error":"no such ad","field":"id"}`, true},
		{"an error with an empty message", "GET", "/ads/nope", 404, jsonHeader(), `{"error":""}`, false},
		{"an unknown route", "GET", "/nowhere", 404, jsonHeader(), `{"error":"no such route"}`, true},
		{"an unknown route without the error", "GET", "/nowhere", 404, jsonHeader(), `{}`, false},
		{"health", "GET", "/healthz", 200, jsonHeader(), `{"status":"ok"}`, true},
		{"health not ok", "GET", "/healthz", 200, jsonHeader(), `{"status":"fine"}`, false},
		{"health in plain text", "GET", "/healthz", 200, http.Header{"Content-Type": {"text/plain"}}, `ok`, false},
		{"metrics", "GET", "/metrics", 200, http.Header{"Content-Type": {"text/plain; version=0.0.4; charset=utf-8"}}, "# HELP up 1\n", true},
		{"a pixel", "GET", "/t/impression", 200, http.Header{"Content-Type": {"image/gif"}, "Cache-Control": {"no-store"}}, "GIF89a\x01\x00\x01\x00", true},
		{"a VAST document", "GET", "/vast/ad-1", 200, http.Header{"Content-Type": {"application/xml; charset=utf-8"}, "Cache-Control": {"no-store"}}, `<VAST version="4.2"></VAST>`, true},
		{"a redirect to the ad", "GET", "/c?x=1", 302, http.Header{"Content-Type": {"text/html; charset=utf-8"}, "Location": {"https://example.com/"}, "Cache-Control": {"no-store"}}, `<a href="https://example.com/">Found</a>.`, true},
		{"not modified", "GET", "/", 304, http.Header{"Etag": {`"v1"`}}, "", true},
		{"a trailing slash redirected", "GET", "/ads/", 301, http.Header{"Content-Type": {"text/html; charset=utf-8"}, "Location": {"/ads"}}, `<a href="/ads">Moved Permanently</a>.`, true},
	}
}

// TestCachedBodiesAgreeWithKin: the compiled schemas pass and fail the
// answers kin-openapi's validation of the body passes and fails.
func TestCachedBodiesAgreeWithKin(t *testing.T) {
	s, err := loadSpec()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range answers() {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, tc.path, nil)
			cached := s.check(req, tc.status, tc.header, []byte(tc.body), false)
			kin := s.check(req, tc.status, tc.header, []byte(tc.body), true)
			if (cached == nil) != tc.valid {
				t.Errorf("cached: %v, want valid=%v", cached, tc.valid)
			}
			if (kin == nil) != tc.valid {
				t.Errorf("kin-openapi: %v, want valid=%v", kin, tc.valid)
			}
			if testing.Verbose() {
				t.Logf("cached: %v\nkin:    %v", cached, kin)
			}
		})
	}
}

// TestEveryBodySchemaCompiles: each response's schema in openapi.json
// compiles (a check compiles only the ones its answers need).
func TestEveryBodySchemaCompiles(t *testing.T) {
	s, err := newSpec()
	if err != nil {
		t.Fatal(err)
	}
	if len(s.bodies) == 0 {
		t.Fatal("no response schema found in openapi.json")
	}
	for mt, b := range s.bodies {
		if _, err := b.compile(s); err != nil {
			t.Errorf("%s: %v", b.ptr, err)
		}
		if s.bodies[mt] != b {
			t.Fatal("the map changed")
		}
	}
	// Every media type a check may look up has its schema placed.
	ops := []*openapi3.Operation{s.noRoute, s.noMethod, s.slashRedirect, s.uriTooLong}
	for _, p := range s.paths {
		for _, op := range p.item.Operations() {
			ops = append(ops, op)
		}
	}
	for _, op := range ops {
		for status, resp := range op.Responses.Map() {
			for key, mt := range resp.Value.Content {
				if mt.Schema != nil && s.bodies[mt] == nil {
					t.Errorf("%s %s: no schema placed for %s", op.OperationID, status, key)
				}
			}
		}
	}
	t.Logf("%d response schemas", len(s.bodies))
}

// TestConcurrentChecks: goroutines checking at once, each schema compiled
// by whichever comes first, get the same verdicts (run with -race).
func TestConcurrentChecks(t *testing.T) {
	s, err := newSpec() // a fresh cache: nothing compiled yet
	if err != nil {
		t.Fatal(err)
	}
	var cases []answerCase
	for _, tc := range answers() {
		if len(tc.body) < 8<<10 { // the large report would only make it slow
			cases = append(cases, tc)
		}
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range cases {
				tc := cases[(i+g)%len(cases)]
				req := httptest.NewRequest(tc.method, tc.path, nil)
				if err := s.check(req, tc.status, tc.header, []byte(tc.body), false); (err == nil) != tc.valid {
					t.Errorf("%s: %v, want valid=%v", tc.name, err, tc.valid)
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkCheck checks analytics reports, one as the tests mostly get (one
// ad, one interval) and one as the dashboard asks (the last 24 hours by
// hour, for all ads and each of three), and a 202 Accepted: with kin-openapi
// validating the body (compiling its schema on every call), then with the
// compiled schemas. Each reports the CPU time the process spent per check
// (cpu-ns/op: the garbage collector's included, and less swayed than ns/op
// by other processes on a busy machine); the cached run reports how many
// times less that is than the kin run's just before it (x).
//
//	go test -run '^$' -bench BenchmarkCheck ./api/openapi/openapitest/
func BenchmarkCheck(b *testing.B) {
	s, err := loadSpec()
	if err != nil {
		b.Fatal(err)
	}
	for _, a := range []struct {
		name         string
		method, path string
		status       int
		body         string
	}{
		{"report-1ad-1point", "GET", "/ads/analytics?timeframe=1h&interval=hour", 200, smallReport},
		{"report-3ads-24points", "GET", "/ads/analytics?timeframe=24h&interval=hour", 200, realisticReport(3)},
		{"accepted", "POST", "/ads/click", 202, accepted},
	} {
		b.Run(a.name, func(b *testing.B) {
			req := httptest.NewRequest(a.method, a.path, nil)
			header, body := jsonHeader(), []byte(a.body)
			var kinCPU float64
			for _, kinBodies := range []bool{true, false} {
				name := "cached"
				if kinBodies {
					name = "kin"
				}
				b.Run(name, func(b *testing.B) {
					b.ReportAllocs()
					if err := s.check(req, a.status, header, body, kinBodies); err != nil { // compiles, for cached
						b.Fatal(err)
					}
					start := cpuTime(b)
					for b.Loop() {
						if err := s.check(req, a.status, header, body, kinBodies); err != nil {
							b.Fatal(err)
						}
					}
					cpu := float64(cpuTime(b)-start) / float64(b.N)
					b.ReportMetric(cpu, "cpu-ns/op")
					if kinBodies {
						kinCPU = cpu
					} else if kinCPU > 0 {
						b.ReportMetric(kinCPU/cpu, "x")
					}
				})
			}
		})
	}
}

// cpuTime is the CPU time the process has used, user and system.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
