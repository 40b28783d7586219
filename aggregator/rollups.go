package aggregator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/rollup"
)

// RollupWriterOptions configure a RollupWriter. Zero values take the defaults.
type RollupWriterOptions struct {
	// Partition is the partition this writer folds: its stream, its durable
	// consumer and its checkpoint key.
	Partition int
	// BatchSize bounds the events folded per commit; default 10,000.
	BatchSize int
	// MaxWait is how long one fetch waits for events; default 50ms.
	MaxWait time.Duration
	// Linger is how long a batch keeps gathering events after its first one,
	// unless it fills up first or the writer has caught up with its stream:
	// it bounds the lag while events keep coming. Default 200ms.
	Linger time.Duration
	// CaughtUpWait is how long a batch still gathers once the writer holds
	// everything its stream had (the last event fetched had nothing pending
	// behind it); default 100ms. Every commit rewrites each key it touches,
	// so committing at once spends most of the writer's work on rewrites:
	// with every bucket committed at every batch, 100ms cut the service's
	// CPU per event by a sixth at 3,000 events/s over 200 ads, and the lag's
	// p99 at 2,560 events/s from 268 to 163 ms, as the writes left the
	// machine more room (200ms made it 558 ms). Negative commits at once.
	CaughtUpWait time.Duration
	// CoarseEvery is how often, while events keep coming, the hour and day
	// buckets are committed; default 1s. The minute bucket is committed
	// with every batch, and readers do not read an hour or day slot until
	// it has been over for rollup.CoarseDelay, so what they read is as
	// fresh as the minute bucket; the keys of the coarser buckets, whose
	// visitor sets are the largest, are rewritten less often. Events are
	// acknowledged once every bucket holds them. Negative commits every
	// bucket with every batch.
	CoarseEvery time.Duration
	// CoarseIdle is how long after the minute bucket alone took a batch the
	// writer, given nothing new, commits the hour and day buckets without
	// waiting for CoarseEvery: once the stream is quiet, waiting saves no
	// rewrite and only holds the acknowledgement back (a drain's last batch
	// waited up to a second for it). Default 100ms; negative waits for
	// CoarseEvery.
	CoarseIdle time.Duration
	// AckWait is how long the server waits for an ack before it redelivers: how
	// soon the events a dead writer held reach the next one. It must exceed
	// CoarseEvery plus Linger plus the longest commit (commits of 10,000 events took 0.7s on
	// average, 2 cores shared with the server). Default 10s.
	AckWait time.Duration
	// PinnedTTL is how long a writer that stops fetching keeps its partition
	// before another takes it over. A writer does not fetch while it commits,
	// so it should exceed the longest commit; a shorter one only moves the
	// partition needlessly. Default 5s.
	PinnedTTL time.Duration
	// Members, when set, lets the writer hand its partition to another process
	// when this one holds more than its share of Partitions.
	Members *Members
	// Partitions is how many partitions there are: an event whose ad hashes
	// to another one is poison.
	Partitions int
	// VisitorSalt keys the visitor hash.
	VisitorSalt []byte
	// SettleAtVisitors is how many visitor hashes the sets of a key's ended
	// slots gather before a commit moves them to the key's settled key (see
	// rollup.SettledKey); default 128. Negative keeps every set in its
	// rollup, rewritten with it at every commit (as before settled keys; for
	// measuring them).
	SettleAtVisitors int
	// Rules, when set, are the invalid-traffic rules the writer applies in
	// stream order (see Judge); their state is committed to the day bucket
	// with its checkpoint. Nil folds every event as the intake marked it.
	Rules *Rules
}

// RollupConsumerName is the durable consumer of partition p's rollup writers.
func RollupConsumerName(p int) string { return "rollups-p" + strconv.Itoa(p) }

// rollupGroup is the priority group of the rollup consumers: the server pins
// each partition to one writer, and moves it when that writer goes quiet.
const rollupGroup = "rollups"

// RollupWriter folds one partition of the event stream into the rollup buckets.
//
// Every process runs a writer for every partition; the partition's durable
// consumer pins it to one of them (the pinned-client priority policy), and
// moves it to another when that one stops fetching. Before folding, a writer
// makes sure it holds every event of the partition that is delivered and not
// yet acknowledged (the consumer's NumAckPending, after dropping what is at or
// below the ack floor: another writer committed that): events a dead writer
// held come back to it after AckWait, and folding waits for them, so the
// partition is folded in stream order even across a takeover. It asks the
// server (consumer info) only when the pin its events came under changed, or
// the delivery sequence skipped a number: a delivery that never reached it
// (a fetch that gave up before the server's answer, a dropped connection) is
// pending on the server, and acknowledging past it (AckAll) would lose it.
//
// For each batch it loads every touched key (from its own cache: it is the only
// writer of these keys), folds the batch, then commits each bucket's touched
// keys together with that bucket's checkpoint, every key guarded by its
// revision: one atomic batch per bucket on servers that have them, key by key
// otherwise. Then it acknowledges the batch with one ack. Events at or below a
// bucket's checkpoint are already in it; every rollup value also records the
// highest sequence folded into it, so a batch folded again after a crash or a
// failed commit skips whatever a key already holds. A stale writer's commit
// fails on the checkpoint's revision.
// Run it once per partition per process; it is not safe for concurrent use.
type RollupWriter struct {
	js      jetstream.JetStream
	rollups *store.Rollups
	logger  *slog.Logger
	opts    RollupWriterOptions
	metrics *Metrics

	cache       map[Key]*cachedRollup
	checkpoints [3]cachedCheckpoint
	// judge applies Rules; judgeRevs are the revisions of its state's keys.
	judge     *Judge
	judgeRevs map[string]uint64
}

