package aggregator_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/admetric/admetric/aggregator"
	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/postgres"
	"github.com/admetric/admetric/store/rollup"
	"github.com/admetric/admetric/store/storetest"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/uptrace/bun"
)

const browserUA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"

// ivtScenario is a load whose every decision is known by construction, in
// the order it is published: a bot's impressions, a visitor's repeat
// clicks, a burst beyond the rate, a serving's click with and without its
// impression, and plain traffic.
func ivtScenario(ad string, at time.Time) (evs []event.Event, want map[string]event.InvalidReason) {
	want = map[string]event.InvalidReason{}
	add := func(id string, typ event.Type, ip, ua string, dt time.Duration, serving string, reason event.InvalidReason) {
		e := event.Event{EventID: id, Type: typ, AdID: ad, Timestamp: at.Add(dt), IP: ip, UserAgent: ua, PlaybackTime: 1}
		if serving != "" {
			e.ServingID, e.EventID = serving, serving+"."+string(typ)
		}
		evs = append(evs, e)
		want[e.EventID] = reason
	}
	for i := range 3 {
		add(fmt.Sprintf("bot-%d", i), event.Impression, "10.9.0.1", "Googlebot/2.1 (+http://www.google.com/bot.html)", time.Duration(i)*time.Second, "", event.Bot)
	}
	add("dup-0", event.Click, "10.9.0.2", browserUA, 0, "", "")
	add("dup-1", event.Click, "10.9.0.2", browserUA, 29_900*time.Millisecond, "", event.DuplicateClick)
	add("dup-2", event.Click, "10.9.0.2", browserUA, 30_100*time.Millisecond, "", "")
	for i := range 5 { // a rate of 3: the 4th and 5th are beyond it
		reason := event.InvalidReason("")
		if i >= 3 {
			reason = event.Rate
		}
		add(fmt.Sprintf("burst-%d", i), event.Impression, "10.9.0.3", browserUA, time.Duration(i)*time.Second, "", reason)
	}
	add("", event.Impression, "10.9.0.4", browserUA, time.Second, "sv-a", "")
	add("", event.Click, "10.9.0.4", browserUA, 2*time.Second, "sv-a", "")
	add("", event.Click, "10.9.0.5", browserUA, 2*time.Second, "sv-b", event.ClickWithoutImpression)
	for i := range 4 {
		add(fmt.Sprintf("plain-%d", i), event.Impression, fmt.Sprintf("10.9.1.%d", i), browserUA, 0, "", "")
	}
	return evs, want
}

// runRules starts NATS and PostgreSQL, a rollup writer with the rules (the
// bot list, a rate of 3 a minute) and an archiver that applies the
// decisions to the archive when applied says so.
func runRules(t *testing.T, applied bool) (jetstream.JetStream, *store.Rollups, *bun.DB) {
	t.Helper()
	js, rollups := setup(t)
	db := storetest.DB(t, storetest.Postgres(t))
	bots, err := aggregator.LoadBots(nil)
	if err != nil {
		t.Fatal(err)
	}
	runWriterWith(t, js, rollups, aggregator.RollupWriterOptions{Rules: &aggregator.Rules{Bots: bots, RatePerMinute: 3}})
	runArchiver(t, js, db, aggregator.ArchiverOptions{BatchSize: 4, Decisions: applied})
	return js, rollups, db
}

