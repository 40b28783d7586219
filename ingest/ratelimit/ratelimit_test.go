package ratelimit_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/admetric/admetric/ingest/ratelimit"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// TestBucket: a client spends its burst at once, then perSecond tokens a
// second; a refused request spends nothing and says how long to wait.
func TestBucket(t *testing.T) {
	l := ratelimit.New(10, 20, 100) // a token every 100 ms
	for i := range 20 {
		if ok, _ := l.Allow("a", 1, t0); !ok {
			t.Fatalf("request %d of the burst refused", i+1)
		}
	}
	ok, wait := l.Allow("a", 1, t0)
	if ok || wait != 100*time.Millisecond {
		t.Fatalf("beyond the burst: ok %v, wait %v; want refused, 100ms", ok, wait)
	}
	// The refusal spent nothing: 100 ms later one token is there.
	if ok, _ := l.Allow("a", 1, t0.Add(100*time.Millisecond)); !ok {
		t.Fatal("refused after waiting what it was told")
	}
	// Five tokens need 500 ms; a cost of 5 refused spends none of the 3 that
	// come in 300 ms.
	at := t0.Add(400 * time.Millisecond)
	if ok, wait := l.Allow("a", 5, at); ok || wait != 200*time.Millisecond {
		t.Fatalf("5 tokens with 3 in the bucket: ok %v, wait %v; want refused, 200ms", ok, wait)
	}
	if ok, _ := l.Allow("a", 3, at); !ok {
		t.Fatal("3 tokens with 3 in the bucket refused")
	}
	// Another client has its own bucket.
	if ok, _ := l.Allow("b", 20, at); !ok {
		t.Fatal("a second client shares the first one's bucket")
	}
}

// TestCostAboveBurst: a request costing more than the burst costs the
// burst, so it can pass once the bucket is full, and waits for a full one.
func TestCostAboveBurst(t *testing.T) {
	l := ratelimit.New(100, 50, 10)
	if l.Burst() != 50 {
		t.Fatalf("Burst() = %d, want 50", l.Burst())
	}
	if ok, _ := l.Allow("a", 1000, t0); !ok {
		t.Fatal("a cost above the burst refused with a full bucket")
	}
	if ok, wait := l.Allow("a", 1000, t0); ok || wait != 500*time.Millisecond {
		t.Fatalf("again at once: ok %v, wait %v; want refused, 500ms (a full bucket)", ok, wait)
	}
}

func TestRetryAfter(t *testing.T) {
	for _, tc := range []struct {
		wait time.Duration
		want int
	}{
		{time.Nanosecond, 1}, {100 * time.Millisecond, 1}, {time.Second, 1},
		{time.Second + time.Nanosecond, 2}, {2500 * time.Millisecond, 3}, {0, 1},
	} {
		if got := ratelimit.RetryAfter(tc.wait); got != tc.want {
			t.Errorf("RetryAfter(%v) = %d, want %d", tc.wait, got, tc.want)
		}
	}
}

// TestEvictionBound: however many addresses come, the set holds at most
// maxClients; clients whose buckets refilled are forgotten first, and a
// client still draining is remembered while there is room.
func TestEvictionBound(t *testing.T) {
	l := ratelimit.New(1, 2, 1000)
	l.Allow("drained", 2, t0)
	for i := range 100_000 {
		l.Allow(fmt.Sprintf("10.%d.%d.%d", i>>16, i>>8&0xff, i&0xff), 1, t0)
		if n := l.Clients(); n > 1000 {
			t.Fatalf("after %d addresses the limiter remembers %d clients, more than its 1000", i+1, n)
		}
	}
	if n := l.Clients(); n != 1000 {
		t.Errorf("remembers %d clients, want 1000", n)
	}

	// Buckets refill in 2 s: a client seen later finds the refilled ones
	// forgotten.
	l = ratelimit.New(1, 2, 1000)
	l.Allow("drained", 2, t0)
	for i := range 500 {
		l.Allow(fmt.Sprint("old-", i), 1, t0)
	}
	l.Allow("new", 1, t0.Add(3*time.Second))
	if n := l.Clients(); n != 1 {
		t.Errorf("after the buckets refilled the limiter remembers %d clients, want 1", n)
	}

	// Within the bound a drained client is remembered, and still limited.
	l = ratelimit.New(1, 2, 3)
	l.Allow("drained", 2, t0)
	l.Allow("x", 1, t0)
	if ok, _ := l.Allow("drained", 1, t0); ok {
		t.Error("a drained client remembered within the bound was allowed")
	}
}

func TestNilAllowsAll(t *testing.T) {
	l := ratelimit.New(0, 10, 10)
	if l != nil {
		t.Fatal("New(0, ...) is not nil")
	}
	for range 1000 {
		if ok, _ := l.Allow("a", 1000, t0); !ok {
			t.Fatal("a nil limiter refused")
		}
	}
	if l.Clients() != 0 {
		t.Error("a nil limiter remembers clients")
	}
}

// TestConcurrent: many goroutines on shared and distinct keys keep the
// bound (run with -race).
func TestConcurrent(t *testing.T) {
	l := ratelimit.New(1, 100, 50)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 1000 {
				l.Allow(fmt.Sprint(g%2, "-", i%(g*10+1)), 1, t0)
			}
		})
	}
	wg.Wait()
	if n := l.Clients(); n > 50 {
		t.Errorf("remembers %d clients, more than 50", n)
	}
}

func BenchmarkAllow(b *testing.B) {
	l := ratelimit.New(1000, 2000, 100_000)
	keys := make([]string, 4096)
	for i := range keys {
		keys[i] = fmt.Sprint("198.51.100.", i)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		l.Allow(keys[i%len(keys)], 1, t0)
		i++
	}
}