// cachedRollup is a rollup as the writer last read or wrote it, and its
// revision.
type cachedRollup struct {
	v   *rollup.Rollup
	rev uint64
}

// A commit moves to a key's settled key (see rollup.SettledKey):
//   - the visitor sets of its ended slots, once a slot has been over for
//     settleGrace, when they hold RollupWriterOptions.SettleAtVisitors hashes
//     or more together: fewer weigh little in the rewrites, and a trickle of
//     late events does not rewrite the settled key at every commit;
//   - the set of any slot, ended or not, that is full (rollup.Visitors.Full):
//     the set of the current hour or day grows to a sketch of 16 KiB, which
//     every commit would rewrite; moved at 1,024 visitors, the sets of open
//     slots stay exact lists of at most 8 KiB, and the settled key is
//     rewritten once every 1,024 new visitors of a slot.
const settleGrace = 10 * time.Second

type cachedCheckpoint struct {
	seq, rev uint64
}

// maxCachedRollups bounds the writer's cache; past it the cache starts over.
const maxCachedRollups = 50_000

// NewRollupWriter returns a writer; Run starts it.
func NewRollupWriter(js jetstream.JetStream, rollups *store.Rollups, logger *slog.Logger, metrics *Metrics, opts RollupWriterOptions) *RollupWriter {
	if opts.BatchSize <= 0 {
		opts.BatchSize = 10_000
	}
	if opts.MaxWait <= 0 {
		opts.MaxWait = 50 * time.Millisecond
	}
	if opts.Linger <= 0 {
		opts.Linger = 200 * time.Millisecond
	}
	if opts.AckWait <= 0 {
		opts.AckWait = 10 * time.Second
	}
	if opts.PinnedTTL <= 0 {
		opts.PinnedTTL = 5 * time.Second
	}
	if opts.CaughtUpWait == 0 {
		opts.CaughtUpWait = 100 * time.Millisecond
	}
	if opts.CoarseEvery == 0 {
		opts.CoarseEvery = time.Second
	}
	if opts.CoarseIdle == 0 {
		opts.CoarseIdle = 100 * time.Millisecond
	}
	if opts.SettleAtVisitors == 0 {
		opts.SettleAtVisitors = 128
	}
	return &RollupWriter{
		js: js, rollups: rollups, opts: opts, metrics: metrics,
		logger: logger.With("component", "rollup-writer", "partition", opts.Partition),
		cache:  make(map[Key]*cachedRollup),
	}
}

// Run folds the partition until ctx ends; the batch in hand is committed before
// it returns. It returns nil once ctx ends, and only then: setting up the
// consumer is retried while NATS fails it, and set up again when it is
// deleted (each counted in admetric_consumer_restarts_total), and every
// fetch is retried.
//
// While the legacy single stream exists, the writer first folds the
// partition's events in it, until its consumer there has nothing left,
// then retires the stream if every other consumer is done with it too
// (store.RetireLegacyStream), and goes on with the partition stream, whose
// sequences start past the legacy stream's.
func (w *RollupWriter) Run(ctx context.Context) error {
	legacy, err := backoff.Retry(ctx, func() (bool, error) { return store.LegacyStreamExists(ctx, w.js) },
		w.retryOptions("looking for the legacy stream")...)
	if err != nil {
		return nil // ctx ended
	}
	if legacy {
		src := source{stream: store.LegacyStreamName, filter: store.PartitionFilter(w.opts.Partition), drain: true}
		if !w.runSource(ctx, src) {
			return nil
		}
		w.logger.Info("drained the partition's events from the legacy stream", "stream", store.LegacyStreamName)
		retireLegacy(ctx, w.js, w.logger)
	}
	w.runSource(ctx, source{stream: store.EventStreamName(w.opts.Partition)})
	return nil
}

// source is a stream a writer folds its partition from.
type source struct {
	stream, filter string
	// drain: the stream gets nothing new (the sealed legacy stream); folding
	// ends once its consumer has nothing left.
	drain bool
}

