package rollupcache

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/admetric/admetric/store"
	"github.com/admetric/admetric/store/rollup"
	"github.com/admetric/admetric/store/rollup/rolluptest"
)

var snapshotTestLayout = rolluptest.Layout

// layoutOnly is a Source with no server behind it: every Load and watch fails.
type layoutOnly struct{ layout rollup.Layout }

var errNoServer = errors.New("no server in this test")

func (l layoutOnly) Layout() rollup.Layout            { return l.layout }
func (l layoutOnly) LastSeqAtOpen(rollup.Unit) uint64 { return 0 }
func (l layoutOnly) LoadStored(context.Context, rollup.Unit, string) (store.Stored, error) {
	return store.Stored{}, errNoServer
}
func (l layoutOnly) LastSeq(context.Context, rollup.Unit) (uint64, error) { return 0, errNoServer }
func (l layoutOnly) Watch(context.Context, rollup.Unit, uint64) (jetstream.KeyWatcher, error) {
	return nil, errNoServer
}

// snapshotTestAsOf is when the caches of snapshotTestCache last held every
// rollup update.
var snapshotTestAsOf = time.Date(2026, 11, 25, 12, 30, 0, 0, time.UTC)

// snapshotTestCache returns a cache with no server behind it: only what
// offer puts in can be read.
func snapshotTestCache(t *testing.T) *Cache {
	t.Helper()
	c, err := New(layoutOnly{snapshotTestLayout}, Options{MaxBytes: 256 << 20, Idle: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.stopCaches)
	// No watch to catch up: what offer puts in is all there is.
	for u := range c.current {
		c.current[u] = snapshotTestAsOf
	}
	return c
}

func snapshotTestOffer(t *testing.T, c *Cache, u rollup.Unit, key string, v *rollup.Rollup, rev uint64) {
	t.Helper()
	enc, err := v.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	e := newCacheEntry(key, v, rev, len(enc))
	e.gen = c.gens[u].Load() // as a load or the watch would
	if !c.offer(cacheKey{unit: u, key: key}, e) {
		t.Fatalf("offer %s %s rev %d refused", u, key, rev)
	}
}

var snapshotTestNow = time.Date(2026, 11, 25, 12, 34, 0, 0, time.UTC)

// snapshotTestFill caches, for each ad, a rollup of every key of the 30-day
// tiling ending at snapshotTestNow (a few slots with visitors, one above
// ExactVisitors so that sketches are covered), plus a deleted key, and
// returns the tiling's cells.
func snapshotTestFill(t *testing.T, c *Cache, ads ...string) []rollup.Cell {
	t.Helper()
	tl, err := snapshotTestLayout.Tile(snapshotTestNow.Add(-30*24*time.Hour), snapshotTestNow, snapshotTestNow)
	if err != nil {
		t.Fatal(err)
	}
	rev := uint64(100)
	for a, ad := range ads {
		values := map[cacheKey]*rollup.Rollup{}
		for i, cell := range tl.Cells {
			key, slot := cell.Unit.Locate(ad, cell.Start)
			k := cacheKey{unit: cell.Unit, key: key}
			if values[k] == nil {
				values[k] = rollup.New()
			}
			from := uint64(a*100000 + i*10)
			to := from + uint64(i%7)
			if i == 3 {
				to = from + 2*rollup.ExactVisitors
			}
			values[k].Slots[slot] = rolluptest.Slot(rollup.Counters{Impressions: uint64(10 + i), Clicks: uint64(i % 4), PlaybackMillis: 1500, PlaybackCount: 1}, from, to)
		}
		for k, v := range values {
			rev++
			snapshotTestOffer(t, c, k.unit, k.key, v, rev)
		}
		rev++
		snapshotTestOffer(t, c, rollup.Minute, ad+".2026010100", rollup.New(), rev) // deleted
	}
	return tl.Cells
}

func snapshotTestSum(t *testing.T, r interface {
	Sum(context.Context, string, []rollup.Cell) (*rollup.Aggregate, error)
}, ad string, cells []rollup.Cell) (rollup.Counters, uint64) {
	t.Helper()
	agg, err := r.Sum(context.Background(), ad, cells)
	if err != nil {
		t.Fatal(err)
	}
	return agg.Counters, agg.UniqueVisitors()
}

func snapshotTestWrite(t *testing.T, c *Cache) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "rollups.snap")
	if err := c.writeSnapshot(path); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestSnapshotRoundTrip(t *testing.T) {
	t.Parallel()
	c := snapshotTestCache(t)
	ads := []string{"ad-a", "ad-b"}
	cells := snapshotTestFill(t, c, ads...)
	c.watch[rollup.Hour].next = 4242
	c.current[rollup.Day] = snapshotTestAsOf.Add(-time.Second) // the least current bucket says
	path := snapshotTestWrite(t, c)

	s, err := readSnapshot(path, snapshotTestLayout)
	if err != nil {
		t.Fatal(err)
	}
	if want := snapshotTestAsOf.Add(-time.Second); !s.AsOf().Equal(want) {
		t.Errorf("AsOf %s, want %s: when the cache last held every bucket", s.AsOf(), want)
	}
	if s.Layout() != snapshotTestLayout {
		t.Errorf("rollup.Layout = %+v", s.Layout())
	}
	if n := c.cache.EstimatedSize(); s.Len() != n {
		t.Errorf("Len = %d, want %d (the cached entries)", s.Len(), n)
	}
	if s.through[rollup.Hour] != 4241 {
		t.Errorf("through[hour] = %d, want 4241", s.through[rollup.Hour])
	}
	for k, e := range c.cache.All() {
		got, ok := s.entries[k]
		if !ok {
			t.Errorf("%v missing from the snapshot", k)
			continue
		}
		if got.rev != e.rev {
			t.Errorf("%v: rev %d, want %d", k, got.rev, e.rev)
		}
		rolluptest.Equal(t, got.value, e.value)
	}
	for _, ad := range ads {
		wantC, wantV := snapshotTestSum(t, c, ad, cells)
		gotC, gotV := snapshotTestSum(t, s, ad, cells)
		if gotC != wantC || gotV != wantV {
			t.Errorf("%s: snapshot Sum = %+v, %d visitors; cache Sum = %+v, %d", ad, gotC, gotV, wantC, wantV)
		}
		if wantC.Impressions == 0 || wantV <= 2*rollup.ExactVisitors {
			t.Errorf("%s: the test data is too thin: %+v, %d visitors", ad, wantC, wantV)
		}
	}
	// An ad the snapshot does not hold sums to nothing (this cache, with no
	// server behind it, cannot load it).
	if gotC, gotV := snapshotTestSum(t, s, "ad-absent", cells); gotC != (rollup.Counters{}) || gotV != 0 {
		t.Errorf("absent ad: snapshot Sum = %+v, %d visitors, want nothing", gotC, gotV)
	}
}

