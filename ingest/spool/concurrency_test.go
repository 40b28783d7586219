package spool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The tests in this file force the interleavings they are about through hooks
// and wait on the spool's state; none of them relies on how long an fsync or a
// goroutine takes.

// waitUntil polls cond until it holds. The deadline only bounds a broken test;
// it orders nothing.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	const within = 30 * time.Second
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(time.Millisecond)
	}
}

// closed reports whether ch is closed, for waitUntil.
func closed(ch <-chan struct{}) func() bool {
	return func() bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
}

// fsyncGate holds the spool's writer inside its first fsync of a segment file
// until open is called, so that a test can queue appends (or a Close) behind a
// commit in progress. Directory fsyncs pass through.
type fsyncGate struct {
	segmentSyncs atomic.Int64  // fsyncs of segment files begun
	held         chan struct{} // closed once the writer waits in the gate
	release      chan struct{}
	once         sync.Once
}

// open lets the held fsync go on; calling it again does nothing.
func (g *fsyncGate) open() { g.once.Do(func() { close(g.release) }) }

// gateFsync installs a gate on s, which must not have been appended to yet.
func gateFsync(t *testing.T, s *Spool) *fsyncGate {
	g := &fsyncGate{held: make(chan struct{}), release: make(chan struct{})}
	t.Cleanup(g.open) // never leave the writer stuck, whatever the test did
	s.fileMu.Lock()
	s.syncFile = func(f *os.File) error {
		if strings.HasSuffix(f.Name(), segSuffix) && g.segmentSyncs.Add(1) == 1 {
			close(g.held)
			<-g.release
		}
		return f.Sync()
	}
	s.fileMu.Unlock()
	return g
}

// pending returns the bytes of records accepted by Append but not yet written:
// those of the batch being committed and of the batch filling behind it.
func pending(s *Spool) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pendingBytes
}

// queued returns the records in the batch filling behind the one being
// committed.
func queued(s *Spool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open == nil {
		return 0
	}
	return s.open.records
}

// payloadIndex is the i of payload(i), or -1 (failing t) for another payload.
// Safe to call from any goroutine.
func payloadIndex(t *testing.T, p []byte) int {
	t.Helper()
	var i int
	if _, err := fmt.Sscanf(string(p), `{"event_id":"e-%06d"`, &i); err != nil {
		t.Errorf("unexpected payload %q", p)
		return -1
	}
	return i
}

// TestGroupCommit proves group commit: appends that arrive while a batch is
// being fsync'd share the next write and fsync. The first commit is held in
// its fsync until every other appender has queued its record behind it, so
// the proof holds on a filesystem where fsync is free as on a slow disk.
func TestGroupCommit(t *testing.T) {
	const appenders = 64
	dir := t.TempDir()
	s := openSpool(t, dir, Options{MaxBytes: testMaxBytes})
	gate := gateFsync(t, s)

	var wg sync.WaitGroup
	appendOne := func(i int) {
		if err := s.Append(t.Context(), payload(i)); err != nil {
			t.Errorf("Append %d: %v", i, err)
		}
	}
	wg.Go(func() { appendOne(0) })
	waitUntil(t, "the first commit in its fsync", closed(gate.held))
	for i := 1; i < appenders; i++ {
		wg.Go(func() { appendOne(i) })
	}
	waitUntil(t, "every other appender queued behind the held fsync", func() bool { return queued(s) == appenders-1 })
	gate.open()
	wg.Wait()

	if n := gate.segmentSyncs.Load(); n != 2 {
		t.Errorf("%d segment fsyncs for one record and %d queued behind it, want 2", n, appenders-1)
	}
	got := replayAll(t, s)
	assertDrained(t, s, dir)
	seen := make(map[int]bool, appenders)
	for _, p := range got {
		seen[payloadIndex(t, p)] = true
	}
	if len(got) != appenders || len(seen) != appenders {
		t.Errorf("replayed %d records, %d distinct, want %d", len(got), len(seen), appenders)
	}
}

