package aggregator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/eapache/go-resiliency/breaker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/postgres"
)

// ArchiveConsumerName is the durable consumer that feeds the PostgreSQL archive.
const ArchiveConsumerName = "archive"

// ArchiverOptions configure an Archiver. Zero values take the defaults.
type ArchiverOptions struct {
	// Partitions is how many partition streams there are; default 1.
	Partitions int
	// BatchSize bounds the rows of one INSERT; default 500.
	BatchSize int
	// Linger is how long a batch waits for more events once it has one;
	// default 200ms. Every batch acknowledges its messages, and the server
	// writes each consumer's state file after acknowledgements (up to ten
	// times a second); at 50ms those writes took 7% of the whole service's
	// CPU at 3,000 events/s. The archive is not on the path of analytics.
	Linger time.Duration
	// AckWait is how long the server waits for an ack before redelivering; default 30s.
	AckWait time.Duration
	// Decisions: also set the invalid_reason of archived events from the
	// decision stream (store.DecisionStream), which must exist.
	Decisions bool

	// TruncateIPs: archive no full address. An event that comes without the
	// intake's visitor hash (one published straight to NATS) gets it
	// computed here under VisitorSalt, and kept in the visitor column for
	// rebuild, before its address is truncated (event.Pseudonymize); a
	// poison message goes to the dead-letter stream with its address
	// truncated, or without its body when that is not a JSON object.
	TruncateIPs bool
	// VisitorSalt keys the visitor hash: the rollup writers' salt.
	VisitorSalt []byte
	// Retention, above 0, is how long archived events are kept: an event
	// older is not archived (its month's partition is dropped, or about to
	// be; see PartitionKeeper). 0 keeps every event.
	Retention time.Duration
}

// Archiver copies every event from the partition streams into the PostgreSQL
// events table, through a durable consumer on each, whose messages it
// gathers into one batch of inserts. Inserts skip event IDs already
// archived, so a redelivered message never adds a row; a message is
// acknowledged only after its insert committed. While PostgreSQL is down it
// retries the batch in hand behind a circuit breaker and takes nothing new;
// the streams keep the rest until it returns. A message that is not a valid
// event goes to the dead-letter stream (ads.dlq.<reason>) and is terminated.
// While the legacy single stream exists, it archives that stream's events
// too, and retires the stream once drained.
type Archiver struct {
	js      jetstream.JetStream
	breaker *breaker.Breaker
	archive *postgres.Archive
	logger  *slog.Logger
	metrics *Metrics
	opts    ArchiverOptions
}

// NewArchiver returns an archiver; Run starts it.
func NewArchiver(js jetstream.JetStream, archive *postgres.Archive, logger *slog.Logger, metrics *Metrics, opts ArchiverOptions) *Archiver {
	if opts.Partitions <= 0 {
		opts.Partitions = 1
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = 500
	}
	if opts.Linger <= 0 {
		opts.Linger = 200 * time.Millisecond
	}
	if opts.AckWait <= 0 {
		opts.AckWait = 30 * time.Second
	}
	return &Archiver{js: js, archive: archive, metrics: metrics, opts: opts,
		// Three failed inserts in a row open it; a probe goes through every 2s.
		breaker: breaker.New(3, 1, 2*time.Second),
		logger:  logger.With("component", "archiver")}
}

// Run archives events until ctx ends; the batch in hand is finished first when
// PostgreSQL answers. It returns nil once ctx ends, and only then: a NATS
// failure of one stream's consumer (no connection at start, a missing
// heartbeat while a consumer leader moves, the consumer deleted) is logged,
// counted in admetric_consumer_restarts_total and retried, that consumer set
// up again after a pause that grows while it keeps failing; the other
// streams' events go on being archived meanwhile.
func (a *Archiver) Run(ctx context.Context) error {
	msgs := make(chan jetstream.Msg, a.opts.BatchSize)
	fctx, stopFeeds := context.WithCancel(ctx)
	var feeds sync.WaitGroup
	defer feeds.Wait()
	defer stopFeeds()
	for p := range a.opts.Partitions {
		feeds.Go(func() { a.feed(fctx, store.EventStreamName(p), false, msgs) })
	}
	if a.opts.Decisions {
		feeds.Go(func() { a.applyDecisions(fctx) })
	}
	feeds.Go(func() {
		legacy, err := backoff.Retry(fctx, func() (bool, error) { return store.LegacyStreamExists(fctx, a.js) },
			retryForever(200*time.Millisecond, 15*time.Second, nil)...)
		if err == nil && legacy {
			a.feed(fctx, store.LegacyStreamName, true, msgs)
		}
	})
	a.archiveFrom(ctx, msgs)
	return nil
}

