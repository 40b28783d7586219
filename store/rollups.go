package store

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/admetric/admetric/store/rollup"
)

// ErrConflict is returned by Rollups.Commit when a key changed since it was
// loaded: another writer is active, or the caller's copy is stale.
var ErrConflict = errors.New("store: rollup revision conflict")

// maxAtomicBatch is the server's default limit of messages in one atomic batch.
const maxAtomicBatch = 1000

// Rollups reads and writes the rollup KV buckets. Safe for concurrent use; the
// rollup writer of a partition must be the only writer of its keys.
type Rollups struct {
	js      jetstream.JetStream
	layout  rollup.Layout
	streams [3]jetstream.Stream
	atomic  bool
	// serverAtomic: the server keeps AllowAtomicPublish on the buckets.
	serverAtomic bool
}

// CreateOrUpdateRollups creates or updates the rollup buckets of layout (one
// per resolution, its TTL the retention, with limit markers so that watchers
// see expiry), turns on atomic batch publishing on their streams where the
// server has it (nats-server 2.12 or later), and returns the handle on them. A
// bucket already configured so is left as it is: CreateOrUpdateKeyValue turns
// atomic publishing off, which would fail the commits of the writers running
// in other processes while this one starts.
//
// Commits are atomic batches on replicated buckets only. With one replica,
// nats-server stages every atomic batch in a file store of its own, made and
// removed on disk for each batch (directories, metadata, files): in the
// whole service at 1,800 events/s that took a quarter of the process's CPU,
// and commits averaged 100 ms. There the writers publish each key alone,
// pipelined, the checkpoint last, and the MaxSeq every rollup records keeps
// replays exact.
func CreateOrUpdateRollups(ctx context.Context, js jetstream.JetStream, layout rollup.Layout, replicas int) (*Rollups, error) {
	if replicas < 1 {
		return nil, fmt.Errorf("%w: rollup buckets Replicas %d", ErrInvalidOptions, replicas)
	}
	r := &Rollups{js: js, layout: layout, serverAtomic: true}
	for _, res := range layout {
		cfg := jetstream.KeyValueConfig{
			Bucket:         res.Bucket,
			Description:    "AdMetric " + res.Unit.String() + " rollups",
			History:        1,
			TTL:            res.Retention,
			MaxValueSize:   1 << 20,
			Storage:        jetstream.FileStorage,
			Replicas:       replicas,
			LimitMarkerTTL: time.Minute,
		}
		if !bucketConfigured(ctx, js, cfg) {
			if _, err := js.CreateOrUpdateKeyValue(ctx, cfg); err != nil {
				return nil, fmt.Errorf("store: rollup bucket %s: %w", res.Bucket, err)
			}
		}
		stream, atomic, err := allowAtomicPublish(ctx, js, kvStream(res.Bucket))
		if err != nil {
			return nil, err
		}
		r.streams[res.Unit] = stream
		r.serverAtomic = r.serverAtomic && atomic
	}
	r.atomic = r.serverAtomic && replicas > 1
	return r, nil
}

// bucketConfigured reports whether cfg's bucket exists with atomic publishing
// on and the settings of cfg that CreateOrUpdateRollups owns.
func bucketConfigured(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) bool {
	stream, err := js.Stream(ctx, kvStream(cfg.Bucket))
	if err != nil {
		return false
	}
	have := stream.CachedInfo().Config
	return have.AllowAtomicPublish &&
		have.MaxAge == cfg.TTL &&
		have.MaxMsgsPerSubject == int64(cfg.History) &&
		have.MaxMsgSize == cfg.MaxValueSize &&
		have.Replicas == cfg.Replicas &&
		have.SubjectDeleteMarkerTTL == cfg.LimitMarkerTTL
}