// TestRulesDecideInTheFoldAndTheArchiveKeepsThem runs a rollup writer with
// the rules and the archiver on a real NATS and PostgreSQL: the rollups
// count each event as its rule decides (valid counts, invalid ones by
// reason), and the archive holds every event with that reason.
func TestRulesDecideInTheFoldAndTheArchiveKeepsThem(t *testing.T) {
	js, rollups, db := runRules(t, true)
	ctx := context.Background()
	at := time.Now().UTC().Add(-time.Minute).Truncate(time.Minute)
	evs, want := ivtScenario("ad-ivt", at)
	publish(t, js, evs...)
	waitRows(t, db, len(evs))
	waitInvalidRows(t, db, 7)
	rows := map[string]string{}
	var got []struct {
		EventID       string  `bun:"event_id"`
		InvalidReason *string `bun:"invalid_reason"`
	}
	if err := db.NewRaw(`SELECT event_id, invalid_reason FROM events`).Scan(ctx, &got); err != nil {
		t.Fatal(err)
	}
	for _, r := range got {
		if r.InvalidReason != nil {
			rows[r.EventID] = *r.InvalidReason
		} else {
			rows[r.EventID] = ""
		}
	}
	for id, reason := range want {
		if r, ok := rows[id]; !ok || r != string(reason) {
			t.Errorf("archive: %s has reason %q (archived %v), want %q", id, r, ok, reason)
		}
	}

	waitFolded(t, js, rollups, 1)
	agg := sum(t, rollups, "ad-ivt", at.Add(-time.Hour), at.Add(2*time.Minute))
	wantCounts := rollup.Counters{
		Impressions: 3 + 1 + 4, Clicks: 2 + 1, PlaybackMillis: 3000, PlaybackCount: 3, Servings: 1, ServingClicks: 1,
		Invalid: 7, InvalidImpressions: 5, InvalidClicks: 2,
		InvalidBot: 3, InvalidDuplicateClick: 1, InvalidRate: 2, InvalidClickWithoutImpression: 1,
	}
	if agg.Counters != wantCounts {
		t.Errorf("rollups:\n got %+v\nwant %+v", agg.Counters, wantCounts)
	}
	// Valid visitors only: the click visitor, the burst, the serving's and
	// the four plain ones; not the bot nor the serving-less click's.
	if got := agg.UniqueVisitors(); got != 7 {
		t.Errorf("%d unique visitors, want the 7 valid ones", got)
	}
}

// A rebuild reproduces the rules' decisions: from the decision stream when
// the archive does not have them yet (here the archiver does not apply
// them at all), and from the archive's rows when it does.
func TestRebuildKeepsTheRulesDecisions(t *testing.T) {
	for _, applied := range []bool{false, true} {
		t.Run(fmt.Sprintf("archive has the decisions: %v", applied), func(t *testing.T) {
			js, rollups, db := runRules(t, applied)
			ctx := context.Background()
			at := time.Now().UTC().Add(-time.Minute).Truncate(time.Minute)
			evs, _ := ivtScenario("ad-rb", at)
			publish(t, js, evs...)
			waitRows(t, db, len(evs))
			waitConsumed(t, js, aggregator.ArchiveConsumerName)
			waitFolded(t, js, rollups, 1)
			from, to := at.Add(-time.Hour), at.Add(2*time.Minute)
			live := sum(t, rollups, "ad-rb", from, to)
			if live.Invalid != 7 {
				t.Fatalf("live rollups count %d invalid events, want 7", live.Invalid)
			}
			if applied {
				waitInvalidRows(t, db, 7)
			}
			res, err := aggregator.Rebuild(ctx, rollups, postgres.NewArchive(db), aggregator.RebuildOptions{
				From: from, To: to, VisitorSalt: []byte("salt"), ArchiveFloor: aggregator.ArchiveFloor(js),
				Decisions: aggregator.ReadDecisions(js), Partitions: 1,
			})
			if err != nil || res.Events != len(evs) {
				t.Fatalf("rebuild: %+v (%v), want %d events", res, err, len(evs))
			}
			rebuilt := sum(t, rollups, "ad-rb", from, to)
			if rebuilt.Counters != live.Counters || rebuilt.UniqueVisitors() != live.UniqueVisitors() {
				t.Errorf("rebuilt:\n%+v (%d visitors)\nlive:\n%+v (%d visitors)", rebuilt.Counters, rebuilt.UniqueVisitors(), live.Counters, live.UniqueVisitors())
			}
		})
	}
}

// waitInvalidRows waits until the archive holds want events with an
// invalid_reason.
func waitInvalidRows(t *testing.T, db *bun.DB, want int) {
	t.Helper()
	waitFor(t, func() bool {
		var n int
		return db.NewRaw(`SELECT count(*) FROM events WHERE invalid_reason IS NOT NULL`).Scan(context.Background(), &n) == nil && n == want
	}, func() string { return fmt.Sprintf("the archive never held the %d decisions", want) })
}