// feed sends the messages of stream's archive consumer to msgs until ctx
// ends, setting the consumer up again when NATS fails it. With drain (the
// sealed legacy stream) it returns once the consumer has nothing left, and
// retires the stream.
func (a *Archiver) feed(ctx context.Context, stream string, drain bool, msgs chan<- jetstream.Msg) {
	pauses := backoff.NewExponentialBackOff()
	pauses.InitialInterval, pauses.MaxInterval = 200*time.Millisecond, 15*time.Second
	for {
		progressed, err := a.consume(ctx, stream, drain, msgs)
		if ctx.Err() != nil {
			return
		}
		if drain && (err == nil || isGone(err)) {
			a.logger.Info("drained the legacy stream", "stream", stream)
			retireLegacy(ctx, a.js, a.logger)
			return
		}
		if progressed {
			pauses.Reset()
		}
		wait := pauses.NextBackOff()
		a.metrics.restarts.WithLabelValues(ArchiveConsumerName).Inc()
		a.logger.Warn("archive consumer failed; setting it up again", "stream", stream, "err", err, "pause", wait)
		pause(ctx, wait)
	}
}

// consume sets up stream's archive consumer and sends its messages to msgs
// until ctx ends (nil), NATS fails it (the error) or, with drain, it has
// nothing left (nil). progressed reports that a message was taken.
func (a *Archiver) consume(ctx context.Context, stream string, drain bool, msgs chan<- jetstream.Msg) (progressed bool, err error) {
	cons, err := a.js.CreateOrUpdateConsumer(ctx, stream, jetstream.ConsumerConfig{
		Durable:       ArchiveConsumerName,
		Description:   "AdMetric: events into the PostgreSQL archive",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       a.opts.AckWait,
		MaxAckPending: 4 * a.opts.BatchSize,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return false, fmt.Errorf("aggregator: archive consumer on %s: %w", stream, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(a.opts.BatchSize))
	if err != nil {
		return false, fmt.Errorf("aggregator: archive consumer on %s: %w", stream, err)
	}
	defer it.Stop()
	a.logger.Debug("archive consumer started", "stream", stream)
	for {
		wait := jetstream.NextContext(ctx)
		if drain {
			wait = jetstream.NextMaxWait(drainCheckEvery)
		}
		msg, err := it.Next(wait)
		switch {
		case err == nil:
		case ctx.Err() != nil:
			return progressed, nil
		case drain && errors.Is(err, nats.ErrTimeout):
			if drained(ctx, cons) {
				return progressed, nil
			}
			continue
		default:
			return progressed, fmt.Errorf("aggregator: archive consumer on %s: %w", stream, err)
		}
		select {
		case msgs <- msg:
			progressed = true
		case <-ctx.Done():
			return progressed, nil
		}
	}
}

// archiveFrom archives the messages of msgs in batches until ctx ends.
func (a *Archiver) archiveFrom(ctx context.Context, msgs <-chan jetstream.Msg) {
	a.logger.Info("archiver started", "streams", a.opts.Partitions)
	batch := make([]jetstream.Msg, 0, a.opts.BatchSize)
	rows := make([]postgres.ArchivedEvent, 0, a.opts.BatchSize)
	good := make([]jetstream.Msg, 0, a.opts.BatchSize)
	for {
		batch = nextBatch(ctx, msgs, batch[:0], a.opts.BatchSize, a.opts.Linger)
		if len(batch) == 0 {
			return // ctx ended
		}
		rows, good = rows[:0], good[:0]
		expiredBefore := a.expiredBefore()
		for _, msg := range batch {
			rec, err := decodeMsg(msg, a.salt(), a.opts.Partitions)
			if err != nil {
				a.poison(ctx, msg, err)
				continue
			}
			if rec.Event.Timestamp.Before(expiredBefore) {
				a.metrics.archiveExpired.Inc()
				_ = msg.Ack() // past the retention: the archive keeps it no more
				continue
			}
			rows = append(rows, a.toRow(rec))
			good = append(good, msg)
		}
		if !a.archiveBatch(ctx, rows, good) {
			return // shutting down; the unacked rest is redelivered later
		}
	}
}

// poison sends msg to the dead-letter stream with the reason, then terminates
// it. If the dead-letter stream does not take it, msg stays unacknowledged and
// comes back later: a poison message is moved aside, never dropped.
func (a *Archiver) poison(ctx context.Context, msg jetstream.Msg, err error) {
	reason := PoisonReason(err)
	if reason == "" {
		reason = ReasonDatabase
	}
	a.metrics.poison.WithLabelValues("archive").Inc()
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	data := msg.Data()
	if a.opts.TruncateIPs && !isDecision(msg) {
		data = scrubAddress(data)
	}
	if derr := store.DeadLetter(pctx, a.js, msg, data, reason, err); derr != nil {
		a.logger.Error("dead-lettering a poison message failed; it will be redelivered", "err", derr, "poison", err)
		return
	}
	a.logger.Warn("poison message moved to the dead-letter stream", "reason", reason, "err", err)
	_ = msg.Term()
}

// archiveBatch inserts rows and acks their msgs, retrying while PostgreSQL is
// unavailable. A batch that PostgreSQL refuses for its data (a row no
// validation foresaw) is inserted row by row so that only the bad rows are
// terminated. It returns false when ctx ended first.
func (a *Archiver) archiveBatch(ctx context.Context, rows []postgres.ArchivedEvent, msgs []jetstream.Msg) bool {
	err := a.insertRetrying(ctx, rows)
	if err == nil {
		ackAll(msgs)
		return true
	}
	if !postgres.IsDataError(err) {
		return false
	}
	for i := range rows {
		err := a.insertRetrying(ctx, rows[i:i+1])
		switch {
		case err == nil:
			_ = msgs[i].Ack()
		case postgres.IsDataError(err):
			a.poison(ctx, msgs[i], err)
		default:
			return false
		}
	}
	return true
}

func ackAll(msgs []jetstream.Msg) {
	for _, msg := range msgs {
		// A lost ack only means a redelivery, which the insert absorbs.
		_ = msg.Ack()
	}
}

// insertTimeout bounds one insert; it also lets the batch in hand finish when
// shutdown cancels ctx.
const insertTimeout = 5 * time.Second

// insertRetrying inserts until it succeeds, PostgreSQL refuses the data
// (postgres.IsDataError), or ctx ends (ctx.Err()).
func (a *Archiver) insertRetrying(ctx context.Context, rows []postgres.ArchivedEvent) error {
	tries := 0
	inserted, err := backoff.Retry(ctx, func() (int, error) {
		tries++
		n, err := a.insert(ctx, rows)
		if err != nil && !errors.Is(err, breaker.ErrBreakerOpen) && !postgres.IsDataError(err) {
			a.metrics.archiveErrors.Inc()
		}
		return n, err
	}, retryForever(200*time.Millisecond, 5*time.Second, func(err error, pause time.Duration) {
		if tries == 1 || tries%20 == 0 {
			a.logger.Warn("archive insert failed; retrying", "err", err, "attempt", tries, "rows", len(rows), "pause", pause)
		}
	})...)
	if err != nil {
		return err
	}
	a.metrics.archived.Add(float64(inserted))
	if tries > 1 {
		a.logger.Info("archive insert succeeded after retries", "attempts", tries)
	}
	return nil
}

// insert tries rows once behind the breaker. A refusal for the data is a
// permanent error: PostgreSQL answered, so it does not open the breaker.
func (a *Archiver) insert(ctx context.Context, rows []postgres.ArchivedEvent) (int, error) {
	var inserted int
	var dataErr error
	err := a.breaker.Run(func() error {
		ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), insertTimeout)
		defer cancel()
		n, err := a.archive.Insert(ictx, rows)
		if postgres.IsDataError(err) {
			dataErr = err
			return nil
		}
		inserted = n
		return err
	})
	if dataErr != nil {
		return 0, backoff.Permanent(dataErr)
	}
	return inserted, err
}

