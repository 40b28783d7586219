package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// StreamName is the JetStream stream holding every accepted event.
const StreamName = "ADMETRIC_EVENTS"

// StreamOptions size the event stream.
type StreamOptions struct {
	// MaxAge is how long events stay: the longest outage of a consumer (the
	// archive during a PostgreSQL outage) that can be caught up from the stream.
	MaxAge time.Duration
	// Duplicates is the window within which a repeated Nats-Msg-Id is dropped.
	Duplicates time.Duration
	// Replicas is 1 for a single server, 3 for a production cluster.
	Replicas int
}

// EnsureStream creates the event stream, or updates it to opts.
func EnsureStream(ctx context.Context, js jetstream.JetStream, opts StreamOptions) (jetstream.Stream, error) {
	if opts.Duplicates == 0 {
		opts.Duplicates = 2 * time.Minute
	}
	cfg := jetstream.StreamConfig{
		Name:        StreamName,
		Description: "AdMetric ad events: ads.events.<type>.<ad_id>",
		Subjects:    []string{"ads.events.>"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      opts.MaxAge,
		Duplicates:  opts.Duplicates,
		Replicas:    max(opts.Replicas, 1),
		Discard:     jetstream.DiscardOld,
	}
	s, err := js.CreateOrUpdateStream(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("store: stream %s: %w", StreamName, err)
	}
	return s, nil
}

// ErrConflict is returned by Rollups.Save when the key changed since it was
// loaded: another writer is active, or the caller's copy is stale.
var ErrConflict = errors.New("store: rollup revision conflict")

// Rollups reads and writes the rollup KV buckets. Safe for concurrent use; the
// rollup writer of a partition must be the only writer of its keys.
type Rollups struct {
	layout Layout
	kvs    [3]jetstream.KeyValue
}

// OpenRollups creates or updates the rollup buckets of layout (one per resolution,
// its TTL the retention, with limit markers so that watchers see expiry).
func OpenRollups(ctx context.Context, js jetstream.JetStream, layout Layout, replicas int) (*Rollups, error) {
	r := &Rollups{layout: layout}
	for _, res := range layout {
		kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:         res.Bucket,
			Description:    "AdMetric " + res.Unit.String() + " rollups",
			History:        1,
			TTL:            res.Retention,
			MaxValueSize:   1 << 20,
			Storage:        jetstream.FileStorage,
			Replicas:       max(replicas, 1),
			LimitMarkerTTL: time.Minute,
		})
		if err != nil {
			return nil, fmt.Errorf("store: rollup bucket %s: %w", res.Bucket, err)
		}
		r.kvs[res.Unit] = kv
	}
	return r, nil
}

// Layout returns the resolutions the buckets hold.
func (r *Rollups) Layout() Layout { return r.layout }

// Load returns the rollup stored at key in unit's bucket and its revision; an
// absent key gives an empty rollup and revision 0.
func (r *Rollups) Load(ctx context.Context, u Unit, key string) (*Rollup, uint64, error) {
	e, err := r.kvs[u].Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return NewRollup(), 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("store: get %s %s: %w", u, key, err)
	}
	v := NewRollup()
	if err := v.UnmarshalBinary(e.Value()); err != nil {
		return nil, 0, fmt.Errorf("store: %s %s: %w", u, key, err)
	}
	return v, e.Revision(), nil
}

// Save writes v at key if the key is still at revision rev (0: absent) and
// returns the new revision. A changed key gives ErrConflict.
func (r *Rollups) Save(ctx context.Context, u Unit, key string, v *Rollup, rev uint64) (uint64, error) {
	data, err := v.MarshalBinary()
	if err != nil {
		return 0, err
	}
	return r.put(ctx, u, key, data, rev)
}

func (r *Rollups) put(ctx context.Context, u Unit, key string, data []byte, rev uint64) (uint64, error) {
	var (
		newRev uint64
		err    error
	)
	if rev == 0 {
		newRev, err = r.kvs[u].Create(ctx, key, data)
	} else {
		newRev, err = r.kvs[u].Update(ctx, key, data, rev)
	}
	if err != nil {
		if isRevisionConflict(err) {
			return 0, fmt.Errorf("%w: %s %s", ErrConflict, u, key)
		}
		return 0, fmt.Errorf("store: put %s %s: %w", u, key, err)
	}
	return newRev, nil
}

func isRevisionConflict(err error) bool {
	if errors.Is(err, jetstream.ErrKeyExists) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// Checkpoint returns the highest stream sequence partition's writer committed to
// unit's bucket, and the key's revision (0, 0 when none).
func (r *Rollups) Checkpoint(ctx context.Context, u Unit, partition int) (seq, rev uint64, err error) {
	e, err := r.kvs[u].Get(ctx, CheckpointKey(partition))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("store: checkpoint %s p%d: %w", u, partition, err)
	}
	if len(e.Value()) != 8 {
		return 0, 0, fmt.Errorf("%w: checkpoint %s p%d is %d bytes", ErrCorruptRollup, u, partition, len(e.Value()))
	}
	return binary.BigEndian.Uint64(e.Value()), e.Revision(), nil
}

// SaveCheckpoint records seq as partition's checkpoint in unit's bucket, if the
// key is still at rev; a changed key (a second writer) gives ErrConflict.
func (r *Rollups) SaveCheckpoint(ctx context.Context, u Unit, partition int, seq, rev uint64) (uint64, error) {
	return r.put(ctx, u, CheckpointKey(partition), binary.BigEndian.AppendUint64(nil, seq), rev)
}

// Sum adds up ad's slots listed in cells. Each key is read once.
func (r *Rollups) Sum(ctx context.Context, adID string, cells []Cell) (*Aggregate, error) {
	type keyRef struct {
		u   Unit
		key string
	}
	wanted := make(map[keyRef][]int)
	var order []keyRef
	for _, c := range cells {
		key, slot := c.Unit.Locate(adID, c.Start)
		k := keyRef{c.Unit, key}
		if _, ok := wanted[k]; !ok {
			order = append(order, k)
		}
		wanted[k] = append(wanted[k], slot)
	}
	agg := &Aggregate{}
	for _, k := range order {
		v, _, err := r.Load(ctx, k.u, k.key)
		if err != nil {
			return nil, err
		}
		for _, i := range wanted[k] {
			if s, ok := v.Slots[i]; ok {
				if err := agg.AddSlot(s); err != nil {
					return nil, err
				}
			}
		}
	}
	return agg, nil
}
