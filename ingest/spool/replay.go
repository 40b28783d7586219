package spool

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
)

// Replay drains the spool in append order through publish and returns nil once
// no sealed segment is left.
//
// It first seals the active segment, so every record whose Append returned
// before the call is replayed; Appends made meanwhile go to a new segment,
// which the next Replay drains. Then, oldest segment first, it calls publish
// with the segment's intact records in order, in chunks of at most 1000, and
// deletes the segment (and fsyncs the directory) only after every chunk of it
// was published. Segments sealed by rotation while Replay runs are drained too.
//
// Damaged records (bad CRC or length, torn tail, garbage) are skipped with one
// Warn log line and one admetric_spool_corrupt_records_total increment per
// damaged stretch, the first time this process reads the segment.
//
// publish owns the payloads it is given: they are never reused by the spool.
// When publish fails (or ctx ends), Replay stops and returns the error wrapped;
// the segment stays and the next Replay starts it again from its first record,
// so some records are published twice and publish must be idempotent (the
// stream deduplicates by message ID).
//
// Replay calls are serialised; Replay runs concurrently with Append, and still
// works after Close.
func (s *Spool) Replay(ctx context.Context, publish func(ctx context.Context, payloads [][]byte) error) error {
	if publish == nil {
		return errors.New("spool: replay: nil publish func")
	}
	s.replayMu.Lock()
	defer s.replayMu.Unlock()

	s.fileMu.Lock()
	s.mu.Lock()
	var err error
	if s.active != nil && s.active.size > 0 {
		err = s.sealLocked()
	}
	s.mu.Unlock()
	s.fileMu.Unlock()
	if err != nil {
		// The segment is sealed and its data fsync'd; only the close failed.
		s.log.Warn("spool: replay: sealing the active segment", "err", err)
	}

	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("spool: replay: %w", err)
		}
		s.mu.Lock()
		if len(s.sealed) == 0 {
			s.mu.Unlock()
			return nil
		}
		seg := s.sealed[0]
		s.mu.Unlock()
		if err := s.replaySegment(ctx, seg, publish); err != nil {
			return err
		}
	}
}

// replaySegment publishes one sealed segment and deletes it. The caller holds
// replayMu, which is what makes seg's replay-side fields safe to use.
func (s *Spool) replaySegment(ctx context.Context, seg *segment, publish func(context.Context, [][]byte) error) error {
	path := filepath.Join(s.dir, seg.name)
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("spool: replay %s: %w", seg.name, err)
	}
	report := !seg.reported
	seg.reported = true
	payloads := decodeRecords(data, func(off int) {
		if report {
			s.log.Warn("spool: skipping a damaged record", "segment", seg.name, "offset", off)
			s.metrics.incCorrupt()
		}
	})
	for chunk := range slices.Chunk(payloads, maxPublish) {
		if err := publish(ctx, chunk); err != nil {
			return fmt.Errorf("spool: replay %s: publish: %w", seg.name, err)
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("spool: replay %s: delete: %w", seg.name, err)
	}

	s.mu.Lock()
	if i := slices.Index(s.sealed, seg); i >= 0 {
		s.sealed = slices.Delete(s.sealed, i, i+1)
	}
	s.diskBytes -= seg.size
	s.records -= seg.records
	s.metrics.set(s.diskBytes, s.records)
	s.metrics.addReplayed(len(payloads))
	s.mu.Unlock()

	if err := s.syncDir(); err != nil {
		return fmt.Errorf("spool: replay %s: delete: %w", seg.name, err)
	}
	return nil
}
