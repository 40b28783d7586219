package store_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/rollup"
	"github.com/admetric/admetric/store/rollup/rolluptest"
	"github.com/admetric/admetric/store/storetest"
)

func openRollups(t *testing.T) (jetstream.JetStream, *store.Rollups) {
	t.Helper()
	js, _ := storetest.JetStream(t, storetest.NATS(t))
	r, err := store.CreateOrUpdateRollups(context.Background(), js, rolluptest.Layout, 1)
	if err != nil {
		t.Fatal(err)
	}
	return js, r
}

func rollupWith(clicks, maxSeq uint64) *rollup.Rollup {
	r := rollup.New()
	r.Slot(3).Clicks = clicks
	r.MaxSeq = maxSeq
	return r
}

// TestCreateOrUpdateRollupsAllowsAtomicPublish: the buckets' streams allow
// atomic batches after every CreateOrUpdateRollups, although
// CreateOrUpdateKeyValue turns that off; with one replica the commits are
// written key by key all the same (see CreateOrUpdateRollups).
func TestCreateOrUpdateRollupsAllowsAtomicPublish(t *testing.T) {
	js, r := openRollups(t)
	if r.Atomic() {
		t.Fatal("Atomic() = true with one replica")
	}
	ctx := context.Background()
	for range 2 {
		for _, b := range []string{rollup.MinuteBucket, rollup.HourBucket, rollup.DayBucket} {
			s, err := js.Stream(ctx, "KV_"+b)
			if err != nil {
				t.Fatal(err)
			}
			if !s.CachedInfo().Config.AllowAtomicPublish {
				t.Fatalf("%s: AllowAtomicPublish is off", b)
			}
		}
		var err error
		if r, err = store.CreateOrUpdateRollups(ctx, js, rolluptest.Layout, 1); err != nil || r.Atomic() {
			t.Fatalf("reopen: %v, atomic %v", err, r.Atomic())
		}
	}
}

func TestCommit(t *testing.T) {
	for _, atomic := range []bool{true, false} {
		name := "atomic"
		if !atomic {
			name = "per-key"
		}
		t.Run(name, func(t *testing.T) {
			js, r := openRollups(t)
			if atomic {
				r.UseAtomicCommits(true)
			}
			ctx := context.Background()
			revs, cpRev, err := r.Commit(ctx, rollup.Minute, 2, []store.Write{
				{Key: "ad-a.2026112512", Value: rollupWith(1, 10)},
				{Key: "ad-b.2026112512", Value: rollupWith(2, 11)},
			}, 11, 0)
			if err != nil {
				t.Fatal(err)
			}
			for i, key := range []string{"ad-a.2026112512", "ad-b.2026112512"} {
				v, rev, err := r.Load(ctx, rollup.Minute, key)
				if err != nil || rev != revs[i] || v.Slots[3].Clicks != uint64(i+1) || v.MaxSeq != uint64(10+i) {
					t.Fatalf("Load %s = %+v rev %d (%v), want rev %d", key, v, rev, err, revs[i])
				}
			}
			if seq, rev, err := r.Checkpoint(ctx, rollup.Minute, 2); err != nil || seq != 11 || rev != cpRev {
				t.Fatalf("Checkpoint = %d rev %d (%v), want 11 rev %d", seq, rev, err, cpRev)
			}

			// A stale revision anywhere fails the commit with ErrConflict.
			_, _, err = r.Commit(ctx, rollup.Minute, 2, []store.Write{
				{Key: "ad-a.2026112512", Value: rollupWith(5, 20), Rev: revs[0]},
				{Key: "ad-b.2026112512", Value: rollupWith(5, 20), Rev: revs[1] - 1},
			}, 20, cpRev)
			if !errors.Is(err, store.ErrConflict) {
				t.Fatalf("stale revision: err %v, want ErrConflict", err)
			}
			v, _, _ := r.Load(ctx, rollup.Minute, "ad-a.2026112512")
			if atomic && v.Slots[3].Clicks != 1 {
				t.Fatalf("an atomic commit that failed changed a key: %d clicks", v.Slots[3].Clicks)
			}
			if seq, _, _ := r.Checkpoint(ctx, rollup.Minute, 2); seq != 11 {
				t.Fatalf("checkpoint moved to %d by a failed commit", seq)
			}

			// A key that was deleted (or expired) is written at its marker's revision.
			kv, err := js.KeyValue(ctx, rollup.MinuteBucket)
			if err != nil {
				t.Fatal(err)
			}
			if err := kv.Delete(ctx, "ad-b.2026112512"); err != nil {
				t.Fatal(err)
			}
			v, rev, err := r.Load(ctx, rollup.Minute, "ad-b.2026112512")
			if err != nil || len(v.Slots) != 0 || rev == 0 {
				t.Fatalf("Load deleted key = %+v rev %d (%v), want empty at the marker's revision", v, rev, err)
			}
			if _, _, err := r.Commit(ctx, rollup.Minute, 2, []store.Write{{Key: "ad-b.2026112512", Value: rollupWith(9, 30), Rev: rev}}, 30, cpRev); err != nil {
				t.Fatalf("write over a delete marker: %v", err)
			}
		})
	}
}