// allowAtomicPublish sets AllowAtomicPublish on a stream and reports whether
// the server kept it (servers before 2.12 drop the unknown setting).
func allowAtomicPublish(ctx context.Context, js jetstream.JetStream, name string) (jetstream.Stream, bool, error) {
	stream, err := js.Stream(ctx, name)
	if err != nil {
		return nil, false, fmt.Errorf("store: stream %s: %w", name, err)
	}
	cfg := stream.CachedInfo().Config
	if !cfg.AllowAtomicPublish {
		cfg.AllowAtomicPublish = true
		if stream, err = js.UpdateStream(ctx, cfg); err != nil {
			return nil, false, fmt.Errorf("store: allow atomic publish on %s: %w", name, err)
		}
	}
	return stream, stream.CachedInfo().Config.AllowAtomicPublish, nil
}

// UseAtomicCommits makes commits atomic batches (on) or key by key (off),
// overriding the choice CreateOrUpdateRollups made from the replicas; atomic
// batches stay off against a server without them. Call it before the
// writers start.
func (r *Rollups) UseAtomicCommits(on bool) { r.atomic = on && r.serverAtomic }

// Atomic reports whether commits are atomic batches. Without them (buckets
// with one replica, or a server older than 2.12) each key is written alone,
// and exactly-once rests on the MaxSeq every rollup records.
func (r *Rollups) Atomic() bool { return r.atomic }

// Layout returns the resolutions the buckets hold.
func (r *Rollups) Layout() rollup.Layout { return r.layout }

func (r *Rollups) subject(u rollup.Unit, key string) string {
	return kvSubject(r.layout[u].Bucket, key)
}

// Load returns the rollup stored at key in unit's bucket and its revision. An
// absent key gives an empty rollup and revision 0; a deleted or expired key an
// empty rollup and the revision of its marker, which the next write must name.
func (r *Rollups) Load(ctx context.Context, u rollup.Unit, key string) (*rollup.Rollup, uint64, error) {
	msg, err := r.streams[u].GetLastMsgForSubject(ctx, r.subject(u, key))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return rollup.New(), 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("store: get %s %s: %w", u, key, err)
	}
	if msg.Header.Get("KV-Operation") != "" || msg.Header.Get(jetstream.MarkerReasonHeader) != "" {
		return rollup.New(), msg.Sequence, nil
	}
	v := rollup.New()
	if err := v.UnmarshalBinary(msg.Data); err != nil {
		return nil, 0, fmt.Errorf("store: %s %s: %w", u, key, err)
	}
	return v, msg.Sequence, nil
}

// Stored is one rollup as its bucket holds it: the value at its key and the
// visitor sets settled apart from it (rollup.SettledKey), each with its
// revision (as Load gives them).
type Stored struct {
	Value      *rollup.Rollup
	Rev        uint64
	Settled    *rollup.Rollup
	SettledRev uint64
}

// LoadStored reads the rollup at key in unit's bucket, then its settled
// visitor sets: in that order, so that a set the writer moves between the
// two reads is in at least one of them (the writer writes the settled key
// first).
func (r *Rollups) LoadStored(ctx context.Context, u rollup.Unit, key string) (Stored, error) {
	v, rev, err := r.Load(ctx, u, key)
	if err != nil {
		return Stored{}, err
	}
	settled, settledRev, err := r.Load(ctx, u, rollup.SettledKey(key))
	if err != nil {
		return Stored{}, err
	}
	return Stored{Value: v, Rev: rev, Settled: settled, SettledRev: settledRev}, nil
}

// Write is one rollup to store at Key, provided the key is still at Rev.
type Write struct {
	Key   string
	Value *rollup.Rollup
	Rev   uint64

	raw []byte // instead of Value: a checkpoint
}

// RawWrite is a write of data as it is, not a rollup: state the writer
// commits beside its rollups (the invalid-traffic rules').
func RawWrite(key string, data []byte, rev uint64) Write {
	return Write{Key: key, Rev: rev, raw: data}
}

// LoadRaw returns the bytes stored at key in unit's bucket and their
// revision: nil and 0 when absent, nil and the marker's revision when
// deleted or expired.
func (r *Rollups) LoadRaw(ctx context.Context, u rollup.Unit, key string) ([]byte, uint64, error) {
	msg, err := r.streams[u].GetLastMsgForSubject(ctx, r.subject(u, key))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("store: get %s %s: %w", u, key, err)
	}
	if msg.Header.Get("KV-Operation") != "" || msg.Header.Get(jetstream.MarkerReasonHeader) != "" {
		return nil, msg.Sequence, nil
	}
	return msg.Data, msg.Sequence, nil
}

