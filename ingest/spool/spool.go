// Package spool is the ingest layer's safety net while NATS is unreachable: an
// append-only, fsync'd, size-bounded queue of event payloads on local disk,
// drained in order by Replay once the stream is back.
//
// The contract is that nothing acknowledged is lost: Append returns nil only
// once the record is on stable storage, and Replay deletes a segment only after
// every record in it was published. Delivery is at least once (a publish error
// or a crash between publishing and deleting replays a segment again), which is
// safe because the stream deduplicates events by message ID.
//
// On disk the spool is a directory of segment files named %020d.seg, whose
// lexical order is their creation order. The newest segment is the active one,
// open for appends; the others are sealed and wait for Replay. The record
// format is described in record.go. A Spool assumes it is the only user of its
// directory.
package spool

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrFull is returned by Append when the record would take the spool past
// Options.MaxBytes. Nothing was written. Appends succeed again once Replay has
// deleted segments.
var ErrFull = errors.New("spool: full")

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("spool: closed")

const (
	defaultSegmentBytes = 4 << 20
	// maxBatchBytes bounds the memory of the batch being filled while the
	// previous one is fsync'd; appenders that would grow it further wait for the
	// writer to take it. A batch always accepts its first record, so a record
	// up to maxPayload always fits.
	maxBatchBytes = 4 << 20
	// maxPublish is the most payloads handed to one publish call, so that a
	// publisher can send a call as one bounded batch.
	maxPublish = 1000
	segSuffix  = ".seg"
	segNameLen = 20 + len(segSuffix)
)

// Options configure a Spool. MaxBytes is required; the other fields have
// defaults.
type Options struct {
	// MaxBytes bounds the bytes of all segment files, record headers included,
	// so that an outage that outlasts the disk's patience sheds load (ErrFull)
	// instead of filling the volume. Required: Open fails when it is zero or
	// negative (its default lives in package config, SPOOL_MAX_BYTES).
	MaxBytes int64
	// SegmentBytes is the size at which the active segment is sealed and a new
	// file started, so Replay can delete (and disk space return) in steps while
	// appends go on. A segment may overshoot it by one group commit. Default
	// 4 MiB when 0.
	SegmentBytes int64
	// Logger receives warnings about damaged records and I/O failures. Default:
	// a logger that discards everything.
	Logger *slog.Logger
	// Metrics may be nil.
	Metrics *Metrics
}

// Spool is an on-disk queue of records. Append is safe for concurrent use, and
// concurrent with Replay; Replay calls are serialised. Build with Open and
// release with Close.
type Spool struct {
	dir          string
	maxBytes     int64
	segmentBytes int64
	log          *slog.Logger
	metrics      *Metrics

	wake    chan struct{} // capacity 1: a batch (or Close) is waiting for the writer
	stopped chan struct{} // closed when the writer goroutine has exited

	replayMu sync.Mutex // serialises Replay

	// fileMu is held by the writer across the write and fsync of a batch, and
	// by anyone who seals or closes the active segment, so that the active
	// file never changes under an in-flight write. Lock order: fileMu, then mu.
	fileMu sync.Mutex

	mu           sync.Mutex
	closed       bool
	open         *batch     // batch accepting records, nil until the first one
	spare        []byte     // buffer of the last committed batch, for reuse
	active       *segment   // segment open for appends, nil until the next write
	sealed       []*segment // oldest first
	nextSeq      uint64
	diskBytes    int64 // bytes in segment files
	pendingBytes int64 // bytes of records accepted but not yet written
	records      int64 // records in segment files (best effort)

	// syncFile is (*os.File).Sync, called for every fsync of a segment or of
	// the directory; tests swap it (under fileMu, before any Append) to hold a
	// writer inside an fsync and so force the interleavings they test.
	syncFile func(*os.File) error
}

// segment is one segment file. Its fields are guarded by Spool.mu, except f,
// used only under Spool.fileMu, and reported, used only under Spool.replayMu.
type segment struct {
	seq      uint64
	name     string
	f        *os.File // open for append while active, nil once sealed
	size     int64
	records  int64
	reported bool // its damage was already logged and counted by Replay
}

