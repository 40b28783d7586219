package aggregator

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/store"
)

// ErrPoison marks a stream message that can never be processed: it does not
// decode or does not validate. The rollup writers skip it; the archiver sends it
// to the dead-letter stream and terminates it, so its partition keeps moving.
var ErrPoison = errors.New("aggregator: poison message")

// Poison reasons, the last token of the dead-letter subject ads.dlq.<reason>.
const (
	ReasonMetadata = "metadata" // not a JetStream message
	ReasonDecode   = "decode"   // not an event's JSON
	ReasonSubject  = "subject"  // subject not ads.events.<type>.<ad_id>, or the body disagrees
	ReasonInvalid  = "invalid"  // an event that breaks a rule
	// ReasonPartition is an event stored in a partition its ad does not hash
	// to: published straight to a partition subject, past the mapping.
	// Folding it would give the ad's keys a second writer.
	ReasonPartition = "partition"
	ReasonDatabase  = "database" // PostgreSQL refused it
)

// poisonError is a poison message with its reason.
type poisonError struct {
	reason string
	err    error
}

func (e *poisonError) Error() string {
	return "aggregator: poison message (" + e.reason + "): " + e.err.Error()
}
func (e *poisonError) Unwrap() error        { return e.err }
func (e *poisonError) Is(target error) bool { return target == ErrPoison }

func poison(reason string, format string, args ...any) error {
	return &poisonError{reason: reason, err: fmt.Errorf(format, args...)}
}

// PoisonReason returns the reason of a poison error, or "" for other errors.
func PoisonReason(err error) string {
	var pe *poisonError
	if errors.As(err, &pe) {
		return pe.reason
	}
	return ""
}

// consumerMaxFuture is how far past the stream's store time an event may be dated.
const consumerMaxFuture = time.Hour

// decodeMsg turns a stream message into a Record; with partitions above 0,
// an event stored in a partition other than its ad's is poison. Publishers other than our own
// intake may leave out what the subject already says (type, ad_id), the event ID
// (the Nats-Msg-Id header or, failing that, the stream sequence stands in) and the
// timestamp (the time the stream stored the message stands in).
func decodeMsg(msg jetstream.Msg, salt []byte, partitions int) (Record, error) {
	meta, err := msg.Metadata()
	if err != nil {
		return Record{}, poison(ReasonMetadata, "metadata: %w", err)
	}
	ev, err := event.Decode(msg.Data())
	if err != nil {
		return Record{}, poison(ReasonDecode, "seq %d: %w", meta.Sequence.Stream, err)
	}
	partition, typ, adID, ok := store.ParseEventSubject(msg.Subject())
	if !ok {
		return Record{}, poison(ReasonSubject, "seq %d: subject %q is not ads.events.<type>.<ad_id>", meta.Sequence.Stream, msg.Subject())
	}
	if partitions > 0 && partition != store.PartitionOf(adID, partitions) {
		return Record{}, poison(ReasonPartition, "seq %d: subject %q is not the partition of ad %q (%d of %d)", meta.Sequence.Stream, msg.Subject(), adID, store.PartitionOf(adID, partitions), partitions)
	}
	if ev.Type == "" {
		ev.Type = event.Type(typ)
	}
	if ev.AdID == "" {
		ev.AdID = adID
	}
	if string(ev.Type) != typ || ev.AdID != adID {
		return Record{}, poison(ReasonSubject, "seq %d: body (%s, %s) disagrees with subject %q", meta.Sequence.Stream, ev.Type, ev.AdID, msg.Subject())
	}
	if ev.EventID == "" {
		ev.EventID = msg.Headers().Get(jetstream.MsgIDHeader)
	}
	if ev.EventID == "" {
		ev.SetDerivedID(meta.Stream, meta.Sequence.Stream)
	}
	stored := meta.Timestamp.UTC()
	if ev.Timestamp.IsZero() {
		ev.Timestamp = stored
	}
	// Other publishers skip the intake's clean-up; do it here rather than turn
	// a long or odd user agent into poison.
	ev.UserAgent = event.SanitizeUserAgent(ev.UserAgent)
	ev.IP = event.CanonicalIP(ev.IP)
	// Bounds are checked against the time the stream stored the message, so a
	// replay long after does not turn valid events into poison; how old an event
	// may be for each rollup is the fold's decision. The future bound is wider
	// than the intake's because the NATS server's clock is not ours.
	if err := ev.Validate(stored, event.Limits{MaxFuture: consumerMaxFuture}); err != nil {
		return Record{}, poison(ReasonInvalid, "seq %d: %w", meta.Sequence.Stream, err)
	}
	if ev.Timestamp.After(stored) {
		ev.Timestamp = stored // clock skew, as at the intake
	}
	rec := Record{Seq: meta.Sequence.Stream, Event: ev, Partition: partition}
	rec.Visitor = visitorOf(&rec.Event, salt)
	return rec, nil
}
