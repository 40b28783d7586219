package aggregator

import (
	"fmt"
	"testing"
	"time"

	"github.com/admetric/admetric/ingest/event"
)

// BenchmarkJudgeState judges ADMETRIC_BENCH_EVENTS-like loads: 1,000,000
// events from 1,000,000 visitors over 10,000 ads within one minute of event
// time (so that every entry is still live when the state is written), a
// quarter of them clicks and a tenth impressions through a VAST serving,
// with the bot list on. It reports the time per decision and the state
// this leaves: entries of each kind and the bytes committed (one
// partition's judge; the service spreads them over its partitions).
func BenchmarkJudgeState(b *testing.B) {
	const events, ads, visitors = 1_000_000, 10_000, 1_000_000
	bots := loadTestBots(b)
	adIDs := make([]string, ads)
	for i := range adIDs {
		adIDs[i] = fmt.Sprintf("ad-%05d", i)
	}
	recs := make([]Record, events)
	for i := range recs {
		e := event.Event{EventID: fmt.Sprintf("e%d", i), Type: event.Impression, AdID: adIDs[i*7919%ads],
			Timestamp: t0.Add(time.Duration(i) * time.Minute / events), UserAgent: human}
		switch {
		case i%4 == 0:
			e.Type = event.Click
		case i%10 == 1:
			e.ServingID = fmt.Sprintf("sv%d", i)
			e.EventID = e.ServingID + ".impression"
		}
		recs[i] = Record{Seq: uint64(i + 1), Event: e, Visitor: uint64(i%visitors)*0x9e3779b97f4a7c15 + 1}
	}
	var j *Judge
	var writes []StateWrite
	b.ReportAllocs()
	for b.Loop() {
		j = NewJudge(Rules{Bots: bots}, 0)
		for i := range recs {
			r := recs[i]
			if err := j.Decide(&r); err != nil {
				b.Fatal(err)
			}
		}
		writes = j.Writes()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*events), "ns/decision")
	clicks, rates, servings := j.Entries()
	b.ReportMetric(float64(clicks), "click_entries")
	b.ReportMetric(float64(rates), "minute_count_entries")
	b.ReportMetric(float64(servings), "serving_entries")
	largest := 0
	for _, w := range writes {
		largest = max(largest, len(w.Data))
	}
	b.ReportMetric(float64(j.Size())/(1<<20), "state_MiB")
	b.ReportMetric(float64(largest)/(1<<10), "largest_value_KiB")
}
