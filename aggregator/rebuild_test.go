package aggregator_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/admetric/admetric/aggregator"
	"github.com/admetric/admetric/ingest/event"
	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/postgres"
	"github.com/admetric/admetric/store/rollup"
	"github.com/admetric/admetric/store/storetest"
)

// TestRebuild folds events over four days through the live consumers, wipes
// and falsifies the rollups, rebuilds them from the archive and finds every
// count, playback sum and unique count back; a second rebuild changes nothing.
func TestRebuild(t *testing.T) {
	js, rollups := setup(t)
	pg := storetest.Postgres(t)
	ctx := context.Background()
	db := storetest.DB(t, pg)
	archive := postgres.NewArchive(db)
	runArchiver(t, js, db, aggregator.ArchiverOptions{})
	writer := runWriterWith(t, js, rollups, aggregator.RollupWriterOptions{BatchSize: 100})

	now := time.Now().UTC()
	var evs []event.Event
	for day := range 4 { // today and three days back: beyond the minute retention
		at := now.Add(-time.Duration(day) * 24 * time.Hour)
		for i, e := range clicks("ad-r", 30+day, at, fmt.Sprintf("r%d", day)) {
			switch {
			case i%3 == 0:
				e.Type = event.Impression
				e.ServingID = fmt.Sprintf("sv-%d-%d", day, i)
				e.EventID = e.ServingID + ".impression"
			case i%5 == 1: // what VAST brings must come back from the archive too
				e.Type, e.ErrorCode, e.ServingID = event.Error, 400+i%3, fmt.Sprintf("sv-%d-%d", day, i)
			case i%7 == 2:
				e.InvalidReason = event.BadSignature
			}
			evs = append(evs, e)
		}
	}
	publish(t, js, evs...)
	from, to := now.Add(-4*24*time.Hour), now.Add(time.Minute)
	var wantClicks uint64
	for _, e := range evs {
		if e.Type == event.Click && e.InvalidReason == "" {
			wantClicks++
		}
	}
	waitFolded(t, js, rollups, 1)
	want := sum(t, rollups, "ad-r", from, to)
	if want.Clicks != wantClicks {
		t.Fatalf("%d clicks folded, want %d", want.Clicks, wantClicks)
	}
	waitRows(t, db, len(evs))
	waitConsumed(t, js, aggregator.ArchiveConsumerName)
	writer.Stop()

	// Wipe some keys and falsify others, in every resolution.
	for _, u := range []rollup.Unit{rollup.Minute, rollup.Hour, rollup.Day} {
		for day := range 4 {
			key, slot := u.Locate("ad-r", now.Add(-time.Duration(day)*24*time.Hour))
			v, rev, err := rollups.Load(ctx, u, key)
			if err != nil {
				t.Fatal(err)
			}
			if day%2 == 0 {
				v = rollup.New()
			} else if s, ok := v.Slots[slot]; ok {
				s.Clicks += 1000
			}
			if _, err := rollups.Replace(ctx, u, []store.Write{{Key: key, Value: v, Rev: rev}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got := sum(t, rollups, "ad-r", from, to); got.Clicks == want.Clicks {
		t.Fatal("the falsification did not change the sums")
	}

	archiveFloor := aggregator.ArchiveFloor(js)
	// An archive that is behind the rollups is refused: rebuilding would drop events.
	behind := func(context.Context, int) (uint64, error) { return 1, nil }
	if _, err := aggregator.Rebuild(ctx, rollups, archive, aggregator.RebuildOptions{From: from, To: to, VisitorSalt: []byte("salt"), ArchiveFloor: behind}); !errors.Is(err, aggregator.ErrArchiveBehind) {
		t.Fatalf("rebuild with the archive behind: %v, want ErrArchiveBehind", err)
	}

	// Events archived but not yet folded (the writer is stopped) are left to the
	// writer: the rebuild restores what was folded, the writer adds the rest once.
	late := clicks("ad-r", 7, now, "late")
	publish(t, js, late...)
	waitRows(t, db, len(evs)+len(late))
	waitConsumed(t, js, aggregator.ArchiveConsumerName) // the archive floor is past them

	res, err := aggregator.Rebuild(ctx, rollups, archive, aggregator.RebuildOptions{From: from, To: to, VisitorSalt: []byte("salt"), ArchiveFloor: archiveFloor, AdIDs: []string{"ad-r", "ad-none"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Events != len(evs)+len(late) || !res.From.Equal(rollup.Day.Truncate(from)) || res.Keys == 0 {
		t.Fatalf("result %+v, want %d events from %s", res, len(evs)+len(late), rollup.Day.Truncate(from))
	}
	got := sum(t, rollups, "ad-r", from, to)
	if got.Counters != want.Counters || got.UniqueVisitors() != want.UniqueVisitors() {
		t.Fatalf("after rebuild %+v (%d visitors), want %+v (%d visitors)", got.Counters, got.UniqueVisitors(), want.Counters, want.UniqueVisitors())
	}
	if want.Errors == 0 || want.Servings == 0 || want.Invalid == 0 || !slices.Equal(got.ErrorCodes, want.ErrorCodes) {
		t.Fatalf("after rebuild error codes %v, want %v (and VAST counters in %+v)", got.ErrorCodes, want.ErrorCodes, want.Counters)
	}

	// Idempotent: a second rebuild writes the same bytes.
	snapshot := func() map[string][]byte {
		out := make(map[string][]byte)
		for _, u := range []rollup.Unit{rollup.Minute, rollup.Hour, rollup.Day} {
			for day := range 4 {
				key, _ := u.Locate("ad-r", now.Add(-time.Duration(day)*24*time.Hour))
				v, _, err := rollups.Load(ctx, u, key)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := v.MarshalBinary()
				out[u.String()+key] = b
			}
		}
		return out
	}
	before := snapshot()
	if _, err := aggregator.Rebuild(ctx, rollups, archive, aggregator.RebuildOptions{From: from, To: to, VisitorSalt: []byte("salt"), ArchiveFloor: archiveFloor}); err != nil {
		t.Fatal(err)
	}
	for k, b := range snapshot() {
		if !bytes.Equal(b, before[k]) {
			t.Errorf("second rebuild changed %s", k)
		}
	}

	// The writer comes back and folds the late events, once: when it has
	// acknowledged the last of them, nothing more can come.
	runWriterWith(t, js, rollups, aggregator.RollupWriterOptions{BatchSize: 100})
	waitFolded(t, js, rollups, 1)
	after := sum(t, rollups, "ad-r", from, to)
	if after.Clicks != wantClicks+uint64(len(late)) || after.PlaybackCount != after.Clicks {
		t.Fatalf("after the writer came back: %d clicks (playback count %d), want %d", after.Clicks, after.PlaybackCount, wantClicks+uint64(len(late)))
	}
}
