package aggregator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/postgres"
)

// The rollup writer's decisions reach the archive through the decision
// stream (store.DecisionStream): before it commits a batch to the day
// bucket, a writer publishes the events of the batch its rules found
// invalid, and the archiver sets their invalid_reason once it has archived
// them. Decisions are a function of the stream, so publishing a batch's
// again after a crash publishes the same ones, and setting a reason twice
// changes nothing. The intake's reasons travel in the events themselves.

// Decision is one event a rule found invalid.
type Decision struct {
	EventID string
	Reason  event.InvalidReason
}

// maxDecisionBytes bounds one decision message, below the server's payload
// limit (1 MiB).
const maxDecisionBytes = 512 << 10

// EncodeDecisions encodes ds as one decision message's data: a JSON array
// of [event_id, reason] pairs.
func EncodeDecisions(ds []Decision) []byte {
	pairs := make([][2]string, len(ds))
	for i, d := range ds {
		pairs[i] = [2]string{d.EventID, string(d.Reason)}
	}
	data, _ := json.Marshal(pairs) // strings only: cannot fail
	return data
}

// ErrBadDecisions is returned for a decision message that does not decode.
var ErrBadDecisions = errors.New("aggregator: bad decision message")

// DecodeDecisions decodes what EncodeDecisions made.
func DecodeDecisions(data []byte) ([]Decision, error) {
	var pairs [][]string
	if err := json.Unmarshal(data, &pairs); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadDecisions, err)
	}
	ds := make([]Decision, len(pairs))
	for i, p := range pairs {
		if len(p) != 2 {
			return nil, fmt.Errorf("%w: entry %d has %d fields, want 2", ErrBadDecisions, i, len(p))
		}
		r := event.InvalidReason(p[1])
		if p[0] == "" || !r.Valid() {
			return nil, fmt.Errorf("%w: entry %d: %q %q", ErrBadDecisions, i, p[0], p[1])
		}
		ds[i] = Decision{EventID: p[0], Reason: r}
	}
	return ds, nil
}

// publishDecisions publishes the decisions of the rules among recs (not the
// intake's), in messages of at most maxDecisionBytes, and returns once the
// stream stored them.
func (w *RollupWriter) publishDecisions(ctx context.Context, recs []Record) error {
	var ds []Decision
	size := 0
	flush := func() error {
		if len(ds) == 0 {
			return nil
		}
		msg := nats.NewMsg(store.DecisionSubject(w.opts.Partition))
		msg.Data = EncodeDecisions(ds)
		if _, err := w.js.PublishMsg(ctx, msg); err != nil {
			return fmt.Errorf("aggregator: publish %d decisions: %w", len(ds), err)
		}
		ds, size = ds[:0], 0
		return nil
	}
	for i := range recs {
		e := &recs[i].Event
		switch e.InvalidReason {
		case "", event.BadSignature, event.Playback:
			continue // valid, or the intake's: in the event already
		}
		ds = append(ds, Decision{EventID: e.EventID, Reason: e.InvalidReason})
		if size += len(e.EventID) + 32; size >= maxDecisionBytes {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// DecisionConsumerName is the archiver's durable consumer of the decision
// stream.
const DecisionConsumerName = "archive-decisions"

// A decision message whose events are not all archived yet (the archiver
// is behind, or PostgreSQL is down) waits before it is tried again:
// decisionRetry at first, twice as long each time after, up to
// maxDecisionRetry. It is never given up: PostgreSQL may be down as long as
// the event streams keep events, and the decision stream keeps its messages
// as long (store.CreateOrUpdateDecisionStream), so a message whose event the
// archive never takes (one dead-lettered) ends with its stream's MaxAge.
const (
	decisionRetry    = 2 * time.Second
	maxDecisionRetry = time.Minute
)

// decisionDelay is how long a decision message delivered n times waits
// before the next try.
func decisionDelay(n uint64) time.Duration {
	d := decisionRetry
	for ; n > 1 && d < maxDecisionRetry; n-- {
		d *= 2
	}
	return min(d, maxDecisionRetry)
}

// applyDecisions sets the invalid_reason of archived events from the
// decision stream until ctx ends, setting its consumer up again when NATS
// fails it.
func (a *Archiver) applyDecisions(ctx context.Context) {
	for ctx.Err() == nil {
		err := a.consumeDecisions(ctx)
		if ctx.Err() != nil {
			return
		}
		a.metrics.restarts.WithLabelValues(DecisionConsumerName).Inc()
		a.logger.Warn("decision consumer failed; setting it up again", "err", err)
		pause(ctx, 2*time.Second)
	}
}

func (a *Archiver) consumeDecisions(ctx context.Context) error {
	cons, err := a.js.CreateOrUpdateConsumer(ctx, store.DecisionStream, jetstream.ConsumerConfig{
		Durable:       DecisionConsumerName,
		Description:   "AdMetric: invalid-traffic decisions into the PostgreSQL archive",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       a.opts.AckWait,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		MaxAckPending: 1000,
	})
	if err != nil {
		return fmt.Errorf("aggregator: decision consumer: %w", err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(100))
	if err != nil {
		return fmt.Errorf("aggregator: decision consumer: %w", err)
	}
	defer it.Stop()
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("aggregator: decision consumer: %w", err)
		}
		a.applyDecision(ctx, msg)
	}
}

// applyDecision applies one decision message: acknowledged once every event
// it names is archived with its reason, tried again later while some are
// not archived yet or PostgreSQL fails.
func (a *Archiver) applyDecision(ctx context.Context, msg jetstream.Msg) {
	ds, err := DecodeDecisions(msg.Data())
	if err != nil {
		a.poison(ctx, msg, err)
		return
	}
	// An event named twice would make the archived count fall short of
	// the names forever: one name each (the first decision; they agree).
	ids, reasons := make([]string, 0, len(ds)), make([]string, 0, len(ds))
	seen := make(map[string]bool, len(ds))
	for _, d := range ds {
		if !seen[d.EventID] {
			seen[d.EventID] = true
			ids, reasons = append(ids, d.EventID), append(reasons, string(d.Reason))
		}
	}
	ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), insertTimeout)
	defer cancel()
	archived, err := a.archive.MarkInvalid(ictx, ids, reasons)
	switch {
	case err == nil && archived == len(ids):
		_ = msg.Ack()
	case err != nil && postgres.IsDataError(err):
		a.poison(ctx, msg, err)
	default:
		delivered := uint64(1)
		if meta, merr := msg.Metadata(); merr == nil {
			delivered = meta.NumDelivered
		}
		_ = msg.NakWithDelay(decisionDelay(delivered))
	}
}
