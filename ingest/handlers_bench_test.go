package ingest_test

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/admetric/admetric/store/storetest"
)

// BenchmarkClickIntake is one POST /ads/click through the handlers, its
// publish to a real embedded JetStream and the wait for the PubAck: the
// intake's own CPU and allocations per event, without a network.
//
//	go test -run '^$' -bench ClickIntake -benchmem ./ingest/
func BenchmarkClickIntake(b *testing.B) {
	_, nc := storetest.JetStream(b, storetest.NATS(b))
	in := newIntake(b, nc, knownAds{"ad-1": true})
	rec := httptest.NewRecorder()
	var body bytes.Buffer
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		body.Reset()
		body.WriteString(`{"event_id":"bench-`)
		body.WriteString(strconv.Itoa(i))
		body.WriteString(`","ad_id":"ad-1","ip":"10.1.2.3","playback_time":2.5}`)
		req := httptest.NewRequest(http.MethodPost, "/ads/click", &body)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36")
		rec.Body.Reset()
		in.router.ServeHTTP(rec, req)
		if rec.Code != http.StatusAccepted {
			b.Fatalf("click: %d %s", rec.Code, rec.Body.String())
		}
	}
}
