package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// Account is the NATS account that holds AdMetric's streams, buckets and
// users, and its subject mapping.
const Account = "ADMETRIC"

// User names in the AdMetric account.
const (
	// ServiceUser is AdMetric's own processes: everything in the account.
	ServiceUser = "admetric"
	// PublisherUser is for other services that send events: it publishes to
	// ads.events.> and receives its acknowledgements, on its own inbox prefix,
	// and nothing else.
	PublisherUser = "publisher"
)

// PublisherInboxPrefix is the inbox prefix a PublisherUser client must use
// (nats.CustomInboxPrefix): the only subjects it may subscribe to.
const PublisherInboxPrefix = "_INBOX_" + PublisherUser

// PublisherPermissions are what PublisherUser may publish and subscribe to.
// The server checks publish permissions on the subject after the account's
// mapping, so ads.events.> covers the partition subjects events land on.
func PublisherPermissions() (publish, subscribe []string) {
	return []string{eventSubjects}, []string{PublisherInboxPrefix + ".>"}
}

// ServerConfigOptions say which nats-server configuration ServerConfig writes.
type ServerConfigOptions struct {
	// Partitions is the number of partition streams (PARTITIONS).
	Partitions int
	// Users adds the users block, their passwords read by the server from the
	// environment variables ADMETRIC_NATS_PASSWORD and
	// ADMETRIC_PUBLISHER_PASSWORD. Without it the caller adds the users.
	Users bool
}

// ServerConfig is the part of a nats-server configuration AdMetric needs:
// the ADMETRIC account with JetStream, the subject mapping onto the
// partition streams and, with opts.Users, its users. The embedded server is
// configured from it; an external server's configuration includes it (the
// README and compose.yaml show how), and every AdMetric process checks at
// start-up that it is in place (CheckPartitionMapping).
func ServerConfig(opts ServerConfigOptions) string {
	src, dst := PartitionMapping(opts.Partitions)
	var b strings.Builder
	fmt.Fprintf(&b, "# AdMetric's account, for PARTITIONS=%d: written by `admetric nats-config`.\n", max(opts.Partitions, 1))
	fmt.Fprintf(&b, "accounts {\n  %s {\n    jetstream: enabled\n", Account)
	b.WriteString("    # Events published to ads.events.<type>.<ad_id> go to the partition of\n")
	b.WriteString("    # their ad, ads.events.<partition>.<type>.<ad_id>: one stream per partition.\n")
	fmt.Fprintf(&b, "    mappings {\n      %q: %q\n    }\n", src, dst)
	if opts.Users {
		pub, sub := PublisherPermissions()
		b.WriteString("    users: [\n")
		b.WriteString("      # AdMetric's own processes.\n")
		fmt.Fprintf(&b, "      {user: %s, password: $ADMETRIC_NATS_PASSWORD}\n", ServiceUser)
		b.WriteString("      # Other services sending events: publish them and read the acknowledgements\n")
		fmt.Fprintf(&b, "      # on their own inbox prefix (nats.CustomInboxPrefix(%q)), nothing else.\n", PublisherInboxPrefix)
		fmt.Fprintf(&b, "      {user: %s, password: $ADMETRIC_PUBLISHER_PASSWORD, permissions: {\n", PublisherUser)
		fmt.Fprintf(&b, "        publish: {allow: %s}\n        subscribe: {allow: %s}\n      }}\n", quoteList(pub), quoteList(sub))
		b.WriteString("    ]\n")
	}
	b.WriteString("  }\n}\n")
	return b.String()
}

func quoteList(l []string) string {
	q := make([]string, len(l))
	for i, s := range l {
		q[i] = strconv.Quote(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// ErrMappingMissing is returned by CheckPartitionMapping when a published
// event would land in no stream, or in another partition's.
var ErrMappingMissing = errors.New("store: the server's subject mapping onto the partition streams is not in place")

// probeExpectedStream names no stream: a probe carrying it is refused by
// whichever stream receives it, and the refusal names that stream.
const probeExpectedStream = "ADMETRIC_MAPPING_PROBE"

// CheckPartitionMapping publishes, for each partition, one probe event of an
// ad that hashes to it, and checks that the partition's stream is the one
// that receives it. The probes carry an expected stream no stream has, so
// the receiving stream refuses them and names itself; none is stored.
func CheckPartitionMapping(ctx context.Context, nc *nats.Conn, partitions int) error {
	for p, ad := range probeAds(partitions) {
		subject := eventSubjectPrefix + "impression." + ad
		msg := nats.NewMsg(subject)
		msg.Header.Set("Nats-Expected-Stream", probeExpectedStream)
		msg.Data = []byte("{}")
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		reply, err := nc.RequestMsgWithContext(rctx, msg)
		cancel()
		if errors.Is(err, nats.ErrNoResponders) {
			return fmt.Errorf("%w: a publish to %s lands in no stream (PARTITIONS=%d; see `admetric nats-config`)", ErrMappingMissing, subject, partitions)
		}
		if err != nil {
			return fmt.Errorf("store: checking the partition mapping: %w", err)
		}
		var ack struct {
			Stream string `json:"stream"`
		}
		if err := json.Unmarshal(reply.Data, &ack); err != nil {
			return fmt.Errorf("store: checking the partition mapping: answer %q: %w", reply.Data, err)
		}
		if want := EventStreamName(p); ack.Stream != want {
			return fmt.Errorf("%w: a publish to %s lands in stream %q, not %s (PARTITIONS=%d; see `admetric nats-config`)", ErrMappingMissing, subject, ack.Stream, want, partitions)
		}
	}
	return nil
}

// probeAds returns, for each partition, an ad ID that hashes to it.
func probeAds(partitions int) []string {
	ads := make([]string, partitions)
	found := 0
	for i := 0; found < partitions; i++ {
		ad := "admetric-probe-" + strconv.Itoa(i)
		if p := PartitionOf(ad, partitions); ads[p] == "" {
			ads[p] = ad
			found++
		}
	}
	return ads
}
