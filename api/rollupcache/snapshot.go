package rollupcache

import (
	"bufio"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/admetric/admetric/store/rollup"
)

// errCorruptSnapshot is wrapped by the errors of readSnapshot for a file that
// is not a whole snapshot of a known version: damaged, truncated, or
// something else.
var errCorruptSnapshot = errors.New("rollupcache: corrupt rollup snapshot")

// The snapshot file format (version 2; version 1 differs only in that its
// time is when the file was written). Integers are big-endian unless
// marked uvarint (encoding/binary's unsigned varint):
//
//	magic    8 bytes  "ADMSNAP\n"
//	version  1 byte   2
//	as of    8 bytes  the last moment the cache held every update of the
//	                  buckets (Cache.CurrentAsOf), Unix nanoseconds (int64)
//	3 times, for the minute, hour and day resolution:
//	  bucket   uvarint length, then the bucket name
//	  through  uvarint: every update of the bucket's stream up to this
//	           sequence is reflected in the records (a watch started after it
//	           catches up what the snapshot misses)
//	count    uvarint number of records, then each record:
//	  unit     1 byte (0 minute, 1 hour, 2 day)
//	  key      uvarint length, then the KV key: a rollup's, or its settled
//	           key's (rollup.SettledKey) for the visitor sets settled apart
//	  revision uvarint KV revision (stream sequence) of the value
//	  value    uvarint length, then the rollup as rollup.Rollup.MarshalBinary encodes it
//	           (a deleted or absent key is an empty rollup)
//	crc      4 bytes  CRC-32C (Castagnoli) of every byte before it
//
// Records are sorted by unit, then key.
const (
	snapshotMagic   = "ADMSNAP\n"
	snapshotV1      = 1
	snapshotVersion = 2
	// maxSnapshotKey bounds a record's key length, against a damaged length
	// that the checksum happened to miss.
	maxSnapshotKey = 1 << 12
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Snapshot is a point-in-time copy of a Cache, read back from a file (see
// SnapshotFile): it answers Sum from memory (when KV is unreachable, say)
// and Warms a new cache. Read-only and safe for concurrent use.
type Snapshot struct {
	asOf    time.Time
	layout  rollup.Layout
	through [3]uint64
	entries map[cacheKey]*cacheEntry
}

// AsOf returns the last moment the cache it was taken of was known to hold
// every rollup update: what the snapshot reflects at least.
func (s *Snapshot) AsOf() time.Time { return s.asOf }

// Layout returns the layout the snapshot was read for (NewSnapshotFile's).
func (s *Snapshot) Layout() rollup.Layout { return s.layout }

// Len returns the number of rollups the snapshot holds.
func (s *Snapshot) Len() int { return len(s.entries) }

// Sum adds up ad's slots listed in cells from what the snapshot holds, as
// store.Rollups.Sum does from KV; a key the snapshot lacks counts as empty.
// The result is the caller's. Errors are prefixed "rollupcache:" and wrap
// ctx's when it has ended.
func (s *Snapshot) Sum(ctx context.Context, adID string, cells []rollup.Cell) (*rollup.Aggregate, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("rollupcache: snapshot sum %s: %w", adID, err)
	}
	agg, err := rollup.Sum(adID, cells, func(u rollup.Unit, key string) (*rollup.Rollup, *rollup.Rollup, error) {
		if e, ok := s.entries[cacheKey{unit: u, key: key}]; ok {
			return e.value, e.settled, nil
		}
		return nil, nil, nil
	})
	if err != nil {
		return nil, fmt.Errorf("rollupcache: snapshot sum %s: %w", adID, err)
	}
	return agg, nil
}

// snapshotRecord is one KV value of a cached rollup on its way to a snapshot
// file: the rollup, or the visitor sets settled apart from it.
type snapshotRecord struct {
	k     cacheKey // of the value: a settled key for settled sets
	value *rollup.Rollup
	rev   uint64
}

// writeSnapshot writes every cached rollup, with its revision, to path: to a
// temporary file in the same directory, synced, then renamed over path, and
// the directory synced; on failure path is left as it was. It may run
// alongside readers and the watch; an entry updated while it runs is written
// as it was before or after the update.
func (c *Cache) writeSnapshot(path string) error {
	// Stamped with the moment the cache last held everything, not the time
	// of writing: during an outage that moment stays put. Read first, like
	// through: each entry copied after is at least as current.
	asOf := c.CurrentAsOf()
	if asOf.IsZero() {
		return errNotCurrentYet
	}
	through := c.through()
	var recs []snapshotRecord
	for k, e := range c.cache.All() {
		recs = append(recs, snapshotRecord{k: k, value: e.value, rev: e.rev})
		if e.settledRev != 0 || len(e.settled.Slots) > 0 {
			sk := cacheKey{unit: k.unit, key: rollup.SettledKey(k.key)}
			recs = append(recs, snapshotRecord{k: sk, value: e.settled, rev: e.settledRev})
		}
	}
	slices.SortFunc(recs, func(a, b snapshotRecord) int {
		return cmp.Or(cmp.Compare(a.k.unit, b.k.unit), cmp.Compare(a.k.key, b.k.key))
	})
	err := writeFileAtomic(path, func(w io.Writer) error {
		return encodeSnapshot(w, asOf, c.r.Layout(), through, recs)
	})
	if err != nil {
		return fmt.Errorf("rollupcache: write snapshot %s: %w", path, err)
	}
	return nil
}

// encodeSnapshot writes the snapshot of recs, sorted by unit and key, to w,
// all but the trailing checksum (see writeFileAtomic).
func encodeSnapshot(w io.Writer, written time.Time, layout rollup.Layout, through [3]uint64, recs []snapshotRecord) error {
	buf := make([]byte, 0, 1<<10)
	buf = append(buf, snapshotMagic...)
	buf = append(buf, snapshotVersion)
	buf = binary.BigEndian.AppendUint64(buf, uint64(written.UnixNano()))
	for u, res := range layout {
		buf = binary.AppendUvarint(buf, uint64(len(res.Bucket)))
		buf = append(buf, res.Bucket...)
		buf = binary.AppendUvarint(buf, through[u])
	}
	buf = binary.AppendUvarint(buf, uint64(len(recs)))
	for _, r := range recs {
		// Cached rollups are only ever read, so encoding one here is safe
		// while Sum reads it too.
		value, err := r.value.MarshalBinary()
		if err != nil {
			return fmt.Errorf("%s %s: %w", r.k.unit, r.k.key, err)
		}
		buf = append(buf, byte(r.k.unit))
		buf = binary.AppendUvarint(buf, uint64(len(r.k.key)))
		buf = append(buf, r.k.key...)
		buf = binary.AppendUvarint(buf, r.rev)
		buf = binary.AppendUvarint(buf, uint64(len(value)))
		if _, err := w.Write(buf); err != nil {
			return err
		}
		if _, err := w.Write(value); err != nil {
			return err
		}
		buf = buf[:0]
	}
	_, err := w.Write(buf)
	return err
}

// writeFileAtomic writes path through body, with a trailing CRC-32C of what
// body wrote: into a temporary file of path's directory that is synced and
// renamed over path, the directory then synced. On failure path is untouched
// and the temporary file removed.
func writeFileAtomic(path string, body func(io.Writer) error) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	crc := crc32.New(castagnoli)
	bw := bufio.NewWriterSize(io.MultiWriter(f, crc), 1<<16)
	if err := body(bw); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if _, err := f.Write(binary.BigEndian.AppendUint32(nil, crc.Sum32())); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// readSnapshot reads a snapshot that writeSnapshot wrote. layout is the
// current one (Snapshot.Layout returns it); records of a resolution whose
// bucket name differs from layout's are left out. Errors wrap os.ErrNotExist
// when there is no file, errCorruptSnapshot when it is damaged.
func readSnapshot(path string, layout rollup.Layout) (*Snapshot, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("rollupcache: read snapshot: %w", err)
	}
	s, err := decodeSnapshot(data, layout)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", errCorruptSnapshot, path, err)
	}
	return s, nil
}

