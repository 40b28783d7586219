package aggregator_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/admetric/admetric/aggregator"
	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/postgres"
	"github.com/admetric/admetric/store/rollup"
	"github.com/admetric/admetric/store/storetest"
)

// TestRollupWriterSettlesEndedSlots: the visitor sets of a slot that has
// ended move to the settled key beside its rollup, which keeps the counters;
// late events for that slot add to the rollup again; readers count the
// union, exactly, and a replay from the start adds nothing.
func TestRollupWriterSettlesEndedSlots(t *testing.T) {
	js, rollups := setup(t)
	ctx := context.Background()
	now := time.Now().UTC()
	past := now.Add(-2 * time.Hour) // an hour that has ended
	from, to := past.Add(-time.Hour), now.Add(time.Minute)
	key, slot := rollup.Minute.Locate("ad-s", past)

	w := runWriter(t, js, rollups)
	publish(t, js, clicks("ad-s", 300, past, "s")...)
	publish(t, js, clicks("ad-s", 50, now, "s-now")...) // the first 50 visitors again
	waitFolded(t, js, rollups, 1)

	// The writer folds 7 events a batch: it moves the slot's set each time
	// 128 or more have gathered, and fewer stay in the rollup.
	st := loadStored(t, rollups, key)
	if s := st.Value.Slots[slot]; s == nil || s.Clicks != 300 || s.Visitors.Count() >= 128 {
		t.Fatalf("the rollup's slot %d after settling: %+v, want 300 clicks and fewer than 128 visitors", slot, s)
	}
	if s := st.Settled.Slots[slot]; s == nil || s.Visitors.Count() < 128 || s.Clicks != 0 {
		t.Fatalf("the settled slot %d: %+v, want 128 visitors or more and no counters", slot, s)
	}
	mergedCount(t, st, slot, 300)
	check := func(when string, clicks, visitors uint64) {
		t.Helper()
		agg := sum(t, rollups, "ad-s", from, to)
		if agg.Clicks != clicks || agg.UniqueVisitors() != visitors {
			t.Errorf("%s: %d clicks and %d unique visitors, want %d and %d", when, agg.Clicks, agg.UniqueVisitors(), clicks, visitors)
		}
	}
	check("settled", 350, 300)

	// Late clicks for the settled slot: 20 new visitors and 10 known ones.
	late := clicks("ad-s", 20, past, "late")
	for i := range late {
		late[i].UserAgent = "another-ua"
	}
	publish(t, js, late...)
	publish(t, js, clicks("ad-s", 10, past, "late-known")...)
	waitFolded(t, js, rollups, 1)
	st = loadStored(t, rollups, key)
	mergedCount(t, st, slot, 320)
	check("after late clicks", 380, 320)
	w.Stop()

	// Replay the partition from its start with the checkpoints rewound: each
	// rollup's MaxSeq skips what it holds, the settled sets included.
	if err := js.DeleteConsumer(ctx, store.EventStreamName(0), aggregator.RollupConsumerName(0)); err != nil {
		t.Fatal(err)
	}
	rewindCheckpoints(t, rollups)
	w = runWriter(t, js, rollups)
	waitFolded(t, js, rollups, 1)
	check("after a replay", 380, 320)
	if w.Duplicates() == 0 {
		t.Error("the replay skipped nothing: it did not reach the fold")
	}
	if n := counter(t, w.reg, "admetric_rollup_settled_writes_total"); n != 0 {
		t.Errorf("the replay wrote %v settled keys; it changed nothing", n)
	}
}

// mergedCount checks that slot of st, its rollup's and its settled set
// together, holds want visitors.
func mergedCount(t *testing.T, st store.Stored, slot int, want uint64) {
	t.Helper()
	agg := &rollup.Aggregate{}
	for _, part := range []*rollup.Rollup{st.Value, st.Settled} {
		if err := agg.AddSlots(part, []int{slot}); err != nil {
			t.Fatal(err)
		}
	}
	if got := agg.UniqueVisitors(); got != want {
		t.Errorf("slot %d holds %d visitors, its settled set included; want %d", slot, got, want)
	}
}

func loadStored(t *testing.T, rollups *store.Rollups, key string) store.Stored {
	t.Helper()
	st, err := rollups.LoadStored(context.Background(), rollup.Minute, key)
	if err != nil {
		t.Fatal(fmt.Errorf("load %s: %w", key, err))
	}
	return st
}

