package ingest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/ingest/event"
)

// ErrUnavailable is returned by Publish when the stream did not acknowledge the
// event: NATS is unreachable, or the publish timed out. The event is not accepted.
var ErrUnavailable = errors.New("ingest: event stream unavailable")

// Publisher publishes validated events to the event stream. Safe for concurrent use.
type Publisher struct {
	js      jetstream.JetStream
	timeout time.Duration
}

// NewPublisher returns a publisher that waits at most timeout for each PubAck.
func NewPublisher(js jetstream.JetStream, timeout time.Duration) *Publisher {
	return &Publisher{js: js, timeout: timeout}
}

// Publish sends ev on its subject with Nats-Msg-Id = ev.EventID and returns once
// JetStream has stored it. duplicate is true when the stream already held that
// event ID (a retried request): the event is stored once and counted once.
// Errors wrap ErrUnavailable when the stream did not answer.
func (p *Publisher) Publish(ctx context.Context, ev *event.Event) (duplicate bool, err error) {
	data, err := ev.Marshal()
	if err != nil {
		return false, err
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	ack, err := p.js.Publish(ctx, ev.Subject(), data, jetstream.WithMsgID(ev.EventID))
	if err != nil {
		return false, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return ack.Duplicate, nil
}