// runSource folds from src until ctx ends (false) or, for a drain source,
// until it is drained or gone (true).
func (w *RollupWriter) runSource(ctx context.Context, src source) bool {
	consumer := RollupConsumerName(w.opts.Partition)
	for ctx.Err() == nil {
		cons, err := backoff.Retry(ctx, func() (jetstream.Consumer, error) {
			cons, err := w.start(ctx, src)
			if src.drain && errors.Is(err, jetstream.ErrStreamNotFound) {
				return nil, backoff.Permanent(err) // another writer retired it
			}
			return cons, err
		}, retryForever(200*time.Millisecond, 15*time.Second, func(err error, pause time.Duration) {
			w.metrics.restarts.WithLabelValues(consumer).Inc()
			w.logger.Warn("setting up the rollup consumer failed; retrying", "stream", src.stream, "err", err, "pause", pause)
		})...)
		switch {
		case err == nil:
		case errors.Is(err, jetstream.ErrStreamNotFound):
			return true
		default:
			return false // ctx ended
		}
		switch w.fold(ctx, cons, src) {
		case foldDrained:
			return true
		case foldLost:
			w.metrics.restarts.WithLabelValues(consumer).Inc()
			w.logger.Warn("the rollup consumer is gone; setting it up again", "stream", src.stream)
		}
	}
	return false
}

// foldEnd says why fold returned.
type foldEnd int

const (
	foldStopped foldEnd = iota // ctx ended
	foldDrained                // a drain source has nothing left
	foldLost                   // the consumer or its stream was deleted
)

// drainCheckEvery is how often an idle writer on a drain source asks whether
// it is drained.
const drainCheckEvery = time.Second

// fold gathers, orders, commits and acknowledges batches from cons.
func (w *RollupWriter) fold(ctx context.Context, cons jetstream.Consumer, src source) foldEnd {
	s := &writerState{held: make(map[uint64]jetstream.Msg, w.opts.BatchSize)}
	defer w.letGo(s)
	var checked time.Time
	for ctx.Err() == nil {
		if !w.gather(ctx, cons, s) || !w.gate(ctx, cons, s) {
			if s.lost {
				return foldLost
			}
			if src.drain && len(s.held) == 0 && time.Since(checked) > drainCheckEvery {
				checked = time.Now()
				if drained(ctx, cons) {
					return foldDrained
				}
			}
			continue
		}
		recs, last := w.records(s)
		coarse := len(s.held) >= w.opts.BatchSize || time.Since(s.coarseAt) >= w.opts.CoarseEvery || w.quiet(s, last)
		// The batch is committed even when ctx ends meanwhile: finishing it
		// spares the next writer a replay.
		if !w.commitRetrying(ctx, s, recs, last, coarse) {
			return foldStopped
		}
		if !coarse {
			s.first = time.Time{} // held until the coarse buckets have it too
			if last != s.fineSeq {
				s.fineSeq, s.fineAt = last, time.Now()
			}
			continue
		}
		s.coarseAt = time.Now()
		w.ack(ctx, s, last)
		w.share(ctx, s)
	}
	w.finish(ctx, s)
	return foldStopped
}

// quiet reports whether nothing came for CoarseIdle since the minute bucket
// alone took the batch in hand, whose highest sequence is last.
func (w *RollupWriter) quiet(s *writerState, last uint64) bool {
	return w.opts.CoarseIdle >= 0 && last == s.fineSeq && time.Since(s.fineAt) >= w.opts.CoarseIdle
}

// finish commits to the hour and day buckets, and acknowledges, what the
// writer holds that only the minute bucket has: it spares the next writer a
// replay.
func (w *RollupWriter) finish(ctx context.Context, s *writerState) {
	if len(s.held) == 0 || w.lowCheckpoint() == w.checkpoints[rollup.Minute].seq {
		return
	}
	recs, last := w.records(s)
	if w.commitRetrying(ctx, s, recs, last, true) {
		w.ack(ctx, s, last)
	}
}

// drained reports whether cons has nothing to deliver and nothing
// unacknowledged, or is gone.
func drained(ctx context.Context, cons jetstream.Consumer) bool {
	info, err := cons.Info(ctx)
	if isGone(err) {
		return true
	}
	return err == nil && info.NumPending == 0 && info.NumAckPending == 0
}

// isGone reports whether err says a consumer or its stream was deleted.
func isGone(err error) bool {
	return errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted) ||
		errors.Is(err, jetstream.ErrStreamNotFound)
}