// Commit stores writes and partition's checkpoint (seq, at revision cpRev) in
// unit's bucket and returns the new revision of each write and of the checkpoint.
// A key or checkpoint that moved gives ErrConflict.
//
// With atomic batches the writes and the checkpoint land together or not at
// all (in slices of up to a thousand messages, the checkpoint in the last; a
// slice that lands alone is harmless, as each rollup's MaxSeq makes the replay
// skip it). Without, each key is written alone, pipelined, and the checkpoint
// only once every other write has landed.
func (r *Rollups) Commit(ctx context.Context, u rollup.Unit, partition int, writes []Write, seq, cpRev uint64) ([]uint64, uint64, error) {
	all := append(slices.Clip(writes), Write{Key: rollup.CheckpointKey(partition), Rev: cpRev, raw: binary.BigEndian.AppendUint64(nil, seq)})
	revs, err := r.write(ctx, u, all)
	if err != nil {
		return nil, 0, err
	}
	return revs[:len(writes)], revs[len(writes)], nil
}

// Replace stores writes in unit's bucket, each guarded by its revision, without
// touching any checkpoint; see Commit for atomicity. It returns the new revisions.
func (r *Rollups) Replace(ctx context.Context, u rollup.Unit, writes []Write) ([]uint64, error) {
	return r.write(ctx, u, writes)
}

func (r *Rollups) write(ctx context.Context, u rollup.Unit, writes []Write) ([]uint64, error) {
	msgs := make([]*nats.Msg, 0, len(writes))
	for _, w := range writes {
		data := w.raw
		if data == nil {
			var err error
			if data, err = w.Value.MarshalBinary(); err != nil {
				return nil, err
			}
		}
		msgs = append(msgs, expectMsg(r.subject(u, w.Key), data, w.Rev))
	}
	if !r.atomic {
		return r.writeKeys(ctx, u, writes, msgs)
	}
	revs := make([]uint64, 0, len(msgs))
	for len(msgs) > 0 {
		chunk := msgs[:min(len(msgs), maxAtomicBatch)]
		msgs = msgs[len(chunk):]
		ack, err := jetstreamext.PublishMsgBatch(ctx, r.js, chunk)
		if err != nil {
			return nil, publishErr(u, "batch", err)
		}
		// An atomic batch is stored in one run of sequences.
		first := ack.Sequence - uint64(len(chunk)) + 1
		for i := range chunk {
			revs = append(revs, first+uint64(i))
		}
	}
	return revs, nil
}

// asyncAckTimeout bounds the wait for the acknowledgements of one slice of
// pipelined writes.
const asyncAckTimeout = 10 * time.Second

// writeKeys publishes msgs one key each, pipelined in slices of up to
// maxAtomicBatch, and a trailing checkpoint (a write with raw) alone after
// every other write landed. The first failure is returned once its slice has
// been answered.
func (r *Rollups) writeKeys(ctx context.Context, u rollup.Unit, writes []Write, msgs []*nats.Msg) ([]uint64, error) {
	revs := make([]uint64, len(msgs))
	values := len(msgs)
	if values > 0 && writes[values-1].raw != nil {
		values--
	}
	futures := make([]jetstream.PubAckFuture, 0, min(values, maxAtomicBatch))
	for start := 0; start < values; start += maxAtomicBatch {
		end := min(values, start+maxAtomicBatch)
		futures = futures[:0]
		for i := start; i < end; i++ {
			f, err := r.js.PublishMsgAsync(msgs[i])
			if err != nil {
				return nil, publishErr(u, writes[i].Key, err)
			}
			futures = append(futures, f)
		}
		if err := awaitAcks(ctx, u, writes[start:end], futures, revs[start:end]); err != nil {
			return nil, err
		}
	}
	for i := values; i < len(msgs); i++ {
		ack, err := r.js.PublishMsg(ctx, msgs[i])
		if err != nil {
			return nil, publishErr(u, writes[i].Key, err)
		}
		revs[i] = ack.Sequence
	}
	return revs, nil
}

