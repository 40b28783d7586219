package ingest

import (
	"net/url"
	"testing"

	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/ingest/pixel"
)

// FuzzPixelQuery: parsePixelQuery reads every key of a tracking URL as
// url.ParseQuery and url.Values.Get do, whatever the query holds.
func FuzzPixelQuery(f *testing.F) {
	f.Add("ad=coffee-6s&sv=admetric-0f9c8e2a-4b1d-4e5f-9a6b-7c8d9e0f1a2b&exp=1800000000&sig=abc_-XYZ&ph=00:00:03.000&ts=2026-12-07T08%3A15%3A07.127Z&cb=1")
	f.Add("ad=a&ad=b&sig=&code=405&code=%ZZ&code=901")
	f.Add("%61d=x&a%64=y;z&ts=%2B01:00&ph=[ADPLAYHEAD]&&=&sv")
	f.Add("ad=a+b&exp=1%2&sig=%E2%82%AC")
	f.Fuzz(func(t *testing.T, raw string) {
		q := parsePixelQuery(raw)
		want, _ := url.ParseQuery(raw) // on error it still holds the pairs it could read
		for _, key := range pixelKeys {
			if got, w := q.get(key), want.Get(key); got != w {
				t.Fatalf("%q: %s = %q, url.ParseQuery says %q", raw, key, got, w)
			}
		}
	})
}

// TestPixelEventIDsAreTheServings: the event IDs pixels derive are the ones
// the fold counts as a serving's own.
func TestPixelEventIDsAreTheServings(t *testing.T) {
	sv := pixel.NewServingID()
	for _, typ := range event.Types {
		ev := event.Event{EventID: pixel.EventID(sv, string(typ)), ServingID: sv, Type: typ}
		if !ev.FromServing() {
			t.Errorf("%s: %q is not its serving's", typ, ev.EventID)
		}
	}
}