// TestConcurrentAppendOrder: with 64 appenders on the real filesystem, every
// record is replayed exactly once, and each appender's records in the order it
// appended them, however the commits interleave.
func TestConcurrentAppendOrder(t *testing.T) {
	const (
		appenders = 64
		records   = 2000
	)
	dir := t.TempDir()
	reg := prometheus.NewRegistry()
	s := openSpool(t, dir, Options{MaxBytes: testMaxBytes, SegmentBytes: 64 << 10, Metrics: NewMetrics(reg)})
	var wg sync.WaitGroup
	for g := range appenders {
		wg.Go(func() {
			for i := g; i < records; i += appenders {
				if err := s.Append(t.Context(), payload(i)); err != nil {
					t.Errorf("Append %d: %v", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	fsyncs := metricValue(t, reg, "admetric_spool_fsync_seconds")
	t.Logf("%d appenders, %d records: %v fsyncs of segments and directory (%.3f per record)",
		appenders, records, fsyncs, fsyncs/records)

	got := replayAll(t, s)
	assertDrained(t, s, dir)
	seen := make(map[int]bool, records)
	last := make([]int, appenders) // each appender's records stay in its order
	for g := range last {
		last[g] = -1
	}
	for _, p := range got {
		i := payloadIndex(t, p)
		if seen[i] {
			t.Errorf("record %d replayed twice", i)
		}
		seen[i] = true
		if g := i % appenders; i < last[g] {
			t.Errorf("record %d replayed after %d from the same appender", i, last[g])
		} else {
			last[g] = i
		}
	}
	if len(seen) != records {
		t.Errorf("replayed %d distinct records, want %d", len(seen), records)
	}
}

// heldReplay is the publish func of a replay loop whose first publish call
// waits until the test resumes it, so that appends happen while that Replay
// is in progress. It counts how often each record was published.
type heldReplay struct {
	t        *testing.T
	late     int           // records from late on were appended while the Replay was held
	held     chan struct{} // closed when the first publish call waits
	resume   chan struct{}
	call     int // the replay loop's current Replay call; used by its goroutine only
	heldCall int // the Replay call that was held, -1 before

	mu         sync.Mutex
	got        map[int]int // publishes per record
	lateInHeld int         // late records the held Replay published
}

func newHeldReplay(t *testing.T, late int) *heldReplay {
	return &heldReplay{t: t, late: late, held: make(chan struct{}), resume: make(chan struct{}), heldCall: -1, got: map[int]int{}}
}

func (h *heldReplay) publish(_ context.Context, ps [][]byte) error {
	if h.heldCall < 0 {
		h.heldCall = h.call
		close(h.held)
		<-h.resume
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, p := range ps {
		i := payloadIndex(h.t, p)
		h.got[i]++
		if h.call == h.heldCall && i >= h.late {
			h.lateInHeld++
		}
	}
	return nil
}

// loop calls Replay until stop is closed, then sends its outcome.
func (h *heldReplay) loop(s *Spool, stop <-chan struct{}) <-chan error {
	out := make(chan error, 1)
	go func() {
		for ; ; h.call++ {
			if err := s.Replay(h.t.Context(), h.publish); err != nil {
				out <- err
				return
			}
			select {
			case <-stop:
				out <- nil
				return
			default:
			}
		}
	}()
	return out
}

// appendSplit appends records 0..records-1 from appenders goroutines, each
// appender waiting for between before its first record from late on.
func appendSplit(t *testing.T, s *Spool, appenders, records, late int, between <-chan struct{}) {
	var wg sync.WaitGroup
	for g := range appenders {
		wg.Go(func() {
			for i := g; i < records; i += appenders {
				if i >= late && i-appenders < late {
					<-between
				}
				if err := s.Append(t.Context(), payload(i)); err != nil {
					t.Errorf("Append %d: %v", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestReplayConcurrentWithAppend: Replays run in a loop while 16 appenders
// append. One Replay is held inside its first publish until the appenders have
// appended their second half, so appends (and the rotations they cause) are
// certain to happen during a Replay; that Replay must then drain the segments
// sealed meanwhile, and every record is published exactly once.
func TestReplayConcurrentWithAppend(t *testing.T) {
	const (
		appenders = 16
		records   = 3000
	)
	dir := t.TempDir()
	s := openSpool(t, dir, Options{MaxBytes: testMaxBytes, SegmentBytes: 4 << 10})
	h := newHeldReplay(t, records/2)
	stop := make(chan struct{})
	replayed := h.loop(s, stop)
	appendSplit(t, s, appenders, records, records/2, h.held)
	close(h.resume)
	close(stop)
	if err := <-replayed; err != nil {
		t.Fatalf("Replay: %v", err)
	}
	if err := s.Replay(t.Context(), h.publish); err != nil {
		t.Fatalf("final Replay: %v", err)
	}
	assertDrained(t, s, dir)
	if h.lateInHeld == 0 {
		t.Error("the held Replay drained none of the segments sealed while it was held")
	}
	for i := range records {
		if n := h.got[i]; n != 1 {
			t.Errorf("record %d published %d times, want 1", i, n)
		}
	}
}

// appendUntilClosed appends from appenders goroutines until the spool is
// closed, and returns a func that waits for them and returns the records
// whose Append succeeded.
func appendUntilClosed(t *testing.T, s *Spool, appenders int) (wait func() map[int]bool) {
	var (
		mu       sync.Mutex
		accepted = map[int]bool{}
		wg       sync.WaitGroup
	)
	for g := range appenders {
		wg.Go(func() {
			for i := g; ; i += appenders {
				err := s.Append(t.Context(), payload(i))
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				mu.Lock()
				accepted[i] = true
				mu.Unlock()
			}
		})
	}
	return func() map[int]bool {
		wg.Wait()
		return accepted
	}
}

// TestCloseRacingAppends checks the core promise: every Append that returned
// nil, even one racing Close, is on disk for the next process. Close is called
// while one batch is held in its fsync and every appender has a record in
// flight, so appends in both the committing and the filling batch race it.
func TestCloseRacingAppends(t *testing.T) {
	const appenders = 32
	dir := t.TempDir()
	s, err := Open(dir, Options{MaxBytes: testMaxBytes})
	if err != nil {
		t.Fatal(err)
	}
	gate := gateFsync(t, s)
	wait := appendUntilClosed(t, s, appenders)
	waitUntil(t, "a commit held in its fsync", closed(gate.held))
	inFlight := int64(appenders * (headerSize + len(payload(0))))
	waitUntil(t, "a record of every appender in flight", func() bool { return pending(s) == inFlight })
	closeErr := make(chan error, 1)
	go func() { closeErr <- s.Close() }()
	waitUntil(t, "Close to begin", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.closed
	})
	gate.open()
	if err := <-closeErr; err != nil {
		t.Fatalf("Close: %v", err)
	}
	accepted := wait()
	if len(accepted) != appenders {
		t.Errorf("%d Appends succeeded, want the %d in flight when Close began", len(accepted), appenders)
	}

	got := replayAll(t, openSpool(t, dir, Options{MaxBytes: testMaxBytes}))
	seen := map[int]bool{}
	for _, p := range got {
		seen[payloadIndex(t, p)] = true
	}
	for i := range accepted {
		if !seen[i] {
			t.Errorf("accepted record %d lost", i)
		}
	}
	if len(got) != len(accepted) {
		t.Errorf("%d records on disk, want the %d accepted", len(got), len(accepted))
	}
}
