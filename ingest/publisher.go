package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/eapache/go-resiliency/breaker"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/ingest/spool"
)

// Sentinels callers branch on. Each means the event was not accepted: the
// client should retry with the same event_id.
var (
	// ErrUnavailable: the stream did not acknowledge the event and there is no
	// spool to fall back on, or the spool failed.
	ErrUnavailable = errors.New("ingest: event stream unavailable")
	// ErrBusy: MaxPending publishes are already waiting for their acks.
	ErrBusy = errors.New("ingest: too many events in flight")
	// ErrSpoolFull: the stream is unavailable and the spool holds its bound.
	ErrSpoolFull = errors.New("ingest: event stream unavailable and spool full")
)

// Status says where an accepted event is.
type Status string

const (
	// Accepted: the stream acknowledged the event.
	Accepted Status = "accepted"
	// Spooled: the stream was unavailable; the event is fsync'd in the local
	// spool and the replayer publishes it once the stream answers.
	Spooled Status = "spooled"
)

// Result is the outcome of an accepted event.
type Result struct {
	Status Status
}

// PublisherOptions configure a Publisher. Timeout and MaxPending are required:
// their defaults live in package config (PUBLISH_TIMEOUT, MAX_PENDING_PUBLISHES).
type PublisherOptions struct {
	// Timeout bounds the wait for a PubAck; past it the event is spooled.
	// Required: NewPublisher fails when it is zero or negative.
	Timeout time.Duration
	// MaxPending bounds the publishes awaiting their acks; beyond it Publish
	// answers ErrBusy at once, so memory stays bounded under any load.
	// Required: NewPublisher fails when it is zero or negative.
	MaxPending int
	// Spool receives events the stream did not take. Nil: such events fail
	// with ErrUnavailable.
	Spool *spool.Spool
	// Breaker guards the stream: once open, events go straight to the spool
	// instead of each waiting out Timeout. Default: open after 5 failures
	// without a 2s quiet spell, probe again after 2s.
	Breaker *breaker.Breaker
	// Logger receives one line when the publisher starts spooling events and
	// one when the stream takes them again. Default: a logger that discards
	// everything.
	Logger *slog.Logger
	// Metrics count the outcome of every Publish; nil counts nothing.
	Metrics *Metrics
}

// Publisher publishes validated events to the event stream, pipelined: many
// concurrent Publish calls share the connection, each waiting only for its own
// PubAck. Safe for concurrent use.
type Publisher struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	opts     PublisherOptions
	pending  chan struct{}
	logger   *slog.Logger
	spooling atomic.Bool // the last event went to the spool; for logging transitions only
}

// NewPublisher returns a publisher on nc. It fails when Timeout or MaxPending
// is not positive.
func NewPublisher(nc *nats.Conn, opts PublisherOptions) (*Publisher, error) {
	if opts.Timeout <= 0 {
		return nil, fmt.Errorf("ingest: PublisherOptions.Timeout must be positive, not %s", opts.Timeout)
	}
	if opts.MaxPending <= 0 {
		return nil, fmt.Errorf("ingest: PublisherOptions.MaxPending must be positive, not %d", opts.MaxPending)
	}
	if opts.Breaker == nil {
		opts.Breaker = breaker.New(5, 1, 2*time.Second)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	// The client's own bound on async publishes sits above ours, so that ours
	// answers first (with a 503) instead of the client stalling requests.
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(opts.MaxPending+64),
		jetstream.WithPublishAsyncTimeout(opts.Timeout))
	if err != nil {
		return nil, fmt.Errorf("ingest: jetstream: %w", err)
	}
	return &Publisher{nc: nc, js: js, opts: opts, pending: make(chan struct{}, opts.MaxPending),
		logger: opts.Logger.With("component", "publisher")}, nil
}

var errDisconnected = errors.New("ingest: not connected to NATS")

