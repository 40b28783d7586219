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
	// Partitions is how many partitions the stream spreads ads over (at least 1).
	Partitions int
}

// PartitionFilter is the subject filter of partition p's events. The stream
// stores ads.events.<type>.<ad_id> as ads.events.<p>.<type>.<ad_id>, p a hash
// of the ad ID, so that one writer owns each ad's rollup keys.
func PartitionFilter(p int) string {
	return "ads.events." + strconv.Itoa(p) + ".>"
}

// EnsureStream creates the event stream, or updates it to opts.
func EnsureStream(ctx context.Context, js jetstream.JetStream, opts StreamOptions) (jetstream.Stream, error) {
	if opts.Duplicates == 0 {
		opts.Duplicates = 2 * time.Minute
	}
	cfg := jetstream.StreamConfig{
		Name:        StreamName,
		Description: "AdMetric ad events: ads.events.<type>.<ad_id>, stored as ads.events.<partition>.<type>.<ad_id>",
		Subjects:    []string{"ads.events.>"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		MaxAge:      opts.MaxAge,
		Duplicates:  opts.Duplicates,
		Replicas:    max(opts.Replicas, 1),
		Discard:     jetstream.DiscardOld,
		SubjectTransform: &jetstream.SubjectTransformConfig{
			Source:      "ads.events.*.*",
			Destination: fmt.Sprintf("ads.events.{{partition(%d,2)}}.{{wildcard(1)}}.{{wildcard(2)}}", max(opts.Partitions, 1)),
		},
	}
	s, err := js.CreateOrUpdateStream(ctx, cfg)
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

// EnsureDeadLetterStream creates or updates the dead-letter stream; its
// messages are kept for maxAge.
func EnsureDeadLetterStream(ctx context.Context, js jetstream.JetStream, maxAge time.Duration, replicas int) error {
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        DeadLetterStream,
		Description: "AdMetric: stream messages that are not valid events, on ads.dlq.<reason>",
		Subjects:    []string{"ads.dlq.>"},
		Storage:     jetstream.FileStorage,
		MaxAge:      maxAge,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return fmt.Errorf("store: stream %s: %w", DeadLetterStream, err)
	}
	return nil
}

// ErrConflict is returned by Rollups.Commit when a key changed since it was
// loaded: another writer is active, or the caller's copy is stale.
var ErrConflict = errors.New("store: rollup revision conflict")

// maxAtomicBatch is the server's default limit of messages in one atomic batch.
const maxAtomicBatch = 1000

// Rollups reads and writes the rollup KV buckets. Safe for concurrent use; the
// rollup writer of a partition must be the only writer of its keys.
type Rollups struct {
	js      jetstream.JetStream
	layout  Layout
	streams [3]jetstream.Stream
	atomic  bool
}

// OpenRollups creates or updates the rollup buckets of layout (one per resolution,
// its TTL the retention, with limit markers so that watchers see expiry) and
// turns on atomic batch publishing on their streams where the server has it
// (nats-server 2.12 or later). A bucket already configured so is left as it is:
// CreateOrUpdateKeyValue turns atomic publishing off, which would fail the
// commits of the writers running in other processes while this one starts.
func OpenRollups(ctx context.Context, js jetstream.JetStream, layout Layout, replicas int) (*Rollups, error) {
	r := &Rollups{js: js, layout: layout, atomic: true}
	for _, res := range layout {
		cfg := jetstream.KeyValueConfig{
			Bucket:         res.Bucket,
			Description:    "AdMetric " + res.Unit.String() + " rollups",
			History:        1,
			TTL:            res.Retention,
			MaxValueSize:   1 << 20,
			Storage:        jetstream.FileStorage,
			Replicas:       max(replicas, 1),
			LimitMarkerTTL: time.Minute,
		}
		if !bucketConfigured(ctx, js, cfg) {
			if _, err := js.CreateOrUpdateKeyValue(ctx, cfg); err != nil {
				return nil, fmt.Errorf("store: rollup bucket %s: %w", res.Bucket, err)
			}
		}
		stream, atomic, err := allowAtomicPublish(ctx, js, "KV_"+res.Bucket)
		if err != nil {
			return nil, err
		}
		r.streams[res.Unit] = stream
		r.atomic = r.atomic && atomic
	}
	return r, nil
}

// bucketConfigured reports whether cfg's bucket exists with atomic publishing
// on and the settings of cfg that OpenRollups owns.
func bucketConfigured(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) bool {
	stream, err := js.Stream(ctx, "KV_"+cfg.Bucket)
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

// Atomic reports whether commits are atomic batches. Without them (a server
// older than 2.12) each key is written alone, and exactly-once rests on the
// MaxSeq every rollup records.
func (r *Rollups) Atomic() bool { return r.atomic }

// Layout returns the resolutions the buckets hold.
func (r *Rollups) Layout() Layout { return r.layout }

func (r *Rollups) subject(u Unit, key string) string {
	return "$KV." + r.layout[u].Bucket + "." + key
}

// Load returns the rollup stored at key in unit's bucket and its revision. An
// absent key gives an empty rollup and revision 0; a deleted or expired key an
// empty rollup and the revision of its marker, which the next write must name.
func (r *Rollups) Load(ctx context.Context, u Unit, key string) (*Rollup, uint64, error) {
	msg, err := r.streams[u].GetLastMsgForSubject(ctx, r.subject(u, key))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return NewRollup(), 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("store: get %s %s: %w", u, key, err)
	}
	if msg.Header.Get("KV-Operation") != "" || msg.Header.Get(jetstream.MarkerReasonHeader) != "" {
		return NewRollup(), msg.Sequence, nil
	}
	v := NewRollup()
	if err := v.UnmarshalBinary(msg.Data); err != nil {
		return nil, 0, fmt.Errorf("store: %s %s: %w", u, key, err)
	}
	return v, msg.Sequence, nil
}

// Write is one rollup to store at Key, provided the key is still at Rev.
type Write struct {
	Key   string
	Value *Rollup
	Rev   uint64

	raw []byte // instead of Value: a checkpoint
}

// Commit stores writes and partition's checkpoint (seq, at revision cpRev) in
// unit's bucket and returns the new revision of each write and of the checkpoint.
// A key or checkpoint that moved gives ErrConflict.
//
// With atomic batches the writes and the checkpoint land together or not at
// all (in slices of up to a thousand messages, the checkpoint in the last; a
// slice that lands alone is harmless, as each rollup's MaxSeq makes the replay
// skip it). Without, each key is written alone, the checkpoint last.
func (r *Rollups) Commit(ctx context.Context, u Unit, partition int, writes []Write, seq, cpRev uint64) ([]uint64, uint64, error) {
	all := append(slices.Clip(writes), Write{Key: CheckpointKey(partition), Rev: cpRev, raw: binary.BigEndian.AppendUint64(nil, seq)})
	revs, err := r.write(ctx, u, all)
	if err != nil {
		return nil, 0, err
	}
	return revs[:len(writes)], revs[len(writes)], nil
}

// Replace stores writes in unit's bucket, each guarded by its revision, without
// touching any checkpoint; see Commit for atomicity. It returns the new revisions.
func (r *Rollups) Replace(ctx context.Context, u Unit, writes []Write) ([]uint64, error) {
	return r.write(ctx, u, writes)
}

func (r *Rollups) write(ctx context.Context, u Unit, writes []Write) ([]uint64, error) {
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
	revs := make([]uint64, 0, len(msgs))
	if !r.atomic {
		for i, m := range msgs {
			ack, err := r.js.PublishMsg(ctx, m)
			if err != nil {
				return nil, publishErr(u, writes[i].Key, err)
			}
			revs = append(revs, ack.Sequence)
		}
		return revs, nil
	}
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

func publishErr(u Unit, what string, err error) error {
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
func (r *Rollups) Checkpoint(ctx context.Context, u Unit, partition int) (seq, rev uint64, err error) {
	msg, err := r.streams[u].GetLastMsgForSubject(ctx, r.subject(u, CheckpointKey(partition)))
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
		return 0, 0, fmt.Errorf("%w: checkpoint %s p%d is %d bytes", ErrCorruptRollup, u, partition, len(msg.Data))
	}
	return binary.BigEndian.Uint64(msg.Data), msg.Sequence, nil
}

// Sum adds up ad's slots listed in cells. Each key is read once.
func (r *Rollups) Sum(ctx context.Context, adID string, cells []Cell) (*Aggregate, error) {
	return sumCells(adID, cells, func(k cacheKey) (*Rollup, error) {
		v, _, err := r.Load(ctx, k.unit, k.key)
		return v, err
	})
}
