package store

import (
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
)

// Every subject of AdMetric's streams and buckets is spelled here.
//
// Publishers put an event on ads.events.<type>.<ad_id> (event.Event.Subject
// spells it for the intake; external publishers use the same). The event
// server's subject mapping (PartitionMapping) moves it to
// ads.events.<partition>.<type>.<ad_id>, the partition a hash of the ad ID,
// where partition stream ADMETRIC_EVENTS_<partition> stores it, so that one
// rollup writer owns each ad's keys. A message
// that can never be processed goes to ads.dlq.<reason>. The invalid-traffic
// decisions of partition p's rollup writer go on ads.decisions.<p>. A
// rollup key lives on $KV.<bucket>.<key>, as in every KV bucket.
const (
	eventSubjects      = "ads.events.>"
	eventSubjectPrefix = "ads.events."
	deadLetterSubjects = "ads.dlq.>"
	deadLetterPrefix   = "ads.dlq."
	decisionSubjects   = "ads.decisions.>"
	decisionPrefix     = "ads.decisions."
)

// DecisionSubject is where partition p's rollup writer publishes its
// invalid-traffic decisions.
func DecisionSubject(p int) string { return decisionPrefix + strconv.Itoa(p) }

// PartitionMapping is the account subject mapping that puts a published
// event, ads.events.<type>.<ad_id>, on its partition's subject,
// ads.events.<partition>.<type>.<ad_id>; the partition is the FNV-1a hash
// of the ad ID modulo partitions (PartitionOf), so all of an ad's events
// reach one stream and one rollup writer.
func PartitionMapping(partitions int) (source, destination string) {
	return eventSubjectPrefix + "*.*",
		fmt.Sprintf(eventSubjectPrefix+"{{partition(%d,2)}}.{{wildcard(1)}}.{{wildcard(2)}}", max(partitions, 1))
}

// PartitionOf is the partition the server's mapping puts adID in: the same
// hash as nats-server's partition function.
func PartitionOf(adID string, partitions int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(adID))
	return int(h.Sum32() % uint32(max(partitions, 1)))
}

// PartitionFilter is the subject filter of partition p's events in the event
// stream.
func PartitionFilter(p int) string {
	return eventSubjectPrefix + strconv.Itoa(p) + ".>"
}

// ParseEventSubject parses ads.events.<partition>.<type>.<ad_id>, as the event
// stream stores events, or ads.events.<type>.<ad_id>, as they are published
// (partition -1). ok is false for any other subject.
func ParseEventSubject(subject string) (partition int, typ, adID string, ok bool) {
	rest, found := strings.CutPrefix(subject, eventSubjectPrefix)
	if !found {
		return 0, "", "", false
	}
	partition = -1
	if first, after, found := strings.Cut(rest, "."); found {
		if p, err := strconv.Atoi(first); err == nil && p >= 0 {
			partition, rest = p, after
		}
	}
	typ, adID, found = strings.Cut(rest, ".")
	if !found || typ == "" || adID == "" || strings.Contains(adID, ".") {
		return 0, "", "", false
	}
	return partition, typ, adID, true
}

// deadLetterSubject is where a poison message with reason goes.
func deadLetterSubject(reason string) string { return deadLetterPrefix + reason }

// kvSubject is the subject of key in a KV bucket's stream.
func kvSubject(bucket, key string) string { return "$KV." + bucket + "." + key }

// kvStream is the name of a KV bucket's stream.
func kvStream(bucket string) string { return "KV_" + bucket }