// TestCommitSplitsLargeBatches: more keys than one atomic batch holds commit
// in slices, the checkpoint in the last, with every revision right; written
// key by key they are pipelined in slices alike.
func TestCommitSplitsLargeBatches(t *testing.T) {
	for _, atomic := range []bool{true, false} {
		t.Run(fmt.Sprintf("atomic=%v", atomic), func(t *testing.T) {
			_, r := openRollups(t)
			if atomic {
				r.UseAtomicCommits(true)
			}
			ctx := context.Background()
			writes := make([]store.Write, 1500)
			for i := range writes {
				writes[i] = store.Write{Key: fmt.Sprintf("ad-%d.2026112512", i), Value: rollupWith(uint64(i), uint64(i))}
			}
			revs, cpRev, err := r.Commit(ctx, rollup.Minute, 0, writes, 1500, 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, i := range []int{0, 999, 1000, 1499} {
				v, rev, err := r.Load(ctx, rollup.Minute, writes[i].Key)
				if err != nil || rev != revs[i] || v.Slots[3].Clicks != uint64(i) {
					t.Fatalf("key %d: rev %d want %d, %+v (%v)", i, rev, revs[i], v, err)
				}
			}
			if seq, rev, _ := r.Checkpoint(ctx, rollup.Minute, 0); seq != 1500 || rev != cpRev {
				t.Fatalf("checkpoint %d rev %d, want 1500 rev %d", seq, rev, cpRev)
			}
		})
	}
}

// TestCreateOrUpdateRollupsLeavesConfiguredBucketsAlone: reopening with the
// same layout sends no stream update (CreateOrUpdateKeyValue would switch
// atomic publishing off under the writers of other processes), and a changed
// retention is applied.
func TestCreateOrUpdateRollupsLeavesConfiguredBucketsAlone(t *testing.T) {
	js, nc := storetest.JetStream(t, storetest.NATS(t))
	ctx := context.Background()
	if _, err := store.CreateOrUpdateRollups(ctx, js, rolluptest.Layout, 1); err != nil {
		t.Fatal(err)
	}
	updates, err := nc.SubscribeSync("$JS.API.STREAM.UPDATE.>")
	if err != nil {
		t.Fatal(err)
	}
	// The requests go out on nc too, so once the server answers a PING sent
	// after them (Flush) it has routed every one to the subscription.
	countUpdates := func() int {
		t.Helper()
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		n, _, err := updates.Pending()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if _, err := store.CreateOrUpdateRollups(ctx, js, rolluptest.Layout, 1); err != nil {
		t.Fatal(err)
	}
	if n := countUpdates(); n != 0 {
		t.Fatalf("reopening an unchanged layout sent %d stream updates, want 0", n)
	}
	longer := rolluptest.Retentions
	longer.Minute = 96 * time.Hour
	if _, err := store.CreateOrUpdateRollups(ctx, js, rollup.NewLayout(longer), 1); err != nil {
		t.Fatalf("reopen with a new retention: %v", err)
	}
	if n := countUpdates(); n == 0 {
		t.Fatal("a changed retention sent no stream update")
	}
	s, err := js.Stream(ctx, "KV_"+rollup.MinuteBucket)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().Config.MaxAge; got != 96*time.Hour {
		t.Fatalf("minute bucket TTL %s after reopening, want 96h", got)
	}
}
