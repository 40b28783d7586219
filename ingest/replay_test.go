package ingest_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/ingest"
	"github.com/admetric/admetric/ingest/spool"
	"github.com/admetric/admetric/store/storetest"
)

// logRecorder is a slog.Handler keeping every record, for tests that assert
// what was logged. Safe for concurrent use.
type logRecorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }

func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.records = append(l.records, r.Clone())
	return nil
}

// at returns the records logged at level, oldest first.
func (l *logRecorder) at(level slog.Level) []slog.Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []slog.Record
	for _, r := range l.records {
		if r.Level == level {
			out = append(out, r)
		}
	}
	return out
}

// attr returns the value of the attribute key of r.
func attr(r slog.Record, key string) (v slog.Value, ok bool) {
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == key {
			v, ok = a.Value, true
			return false
		}
		return true
	})
	return v, ok
}

// runReplayer runs r until the returned stop is called; stop fails t unless
// Run then returns nil.
func runReplayer(t *testing.T, r *ingest.Replayer) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	return func() {
		t.Helper()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v when its context ended, want nil", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Run did not return when its context ended")
		}
	}
}

// TestReplayerRetries: a replay the stream refuses (there is no stream yet) is
// logged once per failure with a backoff of 1s and its jitter, and retried;
// Run returns nil when its context ends, even in the middle of a backoff; once
// the stream exists the spooled event is published with its message ID and
// the spool empties.
func TestReplayerRetries(t *testing.T) {
	srv := storetest.NATS(t)
	js, nc := storetest.JetStream(t, srv)
	sp, err := spool.Open(t.TempDir(), spool.Options{MaxBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Close() })
	if err := sp.Append(t.Context(), ingest.EncodeSpooled("ads.events.click.ad-1", "e-1", []byte(`{"event_id":"e-1"}`))); err != nil {
		t.Fatal(err)
	}
	logs := &logRecorder{}
	rep, err := ingest.NewReplayer(nc, sp, slog.New(logs), nil)
	if err != nil {
		t.Fatal(err)
	}

	stop := runReplayer(t, rep)
	waitFor(t, "a failed replay logged", 30*time.Second, func() bool { return len(logs.at(slog.LevelWarn)) > 0 })
	stop() // Run is now waiting out its backoff
	for i, r := range logs.at(slog.LevelWarn) {
		wait, ok := attr(r, "backoff")
		if !ok || wait.Kind() != slog.KindDuration {
			t.Fatalf("warning %d (%q) has no backoff duration", i, r.Message)
		}
		if _, ok := attr(r, "err"); !ok {
			t.Errorf("warning %d (%q) does not say what failed", i, r.Message)
		}
		// Jitter of ±50% around 1s for the first wait, growing from there.
		if d := wait.Duration(); i == 0 && (d < 500*time.Millisecond || d > 1500*time.Millisecond) {
			t.Errorf("first backoff %s, want 1s ± 50%%", d)
		}
	}
	if sp.Empty() {
		t.Fatal("the spool emptied with no stream to take its event")
	}

	stream := storetest.EventStream(t, js, 1)
	stop = runReplayer(t, rep)
	// The spool empties inside Replay, a moment before Run logs the replay;
	// stopping Run in that moment would end the Replay with ctx's error
	// instead. So wait for the log line, which comes after.
	waitFor(t, "the replay logged", 30*time.Second, func() bool { return len(logs.at(slog.LevelInfo)) > 0 })
	stop()
	if !sp.Empty() {
		t.Fatal("the spool is not empty after a replay logged as done")
	}
	info, err := stream.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("the stream holds %d messages after the replay, want 1", info.State.Msgs)
	}
	msg, err := stream.GetMsg(t.Context(), info.State.LastSeq)
	if err != nil {
		t.Fatal(err)
	}
	if id := msg.Header.Get(jetstream.MsgIDHeader); id != "e-1" {
		t.Errorf("replayed with message ID %q, want e-1", id)
	}
}