func TestSnapshotEmptyCache(t *testing.T) {
	t.Parallel()
	s, err := readSnapshot(snapshotTestWrite(t, snapshotTestCache(t)), snapshotTestLayout)
	if err != nil || s.Len() != 0 {
		t.Fatalf("empty snapshot: %v, %d entries", err, s.Len())
	}
	agg, err := s.Sum(context.Background(), "ad-a", []rollup.Cell{{Unit: rollup.Day, Start: snapshotTestNow}})
	if err != nil || agg.Impressions != 0 {
		t.Fatalf("Sum of an empty snapshot = %+v, %v", agg, err)
	}
}

func TestSnapshotMissing(t *testing.T) {
	t.Parallel()
	_, err := readSnapshot(filepath.Join(t.TempDir(), "none.snap"), snapshotTestLayout)
	if !errors.Is(err, os.ErrNotExist) || errors.Is(err, errCorruptSnapshot) {
		t.Fatalf("err = %v, want os.ErrNotExist", err)
	}
}

// TestSnapshotCorrupt: any flipped byte, truncation or extension is errCorruptSnapshot.
func TestSnapshotCorrupt(t *testing.T) {
	t.Parallel()
	c := snapshotTestCache(t)
	snapshotTestFill(t, c, "ad-a")
	path := snapshotTestWrite(t, c)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	check := func(name string, data []byte) {
		t.Helper()
		p := filepath.Join(dir, "bad.snap")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := readSnapshot(p, snapshotTestLayout); !errors.Is(err, errCorruptSnapshot) {
			t.Errorf("%s: err = %v, want errCorruptSnapshot", name, err)
		}
	}
	step := max(1, len(good)/500) // every byte of the header, a sample of the rest
	for i := 0; i < len(good); i++ {
		if i > 64 && i%step != 0 && i < len(good)-8 {
			continue
		}
		bad := bytes.Clone(good)
		bad[i] ^= 0x10
		check(fmt.Sprintf("byte %d flipped", i), bad)
	}
	for _, n := range []int{0, 1, 8, 9, 20, len(good) / 2, len(good) - 4, len(good) - 1} {
		check(fmt.Sprintf("truncated to %d", n), good[:n])
	}
	check("extended", append(bytes.Clone(good), 0))
	version := bytes.Clone(good)
	version[len(snapshotMagic)] = 3
	binary.BigEndian.PutUint32(version[len(version)-4:], crc32.Checksum(version[:len(version)-4], castagnoli))
	check("version 3", version)

	// Version 1, whose time was the time of writing, is still read.
	v1 := bytes.Clone(good)
	v1[len(snapshotMagic)] = snapshotV1
	binary.BigEndian.PutUint32(v1[len(v1)-4:], crc32.Checksum(v1[:len(v1)-4], castagnoli))
	p := filepath.Join(dir, "v1.snap")
	if err := os.WriteFile(p, v1, 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := readSnapshot(p, snapshotTestLayout); err != nil || !s.AsOf().Equal(snapshotTestAsOf) {
		t.Errorf("a version 1 snapshot: %v, %v", s, err)
	}
}

// TestSnapshotLayoutMismatch: records of a bucket the layout does not name are
// left out, and Warm skips them.
func TestSnapshotLayoutMismatch(t *testing.T) {
	t.Parallel()
	c := snapshotTestCache(t)
	snapshotTestOffer(t, c, rollup.Minute, "ad-a.2026112512", rolluptest.Sample(), 5)
	snapshotTestOffer(t, c, rollup.Hour, "ad-a.20261125", rolluptest.Sample(), 6)
	other := snapshotTestLayout
	other[rollup.Hour].Bucket = "OTHER_HOUR"
	s, err := readSnapshot(snapshotTestWrite(t, c), other)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.entries[cacheKey{rollup.Hour, "ad-a.20261125"}]; ok || s.Len() != 1 {
		t.Fatalf("snapshot read with another hour bucket holds %d entries, the hour key included: %v", s.Len(), ok)
	}
}

// TestSnapshotReplacesAtomically: a second write replaces the first and leaves
// no temporary file; a write that cannot happen leaves the old file alone.
func TestSnapshotReplacesAtomically(t *testing.T) {
	t.Parallel()
	c := snapshotTestCache(t)
	snapshotTestOffer(t, c, rollup.Minute, "ad-a.2026112512", rolluptest.Sample(), 5)
	dir := t.TempDir()
	path := filepath.Join(dir, "rollups.snap")
	if err := c.writeSnapshot(path); err != nil {
		t.Fatal(err)
	}
	snapshotTestOffer(t, c, rollup.Minute, "ad-b.2026112512", rolluptest.Sample(), 6)
	if err := c.writeSnapshot(path); err != nil {
		t.Fatal(err)
	}
	s, err := readSnapshot(path, snapshotTestLayout)
	if err != nil || s.Len() != 2 {
		t.Fatalf("after the second write: %v, %d entries, want 2", err, s.Len())
	}
	names, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 1 {
		t.Fatalf("directory holds %v, want only rollups.snap", names)
	}
	if err := c.writeSnapshot(filepath.Join(dir, "missing", "x.snap")); err == nil {
		t.Fatal("writing into a missing directory succeeded")
	}
}

// TestRollupCacheOfferKeepsNewer: the insert path never replaces a revision
// with an older (or the same) one, whoever calls it.
func TestRollupCacheOfferKeepsNewer(t *testing.T) {
	t.Parallel()
	c := snapshotTestCache(t)
	k := cacheKey{rollup.Minute, "ad-a.2026112512"}
	newer, older := rollup.New(), rollup.New()
	newer.Slot(1).Clicks, older.Slot(1).Clicks = 2, 1
	tests := []struct {
		name  string
		rev   uint64
		v     *rollup.Rollup
		store bool
	}{
		{"first", 10, newer, true},
		{"older", 9, older, false},
		{"same revision", 10, older, false},
		{"deleted at an older revision", 3, rollup.New(), false},
	}
	for _, tt := range tests {
		if got := c.offer(k, newCacheEntry(k.key, tt.v, tt.rev, 10)); got != tt.store {
			t.Errorf("%s: stored = %v, want %v", tt.name, got, tt.store)
		}
		if rev, _ := c.RevisionForTest(k.unit, k.key); rev != 10 {
			t.Fatalf("%s: cache holds rev %d, want 10", tt.name, rev)
		}
	}
	if agg, _ := c.Sum(context.Background(), "ad-a", []rollup.Cell{{Unit: rollup.Minute, Start: time.Date(2026, 11, 25, 12, 1, 0, 0, time.UTC)}}); agg.Clicks != 2 {
		t.Fatalf("Sum reads %d clicks, want the newer 2", agg.Clicks)
	}
}

// TestRangeSumsAcrossBucketGenerations: after a bucket is dropped (made anew,
// its revisions numbered from 1 again), a key at the same revision as before
// is summed from its new value, not from a range sum of the old one, even one
// stored after the drop by a Sum that read the old entry before it.
func TestRangeSumsAcrossBucketGenerations(t *testing.T) {
	t.Parallel()
	c := snapshotTestCache(t)
	hour := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	key, _ := rollup.Minute.Locate("ad", hour)
	var cells []rollup.Cell
	for m := range 60 {
		cells = append(cells, rollup.Cell{Unit: rollup.Minute, Start: hour.Add(time.Duration(m) * time.Minute)})
	}
	valueWith := func(clicks uint64) *rollup.Rollup {
		v := rollup.New()
		for m := range 60 {
			v.Slot(m).Clicks = clicks
		}
		return v
	}
	clicks := func() uint64 {
		t.Helper()
		agg, err := c.Sum(context.Background(), "ad", cells)
		if err != nil {
			t.Fatal(err)
		}
		return agg.Clicks
	}
	snapshotTestOffer(t, c, rollup.Minute, key, valueWith(1), 5)
	if got := clicks(); got != 60 {
		t.Fatalf("clicks %d, want 60", got)
	}
	if got := clicks(); got != 60 { // from the range sum
		t.Fatalf("clicks %d, want 60 again", got)
	}
	// A Sum that read the old entry before the drop stores its range sum
	// after it.
	old, ok := c.cache.GetIfPresent(cacheKey{unit: rollup.Minute, key: key})
	if !ok {
		t.Fatal("the old entry is not cached")
	}
	c.dropUnit(rollup.Minute)
	if _, err := c.rangeSum(cacheKey{unit: rollup.Minute, key: key}, old, 0, 59); err != nil {
		t.Fatal(err)
	}
	snapshotTestOffer(t, c, rollup.Minute, key, valueWith(2), 5)
	if got := clicks(); got != 120 {
		t.Fatalf("clicks %d after the bucket was made anew, want 120 from the new value", got)
	}
}

// TestWriteSnapshotsAndSnapshotFile: WriteSnapshots writes a last snapshot
// when its context ends and returns nil; SnapshotFile reads it, keeps it
// while the file is unchanged and reads it again once it changes.
func TestWriteSnapshotsAndSnapshotFile(t *testing.T) {
	t.Parallel()
	c := snapshotTestCache(t)
	snapshotTestOffer(t, c, rollup.Minute, "ad-a.2026112512", rolluptest.Sample(), 5)
	path := filepath.Join(t.TempDir(), "rollups.snap")
	f := NewSnapshotFile(path, snapshotTestLayout)
	if _, err := f.Read(); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Read before any write: %v, want os.ErrNotExist", err)
	}
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.WriteSnapshots(ended, f.Path(), time.Hour); err != nil {
		t.Fatalf("WriteSnapshots = %v, want nil", err)
	}
	first, err := f.Read()
	if err != nil || first.Len() != 1 {
		t.Fatalf("Read = %v, %v; want the one rollup written", first, err)
	}
	if again, err := f.Read(); err != nil || again != first {
		t.Fatalf("Read of an unchanged file = %p, %v; want the same snapshot %p", again, err, first)
	}

	snapshotTestOffer(t, c, rollup.Minute, "ad-b.2026112512", rolluptest.Sample(), 6)
	if err := c.writeSnapshot(path); err != nil {
		t.Fatal(err)
	}
	// Mark the change in the modification time, however coarse the file
	// system's clock.
	if err := os.Chtimes(path, time.Time{}, first.AsOf().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if second, err := f.Read(); err != nil || second.Len() != 2 {
		t.Fatalf("Read after the file changed = %v, %v; want its two rollups", second, err)
	}
}
