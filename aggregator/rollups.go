package aggregator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/store"
)

// RollupWriterOptions configure a RollupWriter. Zero values take the defaults.
type RollupWriterOptions struct {
	// Partition is the partition this writer owns (its checkpoint key).
	Partition int
	// FilterSubject selects the partition's events; default all events.
	FilterSubject string
	// BatchSize bounds the events folded per commit; default 1000.
	BatchSize int
	// Linger is how long a batch waits for more events once it has one; default 20ms.
	Linger time.Duration
	// VisitorSalt keys the visitor hash.
	VisitorSalt []byte
	// Now returns the current time; default time.Now. Tests move it.
	Now func() time.Time
}

// RollupWriter folds a partition of the event stream into the rollup buckets.
//
// It reads the partition in stream order through an ordered consumer that starts
// after the lowest checkpoint of the three buckets. For each batch it loads every
// touched key (from its own cache: it is the only writer of these keys), folds the
// batch, then commits each bucket's touched keys together with that bucket's
// checkpoint, every key guarded by its revision: one atomic batch per bucket on
// servers that have them, key by key otherwise. Every rollup value also records
// the highest sequence folded into it, so a batch folded again after a crash or a
// failed commit skips whatever a key already holds.
// Run it once per partition; it is not safe for concurrent use.
type RollupWriter struct {
	js      jetstream.JetStream
	rollups *store.Rollups
	logger  *slog.Logger
	opts    RollupWriterOptions
	metrics *Metrics

	cache       map[Key]*cachedRollup
	checkpoints [3]cachedCheckpoint
}

type cachedRollup struct {
	v   *store.Rollup
	rev uint64
}

type cachedCheckpoint struct {
	seq, rev uint64
}

// maxCachedRollups bounds the writer's cache; past it the cache starts over.
const maxCachedRollups = 50_000

