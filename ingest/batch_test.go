package ingest_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestBatchEndpoint: each item of POST /ads/events stands alone; the good ones
// are stored once, the bad ones name their field, and the body's own faults
// refuse it whole.
func TestBatchEndpoint(t *testing.T) {
	ns := startRestartableNATS(t)
	in := startIntake(t, ns.connect(t), 64<<20)

	checkMixedBatch(t, in)
	code, _, body := in.post(t, "/ads/events", manyEvents(1000))
	if code != http.StatusOK || num(body, "accepted")+num(body, "spooled") != 1000 {
		t.Fatalf("1000 events: %d, %v accepted and %v spooled", code, body["accepted"], body["spooled"])
	}
	checkRefusedBodies(t, in)
	// A refused body publishes nothing; an event of the batches whose PubAck
	// was late is in the spool until the replay.
	waitFor(t, "the spool to drain", 30*time.Second, in.spool.Empty)
	if ids := streamIDs(t, in.stream); len(ids) != 1003 {
		t.Errorf("stream holds %d events after the refused bodies, want 1003", len(ids))
	}
}

// checkMixedBatch posts a batch of good and bad events and checks each item's
// result and what the stream then holds.
func checkMixedBatch(t *testing.T, in *intake) {
	t.Helper()
	code, _, body := in.post(t, "/ads/events", `[
		{"type":"impression","ad_id":"ad-1","event_id":"b-1","ip":"10.0.0.1"},
		{"type":"click","ad_id":"ad-1","event_id":"b-2","playback_time":2.5},
		{"type":"click","ad_id":"nope","event_id":"b-3"},
		{"ad_id":"ad-1","event_id":"b-4"},
		{"type":"click","ad_id":"ad-1","event_id":"b-5","playback_time":-1},
		"not an object",
		{"type":"start","ad_id":"ad-1","event_id":"b-1"},
		{"type":"complete","ad_id":"ad-1"}
	]`)
	if code != http.StatusOK {
		t.Fatalf("batch: %d %v", code, body)
	}
	want := []struct {
		status string
		code   int
		field  string
	}{
		{"accepted", 202, ""},
		{"accepted", 202, ""},
		{"rejected", 404, "ad_id"},
		{"rejected", 400, "type"},
		{"rejected", 400, "playback_time"},
		{"rejected", 400, ""},
		{"accepted", 202, ""}, // a repeated event_id: stored once, answered as accepted
		{"accepted", 202, ""},
	}
	results := body["results"].([]any)
	if len(results) != len(want) {
		t.Fatalf("%d results, want %d: %v", len(results), len(want), body)
	}
	for i, w := range want {
		r := results[i].(map[string]any)
		field, _ := r["field"].(string)
		status := r["status"]
		if status == "spooled" && w.status == "accepted" {
			status = "accepted" // a PubAck slower than the timeout on a loaded machine: durable all the same
		}
		if r["index"] != float64(i) || status != w.status || r["code"] != float64(w.code) || field != w.field {
			t.Errorf("item %d: %v, want status %s code %d field %q", i, r, w.status, w.code, w.field)
		}
		if w.status == "rejected" && r["error"] == "" {
			t.Errorf("item %d: rejected without a message", i)
		}
	}
	if num(body, "accepted")+num(body, "spooled") != 4 || body["rejected"] != float64(4) || body["unavailable"] != float64(0) {
		t.Errorf("summary %v", body)
	}
	waitFor(t, "the spool to drain", 30*time.Second, in.spool.Empty)
	ids := streamIDs(t, in.stream)
	if len(ids) != 3 || ids["b-1"] != 1 || ids["b-2"] != 1 {
		t.Errorf("stream holds %v, want b-1, b-2 and one generated ID, once each", ids)
	}
}

// manyEvents is a batch of n impressions with IDs of their own.
func manyEvents(n int) string {
	items := make([]string, n)
	for i := range items {
		items[i] = fmt.Sprintf(`{"type":"impression","ad_id":"ad-1","event_id":"m-%d-%d"}`, n, i)
	}
	return "[" + strings.Join(items, ",") + "]"
}

// checkRefusedBodies posts batch bodies that are unusable as a whole.
func checkRefusedBodies(t *testing.T, in *intake) {
	tests := []struct {
		name, contentType, body string
		code                    int
	}{
		{"1001 events", "application/json", manyEvents(1001), http.StatusRequestEntityTooLarge},
		{"over 1 MiB", "application/json", `[` + strings.Repeat(" ", 1<<20) + `]`, http.StatusRequestEntityTooLarge},
		{"empty array", "application/json", `[]`, http.StatusBadRequest},
		{"an object, not an array", "application/json", `{"type":"click","ad_id":"ad-1"}`, http.StatusBadRequest},
		{"malformed", "application/json", `[{"type":`, http.StatusBadRequest},
		{"not JSON", "application/xml", `[]`, http.StatusUnsupportedMediaType},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodPost, "/ads/events", strings.NewReader(tc.body))
			req.Header.Set("Content-Type", tc.contentType)
			rec := httptest.NewRecorder()
			in.serve(t, rec, req)
			if rec.Code != tc.code || !strings.Contains(rec.Body.String(), `"error"`) {
				t.Errorf("%d %s, want %d with an error", rec.Code, rec.Body.String(), tc.code)
			}
		})
	}
}

// TestForwardedForOnlyFromTrustedProxies: X-Forwarded-For names the client only
// when the connection comes from a trusted proxy.
func TestForwardedForOnlyFromTrustedProxies(t *testing.T) {
	ns := startRestartableNATS(t)
	in := startIntake(t, ns.connect(t), 64<<20)
	if err := in.router.SetTrustedProxies([]string{"192.0.2.0/24"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		id, remote, xff, want string
	}{
		{"via-trusted", "192.0.2.7:5000", "203.0.113.9", "203.0.113.9"},
		{"via-untrusted", "198.51.100.5:5000", "203.0.113.9", "198.51.100.5"},
		{"no-header", "192.0.2.7:5000", "", "192.0.2.7"},
		{"body-wins", "192.0.2.7:5000", "203.0.113.9", "2001:db8::5"},
	}
	for _, tc := range tests {
		body := `{"event_id":"` + tc.id + `","ad_id":"ad-1"}`
		if tc.id == "body-wins" {
			body = `{"event_id":"` + tc.id + `","ad_id":"ad-1","ip":"2001:DB8::5"}`
		}
		req := httptest.NewRequest(http.MethodPost, "/ads/impression", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.RemoteAddr = tc.remote
		if tc.xff != "" {
			req.Header.Set("X-Forwarded-For", tc.xff)
		}
		rec := httptest.NewRecorder()
		in.serve(t, rec, req)
		if rec.Code != http.StatusAccepted {
			t.Fatalf("%s: %d %s", tc.id, rec.Code, rec.Body.String())
		}
	}
	// An event whose PubAck was slower than the timeout is in the spool.
	waitFor(t, "the spool to drain", 30*time.Second, in.spool.Empty)
	got := streamIPs(t, in.stream)
	for _, tc := range tests {
		if got[tc.id] != tc.want {
			t.Errorf("%s: stored ip %q, want %q", tc.id, got[tc.id], tc.want)
		}
	}
}

func num(m map[string]any, k string) float64 {
	v, _ := m[k].(float64)
	return v
}