// retireLegacy deletes the legacy stream when every consumer of it is
// drained; the last one to finish does.
func retireLegacy(ctx context.Context, js jetstream.JetStream, logger *slog.Logger) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	switch err := store.RetireLegacyStream(rctx, js); {
	case err == nil:
		logger.Info("the legacy stream is retired", "stream", store.LegacyStreamName)
	case errors.Is(err, store.ErrLegacyNotDrained):
		logger.Debug("the legacy stream stays for its other consumers", "reason", err)
	default:
		logger.Warn("retiring the legacy stream failed; the last consumer to drain it tries again", "err", err)
	}
}

// writerState is what Run carries from one fetch to the next.
type writerState struct {
	held        map[uint64]jetstream.Msg // by stream sequence
	first       time.Time                // when the batch in hand got its first event
	verifiedPin string                   // the pin under which the gate last passed
	holding     bool                     // counted in Members as a partition this process holds
	lastEvent   time.Time                // when a batch was last committed
	// lastDelivery is the consumer (delivery) sequence of the last message
	// fetched, and gap records that a fetch skipped one since the gate last
	// passed: the server delivered a message that never arrived here (a
	// fetch that gave up before the server's answer, a dropped connection)
	// or delivered it to another writer.
	lastDelivery uint64
	gap          bool
	gatedWant    int  // events others hold that the gate waits for
	lost         bool // the consumer or its stream is gone
	// caughtUp: the last message fetched had nothing pending behind it.
	caughtUp bool
	// pin is the pin of the messages held, pinMixed true when they came
	// under several or none (see hold).
	pin      string
	pinMixed bool
	// coarseAt is when the hour and day buckets were last committed;
	// fineSeq and fineAt the highest sequence the minute bucket alone last
	// took, and when.
	coarseAt time.Time
	fineSeq  uint64
	fineAt   time.Time
	// decoded holds the held messages decoded, by stream sequence, so that
	// those that stay held while the minute bucket is committed again are
	// decoded once; nil for poison.
	decoded map[uint64]*Record
	// judgeErr is the judge's refusal of a record (out of order): the
	// commit fails, and its retry starts the judge again from KV.
	judgeErr     error
	warnedBehind bool

	seqs []uint64 // records' buffers, reused from batch to batch
	recs []Record
}

// start creates or updates the partition's consumer on src and reads the
// checkpoints.
func (w *RollupWriter) start(ctx context.Context, src source) (jetstream.Consumer, error) {
	cons, err := w.js.CreateOrUpdateConsumer(ctx, src.stream, jetstream.ConsumerConfig{
		Durable:        RollupConsumerName(w.opts.Partition),
		Description:    "AdMetric: partition " + strconv.Itoa(w.opts.Partition) + " into the rollups",
		FilterSubject:  src.filter,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		AckPolicy:      jetstream.AckAllPolicy,
		AckWait:        w.opts.AckWait,
		MaxAckPending:  4 * w.opts.BatchSize,
		PriorityPolicy: jetstream.PriorityPolicyPinned,
		PriorityGroups: []string{rollupGroup},
		PinnedTTL:      w.opts.PinnedTTL,
	})
	if err != nil {
		return nil, fmt.Errorf("aggregator: rollup consumer p%d on %s: %w", w.opts.Partition, src.stream, err)
	}
	if err := w.loadCheckpoints(ctx); err != nil {
		return nil, err
	}
	if err := w.loadJudge(ctx); err != nil {
		return nil, err
	}
	mode := "atomic batches"
	if !w.rollups.Atomic() {
		mode = "per-key writes (one replica, or a server without atomic batches)"
	}
	w.logger.Info("rollup writer started", "stream", src.stream, "commit", mode)
	return cons, nil
}

// gather fetches more events into s.held and reports whether the batch is
// ready: it holds BatchSize events, Linger has passed since its first event,
// or the last fetch found the stream drained and CaughtUpWait has passed.
func (w *RollupWriter) gather(ctx context.Context, cons jetstream.Consumer, s *writerState) bool {
	if s.holding && len(s.held) == 0 && time.Since(s.lastEvent) > w.opts.PinnedTTL {
		w.letGo(s) // idle, or the server moved the partition
	}
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		err := w.fetch(cons, s)
		if isGone(err) {
			s.lost = true
			return struct{}{}, backoff.Permanent(err)
		}
		return struct{}{}, err
	}, w.retryOptions("fetch")...)
	if err != nil || len(s.held) == 0 {
		return false // ctx ended, or nothing came
	}
	if s.first.IsZero() {
		s.first = time.Now()
	}
	// Under load, gather up to BatchSize: every commit rewrites each key it
	// touches, so more events per commit means fewer bytes per event. Once
	// the writer holds everything the stream has, waiting longer only adds
	// lag.
	age := time.Since(s.first)
	return len(s.held) >= w.opts.BatchSize || age >= w.opts.Linger || s.caughtUp && age >= w.opts.CaughtUpWait
}

