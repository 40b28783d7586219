package rollupcache

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/rollup"
	"github.com/admetric/admetric/store/rollup/rolluptest"
	"github.com/admetric/admetric/store/storetest"
)

// flakySource is the rollup buckets of a real server, except that a watch
// of the minute bucket fails to start while failWatch counts down to zero,
// and every minute watch that starts is handed to the test on watches.
// (LastSeq works: the cache also asks it how current it is.)
type flakySource struct {
	*store.Rollups
	failWatch atomic.Int32
	watches   chan jetstream.KeyWatcher
}

var errFlaky = errors.New("flaky source")

func (s *flakySource) Watch(ctx context.Context, u rollup.Unit, from uint64) (jetstream.KeyWatcher, error) {
	if u == rollup.Minute && s.failWatch.Add(-1) >= 0 {
		return nil, errFlaky
	}
	w, err := s.Rollups.Watch(ctx, u, from)
	if err == nil && u == rollup.Minute {
		s.watches <- w
	}
	return w, err
}

// warnings records the warnings logged through it.
type warnings struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (h *warnings) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (h *warnings) WithAttrs([]slog.Attr) slog.Handler           { return h }
func (h *warnings) WithGroup(string) slog.Handler                { return h }
func (h *warnings) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, r.Clone())
	return nil
}

// retries returns the pause and error of every "retrying" warning of bucket.
func (h *warnings) retries(bucket string) (pauses []time.Duration, errs []error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.recs {
		var b string
		var pause time.Duration
		var err error
		r.Attrs(func(a slog.Attr) bool {
			switch a.Key {
			case "bucket":
				b = a.Value.String()
			case "pause":
				pause = a.Value.Duration()
			case "err":
				err, _ = a.Value.Any().(error)
			}
			return true
		})
		if b == bucket && r.Message == "rollup bucket watch ended; retrying" {
			pauses, errs = append(pauses, pause), append(errs, err)
		}
	}
	return pauses, errs
}

// TestWatchRetries: a watch that cannot be set up is tried again after a
// pause that grows, with jitter; one that was established and ends is
// tried again after the shortest pause; a rewind restarts it at once,
// without a pause; each failure is logged once with its pause; Run returns
// nil when ctx ends. It reads the pauses the watch logged, not clocks.
func TestWatchRetries(t *testing.T) {
	c, src, logged := newFlakyCache(t, 2)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	bucket := rolluptest.Layout[rollup.Minute].Bucket

	src.nextWatch(t, "after two failures")
	pauses, errs := logged.retries(bucket)
	if len(pauses) != 2 || !errors.Is(errs[0], errFlaky) || !errors.Is(errs[1], errFlaky) {
		t.Fatalf("retries logged before the watch: pauses %v, errors %v; want the two failures", pauses, errs)
	}
	checkPause(t, "first", pauses[0], watchMinPause)
	checkPause(t, "second", pauses[1], 2*watchMinPause)

	// A rewind (as Warm makes) restarts the watch at once: no failure, no pause.
	revs, err := src.Replace(context.Background(), rollup.Minute, []store.Write{{Key: "ad-a.2026112512", Value: rollup.New()}})
	if err != nil {
		t.Fatal(err)
	}
	waitThrough(t, c, revs[0])
	c.rewind(rollup.Minute, 1, time.Now())
	w := src.nextWatch(t, "after the rewind")
	waitThrough(t, c, revs[0])
	if pauses, _ := logged.retries(bucket); len(pauses) != 2 {
		t.Fatalf("pauses %v after the rewind, want none more", pauses)
	}

	// The established watch ends: the next pause is the shortest again (a
	// third in a row would be about 4*watchMinPause).
	if err := w.Stop(); err != nil {
		t.Fatal(err)
	}
	src.nextWatch(t, "after the established one ended")
	pauses, errs = logged.retries(bucket)
	if len(pauses) != 3 || !errors.Is(errs[2], errWatchClosed) {
		t.Fatalf("pauses %v, errors %v; want a third retry, of the closed watch", pauses, errs)
	}
	checkPause(t, "after an established watch", pauses[2], watchMinPause)

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if pauses, _ := logged.retries(bucket); len(pauses) != 3 {
		t.Errorf("pauses %v once ctx ended, want no retry logged for it", pauses)
	}
}

// newFlakyCache returns a cache over a flakySource on a real server whose
// minute watch fails to start the first failures times, logging its warnings to the
// warnings returned.
func newFlakyCache(t *testing.T, failures int32) (*Cache, *flakySource, *warnings) {
	t.Helper()
	srv := storetest.NATS(t)
	js, _ := storetest.JetStream(t, srv)
	r, err := store.CreateOrUpdateRollups(context.Background(), js, rolluptest.Layout, 1)
	if err != nil {
		t.Fatal(err)
	}
	src := &flakySource{Rollups: r, watches: make(chan jetstream.KeyWatcher, 8)}
	src.failWatch.Store(failures)
	logged := &warnings{}
	c, err := New(src, Options{MaxBytes: 1 << 20, Idle: time.Hour, Logger: slog.New(logged)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.stopCaches)
	return c, src, logged
}

// nextWatch returns the next minute watch that starts, failing t if none
// does within 10 seconds.
func (s *flakySource) nextWatch(t *testing.T, what string) jetstream.KeyWatcher {
	t.Helper()
	select {
	case w := <-s.watches:
		return w
	case <-time.After(10 * time.Second):
		t.Fatalf("no minute watch %s", what)
		return nil
	}
}

// checkPause fails t unless pause is interval with the default jitter of
// half of it either way.
func checkPause(t *testing.T, which string, pause, interval time.Duration) {
	t.Helper()
	if pause < interval/2 || pause > interval*3/2+time.Millisecond {
		t.Errorf("%s pause %s, want %s ± half", which, pause, interval)
	}
}

// waitThrough waits until c's minute watch has applied every update up to
// sequence seq.
func waitThrough(t *testing.T, c *Cache, seq uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for c.through()[rollup.Minute] < seq {
		if time.Now().After(deadline) {
			t.Fatalf("the minute watch did not reach sequence %d", seq)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