// batch is one group commit: the records of every appender that arrived while
// the previous batch was being written and fsync'd.
type batch struct {
	buf     []byte // encoded records, back to back; written by appenders under Spool.mu
	records int
	taken   chan struct{} // closed when the writer takes the batch and stops accepting records
	done    chan struct{} // closed once err is set
	err     error
}

// Open opens the spool in dir, creating dir (mode 0o700) if needed. Segments
// left by a previous run, even one killed mid-write, are sealed for Replay and
// count toward MaxBytes; empty ones are deleted. Appends always go to a new
// segment, so a torn tail in a leftover one cannot corrupt new records. Open
// counts the records of leftover segments for the records gauge, which reads
// them once.
//
// Open fails, returning no Spool, when MaxBytes is not positive, SegmentBytes
// is negative, or dir cannot be created, listed or cleaned of empty segments.
// The Spool owns its writer goroutine and open file until Close.
func Open(dir string, opts Options) (*Spool, error) {
	if opts.MaxBytes <= 0 {
		return nil, fmt.Errorf("spool: open %s: Options.MaxBytes must be positive, not %d", dir, opts.MaxBytes)
	}
	if opts.SegmentBytes < 0 {
		return nil, fmt.Errorf("spool: open %s: Options.SegmentBytes must not be negative, not %d", dir, opts.SegmentBytes)
	}
	s := &Spool{
		dir:          dir,
		maxBytes:     opts.MaxBytes,
		segmentBytes: cmp.Or(opts.SegmentBytes, defaultSegmentBytes),
		log:          opts.Logger,
		metrics:      opts.Metrics,
		wake:         make(chan struct{}, 1),
		stopped:      make(chan struct{}),
		nextSeq:      1,
		syncFile:     (*os.File).Sync,
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: open: %w", err)
	}
	if err := s.loadLeftovers(); err != nil {
		return nil, fmt.Errorf("spool: open: %w", err)
	}
	if len(s.sealed) > 0 {
		s.log.Info("spool: found segments from a previous run; they wait for replay",
			"dir", dir, "segments", len(s.sealed), "bytes", s.diskBytes, "records", s.records)
	}
	s.metrics.set(s.diskBytes, s.records)
	go s.run()
	return s, nil
}

// loadLeftovers seals the segments a previous run left in the directory, in
// their order, deletes the empty ones and numbers new segments after them.
// It runs before the writer starts, so it needs no lock.
func (s *Spool) loadLeftovers() error {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return err
	}
	removed := false
	for _, e := range entries {
		seq, ok := parseSegmentName(e.Name())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		s.nextSeq = max(s.nextSeq, seq+1)
		path := filepath.Join(s.dir, e.Name())
		info, err := e.Info()
		if err != nil {
			return err
		}
		if info.Size() == 0 {
			// A process killed between creating a segment and writing to it.
			if err := os.Remove(path); err != nil {
				return fmt.Errorf("remove empty segment: %w", err)
			}
			removed = true
			continue
		}
		records, err := countRecords(path)
		if err != nil {
			return err
		}
		s.sealed = append(s.sealed, &segment{seq: seq, name: e.Name(), size: info.Size(), records: records})
		s.diskBytes += info.Size()
		s.records += records
	}
	slices.SortFunc(s.sealed, func(a, b *segment) int { return cmp.Compare(a.seq, b.seq) })
	if removed {
		return s.syncDir()
	}
	return nil
}

// parseSegmentName returns the sequence number of a segment file name.
func parseSegmentName(name string) (uint64, bool) {
	digits, ok := strings.CutSuffix(name, segSuffix)
	if !ok || len(name) != segNameLen {
		return 0, false
	}
	for _, c := range []byte(digits) {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	seq, err := strconv.ParseUint(digits, 10, 64)
	return seq, err == nil
}

func segmentName(seq uint64) string {
	return fmt.Sprintf("%020d%s", seq, segSuffix)
}

// countRecords counts the records of a leftover segment for the records gauge
// by walking the headers, without checking CRCs, in one sequential read. It
// stops at the first bad header, so damage makes it undercount; Replay reports
// the truth.
func countRecords(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 256<<10)
	var (
		n   int64
		hdr [headerSize]byte
	)
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return n, nil
			}
			return n, err
		}
		length := int(binary.LittleEndian.Uint32(hdr[4:8]))
		if !bytes.Equal(hdr[:4], magic[:]) || length > maxPayload {
			return n, nil
		}
		if d, err := r.Discard(length); d < length {
			if err == nil || errors.Is(err, io.EOF) {
				return n, nil
			}
			return n, err
		}
		n++
	}
}

