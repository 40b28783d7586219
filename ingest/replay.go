package ingest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"time"

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
	every   time.Duration
}

// NewReplayer returns a replayer of sp onto the stream behind nc.
func NewReplayer(nc *nats.Conn, sp *spool.Spool, logger *slog.Logger, metrics *Metrics) (*Replayer, error) {
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(replayChunk+64))
	if err != nil {
		return nil, fmt.Errorf("ingest: jetstream: %w", err)
	}
	return &Replayer{nc: nc, js: js, spool: sp, logger: logger.With("component", "spool-replayer"),
		metrics: metrics, every: 250 * time.Millisecond}, nil
}

// replayChunk is the most records in flight at once during a replay.
const replayChunk = 1000

// Run replays whenever the spool holds records and NATS is connected, until ctx
// ends. Leftover segments from an earlier run are replayed first. A failed
// replay is retried after a pause; it returns nil when ctx ends.
func (r *Replayer) Run(ctx context.Context) error {
	backoff := time.Second
	for {
		if !r.spool.Empty() && r.nc.IsConnected() {
			began := time.Now()
			if err := r.spool.Replay(ctx, r.publishAll); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				r.logger.Warn("spool replay failed; retrying", "err", err, "backoff", backoff)
				sleepCtx(ctx, backoff)
				backoff = min(2*backoff, 10*time.Second)
				continue
			}
			backoff = time.Second
			r.logger.Info("spool replayed", "took", time.Since(began).Round(time.Millisecond))
		}
		if !sleepCtx(ctx, r.every) {
			return nil
		}
	}
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
				return errors.New("ingest: replay: no PubAck within 10s")
			case <-ctx.Done():
				timer.Stop()
				return ctx.Err()
			}
		}
		timer.Stop()
		r.metrics.replayed(len(futs))
	}
	return nil
}

// sleepCtx waits d or until ctx ends, reporting whether ctx is still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