// gate reports whether s.held is every event of the partition that is
// delivered and not yet acknowledged, so that folding it keeps stream order.
// Events another writer acked are committed: it drops them. While other
// writers (dead, or about to lose the partition) hold events, it waits for
// them to come back after AckWait.
func (w *RollupWriter) gate(ctx context.Context, cons jetstream.Consumer, s *writerState) bool {
	pin := s.heldPin()
	if pin != "" && pin == s.verifiedPin && !s.gap {
		// While the server keeps the partition pinned to us no one else
		// receives any, and every delivery since the last check reached us
		// (no gap in the delivery sequence), so that check still holds.
		return true
	}
	info, err := backoff.Retry(ctx, func() (*jetstream.ConsumerInfo, error) {
		info, err := cons.Info(ctx)
		if isGone(err) {
			s.lost = true
			return nil, backoff.Permanent(err)
		}
		return info, err
	}, w.retryOptions("consumer info")...)
	if err != nil {
		return false
	}
	// Another writer folded past what this one judged (it took the
	// partition over meanwhile): the rules' state, the checkpoints and the
	// cache are its, so read them again before deciding anything. A
	// decision from a stale state would reach the archive, and a rollup
	// written key by key before the stale checkpoint fails would keep it.
	if w.judge != nil && info.AckFloor.Stream > w.judge.Seq() {
		if err := w.reload(ctx); err != nil {
			w.logger.Warn("reading the partition's state again failed; retrying", "err", err)
			return false
		}
		clear(s.decoded)
		s.judgeErr = nil
	}
	// With AckAll, pending is exactly what is delivered and above the ack
	// floor: drop what is at or below it, to compare like with like.
	for seq := range s.held {
		if seq <= info.AckFloor.Stream {
			delete(s.held, seq)
		}
	}
	if info.NumAckPending > len(s.held) {
		s.gatedWant = info.NumAckPending - len(s.held)
		return false
	}
	s.gatedWant = 0
	s.gap = false // everything delivered and unacknowledged is in hand
	if len(s.held) == 0 {
		s.first = time.Time{}
		return false
	}
	s.verifiedPin = pin
	return true
}

// records decodes s.held in stream order into the records to fold, leaving
// out what every bucket's checkpoint already covers (committed by a writer
// that died before its ack) and poison; last is the highest sequence held.
// The result reuses s's buffers: it is valid until the next call.
func (w *RollupWriter) records(s *writerState) (recs []Record, last uint64) {
	seqs := s.seqs[:0]
	for seq := range s.held {
		seqs = append(seqs, seq)
	}
	slices.Sort(seqs)
	s.seqs = seqs
	floor := w.lowCheckpoint()
	recs = s.recs[:0]
	defer func() { s.recs = recs }()
	if s.decoded == nil {
		s.decoded = make(map[uint64]*Record, len(seqs))
	}
	for _, seq := range seqs {
		if seq <= floor {
			continue
		}
		rec, seen := s.decoded[seq]
		if !seen {
			r, err := decodeMsg(s.held[seq], w.opts.VisitorSalt, w.opts.Partitions)
			if err != nil {
				w.metrics.poison.WithLabelValues("rollups").Inc()
				w.logger.Warn("skipping poison message", "err", err)
			} else {
				rec = &r
				w.decide(s, rec)
			}
			s.decoded[seq] = rec
		}
		if rec != nil {
			recs = append(recs, *rec)
		}
	}
	return recs, seqs[len(seqs)-1]
}

// decide applies the rules to rec. An event at or below the judge's
// sequence is one the judge already took, which only a bucket behind the
// day bucket's checkpoint refolds (one deleted and made anew): its
// decision is not kept, and it folds as the intake marked it.
func (w *RollupWriter) decide(s *writerState, rec *Record) {
	if w.judge == nil || s.judgeErr != nil {
		return
	}
	if rec.Seq <= w.judge.Seq() {
		if !s.warnedBehind {
			s.warnedBehind = true
			w.logger.Warn("refolding events the invalid-traffic rules judged before; their decisions are not kept", "seq", rec.Seq, "judged", w.judge.Seq())
		}
		return
	}
	s.judgeErr = w.judge.Decide(rec)
}

// ack acknowledges the committed batch up to last with one ack (AckAll:
// nothing below it is pending elsewhere), and starts the next batch.
func (w *RollupWriter) ack(ctx context.Context, s *writerState, last uint64) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := s.held[last].DoubleAck(actx); err != nil {
		w.logger.Warn("ack failed; the batch will be redelivered and skipped", "err", err)
	}
	clear(s.held)
	clear(s.decoded)
	s.first = time.Time{}
	s.lastEvent = time.Now()
}