// decodeSnapshot decodes a whole snapshot file for layout.
func decodeSnapshot(data []byte, layout rollup.Layout) (*Snapshot, error) {
	s, d, keep, err := decodeSnapshotHeader(data, layout)
	if err != nil {
		return nil, err
	}
	if err := s.decodeRecords(d, keep); err != nil {
		return nil, err
	}
	return s, nil
}

// decodeSnapshotHeader checks data's magic, version and checksum and reads
// the header: when the snapshot was written and, for each resolution, its
// bucket and the sequence its records are as fresh as; keep tells which
// resolutions have layout's bucket. The decoder it returns stands at the
// record count.
func decodeSnapshotHeader(data []byte, layout rollup.Layout) (s *Snapshot, d *decoder, keep [3]bool, err error) {
	head := len(snapshotMagic) + 1
	if len(data) < head+8+4 || string(data[:len(snapshotMagic)]) != snapshotMagic {
		return nil, nil, keep, errors.New("not a rollup snapshot")
	}
	// Version 1 held the time of writing where 2 holds as of when the cache
	// was current: the same field, only later, so it is read as it is.
	if v := data[len(snapshotMagic)]; v != snapshotVersion && v != snapshotV1 {
		return nil, nil, keep, fmt.Errorf("unknown version %d", v)
	}
	body, sum := data[:len(data)-4], binary.BigEndian.Uint32(data[len(data)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return nil, nil, keep, errors.New("checksum mismatch")
	}
	s = &Snapshot{
		asOf:   time.Unix(0, int64(binary.BigEndian.Uint64(body[head:]))),
		layout: layout,
	}
	d = &decoder{buf: body[head+8:]}
	for u := range layout {
		bucket := d.bytes(maxSnapshotKey)
		s.through[u] = d.uvarint()
		keep[u] = string(bucket) == layout[u].Bucket
		if !keep[u] {
			s.through[u] = 0
		}
	}
	return s, d, keep, nil
}

// decodeRecords reads the record count and the records from d into s,
// keeping those of the resolutions keep names.
func (s *Snapshot) decodeRecords(d *decoder, keep [3]bool) error {
	n := d.uvarint()
	if d.err != nil {
		return fmt.Errorf("header: %w", d.err)
	}
	// A record takes at least 4 bytes: do not trust a count the body cannot hold.
	if n > uint64(len(d.buf))/4 {
		return fmt.Errorf("%d records in %d bytes", n, len(d.buf))
	}
	s.entries = make(map[cacheKey]*cacheEntry, n)
	for i := range n {
		if len(d.buf) == 0 {
			return fmt.Errorf("record %d: truncated", i)
		}
		u := rollup.Unit(d.buf[0])
		d.buf = d.buf[1:]
		key := string(d.bytes(maxSnapshotKey))
		rev := d.uvarint()
		value := d.bytes(len(d.buf))
		if d.err != nil {
			return fmt.Errorf("record %d: %w", i, d.err)
		}
		if u > rollup.Day {
			return fmt.Errorf("record %d: unit %d", i, u)
		}
		k := cacheKey{unit: u, key: key}
		if _, dup := s.entries[k]; dup {
			return fmt.Errorf("record %d: %s %s appears twice", i, u, key)
		}
		v := rollup.New()
		if err := v.UnmarshalBinary(value); err != nil {
			return fmt.Errorf("record %d: %s %s: %w", i, u, key, err)
		}
		if keep[u] {
			s.entries[k] = newCacheEntry(key, v, rev, len(value))
		}
	}
	if len(d.buf) != 0 {
		return fmt.Errorf("%d trailing bytes", len(d.buf))
	}
	s.attachSettled()
	return nil
}

// attachSettled moves the records of settled keys into the entries of their
// rollups; one whose rollup the snapshot lacks is dropped (a cache always
// holds both parts together).
func (s *Snapshot) attachSettled() {
	for k, e := range s.entries {
		base, ok := rollup.SettledOf(k.key)
		if !ok {
			continue
		}
		delete(s.entries, k)
		bk := cacheKey{unit: k.unit, key: base}
		if b, ok := s.entries[bk]; ok {
			s.entries[bk] = b.withSettled(base, e.value, e.rev, e.valueLen)
		}
	}
}

// bytes reads a uvarint length of at most limit, then that many bytes.
func (d *decoder) bytes(limit int) []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(limit) || n > uint64(len(d.buf)) {
		d.err = fmt.Errorf("length %d out of range", n)
		return nil
	}
	b := d.buf[:n]
	d.buf = d.buf[n:]
	return b
}

