package ingest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/ingest/event"
)

// DetachedPublisher publishes events without waiting for the stream's
// PubAck, for senders that never retry and learn nothing from the answer:
// tracking pixels, whose GIF is the same whatever happens. Publish returns
// once the event is queued; Run publishes the queue in batches (one socket
// write for many events) and spools every event the stream does not
// acknowledge within the publisher's Timeout, as Publisher.Publish would.
// An event is spooled at once while NATS is disconnected or MaxPending
// events are in flight.
//
// What it gives up for speed: an event is in memory from Publish until its
// PubAck (a few milliseconds), so a process killed outright loses the
// pixels in flight, at most MaxPending. A stop through Run's context
// publishes or spools every one of them first.
//
// Build with NewDetachedPublisher, then Run it. Safe for concurrent use.
type DetachedPublisher struct {
	pub   *Publisher
	js    jetstream.JetStream
	slots chan struct{} // one per event queued or awaiting its PubAck
	queue chan *nats.Msg
	// failed receives what the stream did not acknowledge, from the
	// client's goroutine, for Run to spool. It holds MaxPending: never full.
	failed chan *nats.Msg

	mu      sync.RWMutex // Lock: Run stops taking events; RLock: Publish queues one
	stopped bool
}

// detachedLinger is how long Run lets events gather after the first of a
// batch: about the time a busy intake takes to queue dozens more.
const detachedLinger = time.Millisecond

// NewDetachedPublisher returns a detached publisher sharing pub's
// connection, options (Timeout, MaxPending, spool, metrics) and logger.
func NewDetachedPublisher(pub *Publisher) (*DetachedPublisher, error) {
	d := &DetachedPublisher{pub: pub,
		slots:  make(chan struct{}, pub.opts.MaxPending),
		queue:  make(chan *nats.Msg, pub.opts.MaxPending),
		failed: make(chan *nats.Msg, pub.opts.MaxPending),
	}
	js, err := jetstream.New(pub.nc,
		jetstream.WithPublishAsyncMaxPending(pub.opts.MaxPending+64),
		jetstream.WithPublishAsyncTimeout(pub.opts.Timeout),
		jetstream.WithPublishAsyncAckHandler(func(_ jetstream.JetStream, _ *nats.Msg, ack *jetstream.PubAck) {
			<-d.slots
			if ack.Duplicate {
				pub.opts.Metrics.outcome("duplicate")
			} else {
				pub.opts.Metrics.outcome(string(Accepted))
			}
		}),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, msg *nats.Msg, _ error) {
			d.failed <- msg // its slot is freed once it is spooled
		}))
	if err != nil {
		return nil, fmt.Errorf("ingest: jetstream: %w", err)
	}
	d.js = js
	return d, nil
}

// Publish queues ev for the stream, or spools it at once when NATS is
// disconnected, MaxPending events are in flight or Run has stopped. Its
// error is that of the spool (wrapping ErrSpoolFull or ErrUnavailable): the
// event is then lost.
func (d *DetachedPublisher) Publish(ev *event.Event) error {
	data, err := ev.Marshal()
	if err != nil {
		return fmt.Errorf("ingest: %w", err)
	}
	msg := &nats.Msg{Subject: ev.Subject(), Data: data, Header: nats.Header{jetstream.MsgIDHeader: []string{ev.EventID}}}
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.stopped || !d.pub.nc.IsConnected() {
		return d.spool(msg, errDisconnected)
	}
	select {
	case d.slots <- struct{}{}:
	default:
		return d.spool(msg, ErrBusy)
	}
	d.queue <- msg // never blocks: it holds as many as there are slots
	return nil
}

// InFlight is how many events are queued or awaiting their PubAck.
func (d *DetachedPublisher) InFlight() int { return len(d.slots) }

// spool stores msg, which the stream did not take (why), in the spool.
func (d *DetachedPublisher) spool(msg *nats.Msg, why error) error {
	_, err := d.pub.toSpool(context.Background(), msg, msg.Header.Get(jetstream.MsgIDHeader), why)
	return err
}

// Run publishes what Publish queues, in batches, and spools what the stream
// does not acknowledge, until ctx ends. Then it stops taking events (later
// ones are spooled by Publish), publishes the queue, and waits until every
// event is acknowledged or spooled; it returns nil.
func (d *DetachedPublisher) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			d.drain()
			return nil
		case msg := <-d.failed:
			d.spoolFailed(msg)
		case msg := <-d.queue:
			// Let a batch gather, so that the client writes it at once.
			time.Sleep(detachedLinger)
			d.send(msg)
			for n := len(d.queue); n > 0; n-- {
				d.send(<-d.queue)
			}
		}
	}
}

// send publishes msg; what the client refuses outright is spooled.
func (d *DetachedPublisher) send(msg *nats.Msg) {
	if _, err := d.js.PublishMsgAsync(msg); err != nil {
		d.spoolFailed(msg)
	}
}

// spoolFailed spools msg, which holds a slot, and frees the slot.
func (d *DetachedPublisher) spoolFailed(msg *nats.Msg) {
	if err := d.spool(msg, errors.New("ingest: no PubAck for a detached publish")); err != nil {
		d.pub.logger.Error("a tracking event the stream did not take could not be spooled either; it is lost",
			"event_id", msg.Header.Get(jetstream.MsgIDHeader), "err", err)
	}
	<-d.slots
}

// drain stops Publish from queueing, publishes the queue and spools what
// fails until no event is in flight. The client's own timeout fails every
// publish still unacknowledged after Timeout, so this ends.
func (d *DetachedPublisher) drain() {
	d.mu.Lock()
	d.stopped = true
	d.mu.Unlock()
	for n := len(d.queue); n > 0; n-- {
		d.send(<-d.queue)
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for len(d.slots) > 0 {
		select {
		case msg := <-d.failed:
			d.spoolFailed(msg)
		case <-tick.C:
		}
	}
}