// share counts the partition as this process's in Members, and hands it to
// another process when this one holds more than its share: it stops
// fetching long enough for the server to unpin it, and another process's
// writer, waiting on the same partition, is pinned next.
func (w *RollupWriter) share(ctx context.Context, s *writerState) {
	m := w.opts.Members
	if m == nil {
		return
	}
	if !s.holding {
		s.holding = true
		m.acquire()
	}
	if m.shouldYield(w.opts.Partitions, 2*w.opts.PinnedTTL) {
		w.logger.Info("handing the partition to another aggregator", "live", m.Live())
		w.letGo(s)
		s.verifiedPin = ""
		pause(ctx, w.opts.PinnedTTL+time.Second)
	}
}

// letGo stops counting the partition as this process's.
func (w *RollupWriter) letGo(s *writerState) {
	if s.holding {
		s.holding = false
		w.opts.Members.release()
	}
}

// retryOptions retry what fails at once against NATS, with jittered
// exponential pauses from 100ms to 5s, until it succeeds or ctx ends.
func (w *RollupWriter) retryOptions(what string) []backoff.RetryOption {
	return retryForever(100*time.Millisecond, 5*time.Second, func(err error, pause time.Duration) {
		w.logger.Warn(what+" failed; retrying", "err", err, "pause", pause)
	})
}

// fetch adds to s.held what one pull brings, keyed by stream sequence so
// that redeliveries replace the copies they duplicate, and notes a gap in
// the delivery sequence.
func (w *RollupWriter) fetch(cons jetstream.Consumer, s *writerState) error {
	// While gated, ask for as many as others hold, so their redeliveries come
	// in one pull rather than one by one. A pull allocates buffers for as
	// many as it asks for (24 bytes a message): a writer that has caught up
	// asks for fewer, as it fetches every MaxWait and gets what came since.
	want := max(w.opts.BatchSize-len(s.held), s.gatedWant, 1)
	if s.caughtUp && s.gatedWant == 0 {
		want = min(want, caughtUpFetch)
	}
	batch, err := cons.Fetch(want, jetstream.FetchMaxWait(w.opts.MaxWait), jetstream.FetchPriorityGroup(rollupGroup))
	if err != nil {
		return err
	}
	for msg := range batch.Messages() {
		meta, err := msg.Metadata()
		if err != nil {
			w.logger.Warn("message without metadata", "err", err)
			continue
		}
		if meta.Sequence.Consumer != s.lastDelivery+1 {
			s.gap = true
		}
		s.lastDelivery = meta.Sequence.Consumer
		s.hold(meta.Sequence.Stream, msg)
		s.caughtUp = meta.NumPending == 0
	}
	if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrPinIDMismatch) {
		return err
	}
	return nil
}

// hold adds msg, delivered for stream sequence seq, to s.held, and notes
// the pin it came under: the gate asks on every fetch, and reading the
// header of every held message each time cost the writer a quarter of
// its work once batches stayed held across minute-bucket commits.
func (s *writerState) hold(seq uint64, msg jetstream.Msg) {
	p := msg.Headers().Get("Nats-Pin-Id")
	if len(s.held) == 0 {
		s.pin, s.pinMixed = p, p == ""
	} else if p != s.pin || p == "" {
		s.pinMixed = true
	}
	s.held[seq] = msg
}

// caughtUpFetch bounds the pull of a writer that has caught up with its
// stream: at 10,000, each pull allocated 320 KiB of buffers, and eight
// writers pulling every 50 ms made 50 MB/s of garbage.
const caughtUpFetch = 1000

// heldPin returns the pin ID all held messages were delivered under, or ""
// when they differ, carry none, or none is held. Messages the gate drops
// leave it as it was: at worst it says "" where one pin remains, and the
// gate asks the server.
func (s *writerState) heldPin() string {
	if len(s.held) == 0 || s.pinMixed {
		return ""
	}
	return s.pin
}

// lowCheckpoint is the lowest of the bucket checkpoints: every event at or
// below it is in all three buckets.
func (w *RollupWriter) lowCheckpoint() uint64 {
	low := w.checkpoints[0].seq
	for _, cp := range w.checkpoints[1:] {
		low = min(low, cp.seq)
	}
	return low
}

// commitRetrying commits recs to the minute bucket, and to the hour and day
// buckets too when coarse, until it succeeds, or ctx ends between tries; it
// reports whether it committed. A try that ctx's end interrupts is finished
// first. Each retry reloads from KV, and the MaxSeq of each rollup makes the
// refold skip whatever an earlier try already saved; with rules, the retry
// decodes and judges s.held again from the state committed with the day
// checkpoint (another writer may have moved it).
func (w *RollupWriter) commitRetrying(ctx context.Context, s *writerState, recs []Record, lastSeq uint64, coarse bool) bool {
	cctx := context.WithoutCancel(ctx)
	tries := 0
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		tries++
		if tries > 1 {
			if err := w.loadCheckpoints(cctx); err != nil {
				return struct{}{}, err
			}
			if err := w.loadJudge(cctx); err != nil {
				return struct{}{}, err
			}
			// Another writer may have committed some of these meanwhile.
			clear(s.decoded)
			s.judgeErr = nil
			recs, lastSeq = w.records(s)
		}
		if s.judgeErr != nil {
			w.metrics.commitErrors.Inc()
			return struct{}{}, s.judgeErr
		}
		err := w.commit(cctx, recs, lastSeq, coarse)
		if err != nil {
			w.cache = make(map[Key]*cachedRollup)
			w.checkpoints = [3]cachedCheckpoint{}
			w.metrics.commitErrors.Inc()
		}
		return struct{}{}, err
	}, w.retryOptions("rollup commit")...)
	if err != nil {
		w.logger.Warn("rollup commit abandoned at shutdown; the next writer replays it", "events", len(recs), "tries", tries)
		return false
	}
	return true
}

