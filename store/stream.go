package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// LegacyStreamName is the single event stream of AdMetric before the
// partition streams: CreateOrUpdateEventStreams seals it, the aggregators
// drain it, and RetireLegacyStream deletes it once drained.
const LegacyStreamName = "ADMETRIC_EVENTS"

// eventStreamPrefix starts the name of every partition stream.
const eventStreamPrefix = "ADMETRIC_EVENTS_"

// EventStreamName is the stream of partition p: it holds
// ads.events.<p>.<type>.<ad_id>, where the server's subject mapping puts
// the events of the ads that hash to p.
func EventStreamName(p int) string { return eventStreamPrefix + strconv.Itoa(p) }

// StreamOptions size the event streams. Every field must be set: the
// defaults are the service's configuration's (package config).
type StreamOptions struct {
	// MaxAge is how long events stay: the longest outage of a consumer (the
	// archive during a PostgreSQL outage) that can be caught up from the stream.
	MaxAge time.Duration
	// Duplicates is the window within which a repeated Nats-Msg-Id is dropped.
	// An event's ID always maps to the same partition (its ad's), so one
	// stream's window is enough.
	Duplicates time.Duration
	// Replicas is 1 for a single server, 3 for a production cluster.
	Replicas int
	// Partitions is how many partition streams there are; the server's
	// mapping (PartitionMapping) must use the same number.
	Partitions int
}

// ErrInvalidOptions is returned for options a stream or bucket cannot be
// made with.
var ErrInvalidOptions = errors.New("store: invalid options")

// ErrPartitionsChanged is returned when the event streams on the server were
// made for another number of partitions than the configured one: ads would
// move to another partition, whose sequences are unrelated to those their
// rollups recorded.
var ErrPartitionsChanged = errors.New("store: the number of partitions changed")

func (o StreamOptions) validate() error {
	switch {
	case o.MaxAge <= 0:
		return fmt.Errorf("%w: stream MaxAge %s", ErrInvalidOptions, o.MaxAge)
	case o.Duplicates <= 0:
		return fmt.Errorf("%w: stream Duplicates %s", ErrInvalidOptions, o.Duplicates)
	case o.Replicas < 1:
		return fmt.Errorf("%w: stream Replicas %d", ErrInvalidOptions, o.Replicas)
	case o.Partitions < 1:
		return fmt.Errorf("%w: stream Partitions %d", ErrInvalidOptions, o.Partitions)
	}
	return nil
}