// awaitAcks waits for every future's answer, puts each stored sequence in
// revs, and returns the first failure.
func awaitAcks(ctx context.Context, u rollup.Unit, writes []Write, futures []jetstream.PubAckFuture, revs []uint64) error {
	t := time.NewTimer(asyncAckTimeout)
	defer t.Stop()
	var first error
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			revs[i] = ack.Sequence
		case err := <-f.Err():
			if first == nil {
				first = publishErr(u, writes[i].Key, err)
			}
		case <-t.C:
			return fmt.Errorf("store: write %s %s: %w", u, writes[i].Key, nats.ErrTimeout)
		case <-ctx.Done():
			return fmt.Errorf("store: write %s %s: %w", u, writes[i].Key, ctx.Err())
		}
	}
	return first
}

func publishErr(u rollup.Unit, what string, err error) error {
	if isRevisionConflict(err) {
		return fmt.Errorf("%w: %s %s: %w", ErrConflict, u, what, err)
	}
	return fmt.Errorf("store: write %s %s: %w", u, what, err)
}

func expectMsg(subject string, data []byte, rev uint64) *nats.Msg {
	m := nats.NewMsg(subject)
	m.Data = data
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(rev, 10))
	return m
}

func isRevisionConflict(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// Checkpoint returns the highest stream sequence partition's writer committed to
// unit's bucket, and the key's revision (0, 0 when none; 0 and the marker's
// revision when it expired).
func (r *Rollups) Checkpoint(ctx context.Context, u rollup.Unit, partition int) (seq, rev uint64, err error) {
	msg, err := r.streams[u].GetLastMsgForSubject(ctx, r.subject(u, rollup.CheckpointKey(partition)))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("store: checkpoint %s p%d: %w", u, partition, err)
	}
	if msg.Header.Get("KV-Operation") != "" || msg.Header.Get(jetstream.MarkerReasonHeader) != "" {
		return 0, msg.Sequence, nil
	}
	if len(msg.Data) != 8 {
		return 0, 0, fmt.Errorf("%w: checkpoint %s p%d is %d bytes", rollup.ErrCorrupt, u, partition, len(msg.Data))
	}
	return binary.BigEndian.Uint64(msg.Data), msg.Sequence, nil
}

// Sum adds up ad's slots listed in cells, their settled visitor sets
// included. Each key is read once, with its settled key.
func (r *Rollups) Sum(ctx context.Context, adID string, cells []rollup.Cell) (*rollup.Aggregate, error) {
	return rollup.Sum(adID, cells, func(u rollup.Unit, key string) (*rollup.Rollup, *rollup.Rollup, error) {
		st, err := r.LoadStored(ctx, u, key)
		return st.Value, st.Settled, err
	})
}

// LastSeqAtOpen returns the last sequence of unit's bucket stream when
// CreateOrUpdateRollups returned: every update after it is newer than
// anything Load could read before.
func (r *Rollups) LastSeqAtOpen(u rollup.Unit) uint64 {
	return r.streams[u].CachedInfo().State.LastSeq
}

// LastSeq returns the last sequence of unit's bucket stream now.
func (r *Rollups) LastSeq(ctx context.Context, u rollup.Unit) (uint64, error) {
	info, err := r.streams[u].Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("store: %s bucket info: %w", u, err)
	}
	return info.State.LastSeq, nil
}

// Watch watches every key of unit's bucket, from stream sequence from on,
// updates only (no initial values). The caller stops the watcher.
func (r *Rollups) Watch(ctx context.Context, u rollup.Unit, from uint64) (jetstream.KeyWatcher, error) {
	kv, err := r.js.KeyValue(ctx, r.layout[u].Bucket)
	if err != nil {
		return nil, fmt.Errorf("store: open %s bucket: %w", u, err)
	}
	w, err := kv.WatchAll(ctx, jetstream.UpdatesOnly(), jetstream.ResumeFromRevision(from))
	if err != nil {
		return nil, fmt.Errorf("store: watch %s bucket: %w", u, err)
	}
	return w, nil
}
