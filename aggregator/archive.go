package aggregator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/store"
)

// ArchiveConsumerName is the durable consumer that feeds the PostgreSQL archive.
const ArchiveConsumerName = "archive"

// ArchiverOptions configure an Archiver. Zero values take the defaults.
type ArchiverOptions struct {
	// BatchSize bounds the rows of one INSERT; default 500.
	BatchSize int
	// Linger is how long a batch waits for more events once it has one; default 50ms.
	Linger time.Duration
	// AckWait is how long the server waits for an ack before redelivering; default 30s.
	AckWait time.Duration
}

// Archiver copies every event from the stream into the PostgreSQL events table
// through a durable consumer. Inserts skip event IDs already archived, so a
// redelivered message never adds a row; a batch is acknowledged only after its
// insert committed. While PostgreSQL is down it retries the batch in hand and
// fetches nothing new; the stream keeps the rest until it returns.
type Archiver struct {
	js      jetstream.JetStream
	archive *store.Archive
	logger  *slog.Logger
	metrics *Metrics
	opts    ArchiverOptions
}

// NewArchiver returns an archiver; Run starts it.
func NewArchiver(js jetstream.JetStream, archive *store.Archive, logger *slog.Logger, metrics *Metrics, opts ArchiverOptions) *Archiver {
	if opts.BatchSize <= 0 {
		opts.BatchSize = 500
	}
	if opts.Linger <= 0 {
		opts.Linger = 50 * time.Millisecond
	}
	if opts.AckWait <= 0 {
		opts.AckWait = 30 * time.Second
	}
	return &Archiver{js: js, archive: archive, metrics: metrics, opts: opts,
		logger: logger.With("component", "archiver")}
}

// Run archives events until ctx ends; the batch in hand is finished first when
// PostgreSQL answers. It returns nil on cancellation, an error only if it cannot start.
func (a *Archiver) Run(ctx context.Context) error {
	cons, err := a.js.CreateOrUpdateConsumer(ctx, store.StreamName, jetstream.ConsumerConfig{
		Durable:       ArchiveConsumerName,
		Description:   "AdMetric: events into the PostgreSQL archive",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       a.opts.AckWait,
		MaxAckPending: 4 * a.opts.BatchSize,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return fmt.Errorf("aggregator: archive consumer: %w", err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(2 * a.opts.BatchSize))
	if err != nil {
		return fmt.Errorf("aggregator: archive consumer: %w", err)
	}
	defer it.Stop()
	a.logger.Info("archiver started")

	batch := make([]jetstream.Msg, 0, a.opts.BatchSize)
	rows := make([]store.ArchivedEvent, 0, a.opts.BatchSize)
	for {
		batch, err = nextBatch(ctx, it, batch[:0], a.opts.BatchSize, a.opts.Linger)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("aggregator: archive consumer: %w", err)
		}
		rows = rows[:0]
		acks := batch[:0:0]
		for _, msg := range batch {
			rec, err := decodeMsg(msg, nil)
			if err != nil {
				a.metrics.poison.WithLabelValues("archive").Inc()
				a.logger.Warn("terminating poison message", "err", err)
				_ = msg.Term()
				continue
			}
			rows = append(rows, toRow(rec))
			acks = append(acks, msg)
		}
		if !a.insertRetrying(ctx, rows) {
			return nil // shutting down; the unacked batch is redelivered later
		}
		for _, msg := range acks {
			// A lost ack only means a redelivery, which the insert absorbs.
			_ = msg.Ack()
		}
	}
}

func (a *Archiver) insertRetrying(ctx context.Context, rows []store.ArchivedEvent) bool {
	backoff := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		n, err := a.archive.Insert(ctx, rows)
		if err == nil {
			a.metrics.archived.Add(float64(n))
			if attempt > 1 {
				a.logger.Info("archive insert succeeded after retries", "attempts", attempt)
			}
			return true
		}
		if errors.Is(err, context.Canceled) || ctx.Err() != nil {
			return false
		}
		a.metrics.archiveErrors.Inc()
		if attempt == 1 || attempt%20 == 0 {
			a.logger.Warn("archive insert failed; retrying", "err", err, "attempt", attempt, "rows", len(rows))
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func toRow(r Record) store.ArchivedEvent {
	return store.ArchivedEvent{
		EventID:    r.Event.EventID,
		Type:       string(r.Event.Type),
		AdID:       r.Event.AdID,
		OccurredAt: r.Event.Timestamp,
		IP:         r.Event.IP,
		UserAgent:  r.Event.UserAgent,
		PlaybackMS: int64(r.Event.PlaybackMillis()),
		StreamSeq:  r.Seq,
	}
}