// CreateOrUpdateEventStreams creates the partition streams, or updates them
// to opts. The first time, when the legacy single stream exists, it seals it
// first (takes its subjects away, so nothing more lands there) and starts
// every partition stream's sequence after the legacy stream's last: the
// rollups record the highest sequence folded into each key, and those
// numbers must keep growing across the switch. The aggregators then drain
// the legacy stream before they read the partition streams, and the last
// one retires it (RetireLegacyStream).
//
// It fails with ErrPartitionsChanged when the streams were made for another
// number of partitions. Safe to run from several processes at once.
func CreateOrUpdateEventStreams(ctx context.Context, js jetstream.JetStream, opts StreamOptions) error {
	if err := opts.validate(); err != nil {
		return err
	}
	if err := checkPartitionCount(ctx, js, opts.Partitions); err != nil {
		return err
	}
	firstSeq, err := sealLegacyStream(ctx, js, opts.Partitions)
	if err != nil {
		return err
	}
	for p := range opts.Partitions {
		cfg := jetstream.StreamConfig{
			Name:        EventStreamName(p),
			Description: "AdMetric ad events of partition " + strconv.Itoa(p) + ": ads.events.<type>.<ad_id>, mapped by the server to ads.events." + strconv.Itoa(p) + ".<type>.<ad_id>",
			Subjects:    []string{PartitionFilter(p)},
			Storage:     jetstream.FileStorage,
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      opts.MaxAge,
			Duplicates:  opts.Duplicates,
			Replicas:    opts.Replicas,
			Discard:     jetstream.DiscardOld,
			Metadata:    map[string]string{partitionsMetadata: strconv.Itoa(opts.Partitions)},
		}
		switch s, err := js.Stream(ctx, cfg.Name); {
		case err == nil:
			cfg.FirstSeq = s.CachedInfo().Config.FirstSeq
			if _, err := js.UpdateStream(ctx, cfg); err != nil {
				return fmt.Errorf("store: stream %s: %w", cfg.Name, err)
			}
		case errors.Is(err, jetstream.ErrStreamNotFound):
			cfg.FirstSeq = firstSeq
			if _, err := js.CreateStream(ctx, cfg); err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				return fmt.Errorf("store: stream %s: %w", cfg.Name, err)
			}
		default:
			return fmt.Errorf("store: stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}

// partitionsMetadata is the stream metadata key where each partition stream
// records how many partitions there are.
const partitionsMetadata = "admetric.partitions"

// checkPartitionCount fails with ErrPartitionsChanged when a partition
// stream was made for another number of partitions.
func checkPartitionCount(ctx context.Context, js jetstream.JetStream, partitions int) error {
	streams := js.ListStreams(ctx, jetstream.WithStreamListSubject(eventSubjects))
	for info := range streams.Info() {
		name := info.Config.Name
		if !strings.HasPrefix(name, eventStreamPrefix) {
			continue
		}
		if have := info.Config.Metadata[partitionsMetadata]; have != strconv.Itoa(partitions) {
			return fmt.Errorf("%w: stream %s was made for %s partitions, and PARTITIONS is %d; set PARTITIONS back, or drain every partition stream and delete them before changing it", ErrPartitionsChanged, name, cmp.Or(have, "an unknown number of"), partitions)
		}
	}
	if err := streams.Err(); err != nil {
		return fmt.Errorf("store: listing the event streams: %w", err)
	}
	return nil
}

// legacySubject is what a sealed legacy stream listens on: nothing publishes
// there.
const legacySubject = "admetric.retired.events"

// sealLegacyStream takes the legacy stream's subjects away and returns the
// first sequence the partition streams start at: one past the legacy
// stream's last, or 0 (the server's default, 1) without a legacy stream. It
// fails with ErrPartitionsChanged when the legacy stream partitioned its
// events into another number of partitions.
func sealLegacyStream(ctx context.Context, js jetstream.JetStream, partitions int) (uint64, error) {
	s, err := js.Stream(ctx, LegacyStreamName)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("store: stream %s: %w", LegacyStreamName, err)
	}
	cfg := s.CachedInfo().Config
	had := cfg.Metadata[partitionsMetadata]
	if t := cfg.SubjectTransform; t != nil {
		_, dst := PartitionMapping(partitions)
		if t.Destination != dst {
			had = "another number of"
		} else {
			had = strconv.Itoa(partitions)
		}
	}
	if had != strconv.Itoa(partitions) {
		return 0, fmt.Errorf("%w: stream %s partitioned its events into %s partitions, and PARTITIONS is %d; set PARTITIONS back until it is drained", ErrPartitionsChanged, LegacyStreamName, cmp.Or(had, "an unknown number of"), partitions)
	}
	if !slices.Equal(cfg.Subjects, []string{legacySubject}) {
		cfg.Metadata = map[string]string{partitionsMetadata: had}
		cfg.Subjects = []string{legacySubject}
		cfg.SubjectTransform = nil
		cfg.Description = "AdMetric's single event stream before the partition streams; deleted once drained"
		if s, err = js.UpdateStream(ctx, cfg); err != nil {
			return 0, fmt.Errorf("store: sealing stream %s: %w", LegacyStreamName, err)
		}
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("store: stream %s: %w", LegacyStreamName, err)
	}
	return info.State.LastSeq + 1, nil
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

// CreateOrUpdateDeadLetterStream creates or updates the dead-letter stream;
// its messages are kept for maxAge.
func CreateOrUpdateDeadLetterStream(ctx context.Context, js jetstream.JetStream, maxAge time.Duration, replicas int) error {
	if maxAge <= 0 || replicas < 1 {
		return fmt.Errorf("%w: dead-letter stream MaxAge %s, Replicas %d", ErrInvalidOptions, maxAge, replicas)
	}
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        DeadLetterStream,
		Description: "AdMetric: stream messages that are not valid events, on ads.dlq.<reason>",
		Subjects:    []string{deadLetterSubjects},
		Storage:     jetstream.FileStorage,
		MaxAge:      maxAge,
		Replicas:    replicas,
	})
	if err != nil {
		return fmt.Errorf("store: stream %s: %w", DeadLetterStream, err)
	}
	return nil
}

// DecisionStream keeps the invalid-traffic decisions the rollup writers
// make, for the archive (see aggregator.Decisions).
const DecisionStream = "ADMETRIC_DECISIONS"

// CreateOrUpdateDecisionStream creates or updates the decision stream; its
// messages are kept for maxAge, which should be the event streams': the
// archive applies them once the events they name are archived.
func CreateOrUpdateDecisionStream(ctx context.Context, js jetstream.JetStream, maxAge time.Duration, replicas int) error {
	if maxAge <= 0 || replicas < 1 {
		return fmt.Errorf("%w: decision stream MaxAge %s, Replicas %d", ErrInvalidOptions, maxAge, replicas)
	}
	_, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        DecisionStream,
		Description: "AdMetric: the rollup writers' invalid-traffic decisions, on ads.decisions.<partition>",
		Subjects:    []string{decisionSubjects},
		Storage:     jetstream.FileStorage,
		MaxAge:      maxAge,
		Replicas:    replicas,
	})
	if err != nil {
		return fmt.Errorf("store: stream %s: %w", DecisionStream, err)
	}
	return nil
}

