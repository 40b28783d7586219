package aggregator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// MembersBucket holds one key per live aggregator process, refreshed by its
// heartbeat and expired by the bucket's TTL.
const MembersBucket = "ADMETRIC_AGGREGATORS"

const (
	heartbeatEvery = 2 * time.Second
	memberTTL      = 3 * heartbeatEvery
)

// Members is this process's view of the live aggregator processes, so that
// its rollup writers can hand partitions above a fair share to the others:
// the pinned-client policy alone gives every partition to the first process
// that asks and moves them only when it dies. Safe for concurrent use.
type Members struct {
	kv     jetstream.KeyValue
	id     string
	logger *slog.Logger

	live  atomic.Int64 // live processes, this one included
	owned atomic.Int64 // partitions this process's writers hold now
	mu    sync.Mutex   // one release at a time
	last  time.Time    // when a writer of this process last released
}

// NewMembers creates or updates the members bucket, with replicas copies,
// and returns this process's view of it; id names this process and must be
// unique among the live ones. Run starts the heartbeat.
func NewMembers(ctx context.Context, js jetstream.JetStream, id string, replicas int, logger *slog.Logger) (*Members, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      MembersBucket,
		Description: "AdMetric: live aggregator processes",
		TTL:         memberTTL,
		History:     1,
		Storage:     jetstream.MemoryStorage,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("aggregator: members bucket: %w", err)
	}
	m := &Members{kv: kv, id: id, logger: logger.With("component", "members")}
	m.live.Store(1)
	return m, nil
}

// Run heartbeats and counts the live processes until ctx ends; it deletes this
// process's key on the way out so the others take over its share at once.
func (m *Members) Run(ctx context.Context) error {
	t := time.NewTicker(heartbeatEvery)
	defer t.Stop()
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = m.kv.Delete(dctx, m.id)
	}()
	for {
		if _, err := m.kv.Put(ctx, m.id, []byte(time.Now().UTC().Format(time.RFC3339))); err != nil && ctx.Err() == nil {
			m.logger.Warn("heartbeat failed", "err", err)
		}
		keys, err := m.kv.Keys(ctx)
		switch {
		case err == nil:
			m.live.Store(int64(max(len(keys), 1)))
		case errors.Is(err, jetstream.ErrNoKeysFound):
			m.live.Store(1)
		case ctx.Err() == nil:
			m.logger.Warn("counting aggregators failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Live returns how many aggregator processes are alive.
func (m *Members) Live() int { return int(m.live.Load()) }

// acquire and release track the partitions this process's writers hold.
func (m *Members) acquire() { m.owned.Add(1) }
func (m *Members) release() { m.owned.Add(-1) }

// shouldYield reports whether a writer holding a partition should hand it
// over: this process holds more than ceil(partitions/live), and no writer of
// it has yielded within cooldown (one partition at a time moves).
func (m *Members) shouldYield(partitions int, cooldown time.Duration) bool {
	live := m.Live()
	if live <= 1 {
		return false
	}
	share := (partitions + live - 1) / live
	if int(m.owned.Load()) <= share {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if time.Since(m.last) < cooldown {
		return false
	}
	m.last = time.Now()
	return true
}