// decoder reads the snapshot's fields; the first failure sticks in err and
// every later read returns zero.
type decoder struct {
	buf []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.buf)
	if n <= 0 {
		d.err = errors.New("bad uvarint")
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

// errNotCurrentYet: the cache was never known to hold every rollup update,
// so a snapshot could not say as of when it is.
var errNotCurrentYet = errors.New("rollupcache: the cache has not caught up with the rollups yet")

// WriteSnapshots writes a snapshot of the cache to path every interval until
// ctx ends, then a last one, so that a restart without NATS has the freshest;
// it returns nil. Each write replaces path atomically (a temporary file of
// its directory, synced and renamed over it); a failed write is logged and
// tried again at the next tick. It may run alongside Sum, Warm and Run; an
// entry updated while a write runs is written as it was before or after the
// update. every must be positive.
func (c *Cache) WriteSnapshots(ctx context.Context, path string, every time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if err := c.writeSnapshot(path); err != nil && !errors.Is(err, errNotCurrentYet) {
				c.logger.Warn("writing the last analytics snapshot", "err", err)
			}
			return nil
		case <-t.C:
			switch err := c.writeSnapshot(path); {
			case errors.Is(err, errNotCurrentYet):
				c.logger.Debug("no analytics snapshot yet", "err", err)
			case err != nil:
				c.logger.Warn("writing the analytics snapshot", "err", err)
			}
		}
	}
}