// NewRollupWriter returns a writer; Run starts it.
func NewRollupWriter(js jetstream.JetStream, rollups *store.Rollups, logger *slog.Logger, metrics *Metrics, opts RollupWriterOptions) *RollupWriter {
	if opts.FilterSubject == "" {
		opts.FilterSubject = event.SubjectWildcard
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = 1000
	}
	if opts.Linger <= 0 {
		opts.Linger = 20 * time.Millisecond
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &RollupWriter{
		js: js, rollups: rollups, opts: opts, metrics: metrics,
		logger: logger.With("component", "rollup-writer", "partition", opts.Partition),
		cache:  make(map[Key]*cachedRollup),
	}
}

// Run folds events until ctx ends; the batch in hand is committed before it
// returns. It returns nil on cancellation, an error only if it cannot start.
func (w *RollupWriter) Run(ctx context.Context) error {
	start, err := w.loadCheckpoints(ctx)
	if err != nil {
		return err
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{w.opts.FilterSubject}}
	if start > 0 {
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = start + 1
	}
	cons, err := w.js.OrderedConsumer(ctx, store.StreamName, cfg)
	if err != nil {
		return fmt.Errorf("aggregator: rollup consumer: %w", err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(2 * w.opts.BatchSize))
	if err != nil {
		return fmt.Errorf("aggregator: rollup consumer: %w", err)
	}
	defer it.Stop()
	mode := "atomic batches"
	if !w.rollups.Atomic() {
		mode = "per-key writes (server without atomic batches)"
	}
	w.logger.Info("rollup writer started", "from_seq", start+1, "commit", mode)

	batch := make([]jetstream.Msg, 0, w.opts.BatchSize)
	recs := make([]Record, 0, w.opts.BatchSize)
	for {
		batch, err = nextBatch(ctx, it, batch[:0], w.opts.BatchSize, w.opts.Linger)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("aggregator: rollup consumer: %w", err)
		}
		recs = recs[:0]
		var last uint64
		for _, msg := range batch {
			rec, err := decodeMsg(msg, w.opts.VisitorSalt)
			if meta, merr := msg.Metadata(); merr == nil {
				last = meta.Sequence.Stream
			}
			if err != nil {
				w.metrics.poison.WithLabelValues("rollups").Inc()
				w.logger.Warn("skipping poison message", "err", err)
				continue
			}
			recs = append(recs, rec)
		}
		// The batch is committed even when ctx ends meanwhile: a commit cut short
		// is safe, but finishing it spares the next start a replay.
		w.commitRetrying(context.WithoutCancel(ctx), ctx.Done(), recs, last)
	}
}

// nextBatch waits for one message (until ctx ends), then gathers more until it
// holds max or none arrives within linger.
func nextBatch(ctx context.Context, it jetstream.MessagesContext, buf []jetstream.Msg, maxMsgs int, linger time.Duration) ([]jetstream.Msg, error) {
	msg, err := it.Next(jetstream.NextContext(ctx))
	if err != nil {
		return buf, err
	}
	buf = append(buf, msg)
	for len(buf) < maxMsgs {
		msg, err := it.Next(jetstream.NextMaxWait(linger))
		if errors.Is(err, nats.ErrTimeout) {
			break
		}
		if err != nil {
			return buf, err
		}
		buf = append(buf, msg)
	}
	return buf, nil
}

// commitRetrying commits until it succeeds or stop is closed, backing off
// between tries; each retry reloads from KV, and the MaxSeq of each rollup makes
// the refold skip whatever an earlier try already saved.
func (w *RollupWriter) commitRetrying(ctx context.Context, stop <-chan struct{}, recs []Record, lastSeq uint64) {
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := w.commit(ctx, recs, lastSeq)
		if err == nil {
			return
		}
		w.cache = make(map[Key]*cachedRollup)
		w.checkpoints = [3]cachedCheckpoint{}
		w.metrics.commitErrors.Inc()
		w.logger.Warn("rollup commit failed; retrying", "err", err, "attempt", attempt, "backoff", backoff)
		select {
		case <-stop:
			w.logger.Warn("rollup commit abandoned at shutdown; the next start replays it", "events", len(recs))
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
		if _, err := w.loadCheckpoints(ctx); err != nil {
			continue
		}
	}
}

func (w *RollupWriter) commit(ctx context.Context, recs []Record, lastSeq uint64) error {
	began := time.Now()
	now := w.opts.Now()
	layout := w.rollups.Layout()
	keys := Touched(layout, recs, now)
	values := make(map[Key]*store.Rollup, len(keys))
	for _, k := range keys {
		c, ok := w.cache[k]
		if !ok {
			v, rev, err := w.rollups.Load(ctx, k.Unit, k.Key)
			if err != nil {
				return err
			}
			c = &cachedRollup{v: v, rev: rev}
			w.cache[k] = c
		}
		values[k] = c.v
	}
	st := Fold(layout, values, recs, now)
	// One commit per bucket: an atomic batch spans one stream, so each bucket
	// carries its own checkpoint.
	var writes [3][]store.Write
	var order [3][]Key
	for _, k := range keys {
		c := w.cache[k]
		writes[k.Unit] = append(writes[k.Unit], store.Write{Key: k.Key, Value: c.v, Rev: c.rev})
		order[k.Unit] = append(order[k.Unit], k)
	}
	for _, res := range layout {
		cp := &w.checkpoints[res.Unit]
		if lastSeq <= cp.seq && len(writes[res.Unit]) == 0 {
			continue
		}
		revs, cpRev, err := w.rollups.Commit(ctx, res.Unit, w.opts.Partition, writes[res.Unit], max(lastSeq, cp.seq), cp.rev)
		if err != nil {
			return err
		}
		for i, k := range order[res.Unit] {
			w.cache[k].rev = revs[i]
		}
		cp.seq, cp.rev = max(lastSeq, cp.seq), cpRev
	}
	if len(w.cache) > maxCachedRollups {
		w.cache = make(map[Key]*cachedRollup)
	}
	w.metrics.folded.Add(float64(len(recs)))
	w.metrics.duplicates.Add(float64(st.Duplicates))
	w.metrics.tooOld.Add(float64(st.TooOld))
	w.metrics.commitSeconds.Observe(time.Since(began).Seconds())
	if st.TooOld > 0 {
		w.logger.Info("events older than every rollup retention were archived only", "count", st.TooOld)
	}
	return nil
}

// loadCheckpoints reads each bucket's checkpoint and returns the lowest: the
// writer resumes after it, and each rollup's MaxSeq skips what a bucket further
// ahead already holds.
func (w *RollupWriter) loadCheckpoints(ctx context.Context) (uint64, error) {
	var low uint64
	for i, res := range w.rollups.Layout() {
		seq, rev, err := w.rollups.Checkpoint(ctx, res.Unit, w.opts.Partition)
		if err != nil {
			return 0, err
		}
		w.checkpoints[res.Unit] = cachedCheckpoint{seq: seq, rev: rev}
		if i == 0 || seq < low {
			low = seq
		}
	}
	return low, nil
}