// TestRebuildReplacesSettledSets: a rebuild puts the range's visitors back in
// the rollups, whole, and drops the range's settled sets (here falsified),
// leaving the settled sets outside the range as they were.
func TestRebuildReplacesSettledSets(t *testing.T) {
	js, rollups := setup(t)
	pg := storetest.Postgres(t)
	ctx := context.Background()
	db := storetest.DB(t, pg)
	runArchiver(t, js, db, aggregator.ArchiverOptions{})
	writer := runWriterWith(t, js, rollups, aggregator.RollupWriterOptions{BatchSize: 100})

	now := time.Now().UTC()
	past := now.Add(-2 * time.Hour)
	before := past.Add(-3 * 24 * time.Hour) // outside the rebuild's days
	evs := append(clicks("ad-rs", 300, past, "p"), clicks("ad-rs", 200, before, "b")...)
	publish(t, js, evs...)
	waitFolded(t, js, rollups, 1)
	waitRows(t, db, len(evs))
	waitConsumed(t, js, aggregator.ArchiveConsumerName)
	writer.Stop()

	key, slot := rollup.Minute.Locate("ad-rs", past)
	st := loadStored(t, rollups, key)
	if st.Settled.Slots[slot] == nil {
		t.Fatal("nothing settled: the test needs a settled set")
	}
	// Falsify the settled set: 50 visitors that never came.
	for h := range uint64(50) {
		st.Settled.Slot(slot).AddVisitor(h + 1)
	}
	if _, err := rollups.Replace(ctx, rollup.Minute, []store.Write{{Key: rollup.SettledKey(key), Value: st.Settled, Rev: st.SettledRev}}); err != nil {
		t.Fatal(err)
	}
	window := func(at time.Time) (time.Time, time.Time) {
		return rollup.Hour.Truncate(at), rollup.Hour.Truncate(at).Add(time.Hour)
	}
	if got := sum(t, rollups, "ad-rs", past.Add(-time.Minute), past.Add(time.Minute)).UniqueVisitors(); got != 350 {
		t.Fatalf("falsified: %d visitors, want 350", got)
	}
	beforeKey, _ := rollup.Hour.Locate("ad-rs", before)
	outside := loadHourSettled(t, rollups, beforeKey)

	if _, err := aggregator.Rebuild(ctx, rollups, postgres.NewArchive(db), aggregator.RebuildOptions{
		From: past, To: past.Add(time.Minute), VisitorSalt: []byte("salt"), ArchiveFloor: aggregator.ArchiveFloor(js),
	}); err != nil {
		t.Fatal(err)
	}
	from, to := window(past)
	if agg := sum(t, rollups, "ad-rs", from, to); agg.Clicks != 300 || agg.UniqueVisitors() != 300 {
		t.Errorf("after the rebuild: %d clicks, %d visitors, want 300 and 300", agg.Clicks, agg.UniqueVisitors())
	}
	st = loadStored(t, rollups, key)
	if st.Settled.Slots[slot] != nil || st.Value.Slots[slot].Visitors.Count() != 300 {
		t.Errorf("after the rebuild the rollup's slot holds %d visitors and the settled one %+v; want 300 and none",
			st.Value.Slots[slot].Visitors.Count(), st.Settled.Slots[slot])
	}
	if !bytes.Equal(loadHourSettled(t, rollups, beforeKey), outside) {
		t.Error("the rebuild changed a settled set outside its range")
	}
	from, to = window(before)
	if agg := sum(t, rollups, "ad-rs", from, to); agg.UniqueVisitors() != 200 {
		t.Errorf("outside the range: %d visitors, want 200", agg.UniqueVisitors())
	}
}

// loadHourSettled returns the encoded settled sets of key in the hour
// bucket, which must hold some.
func loadHourSettled(t *testing.T, rollups *store.Rollups, key string) []byte {
	t.Helper()
	v, _, err := rollups.Load(context.Background(), rollup.Hour, rollup.SettledKey(key))
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Slots) == 0 {
		t.Fatalf("no settled set at %s", key)
	}
	b, err := v.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRollupWriterSettlesFullSetsOfOpenSlots: the set of a slot still taking
// events moves to the settled key when it reaches 1,024 visitors, so that
// commits do not rewrite a growing sketch; counts stay exact.
func TestRollupWriterSettlesFullSetsOfOpenSlots(t *testing.T) {
	js, rollups := setup(t)
	now := time.Now().UTC()
	key, slot := rollup.Minute.Locate("ad-open", now)
	runWriterWith(t, js, rollups, aggregator.RollupWriterOptions{BatchSize: 100})
	publish(t, js, clicks("ad-open", 1100, now, "o")...)
	waitFolded(t, js, rollups, 1)
	st := loadStored(t, rollups, key)
	if s := st.Value.Slots[slot]; s == nil || s.Clicks != 1100 || s.Visitors.Full() {
		t.Errorf("the open slot in the rollup: %+v, want 1100 clicks and a set short of full", s)
	}
	if s := st.Settled.Slots[slot]; s == nil || s.Visitors.Count() < rollup.ExactVisitors {
		t.Errorf("the open slot's settled set: %+v, want 1,024 visitors or more", s)
	}
	mergedCount(t, st, slot, 1100)
	if agg := sum(t, rollups, "ad-open", now.Add(-time.Hour), now.Add(time.Minute)); agg.UniqueVisitors() != 1100 {
		t.Errorf("%d unique visitors, want 1100", agg.UniqueVisitors())
	}
}
