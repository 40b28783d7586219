package aggregator

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/admetric/admetric/ingest/event"
)

func TestDecisionsRoundTrip(t *testing.T) {
	t.Parallel()
	ds := []Decision{{"e 1", event.Bot}, {"sv.click", event.ClickWithoutImpression}, {`q"x`, event.Rate}}
	got, err := DecodeDecisions(EncodeDecisions(ds))
	if err != nil || !reflect.DeepEqual(got, ds) {
		t.Fatalf("round trip: %v (%v), want %v", got, err, ds)
	}
	for _, bad := range []string{``, `{}`, `[["e"]]`, `[["", "bot"]]`, `[["e", "human"]]`, `[["e", "bot", "x"]]`} {
		if _, err := DecodeDecisions([]byte(bad)); !errors.Is(err, ErrBadDecisions) {
			t.Errorf("%s: %v, want ErrBadDecisions", bad, err)
		}
	}
}

func TestDecisionDelay(t *testing.T) {
	t.Parallel()
	for n, want := range map[uint64]time.Duration{0: 2 * time.Second, 1: 2 * time.Second, 2: 4 * time.Second, 5: 32 * time.Second, 6: time.Minute, 1000: time.Minute} {
		if got := decisionDelay(n); got != want {
			t.Errorf("decisionDelay(%d) = %s, want %s", n, got, want)
		}
	}
}

// FuzzDecodeDecisions: whatever a decision message holds, decoding does
// not panic, and what decodes encodes back to the same decisions.
func FuzzDecodeDecisions(f *testing.F) {
	f.Add(EncodeDecisions([]Decision{{"e1", event.Bot}, {"e2", event.DuplicateClick}}))
	f.Add([]byte(`[["a","rate"]]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ds, err := DecodeDecisions(data)
		if err != nil {
			return
		}
		again, err := DecodeDecisions(EncodeDecisions(ds))
		if err != nil || !reflect.DeepEqual(again, ds) {
			t.Fatalf("%q: decoded %v, re-encoded and decoded %v (%v)", data, ds, again, err)
		}
	})
}