// salt is the salt decodeMsg hashes visitors with: the visitor salt when
// the archive keeps the hash, nil (no hash wanted) otherwise.
func (a *Archiver) salt() []byte {
	if a.opts.TruncateIPs {
		return a.opts.VisitorSalt
	}
	return nil
}

// expiredBefore is the time before which events are past the retention;
// the zero time when there is none.
func (a *Archiver) expiredBefore() time.Time {
	if a.opts.Retention <= 0 {
		return time.Time{}
	}
	return time.Now().Add(-a.opts.Retention)
}

// toRow is the archive row of r: with TruncateIPs, its visitor hash (the
// intake's, else the one decodeMsg computed from the full address) and its
// address truncated; else as it came, with the intake's hash if it carried one.
func (a *Archiver) toRow(r Record) postgres.ArchivedEvent {
	row := toRow(r)
	if a.opts.TruncateIPs || r.Event.Visitor != "" {
		row.Visitor = int64(r.Visitor) // #nosec G115 -- the hash's 64 bits, as a bigint
	}
	if a.opts.TruncateIPs {
		row.IP = event.TruncateIP(row.IP)
	}
	return row
}

func toRow(r Record) postgres.ArchivedEvent {
	return postgres.ArchivedEvent{
		EventID:    r.Event.EventID,
		Type:       string(r.Event.Type),
		AdID:       r.Event.AdID,
		OccurredAt: r.Event.Timestamp,
		IP:         r.Event.IP,
		UserAgent:  r.Event.UserAgent,
		PlaybackMS: int64(r.Event.PlaybackMillis()),
		StreamSeq:  r.Seq,
		Partition:  r.Partition,

		ServingID:     r.Event.ServingID,
		ErrorCode:     r.Event.ErrorCode,
		InvalidReason: string(r.Event.InvalidReason),
	}
}

// nextBatch waits for one message (until ctx ends), then gathers more until it
// holds max or none arrives within linger.
func nextBatch(ctx context.Context, msgs <-chan jetstream.Msg, buf []jetstream.Msg, maxMsgs int, linger time.Duration) []jetstream.Msg {
	select {
	case msg := <-msgs:
		buf = append(buf, msg)
	case <-ctx.Done():
		return buf
	}
	t := time.NewTimer(linger)
	defer t.Stop()
	for len(buf) < maxMsgs {
		select {
		case msg := <-msgs:
			buf = append(buf, msg)
		case <-t.C:
			return buf
		}
	}
	return buf
}
