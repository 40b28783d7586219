package ingest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/ingest/spool"
)

// A spooled record holds what the publish would have sent: the subject, the
// message ID and the event JSON, each but the last length-prefixed (uvarint).
func encodeSpooled(subject, msgID string, data []byte) []byte {
	b := make([]byte, 0, len(subject)+len(msgID)+len(data)+4)
	b = binary.AppendUvarint(b, uint64(len(subject)))
	b = append(b, subject...)
	b = binary.AppendUvarint(b, uint64(len(msgID)))
	b = append(b, msgID...)
	return append(b, data...)
}

var errBadSpooled = errors.New("ingest: malformed spooled record")

func decodeSpooled(b []byte) (subject, msgID string, data []byte, err error) {
	field := func() (string, bool) {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return "", false
		}
		s := string(b[k : k+int(n)])
		b = b[k+int(n):]
		return s, true
	}
	subject, ok := field()
	if !ok || subject == "" {
		return "", "", nil, errBadSpooled
	}
	if msgID, ok = field(); !ok {
		return "", "", nil, errBadSpooled
	}
	return subject, msgID, b, nil
}

// Replayer publishes what the spool holds once the stream answers again, in
// spool order and with the original Nats-Msg-Id, so that an event whose first
// publish was stored after all is deduplicated by the stream (within its
// duplicate window).
type Replayer struct {
	nc      *nats.Conn
	js      jetstream.JetStream
	spool   *spool.Spool
	logger  *slog.Logger
	metrics *Metrics
}

// NewReplayer returns a replayer of sp onto the stream behind nc.
func NewReplayer(nc *nats.Conn, sp *spool.Spool, logger *slog.Logger, metrics *Metrics) (*Replayer, error) {
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(replayChunk+64))
	if err != nil {
		return nil, fmt.Errorf("ingest: jetstream: %w", err)
	}
	return &Replayer{nc: nc, js: js, spool: sp, logger: logger.With("component", "spool-replayer"),
		metrics: metrics}, nil
}

const (
	// replayChunk is the most records in flight at once during a replay.
	replayChunk = 1000
	// replayPoll is how often Run looks for records to replay.
	replayPoll = 250 * time.Millisecond
)

// Run replays whenever the spool holds records and NATS is connected, until ctx
// ends; leftover segments from an earlier run are replayed first. A failed
// replay is logged once, with the wait, and retried with exponential backoff
// and jitter (1s growing to 10s) for as long as NATS stays connected. Run
// returns nil when ctx ends.
func (r *Replayer) Run(ctx context.Context) error {
	poll := time.NewTicker(replayPoll)
	defer poll.Stop()
	retry := backoff.NewExponentialBackOff()
	retry.InitialInterval = time.Second
	retry.MaxInterval = 10 * time.Second
	for {
		if !r.spool.Empty() && r.nc.IsConnected() {
			r.drain(ctx, retry)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-poll.C:
		}
	}
}

// drain replays the spool, retrying with b until a replay succeeds, NATS is
// disconnected (the poll in Run takes over until it is back) or ctx ends.
func (r *Replayer) drain(ctx context.Context, b backoff.BackOff) {
	replay := func() (struct{}, error) {
		if !r.nc.IsConnected() {
			return struct{}{}, backoff.Permanent(errDisconnected)
		}
		began := time.Now()
		if err := r.spool.Replay(ctx, r.publishAll); err != nil {
			return struct{}{}, err
		}
		r.logger.Info("spool replayed", "took", time.Since(began).Round(time.Millisecond))
		return struct{}{}, nil
	}
	// Errors are logged by the notify function as they happen; what Retry
	// returns (ctx's end, or errDisconnected) needs no further word.
	_, _ = backoff.Retry(ctx, replay, backoff.WithBackOff(b), backoff.WithMaxElapsedTime(0),
		backoff.WithNotify(func(err error, wait time.Duration) {
			r.logger.Warn("spool replay failed; retrying", "err", err, "backoff", wait)
		}))
}

// publishAll publishes payloads, a chunk at a time in flight, and returns nil
// only when every one was acknowledged.
func (r *Replayer) publishAll(ctx context.Context, payloads [][]byte) error {
	for len(payloads) > 0 {
		chunk := payloads[:min(len(payloads), replayChunk)]
		payloads = payloads[len(chunk):]
		futs := make([]jetstream.PubAckFuture, 0, len(chunk))
		for _, p := range chunk {
			subject, id, data, err := decodeSpooled(p)
			if err != nil {
				// Intact by its checksum yet not ours: nothing to publish, and
				// keeping it would block the spool for good.
				r.logger.Error("dropping an unreadable spool record", "err", err, "bytes", len(p))
				continue
			}
			m := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
			if id != "" {
				m.Header.Set(jetstream.MsgIDHeader, id)
			}
			fut, err := r.js.PublishMsgAsync(m)
			if err != nil {
				return fmt.Errorf("ingest: replay publish: %w", err)
			}
			futs = append(futs, fut)
		}
		timer := time.NewTimer(10 * time.Second)
		for _, f := range futs {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				timer.Stop()
				return fmt.Errorf("ingest: replay publish: %w", err)
			case <-timer.C:
				return errors.New("ingest: replay publish: no PubAck within 10s")
			case <-ctx.Done():
				timer.Stop()
				return fmt.Errorf("ingest: replay: %w", ctx.Err())
			}
		}
		timer.Stop()
		r.metrics.replayed(len(futs))
	}
	return nil
}
