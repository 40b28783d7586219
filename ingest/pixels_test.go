package ingest_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/ingest/pixel"
)

// pixelURL is the signed URL of a pixel of kind (or the click-through, path
// "/c") for sv, with the player's macros filled in.
func (in *intake) pixelURL(path, kind string, sv pixel.Serving) string {
	return path + "?" + in.signer.Query(kind, sv) + "&ph=00:00:02.500&ts=-1&cb=42"
}

func (in *intake) get(t *testing.T, url string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	in.serve(t, rec, httptest.NewRequest(http.MethodGet, url, nil))
	return rec
}

// TestPixelsSpoolWhileNATSIsDown: tracking pixels and the click-through
// fired while NATS is down answer as always (a GIF, a redirect), their events
// wait in the spool, and once NATS is back each is in the stream once under
// its serving's event ID, however often the player fired it.
func TestPixelsSpoolWhileNATSIsDown(t *testing.T) {
	ns := startRestartableNATS(t)
	in := startIntake(t, ns.connect(t), 64<<20)
	sv := pixel.Serving{AdID: "ad-1", ServingID: pixel.NewServingID(), Expires: time.Now().Add(time.Hour).Truncate(time.Second)}

	ns.stop()
	for _, kind := range []string{"impression", "start", "firstQuartile", "start", "complete", "complete"} {
		if rec := in.get(t, in.pixelURL("/t/"+kind, kind, sv)); rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "image/gif" {
			t.Fatalf("%s pixel with NATS down: %d %v", kind, rec.Code, rec.Header())
		}
	}
	for range 2 {
		if rec := in.get(t, in.pixelURL("/c", "click", sv)); rec.Code != http.StatusFound || rec.Header().Get("Location") != "https://shop.example.com/ad-1" {
			t.Fatalf("click-through with NATS down: %d %v", rec.Code, rec.Header())
		}
	}
	// The pixels answered at once; their events are spooled once the
	// client gives up on them (at once when it knows NATS is gone, else
	// after the publish timeout).
	waitFor(t, "every pixel's event spooled", 30*time.Second, func() bool { return in.detached.InFlight() == 0 })
	if in.spool.Empty() {
		t.Fatal("nothing was spooled while NATS was down")
	}

	ns.start()
	waitFor(t, "the replay", 30*time.Second, in.spool.Empty)
	ids := streamIDs(t, in.stream)
	for _, kind := range []string{"impression", "start", "firstQuartile", "complete", "click"} {
		if n := ids[pixel.EventID(sv.ServingID, kind)]; n != 1 {
			t.Errorf("%s is in the stream %d times, want once", kind, n)
		}
	}
	if len(ids) != 5 {
		t.Errorf("the stream holds %v, want the five events of the serving", ids)
	}
}

// TestPixelWithAFarOffClockIsDatedOnArrival: a [TIMESTAMP] the event's rules
// refuse (a player clock years ahead) does not lose the pixel: its event is
// published, dated when it arrived.
func TestPixelWithAFarOffClockIsDatedOnArrival(t *testing.T) {
	ns := startRestartableNATS(t)
	in := startIntake(t, ns.connect(t), 64<<20)
	sv := pixel.Serving{AdID: "ad-1", ServingID: pixel.NewServingID(), Expires: time.Now().Add(time.Hour).Truncate(time.Second)}
	u := strings.Replace(in.pixelURL("/t/start", "start", sv), "&ts=-1", "&ts=2099-01-01T00:00:00.000Z", 1)
	before := time.Now().Add(-time.Second)
	if rec := in.get(t, u); rec.Code != http.StatusOK {
		t.Fatalf("pixel: %d", rec.Code)
	}
	waitFor(t, "the event in the stream", 10*time.Second, func() bool { return streamIDs(t, in.stream)[pixel.EventID(sv.ServingID, "start")] == 1 })
	info, err := in.stream.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	msg, err := in.stream.GetMsg(context.Background(), info.State.LastSeq)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := event.Decode(msg.Data)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Timestamp.Before(before) || ev.Timestamp.After(time.Now()) {
		t.Fatalf("dated %v, want the receive time", ev.Timestamp)
	}
}