// commit folds into each bucket it commits the records that bucket's
// checkpoint does not cover yet, and commits the bucket's touched keys with
// its checkpoint: the minute bucket, and the hour and day buckets when
// coarse.
func (w *RollupWriter) commit(ctx context.Context, recs []Record, lastSeq uint64, coarse bool) error {
	began := time.Now()
	layout := w.rollups.Layout()
	units := []rollup.Unit{rollup.Minute}
	if coarse {
		units = append(units, rollup.Hour, rollup.Day)
	}
	if w.judge != nil {
		// Before any bucket takes them, so that every event a checkpoint
		// covers has its decision on the way to the archive (rebuild counts
		// on it). The minute bucket takes every batch first.
		i, _ := slices.BinarySearchFunc(recs, w.checkpoints[rollup.Minute].seq+1, func(r Record, seq uint64) int { return cmp.Compare(r.Seq, seq) })
		if err := w.publishDecisions(ctx, recs[i:]); err != nil {
			return err
		}
	}
	var st FoldStats
	for _, u := range units {
		cp := &w.checkpoints[u]
		i, _ := slices.BinarySearchFunc(recs, cp.seq+1, func(r Record, seq uint64) int { return cmp.Compare(r.Seq, seq) })
		urecs := recs[i:]
		ust, err := w.commitUnit(ctx, layout[u:u+1], urecs, max(lastSeq, cp.seq), began)
		if err != nil {
			return err
		}
		st.Applied += ust.Applied
		st.Duplicates += ust.Duplicates
		if u == rollup.Day { // the longest retention: too old for it is too old for all
			st.TooOld = ust.TooOld
			w.metrics.folded.Add(float64(len(urecs)))
		}
	}
	if len(w.cache) > maxCachedRollups {
		w.cache = make(map[Key]*cachedRollup)
	}
	w.metrics.duplicates.Add(float64(st.Duplicates))
	w.metrics.tooOld.Add(float64(st.TooOld))
	w.metrics.commitSeconds.Observe(time.Since(began).Seconds())
	if st.TooOld > 0 {
		w.logger.Info("events older than every rollup retention were archived only", "count", st.TooOld)
	}
	return nil
}

// commitUnit folds recs into the keys of one resolution, moves the visitor
// sets that settle, and commits the touched keys with the bucket's
// checkpoint at seq.
func (w *RollupWriter) commitUnit(ctx context.Context, res []rollup.Resolution, recs []Record, seq uint64, now time.Time) (FoldStats, error) {
	u := res[0].Unit
	cp := &w.checkpoints[u]
	keys := Touched(res, recs, now)
	values := make(map[Key]*rollup.Rollup, len(keys))
	for _, k := range keys {
		c, ok := w.cache[k]
		if !ok {
			v, rev, err := w.rollups.Load(ctx, k.Unit, k.Key)
			if err != nil {
				return FoldStats{}, err
			}
			c = &cachedRollup{v: v, rev: rev}
			w.cache[k] = c
		}
		values[k] = c.v
	}
	st := Fold(res, values, recs, now)
	if err := w.settle(ctx, keys, now); err != nil {
		return st, err
	}
	if seq <= cp.seq && len(keys) == 0 {
		return st, nil
	}
	writes := make([]store.Write, len(keys), len(keys)+judgeShards+1)
	for i, k := range keys {
		c := w.cache[k]
		writes[i] = store.Write{Key: k.Key, Value: c.v, Rev: c.rev}
	}
	var state []StateWrite
	if u == rollup.Day && w.judge != nil {
		state = w.judge.Writes()
		for _, sw := range state {
			writes = append(writes, store.RawWrite(sw.Key, sw.Data, w.judgeRevs[sw.Key]))
		}
	}
	revs, cpRev, err := w.rollups.Commit(ctx, u, w.opts.Partition, writes, seq, cp.rev)
	if err != nil {
		return st, err
	}
	if u == rollup.Day {
		w.countInvalid(recs)
	}
	for i, k := range keys {
		w.cache[k].rev = revs[i]
	}
	for i, sw := range state {
		w.judgeRevs[sw.Key] = revs[len(keys)+i]
	}
	if len(state) > 0 {
		w.reportJudge()
	}
	cp.seq, cp.rev = seq, cpRev
	return st, nil
}

