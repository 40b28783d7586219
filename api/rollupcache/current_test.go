package rollupcache

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/rollup"
	"github.com/admetric/admetric/store/rollup/rolluptest"
	"github.com/admetric/admetric/store/storetest"
)

// unreachableSource is the rollup buckets of a real server whose LastSeq
// fails, as with NATS gone, once down is set; it counts the calls.
type unreachableSource struct {
	*store.Rollups
	down  atomic.Bool
	calls atomic.Int64
}

func (s *unreachableSource) LastSeq(ctx context.Context, u rollup.Unit) (uint64, error) {
	s.calls.Add(1)
	if s.down.Load() {
		return 0, errors.New("nats: no servers available")
	}
	return s.Rollups.LastSeq(ctx, u)
}

// TestCurrentAsOf: the cache is current as of its last answered probe: not
// before it ran, then within a probe of now, moving past an update once the
// watch applied it, and no further while the buckets cannot be asked,
// however many probes fail.
func TestCurrentAsOf(t *testing.T) {
	srv := storetest.NATS(t)
	js, _ := storetest.JetStream(t, srv)
	r, err := store.CreateOrUpdateRollups(context.Background(), js, rolluptest.Layout, 1)
	if err != nil {
		t.Fatal(err)
	}
	src := &unreachableSource{Rollups: r}
	c, err := New(src, Options{MaxBytes: 1 << 20, Idle: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.stopCaches)
	if got := c.CurrentAsOf(); !got.IsZero() {
		t.Fatalf("CurrentAsOf = %v before the cache ran, want zero", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})

	started := time.Now()
	waitCurrent(t, c, "the first probes", func(at time.Time) bool { return !at.Before(started) })

	// An update: current past it only once the watch has applied it.
	rev, err := r.Replace(context.Background(), rollup.Minute, []store.Write{{Key: "ad-a.2026112512", Value: rolluptest.Sample()}})
	if err != nil {
		t.Fatal(err)
	}
	written := time.Now()
	waitCurrent(t, c, "a probe after the update", func(at time.Time) bool { return at.After(written) })
	if through := c.through()[rollup.Minute]; through < rev[0] {
		t.Fatalf("current past the update at %v, yet the watch is through %d only, before its revision %d", c.CurrentAsOf(), through, rev[0])
	}

	// The buckets cannot be asked: CurrentAsOf stays where it was.
	src.down.Store(true)
	wentAway := time.Now()
	calls := src.calls.Load()
	poll(t, "three more probes of every bucket", func() bool {
		return src.calls.Load() >= calls+int64(3*len(rolluptest.Layout))
	})
	if got := c.CurrentAsOf(); got.After(wentAway) {
		t.Fatalf("CurrentAsOf = %v after the buckets went away at %v", got, wentAway)
	}
	src.down.Store(false)
	back := time.Now()
	waitCurrent(t, c, "the buckets back", func(at time.Time) bool { return at.After(back) })
}

func waitCurrent(t *testing.T, c *Cache, what string, cond func(time.Time) bool) {
	t.Helper()
	poll(t, what, func() bool { return cond(c.CurrentAsOf()) })
}

// poll fails t unless cond holds within 30 seconds.
func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30 s", what)
		}
	}
}