// DeadLetter publishes data, msg's own (msg.Data()) or what the caller
// keeps of it (a full address taken out, when addresses are truncated),
// for msg, a message of the event stream that can never be processed, to
// ads.dlq.<reason>, with cause and msg's subject and sequence in headers.
// It returns once the dead-letter stream stored it; only then may the
// caller terminate msg. On error msg must stay unacknowledged so that it
// comes back: a poison message is moved aside, never dropped.
func DeadLetter(ctx context.Context, js jetstream.JetStream, msg jetstream.Msg, data []byte, reason string, cause error) error {
	dl := nats.NewMsg(deadLetterSubject(reason))
	dl.Data = data
	dl.Header.Set(HeaderPoisonReason, cause.Error())
	dl.Header.Set(HeaderOriginSubject, msg.Subject())
	if meta, err := msg.Metadata(); err == nil {
		dl.Header.Set(HeaderOriginSequence, strconv.FormatUint(meta.Sequence.Stream, 10))
	}
	if _, err := js.PublishMsg(ctx, dl); err != nil {
		return fmt.Errorf("store: dead-letter to %s: %w", dl.Subject, err)
	}
	return nil
}

// LegacyStreamExists reports whether the legacy single stream is still there
// (sealed, and not yet drained and retired).
func LegacyStreamExists(ctx context.Context, js jetstream.JetStream) (bool, error) {
	_, err := js.Stream(ctx, LegacyStreamName)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return false, nil
	default:
		return false, fmt.Errorf("store: stream %s: %w", LegacyStreamName, err)
	}
}

// ErrLegacyNotDrained is returned by RetireLegacyStream while a consumer of
// the legacy stream still has events to deliver or to be acknowledged.
var ErrLegacyNotDrained = errors.New("store: the legacy event stream is not drained")

// RetireLegacyStream deletes the sealed legacy stream once every consumer of
// it has nothing left to deliver and nothing unacknowledged. It returns nil
// when it deleted the stream or there is none, and ErrLegacyNotDrained
// (naming the consumer) while one is not drained: the last consumer to
// finish deletes it.
func RetireLegacyStream(ctx context.Context, js jetstream.JetStream) error {
	s, err := js.Stream(ctx, LegacyStreamName)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("store: stream %s: %w", LegacyStreamName, err)
	}
	if subjects := s.CachedInfo().Config.Subjects; !slices.Equal(subjects, []string{legacySubject}) {
		return fmt.Errorf("%w: it is not sealed (subjects %v)", ErrLegacyNotDrained, subjects)
	}
	consumers := s.ListConsumers(ctx)
	for info := range consumers.Info() {
		if info.NumPending > 0 || info.NumAckPending > 0 {
			return fmt.Errorf("%w: consumer %s has %d to deliver, %d unacknowledged", ErrLegacyNotDrained, info.Name, info.NumPending, info.NumAckPending)
		}
	}
	if err := consumers.Err(); err != nil {
		return fmt.Errorf("store: consumers of %s: %w", LegacyStreamName, err)
	}
	if err := js.DeleteStream(ctx, LegacyStreamName); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("store: deleting stream %s: %w", LegacyStreamName, err)
	}
	return nil
}