// Append adds payload to the spool and returns nil once it is written and
// fsync'd, so the caller may acknowledge it. Append does not retain payload
// after it returns; a payload is at most 1 MiB.
//
// Concurrent Appends are group-committed: a single writer goroutine writes all
// records queued during the previous fsync with one write and one fsync, so the
// cost of an fsync is shared by every appender waiting on it.
//
// Errors: ErrFull when the record would take the spool past MaxBytes (nothing
// written), ErrClosed after Close, an error for an oversized payload, a wrapped
// I/O error when the write or fsync failed, and ctx's error when ctx ends
// first. After an I/O or ctx error the record was not accepted, but it may
// have reached the disk and may still be replayed later; callers rely on
// message-ID deduplication downstream for that case.
func (s *Spool) Append(ctx context.Context, payload []byte) error {
	if len(payload) > maxPayload {
		return fmt.Errorf("spool: append: payload of %d bytes exceeds the %d-byte record limit", len(payload), maxPayload)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("spool: append: %w", err)
	}
	size := int64(headerSize + len(payload))
	crc := crc32.Checksum(payload, castagnoli)

	s.mu.Lock()
	var b *batch
	for {
		if s.closed {
			s.mu.Unlock()
			return ErrClosed
		}
		if s.diskBytes+s.pendingBytes+size > s.maxBytes {
			s.mu.Unlock()
			return ErrFull
		}
		b = s.open
		if b == nil {
			b = &batch{buf: s.spare, taken: make(chan struct{}), done: make(chan struct{})}
			s.spare = nil
			s.open = b
			break
		}
		if len(b.buf) == 0 || int64(len(b.buf))+size <= maxBatchBytes {
			break
		}
		// The batch is full: wait until the writer takes it, then join the next.
		s.mu.Unlock()
		select {
		case <-b.taken:
		case <-ctx.Done():
			return fmt.Errorf("spool: append: %w", ctx.Err())
		}
		s.mu.Lock()
	}
	b.buf = appendRecord(b.buf, payload, crc)
	b.records++
	s.pendingBytes += size
	s.mu.Unlock()
	s.signal()

	select {
	case <-b.done:
		return b.err
	case <-ctx.Done():
		select {
		case <-b.done: // finished as well: report the truth
			return b.err
		default:
			return fmt.Errorf("spool: append: %w", ctx.Err())
		}
	}
}

// signal wakes the writer without blocking; a pending wake-up covers this one.
func (s *Spool) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run is the writer goroutine: it commits batches one at a time until Close,
// and commits whatever was accepted before Close before it exits.
func (s *Spool) run() {
	defer close(s.stopped)
	for range s.wake {
		for {
			s.mu.Lock()
			b, closed := s.open, s.closed
			s.open = nil
			s.mu.Unlock()
			if b == nil {
				if closed {
					return
				}
				break
			}
			close(b.taken)
			s.commit(b)
		}
	}
}

// commit writes and fsyncs one batch to the active segment, then wakes its
// appenders.
func (s *Spool) commit(b *batch) {
	s.fileMu.Lock()
	err := s.write(b)
	s.fileMu.Unlock()

	s.mu.Lock()
	s.pendingBytes -= int64(len(b.buf))
	if err == nil {
		s.metrics.addAppended(b.records)
	}
	s.metrics.set(s.diskBytes, s.records)
	b.err = err
	if cap(b.buf) <= maxBatchBytes+headerSize+maxPayload {
		// Nobody touches b.buf once the writer has taken b, so the next batch
		// can reuse it; oversized buffers go to the GC instead.
		s.spare = b.buf[:0]
	}
	s.mu.Unlock()
	close(b.done)
}