// settle moves the visitor sets of the ended slots of keys to their settled
// keys (see RollupWriterOptions.SettleAtVisitors), and the full sets of any
// slot, and writes those first: the rollups, written after, no longer hold
// the sets, and a reader reads a rollup before its settled key. A settled
// key is read when sets move into it and not kept: a day's hour keys would
// hold hundreds of KiB each in the writer's cache, which keeps the keys of
// past hours (the soak grew by 50 MiB a minute). The writes are guarded by
// revision like the rollups'.
func (w *RollupWriter) settle(ctx context.Context, keys []Key, now time.Time) error {
	if w.opts.SettleAtVisitors < 0 {
		return nil
	}
	at := now.Add(-settleGrace)
	var writes [3][]store.Write
	for _, k := range keys {
		c := w.cache[k]
		n := k.Unit.SettledSlots(k.Key, at)
		ended := n > 0 && c.v.HeldVisitors(n) >= w.opts.SettleAtVisitors
		move := func(i int, s *rollup.Slot) bool { return ended && i < n || s.Visitors.Full() }
		if !c.v.HasVisitors(move) {
			continue
		}
		sk := rollup.SettledKey(k.Key)
		settled, rev, err := w.rollups.Load(ctx, k.Unit, sk)
		if err != nil {
			return err
		}
		if _, err := c.v.Settle(settled, move); err != nil {
			return fmt.Errorf("aggregator: settle %s %s: %w", k.Unit, k.Key, err)
		}
		writes[k.Unit] = append(writes[k.Unit], store.Write{Key: sk, Value: settled, Rev: rev})
	}
	for u := range writes {
		if len(writes[u]) == 0 {
			continue
		}
		if _, err := w.rollups.Replace(ctx, rollup.Unit(u), writes[u]); err != nil {
			return err
		}
		w.metrics.settled.Add(float64(len(writes[u])))
	}
	return nil
}

// reload reads the checkpoints and the rules' state again and starts the
// cache over: another writer committed since this one read them.
func (w *RollupWriter) reload(ctx context.Context) error {
	w.cache = make(map[Key]*cachedRollup)
	if err := w.loadCheckpoints(ctx); err != nil {
		return err
	}
	return w.loadJudge(ctx)
}

// loadJudge reads the rules' state committed with the day bucket's
// checkpoint; without rules it does nothing.
func (w *RollupWriter) loadJudge(ctx context.Context) error {
	if w.opts.Rules == nil {
		return nil
	}
	p := w.opts.Partition
	w.judgeRevs = make(map[string]uint64, judgeShards+1)
	load := func(key string) ([]byte, error) {
		data, rev, err := w.rollups.LoadRaw(ctx, rollup.Day, key)
		w.judgeRevs[key] = rev
		return data, err
	}
	head, err := load(JudgeHeadKey(p))
	if err != nil {
		return err
	}
	shards := make([][]byte, judgeShards)
	for i := range shards {
		if shards[i], err = load(JudgeShardKey(p, i)); err != nil {
			return err
		}
	}
	j, err := LoadJudge(*w.opts.Rules, p, w.checkpoints[rollup.Day].seq, head, shards)
	if err != nil {
		return err
	}
	w.judge = j
	w.reportJudge()
	return nil
}

// countInvalid counts the invalid events among recs, which the day bucket
// takes, by reason.
func (w *RollupWriter) countInvalid(recs []Record) {
	for i := range recs {
		if r := recs[i].Event.InvalidReason; r != "" {
			w.metrics.invalid.WithLabelValues(string(r)).Inc()
		}
	}
}

// reportJudge sets the state's gauges.
func (w *RollupWriter) reportJudge() {
	p := strconv.Itoa(w.opts.Partition)
	clicks, rates, servings := w.judge.Entries()
	w.metrics.judgeEntries.WithLabelValues(p, "clicks").Set(float64(clicks))
	w.metrics.judgeEntries.WithLabelValues(p, "minute_counts").Set(float64(rates))
	w.metrics.judgeEntries.WithLabelValues(p, "servings").Set(float64(servings))
	w.metrics.judgeBytes.WithLabelValues(p).Set(float64(w.judge.Size()))
}

// loadCheckpoints reads each bucket's checkpoint of the partition.
func (w *RollupWriter) loadCheckpoints(ctx context.Context) error {
	for _, res := range w.rollups.Layout() {
		seq, rev, err := w.rollups.Checkpoint(ctx, res.Unit, w.opts.Partition)
		if err != nil {
			return err
		}
		w.checkpoints[res.Unit] = cachedCheckpoint{seq: seq, rev: rev}
	}
	return nil
}
