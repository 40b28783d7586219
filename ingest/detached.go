package ingest

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
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
	// sent holds the messages handed to the client and not yet completed:
	// whoever removes one (the ack handler, the error handler, or send when
	// the client refused it) completes it, once, and frees its slot. The
	// client may report one failure twice (a reconnect's sweep, then the
	// publish itself failing).
	sent sync.Map // *nats.Msg → struct{}
	// failed receives what the stream did not acknowledge, from the
	// client's goroutines, for Run to spool. It holds MaxPending: one per
	// slot, so it is never full.
	failed chan failedMsg

	mu      sync.RWMutex // Lock: Run stops taking events; RLock: Publish queues one
	stopped bool
	losing  atomic.Bool // the last spool failed too; for logging transitions only
}

// failedMsg is a message the stream did not take, and why.
type failedMsg struct {
	msg *nats.Msg
	err error
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
		failed: make(chan failedMsg, pub.opts.MaxPending),
	}
	js, err := jetstream.New(pub.nc,
		jetstream.WithPublishAsyncMaxPending(pub.opts.MaxPending+64),
		jetstream.WithPublishAsyncTimeout(pub.opts.Timeout),
		jetstream.WithPublishAsyncAckHandler(func(_ jetstream.JetStream, msg *nats.Msg, ack *jetstream.PubAck) {
			if _, ok := d.sent.LoadAndDelete(msg); !ok {
				return
			}
			<-d.slots
			if ack.Duplicate {
				pub.opts.Metrics.outcome("duplicate")
			} else {
				pub.opts.Metrics.outcome(string(Accepted))
			}
		}),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, msg *nats.Msg, err error) {
			if _, ok := d.sent.LoadAndDelete(msg); !ok {
				return
			}
			// Never blocks (see failed); the client may hold a lock here.
			select {
			case d.failed <- failedMsg{msg, err}:
			default:
				go d.spoolFailed(msg, err)
			}
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
// event is acknowledged or spooled, at most about the publisher's Timeout;
// it returns nil. Call it once; the spool must stay open until it returns.
func (d *DetachedPublisher) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			d.drain()
			return nil
		case f := <-d.failed:
			d.spoolFailed(f.msg, f.err)
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
	d.sent.Store(msg, struct{}{})
	if _, err := d.js.PublishMsgAsync(msg); err != nil {
		if _, ok := d.sent.LoadAndDelete(msg); ok {
			d.spoolFailed(msg, err)
		}
	}
}

// spoolFailed spools msg, which the stream did not take (why) and which
// holds a slot, and frees the slot. A spool that fails too (full) loses the
// event: logged once until the spool takes one again, counted always.
func (d *DetachedPublisher) spoolFailed(msg *nats.Msg, why error) {
	defer func() { <-d.slots }()
	if err := d.spool(msg, fmt.Errorf("ingest: detached publish: %w", why)); err != nil {
		if d.losing.CompareAndSwap(false, true) {
			d.pub.logger.Error("tracking events the stream does not take cannot be spooled either; they are lost until the spool takes them again",
				"event_id", msg.Header.Get(jetstream.MsgIDHeader), "err", err)
		}
		return
	}
	d.losing.Store(false)
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
	// A bound in case the client never answers for a message (it should,
	// after Timeout): a stop must end.
	giveUp := time.After(2*d.pub.opts.Timeout + 5*time.Second)
	for len(d.slots) > 0 {
		select {
		case f := <-d.failed:
			d.spoolFailed(f.msg, f.err)
		case <-tick.C:
		case <-giveUp:
			d.pub.logger.Error("tracking events still in flight at shutdown were neither acknowledged nor spooled; they may be lost",
				"events", len(d.slots))
			return
		}
	}
}