// write appends b.buf to the active segment (creating one if needed) and
// fsyncs it. The caller holds fileMu.
func (s *Spool) write(b *batch) error {
	s.mu.Lock()
	seg := s.active
	s.mu.Unlock()
	if seg == nil {
		var err error
		if seg, err = s.createSegment(); err != nil {
			return err
		}
	}
	prev := seg.size
	n, err := seg.f.Write(b.buf)
	if err != nil {
		err = fmt.Errorf("spool: write %s: %w", seg.name, err)
		s.log.Error("spool: write failed", "segment", seg.name, "err", err)
		// Cut off the partial batch so the segment stays clean and usable; if
		// that fails too, seal it and let Replay skip the torn tail.
		if n > 0 {
			if terr := seg.f.Truncate(prev); terr == nil {
				n = 0
			}
		}
		s.mu.Lock()
		seg.size += int64(n)
		s.diskBytes += int64(n)
		if n > 0 {
			_ = s.sealLocked() // a close error is logged there; the segment is sealed either way
		}
		s.mu.Unlock()
		return err
	}
	serr := s.fsync(seg.f)
	s.mu.Lock()
	defer s.mu.Unlock()
	seg.size += int64(n)
	seg.records += int64(b.records)
	s.diskBytes += int64(n)
	s.records += int64(b.records)
	if serr != nil {
		// After a failed fsync the page cache no longer tells what is on disk;
		// never write to this file again.
		s.log.Error("spool: fsync failed; sealing the segment", "segment", seg.name, "err", serr)
		_ = s.sealLocked() // a close error is logged there
		return fmt.Errorf("spool: fsync %s: %w", seg.name, serr)
	}
	if seg.size >= s.segmentBytes {
		_ = s.sealLocked() // a close error is logged there; the records are fsync'd already
	}
	return nil
}

// createSegment creates the next segment file and makes its directory entry
// durable, so that records fsync'd into it survive a power loss. The caller
// holds fileMu.
func (s *Spool) createSegment() (*segment, error) {
	s.mu.Lock()
	seq := s.nextSeq
	s.nextSeq++
	s.mu.Unlock()
	name := segmentName(seq)
	path := filepath.Join(s.dir, name)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("spool: create segment: %w", err)
	}
	if err := s.syncDir(); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("spool: create segment %s: %w", name, err)
	}
	seg := &segment{seq: seq, name: name, f: f}
	s.mu.Lock()
	s.active = seg
	s.mu.Unlock()
	return seg, nil
}

// sealLocked closes the active segment and queues it for Replay, or deletes it
// when it holds nothing. The caller holds fileMu and mu. The data was already
// fsync'd, so a failing close loses nothing; it is logged and returned for
// Close to report.
func (s *Spool) sealLocked() error {
	seg := s.active
	if seg == nil {
		return nil
	}
	s.active = nil
	err := seg.f.Close()
	if err != nil {
		err = fmt.Errorf("spool: close segment %s: %w", seg.name, err)
		s.log.Warn("spool: close segment failed", "segment", seg.name, "err", err)
	}
	seg.f = nil
	if seg.size == 0 {
		if rerr := os.Remove(filepath.Join(s.dir, seg.name)); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			s.log.Warn("spool: remove empty segment", "segment", seg.name, "err", rerr)
		}
		return err
	}
	s.sealed = append(s.sealed, seg)
	return err
}

// fsync syncs f, timing and counting it.
func (s *Spool) fsync(f *os.File) error {
	start := time.Now()
	err := s.syncFile(f)
	s.metrics.observeFsync(time.Since(start))
	return err
}

// syncDir fsyncs the spool directory so that file creations and deletions in
// it survive a power loss.
func (s *Spool) syncDir() error {
	d, err := os.Open(s.dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	err = s.fsync(d)
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	return nil
}

// Bytes returns the bytes of the segment files on disk, record headers
// included: what counts toward MaxBytes, less the records being written right
// now. Safe for concurrent use.
func (s *Spool) Bytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.diskBytes
}

// Empty reports whether no record waits for replay: no segment holds data and
// no append is in flight. A caller that switches back from spooling to direct
// publishing once Empty is true therefore cannot overtake a spooled event it
// acknowledged. Safe for concurrent use.
func (s *Spool) Empty() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.diskBytes == 0 && s.pendingBytes == 0
}

// Close waits for the records already handed to the writer to be written and
// fsync'd (their Appends succeed), then closes the active segment; later
// Appends return ErrClosed. Segments stay on disk for the next Open; Replay
// still works after Close. Closing twice returns nil. Safe for concurrent use.
func (s *Spool) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.signal()
	<-s.stopped

	s.fileMu.Lock()
	defer s.fileMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sealLocked()
}
