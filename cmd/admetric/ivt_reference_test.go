package main

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/store"
)

// Browser and bot user agents for the loads of the tests that check the
// invalid-traffic rules: referenceBots are the bots the reference knows
// (each on the crawler list); every other agent a load sends must be a
// person's.
const (
	personUA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
)

var referenceBots = []string{
	"Googlebot/2.1 (+http://www.google.com/bot.html)",
	"Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
	"python-requests/2.31.0",
}

// referenceAd is what one ad's analytics must say, by the reference.
type referenceAd struct {
	impressions, clicks uint64
	invalid             map[event.InvalidReason]uint64
	visitors            map[string]struct{} // valid ones: ip and user agent
}

// referenceCounts reads every event of the partition streams in stream order
// and decides each as the service's default rules say (a duplicate-click
// window of 30 s, 30 events a visitor, ad and minute, the bots of
// referenceBots; the intake's reasons as the events carry them), written
// apart from the service's own Judge so that the two check each other. Loads
// that use it send no VAST servings. It also returns the reason of each
// invalid event, by event ID.
func referenceCounts(t *testing.T, js jetstream.JetStream, partitions int) (map[string]*referenceAd, map[string]event.InvalidReason) {
	t.Helper()
	const window, rate = int64(30_000), uint32(30)
	ads := map[string]*referenceAd{}
	reasons := map[string]event.InvalidReason{}
	for p := range partitions {
		type minuteCount struct {
			minute int64
			n      uint32
		}
		var watermark int64
		lastClick := map[string]int64{}
		counts := map[string]minuteCount{}
		for _, e := range readStream(t, js, store.EventStreamName(p)) {
			ts := e.Timestamp.UnixMilli()
			watermark = max(watermark, ts)
			who := e.IP + "|" + e.UserAgent
			key := e.AdID + "|" + who
			minute := int64(math.Floor(float64(ts) / 60_000))
			c, ok := counts[key]
			over := false
			switch live := ok && c.minute >= int64(math.Floor(float64(watermark)/60_000))-1; {
			case !live || minute > c.minute:
				counts[key] = minuteCount{minute, 1}
			case minute == c.minute:
				c.n++
				counts[key] = c
				over = c.n > rate
			}
			reason := e.InvalidReason
			if reason == "" && isReferenceBot(e.UserAgent) {
				reason = event.Bot
			}
			if reason == "" && e.Type == event.Click {
				last, seen := lastClick[key]
				if seen && last >= watermark-window && abs64(ts-last) < window {
					reason = event.DuplicateClick
				} else {
					lastClick[key] = ts
				}
			}
			if reason == "" && over {
				reason = event.Rate
			}
			a := ads[e.AdID]
			if a == nil {
				a = &referenceAd{invalid: map[event.InvalidReason]uint64{}, visitors: map[string]struct{}{}}
				ads[e.AdID] = a
			}
			switch {
			case reason != "":
				a.invalid[reason]++
				reasons[e.EventID] = reason
			case e.Type == event.Click:
				a.clicks++
				a.visitors[who] = struct{}{}
			case e.Type == event.Impression:
				a.impressions++
				a.visitors[who] = struct{}{}
			}
		}
	}
	return ads, reasons
}

func isReferenceBot(ua string) bool {
	for _, b := range referenceBots {
		if ua == b {
			return true
		}
	}
	return ua == ""
}

func abs64(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}

// readStream returns every event of stream, in stream order, completed as
// the rollup writers complete what other publishers leave out (type and ad
// from the subject, the time the stream stored it) and cleaned up as they
// clean it (the user agent, the address, a time ahead of the stream's).
func readStream(t *testing.T, js jetstream.JetStream, stream string) []event.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	last := s.CachedInfo().State.LastSeq
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var out []event.Event
	for seq := uint64(0); seq < last; {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			if ctx.Err() != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond) // the stream is settling
			continue
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			meta, err := msg.Metadata()
			if err != nil {
				t.Fatal(err)
			}
			seq = meta.Sequence.Stream
			e, err := event.Decode(msg.Data())
			_, typ, ad, ok := store.ParseEventSubject(msg.Subject())
			if err != nil || !ok {
				continue // a probe or poison: no event of the load
			}
			if e.Type == "" {
				e.Type = event.Type(typ)
			}
			if e.AdID == "" {
				e.AdID = ad
			}
			if stored := meta.Timestamp.UTC(); e.Timestamp.IsZero() || e.Timestamp.After(stored) {
				e.Timestamp = stored
			}
			e.UserAgent, e.IP = event.SanitizeUserAgent(e.UserAgent), event.CanonicalIP(e.IP)
			out = append(out, e)
		}
		// On a cluster whose nodes just restarted, the stream's leader may
		// still be settling: an empty pull is tried again until ctx ends.
		if n == 0 && ctx.Err() != nil {
			t.Fatalf("%s: read to %d of %d in a minute", stream, seq, last)
		}
	}
	return out
}

// checkReference compares the 30-day analytics of every ad with want and
// describes the first difference, or returns "". Unique visitors are
// exact below 1,000 and within 2% above.
func checkReference(t *testing.T, c client, want map[string]*referenceAd) string {
	t.Helper()
	status, body := c.do(http.MethodGet, "/ads/analytics?timeframe=30d", "", "", nil)
	if status != http.StatusOK {
		return fmt.Sprintf("status %d", status)
	}
	got := map[string]map[string]any{}
	for _, a := range body["ads"].([]any) {
		m := a.(map[string]any)
		got[m["ad_id"].(string)] = m
	}
	for ad, w := range want {
		g := got[ad]
		if g == nil {
			return "no analytics for " + ad
		}
		if num(g, "clicks") != float64(w.clicks) || num(g, "impressions") != float64(w.impressions) {
			return fmt.Sprintf("%s: %v clicks %v impressions, want %d and %d", ad, g["clicks"], g["impressions"], w.clicks, w.impressions)
		}
		reasons, _ := g["invalid_by_reason"].(map[string]any)
		var invalid uint64
		for _, r := range event.InvalidReasons {
			invalid += w.invalid[r]
			if num(reasons, string(r)) != float64(w.invalid[r]) {
				return fmt.Sprintf("%s: %v invalid %s, want %d", ad, reasons[string(r)], r, w.invalid[r])
			}
		}
		if num(g, "invalid") != float64(invalid) {
			return fmt.Sprintf("%s: %v invalid, want %d", ad, g["invalid"], invalid)
		}
		uv, trueUV := num(g, "unique_visitors"), float64(len(w.visitors))
		if trueUV < 1000 && uv != trueUV || math.Abs(uv-trueUV) > 0.02*trueUV {
			return fmt.Sprintf("%s: %v unique visitors, want %v", ad, uv, trueUV)
		}
	}
	return ""
}

// waitReference polls checkReference until it finds no difference, and
// fails the test with the last one after a deadline. It logs the invalid
// events the reference found, by reason, so that a run shows what it
// exercised.
func waitReference(t *testing.T, c client, want map[string]*referenceAd) {
	t.Helper()
	total := map[event.InvalidReason]uint64{}
	for _, a := range want {
		for r, n := range a.invalid {
			total[r] += n
		}
	}
	t.Logf("the reference finds invalid: %v", total)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		diff := checkReference(t, c, want)
		if diff == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("analytics differ from the reference: %s", diff)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