// SnapshotFile reads the snapshot file at a path when asked, and again only
// once the file has changed. Safe for concurrent use.
type SnapshotFile struct {
	path   string
	layout rollup.Layout

	mu      sync.Mutex
	modTime time.Time
	snap    *Snapshot
}

// NewSnapshotFile returns the reader of the snapshot file at path, which
// Cache.WriteSnapshots writes, for the current layout: records of a
// resolution whose bucket name differs from layout's are left out. It reads
// nothing yet.
func NewSnapshotFile(path string, layout rollup.Layout) *SnapshotFile {
	return &SnapshotFile{path: path, layout: layout}
}

// Path returns the file's path.
func (f *SnapshotFile) Path() string { return f.path }

// Read returns the snapshot in the file, read again if the file changed
// since the last Read. The Snapshot is shared by every caller until the file
// changes; it is read-only. Errors are prefixed "rollupcache:" and wrap
// os.ErrNotExist when there is no file; any other means the file is
// unreadable or damaged (and no older snapshot is returned).
func (f *SnapshotFile) Read() (*Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fi, err := os.Stat(f.path)
	if err != nil {
		return nil, fmt.Errorf("rollupcache: read snapshot: %w", err)
	}
	if f.snap == nil || !fi.ModTime().Equal(f.modTime) {
		snap, err := readSnapshot(f.path, f.layout)
		if err != nil {
			return nil, err
		}
		f.snap, f.modTime = snap, fi.ModTime()
	}
	return f.snap, nil
}
