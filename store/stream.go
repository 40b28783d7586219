package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// StreamName is the JetStream stream holding every accepted event.
const StreamName = "ADMETRIC_EVENTS"

// StreamOptions size the event stream. Every field must be set: the
// defaults are the service's configuration's (package config).
type StreamOptions struct {
	// MaxAge is how long events stay: the longest outage of a consumer (the
	// archive during a PostgreSQL outage) that can be caught up from the stream.
	MaxAge time.Duration
	// Duplicates is the window within which a repeated Nats-Msg-Id is dropped.
	Duplicates time.Duration
	// Replicas is 1 for a single server, 3 for a production cluster.
	Replicas int
	// Partitions is how many partitions the stream spreads ads over.
	Partitions int
}

// ErrInvalidOptions is returned for options a stream or bucket cannot be
// made with.
var ErrInvalidOptions = errors.New("store: invalid options")

func (o StreamOptions) validate() error {
	switch {
	case o.MaxAge <= 0:
		return fmt.Errorf("%w: stream MaxAge %s", ErrInvalidOptions, o.MaxAge)
	case o.Duplicates <= 0:
		return fmt.Errorf("%w: stream Duplicates %s", ErrInvalidOptions, o.Duplicates)
	case o.Replicas < 1:
		return fmt.Errorf("%w: stream Replicas %d", ErrInvalidOptions, o.Replicas)
	case o.Partitions < 1:
		return fmt.Errorf("%w: stream Partitions %d", ErrInvalidOptions, o.Partitions)
	}
	return nil
}

// CreateOrUpdateEventStream creates the event stream, or updates it to opts.
func CreateOrUpdateEventStream(ctx context.Context, js jetstream.JetStream, opts StreamOptions) (jetstream.Stream, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:             StreamName,
		Description:      "AdMetric ad events: ads.events.<type>.<ad_id>, stored as ads.events.<partition>.<type>.<ad_id>",
		Subjects:         []string{eventSubjects},
		Storage:          jetstream.FileStorage,
		Retention:        jetstream.LimitsPolicy,
		MaxAge:           opts.MaxAge,
		Duplicates:       opts.Duplicates,
		Replicas:         opts.Replicas,
		Discard:          jetstream.DiscardOld,
		SubjectTransform: partitionTransform(opts.Partitions),
	})
	if err != nil {
		return nil, fmt.Errorf("store: stream %s: %w", StreamName, err)
	}
	return s, nil
}

// DeadLetterStream holds the stream messages that can never be processed, on
// ads.dlq.<reason>, each with its reason and origin in headers.
const DeadLetterStream = "ADMETRIC_DLQ"

// Headers of a dead-lettered message.
const (
	HeaderPoisonReason   = "AdMetric-Poison-Reason"
	HeaderOriginSubject  = "AdMetric-Origin-Subject"
	HeaderOriginSequence = "AdMetric-Origin-Sequence"
)

// CreateOrUpdateDeadLetterStream creates or updates the dead-letter stream;
// its messages are kept for maxAge.
func CreateOrUpdateDeadLetterStream(ctx context.Context, js jetstream.JetStream, maxAge time.Duration, replicas int) error {
	if maxAge <= 0 || replicas < 1 {
		return fmt.Errorf("%w: dead-letter stream MaxAge %s, Replicas %d", ErrInvalidOptions, maxAge, replicas)
	}
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        DeadLetterStream,
		Description: "AdMetric: stream messages that are not valid events, on ads.dlq.<reason>",
		Subjects:    []string{deadLetterSubjects},
		Storage:     jetstream.FileStorage,
		MaxAge:      maxAge,
		Replicas:    replicas,
	})
	if err != nil {
		return fmt.Errorf("store: stream %s: %w", DeadLetterStream, err)
	}
	return nil
}

// DeadLetter publishes a copy of msg, a message of the event stream that can
// never be processed, to ads.dlq.<reason>, with cause and msg's subject and
// sequence in headers. It returns once the dead-letter stream stored it;
// only then may the caller terminate msg. On error msg must stay
// unacknowledged so that it comes back: a poison message is moved aside,
// never dropped.
func DeadLetter(ctx context.Context, js jetstream.JetStream, msg jetstream.Msg, reason string, cause error) error {
	dl := nats.NewMsg(deadLetterSubject(reason))
	dl.Data = msg.Data()
	dl.Header.Set(HeaderPoisonReason, cause.Error())
	dl.Header.Set(HeaderOriginSubject, msg.Subject())
	if meta, err := msg.Metadata(); err == nil {
		dl.Header.Set(HeaderOriginSequence, strconv.FormatUint(meta.Sequence.Stream, 10))
	}
	if _, err := js.PublishMsg(ctx, dl); err != nil {
		return fmt.Errorf("store: dead-letter to %s: %w", dl.Subject, err)
	}
	return nil
}