// Publish stores ev in the stream with Nats-Msg-Id = ev.EventID, or in the
// spool when the stream does not acknowledge it within Timeout (or the breaker
// is open). It returns only once the event is durable in one or the other.
// Errors wrap ErrBusy, ErrSpoolFull or ErrUnavailable; the event is then not
// accepted, though a publish that timed out may still be stored (a retry with
// the same event_id is deduplicated by the stream).
func (p *Publisher) Publish(ctx context.Context, ev *event.Event) (Result, error) {
	data, err := ev.Marshal()
	if err != nil {
		return Result{}, fmt.Errorf("ingest: %w", err)
	}
	select {
	case p.pending <- struct{}{}:
	default:
		p.opts.Metrics.outcome("busy")
		return Result{}, ErrBusy
	}
	defer func() { <-p.pending }()

	msg := &nats.Msg{Subject: ev.Subject(), Data: data, Header: nats.Header{jetstream.MsgIDHeader: []string{ev.EventID}}}
	dup, err := p.toStream(msg)
	if err != nil {
		return p.toSpool(ctx, msg, ev.EventID, err)
	}
	if p.spooling.Load() && p.spooling.CompareAndSwap(true, false) {
		p.logger.Info("the event stream takes events again; publishing directly")
	}
	if dup {
		p.opts.Metrics.outcome("duplicate")
	} else {
		p.opts.Metrics.outcome(string(Accepted))
	}
	return Result{Status: Accepted}, nil
}

// toStream publishes msg through the breaker, reporting whether the stream
// already held its message ID.
func (p *Publisher) toStream(msg *nats.Msg) (duplicate bool, err error) {
	if !p.nc.IsConnected() {
		// While reconnecting the client would buffer the message and the
		// request would wait out Timeout for nothing. The breaker is for a
		// connection that is up yet does not answer; it would only delay the
		// first publishes after a reconnect.
		return false, errDisconnected
	}
	err = p.opts.Breaker.Run(func() error {
		var err error
		duplicate, err = p.publish(msg)
		return err
	})
	return duplicate, err
}

// toSpool stores msg, which the stream did not take (streamErr), in the spool.
func (p *Publisher) toSpool(ctx context.Context, msg *nats.Msg, eventID string, streamErr error) (Result, error) {
	if p.opts.Spool == nil {
		p.opts.Metrics.outcome("unavailable")
		return Result{}, fmt.Errorf("%w: %w", ErrUnavailable, streamErr)
	}
	if err := p.opts.Spool.Append(ctx, encodeSpooled(msg.Subject, eventID, msg.Data)); err != nil {
		if errors.Is(err, spool.ErrFull) {
			p.opts.Metrics.outcome("spool_full")
			return Result{}, fmt.Errorf("%w: %w", ErrSpoolFull, streamErr)
		}
		p.opts.Metrics.outcome("unavailable")
		return Result{}, fmt.Errorf("%w: %w (spool: %w)", ErrUnavailable, streamErr, err)
	}
	if !p.spooling.Load() && p.spooling.CompareAndSwap(false, true) {
		p.logger.Warn("the event stream does not take events; spooling them", "err", streamErr)
	}
	p.opts.Metrics.outcome(string(Spooled))
	return Result{Status: Spooled}, nil
}

// publish sends msg and waits for its PubAck, at most Timeout. The request's
// context is deliberately not consulted: once sent, the event may be stored, and
// the caller must learn which way it went to spool it or not.
func (p *Publisher) publish(msg *nats.Msg) (duplicate bool, err error) {
	fut, err := p.js.PublishMsgAsync(msg)
	if err != nil {
		return false, err
	}
	timer := time.NewTimer(p.opts.Timeout)
	defer timer.Stop()
	select {
	case ack := <-fut.Ok():
		return ack.Duplicate, nil
	case err := <-fut.Err():
		return false, err
	case <-timer.C:
		return false, fmt.Errorf("ingest: no PubAck within %s", p.opts.Timeout)
	}
}
