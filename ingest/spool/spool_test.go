package spool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// --- helpers ---

// testMaxBytes bounds the spools of tests that do not test the bound.
const testMaxBytes = 64 << 20

// encodeRecord is appendRecord computing the CRC itself.
func encodeRecord(dst, payload []byte) []byte {
	return appendRecord(dst, payload, crc32.Checksum(payload, castagnoli))
}

// decodeAll is decodeRecords counting the damaged stretches.
func decodeAll(data []byte) (payloads [][]byte, corrupt int) {
	payloads = decodeRecords(data, func(int) { corrupt++ })
	return payloads, corrupt
}

func openSpool(t *testing.T, dir string, opts Options) *Spool {
	t.Helper()
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// payload returns a small JSON-like event payload numbered i.
func payload(i int) []byte {
	return fmt.Appendf(nil, `{"event_id":"e-%06d","type":"click","ad_id":"summer-sale-15s"}`, i)
}

func payloads(n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = payload(i)
	}
	return out
}

func appendAll(t *testing.T, s *Spool, ps [][]byte) {
	t.Helper()
	for i, p := range ps {
		if err := s.Append(t.Context(), p); err != nil {
			t.Fatalf("Append #%d: %v", i, err)
		}
	}
}

// writeSegment writes ps as segment seq, as a previous run would have left it;
// faster than one fsync'd Append per record when a test needs many.
func writeSegment(t *testing.T, dir string, seq uint64, ps [][]byte) {
	t.Helper()
	var data []byte
	for _, p := range ps {
		data = encodeRecord(data, p)
	}
	if err := os.WriteFile(filepath.Join(dir, segmentName(seq)), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func recordBytes(ps [][]byte) int64 {
	var n int64
	for _, p := range ps {
		n += int64(headerSize + len(p))
	}
	return n
}

// replayAll runs one Replay and returns every payload published, copied.
func replayAll(t *testing.T, s *Spool) [][]byte {
	t.Helper()
	var got [][]byte
	err := s.Replay(t.Context(), func(_ context.Context, ps [][]byte) error {
		if len(ps) == 0 || len(ps) > maxPublish {
			t.Errorf("publish called with %d payloads, want 1..%d", len(ps), maxPublish)
		}
		for _, p := range ps {
			got = append(got, bytes.Clone(p))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Replay: %v", err)
	}
	return got
}

func segFiles(t *testing.T, dir string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, "*.seg"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range names {
		names[i] = filepath.Base(names[i])
	}
	return names
}

func assertPayloads(t *testing.T, got, want [][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d payloads, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("payload #%d = %.60q, want %.60q", i, got[i], want[i])
		}
	}
}

func assertDrained(t *testing.T, s *Spool, dir string) {
	t.Helper()
	if !s.Empty() {
		t.Error("Empty() = false after Replay")
	}
	if b := s.Bytes(); b != 0 {
		t.Errorf("Bytes() = %d after Replay, want 0", b)
	}
	if files := segFiles(t, dir); len(files) != 0 {
		t.Errorf("segment files left after Replay: %v", files)
	}
}

// metricValue reads a counter or gauge value, or a histogram's sample count.
func metricValue(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		m := mf.GetMetric()[0]
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue()
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	t.Fatalf("metric %s not gathered", name)
	return 0
}

// --- tests ---

func TestAppendReplayInOrder(t *testing.T) {
	big := bytes.Repeat([]byte{'x'}, maxPayload)
	tests := []struct {
		name string
		ps   [][]byte
	}{
		{"one", payloads(1)},
		{"hundred", payloads(100)},
		{"empty payload", [][]byte{{}, payload(1), {}}},
		{"binary with a magic inside", [][]byte{append(magic[:], 0, 0, 0, 0, 1, 2, 3), encodeRecord(nil, []byte("nested"))}},
		{"max size", [][]byte{big, payload(1), big}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openSpool(t, dir, Options{MaxBytes: testMaxBytes})
			if !s.Empty() {
				t.Fatal("new spool not Empty")
			}
			appendAll(t, s, tt.ps)
			if got, want := s.Bytes(), recordBytes(tt.ps); got != want {
				t.Errorf("Bytes() = %d, want %d", got, want)
			}
			if s.Empty() {
				t.Error("Empty() = true with records spooled")
			}
			assertPayloads(t, replayAll(t, s), tt.ps)
			assertDrained(t, s, dir)
			// The spool keeps working after a drain.
			appendAll(t, s, tt.ps[:1])
			assertPayloads(t, replayAll(t, s), tt.ps[:1])
			assertDrained(t, s, dir)
		})
	}
}

func TestRotation(t *testing.T) {
	ps := payloads(200)
	recSize := int64(headerSize + len(ps[0]))
	for _, tt := range []struct {
		name         string
		segmentBytes int64
	}{
		{"a record per segment", 1},
		{"exact multiple of the record size", 10 * recSize},
		{"not a multiple", 1000},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// A segment is sealed by the record that takes it to SegmentBytes.
			perSegment := (tt.segmentBytes + recSize - 1) / recSize
			wantFiles := int((int64(len(ps)) + perSegment - 1) / perSegment)
			dir := t.TempDir()
			s := openSpool(t, dir, Options{MaxBytes: testMaxBytes, SegmentBytes: tt.segmentBytes})
			appendAll(t, s, ps)
			files := segFiles(t, dir)
			if len(files) != wantFiles || wantFiles < 2 {
				t.Errorf("%d segment files, want %d (more than one)", len(files), wantFiles)
			}
			if !slices.IsSorted(files) {
				t.Errorf("segment files not in lexical order: %v", files)
			}
			for i, name := range files[:len(files)-1] {
				info, err := os.Stat(filepath.Join(dir, name))
				if err != nil {
					t.Fatal(err)
				}
				if info.Size() < tt.segmentBytes || info.Size() >= tt.segmentBytes+recSize {
					t.Errorf("sealed segment #%d %s has %d bytes, want [%d, %d)", i, name, info.Size(), tt.segmentBytes, tt.segmentBytes+recSize)
				}
			}
			assertPayloads(t, replayAll(t, s), ps)
			assertDrained(t, s, dir)
		})
	}
}

func TestErrFull(t *testing.T) {
	ps := payloads(10)
	bound := recordBytes(ps)
	tests := []struct {
		name         string
		segmentBytes int64
	}{
		{"one segment", 0},
		{"several segments", bound / 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openSpool(t, dir, Options{MaxBytes: bound, SegmentBytes: tt.segmentBytes})
			appendAll(t, s, ps)
			if err := s.Append(t.Context(), payload(10)); !errors.Is(err, ErrFull) {
				t.Fatalf("Append past MaxBytes: %v, want ErrFull", err)
			}
			// An empty payload still needs a header, which does not fit either.
			if err := s.Append(t.Context(), nil); !errors.Is(err, ErrFull) {
				t.Fatalf("Append of an empty payload past MaxBytes: %v, want ErrFull", err)
			}
			if got := s.Bytes(); got != bound {
				t.Errorf("Bytes() = %d after ErrFull, want %d (no partial write)", got, bound)
			}
			assertPayloads(t, replayAll(t, s), ps)
			assertDrained(t, s, dir)
			appendAll(t, s, ps)
			assertPayloads(t, replayAll(t, s), ps)
		})
	}
}

func TestAppendPayloadTooLarge(t *testing.T) {
	s := openSpool(t, t.TempDir(), Options{MaxBytes: testMaxBytes})
	err := s.Append(t.Context(), make([]byte, maxPayload+1))
	if err == nil || errors.Is(err, ErrFull) || !strings.HasPrefix(err.Error(), "spool: ") {
		t.Fatalf("Append of %d bytes: %v, want a spool: error that is not ErrFull", maxPayload+1, err)
	}
	if s.Bytes() != 0 || !s.Empty() {
		t.Errorf("rejected payload left Bytes() = %d, Empty() = %v", s.Bytes(), s.Empty())
	}
}

func TestAppendContextDone(t *testing.T) {
	s := openSpool(t, t.TempDir(), Options{MaxBytes: testMaxBytes})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := s.Append(ctx, payload(1)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Append with a cancelled context: %v, want context.Canceled", err)
	}
	if !s.Empty() {
		t.Error("Append with a cancelled context spooled the record")
	}
}

func TestClose(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{MaxBytes: testMaxBytes})
	if err != nil {
		t.Fatal(err)
	}
	appendAll(t, s, payloads(3))
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := s.Append(t.Context(), payload(4)); !errors.Is(err, ErrClosed) {
		t.Errorf("Append after Close: %v, want ErrClosed", err)
	}
	// Replay still drains a closed spool.
	assertPayloads(t, replayAll(t, s), payloads(3))
	assertDrained(t, s, dir)
}

func TestReplayPublishError(t *testing.T) {
	errNATS := errors.New("nats: no responders")
	tests := []struct {
		name      string
		records   int
		failAt    int // publish call that fails, counting from 0
		delivered int // payloads published before the failure
	}{
		{"first chunk", 5, 0, 0},
		{"second chunk of a segment", 2500, 1, 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			ps := payloads(tt.records)
			writeSegment(t, dir, 1, ps)
			s := openSpool(t, dir, Options{MaxBytes: testMaxBytes})
			bytesBefore := s.Bytes()
			calls, delivered := 0, 0
			err := s.Replay(t.Context(), func(_ context.Context, chunk [][]byte) error {
				defer func() { calls++ }()
				if calls == tt.failAt {
					return errNATS
				}
				delivered += len(chunk)
				return nil
			})
			if !errors.Is(err, errNATS) || !strings.HasPrefix(err.Error(), "spool: ") {
				t.Fatalf("Replay: %v, want a spool: error wrapping %v", err, errNATS)
			}
			if delivered != tt.delivered {
				t.Errorf("%d payloads published before the failure, want %d", delivered, tt.delivered)
			}
			if files := segFiles(t, dir); len(files) != 1 {
				t.Errorf("segment files after a failed Replay: %v, want the one kept", files)
			}
			if s.Bytes() != bytesBefore || s.Empty() {
				t.Errorf("after a failed Replay Bytes() = %d (want %d), Empty() = %v", s.Bytes(), bytesBefore, s.Empty())
			}
			// The next Replay starts the segment again from its first record.
			assertPayloads(t, replayAll(t, s), ps)
			assertDrained(t, s, dir)
		})
	}
}

func TestReplayChunks(t *testing.T) {
	dir := t.TempDir()
	ps := payloads(2500)
	writeSegment(t, dir, 1, ps)
	s := openSpool(t, dir, Options{MaxBytes: testMaxBytes})
	var sizes []int
	var got [][]byte
	err := s.Replay(t.Context(), func(_ context.Context, chunk [][]byte) error {
		sizes = append(sizes, len(chunk))
		got = append(got, chunk...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(sizes, []int{1000, 1000, 500}) {
		t.Errorf("publish chunk sizes %v, want [1000 1000 500]", sizes)
	}
	assertPayloads(t, got, ps)
}

func TestReplayContextDone(t *testing.T) {
	dir := t.TempDir()
	s := openSpool(t, dir, Options{MaxBytes: testMaxBytes})
	appendAll(t, s, payloads(3))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err := s.Replay(ctx, func(context.Context, [][]byte) error { return nil })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Replay with a cancelled context: %v, want context.Canceled", err)
	}
	assertPayloads(t, replayAll(t, s), payloads(3))
}

func TestReopen(t *testing.T) {
	tests := []struct {
		name  string
		close bool // false: abandon the spool as a SIGKILL would
	}{
		{"after Close", true},
		{"after SIGKILL", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "spool", "nested") // Open creates it
			first := payloads(50)
			s1, err := Open(dir, Options{MaxBytes: testMaxBytes, SegmentBytes: 1000})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s1.Close() })
			appendAll(t, s1, first)
			if tt.close {
				if err := s1.Close(); err != nil {
					t.Fatal(err)
				}
			}
			if info, err := os.Stat(dir); err != nil || info.Mode().Perm() != 0o700 {
				t.Errorf("spool dir: %v, %v; want mode 0700", info, err)
			}
			// A process killed right after creating a segment leaves it empty.
			empty := filepath.Join(dir, segmentName(99))
			if err := os.WriteFile(empty, nil, 0o600); err != nil {
				t.Fatal(err)
			}

			reg := prometheus.NewRegistry()
			s2 := openSpool(t, dir, Options{MaxBytes: testMaxBytes, SegmentBytes: 1000, Metrics: NewMetrics(reg)})
			if _, err := os.Stat(empty); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("empty leftover segment not deleted: %v", err)
			}
			if got, want := s2.Bytes(), recordBytes(first); got != want {
				t.Errorf("reopened Bytes() = %d, want %d", got, want)
			}
			if got := metricValue(t, reg, "admetric_spool_records"); got != 50 {
				t.Errorf("admetric_spool_records = %v after reopen, want 50", got)
			}
			if s2.Empty() {
				t.Error("reopened spool Empty()")
			}
			second := [][]byte{payload(50), payload(51)}
			appendAll(t, s2, second)
			files := segFiles(t, dir)
			if last := files[len(files)-1]; last <= segmentName(99) {
				t.Errorf("new segment %s not numbered after the leftovers", last)
			}
			assertPayloads(t, replayAll(t, s2), append(first, second...))
			assertDrained(t, s2, dir)
		})
	}
}

func TestCorruption(t *testing.T) {
	ps := payloads(5)
	recSize := headerSize + len(ps[0]) // every payload has the same length
	off := func(i int) int { return i * recSize }
	except := func(skip ...int) [][]byte {
		var out [][]byte
		for i, p := range ps {
			if !slices.Contains(skip, i) {
				out = append(out, p)
			}
		}
		return out
	}
	tests := []struct {
		name        string
		mutate      func([]byte) []byte
		want        [][]byte
		wantCorrupt float64
		wantOffset  int
	}{
		{"flipped payload byte in a middle record", func(b []byte) []byte {
			b[off(2)+headerSize+5] ^= 0x40
			return b
		}, except(2), 1, off(2)},
		{"flipped CRC", func(b []byte) []byte {
			b[off(1)+8] ^= 1
			return b
		}, except(1), 1, off(1)},
		{"impossible length", func(b []byte) []byte {
			copy(b[off(3)+4:], []byte{0xff, 0xff, 0xff, 0xff})
			return b
		}, except(3), 1, off(3)},
		{"length one too long", func(b []byte) []byte {
			b[off(3)+4]++
			return b
		}, except(3), 1, off(3)},
		{"damaged magic", func(b []byte) []byte {
			b[off(0)] = 0
			return b
		}, except(0), 1, off(0)},
		{"torn tail mid-payload", func(b []byte) []byte {
			return b[:off(4)+headerSize+3]
		}, except(4), 1, off(4)},
		{"torn tail mid-header", func(b []byte) []byte {
			return b[:off(4)+5]
		}, except(4), 1, off(4)},
		{"zeros after the last record", func(b []byte) []byte {
			return append(b, make([]byte, 4096)...)
		}, ps, 1, off(5)},
		{"garbage between records", func(b []byte) []byte {
			garbage := []byte("garbage\x00\xffSP\xffSPL\x05\x00\x00\x00junk!")
			return slices.Insert(b, off(2), garbage...)
		}, ps, 1, off(2)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s1, err := Open(dir, Options{MaxBytes: testMaxBytes})
			if err != nil {
				t.Fatal(err)
			}
			appendAll(t, s1, ps)
			if err := s1.Close(); err != nil {
				t.Fatal(err)
			}
			files := segFiles(t, dir)
			if len(files) != 1 {
				t.Fatalf("segment files %v, want one", files)
			}
			path := filepath.Join(dir, files[0])
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, tt.mutate(data), 0o600); err != nil {
				t.Fatal(err)
			}

			var logs bytes.Buffer
			reg := prometheus.NewRegistry()
			s := openSpool(t, dir, Options{
				MaxBytes: testMaxBytes,
				Logger:   slog.New(slog.NewTextHandler(&logs, nil)),
				Metrics:  NewMetrics(reg),
			})
			// New appends go after the damage, in a segment of their own.
			appendAll(t, s, [][]byte{payload(99)})
			assertPayloads(t, replayAll(t, s), append(slices.Clone(tt.want), payload(99)))
			assertDrained(t, s, dir)
			if got := metricValue(t, reg, "admetric_spool_corrupt_records_total"); got != tt.wantCorrupt {
				t.Errorf("corrupt counter = %v, want %v", got, tt.wantCorrupt)
			}
			var warns []string
			for line := range strings.Lines(logs.String()) {
				if strings.Contains(line, "level=WARN") {
					warns = append(warns, line)
				}
			}
			wantWarn := fmt.Sprintf("segment=%s offset=%d", files[0], tt.wantOffset)
			if len(warns) != 1 || !strings.Contains(warns[0], wantWarn) {
				t.Errorf("warnings %q, want one naming %q", warns, wantWarn)
			}
		})
	}
}

// TestCorruptionReportedOnce checks that retrying a segment after a publish
// error does not count its damage again.
func TestCorruptionReportedOnce(t *testing.T) {
	dir := t.TempDir()
	seg := slices.Concat(encodeRecord(nil, payload(0)), []byte("torn"))
	if err := os.WriteFile(filepath.Join(dir, segmentName(1)), seg, 0o600); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	s := openSpool(t, dir, Options{MaxBytes: testMaxBytes, Metrics: NewMetrics(reg)})
	fail := errors.New("down")
	if err := s.Replay(t.Context(), func(context.Context, [][]byte) error { return fail }); !errors.Is(err, fail) {
		t.Fatalf("Replay: %v", err)
	}
	assertPayloads(t, replayAll(t, s), [][]byte{payload(0)})
	if got := metricValue(t, reg, "admetric_spool_corrupt_records_total"); got != 1 {
		t.Errorf("corrupt counter = %v after two replays of one damaged segment, want 1", got)
	}
}

func TestOpenEntirelyCorruptSegment(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, segmentName(7)), []byte("not a record at all"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Files that are not segments are left alone.
	other := filepath.Join(dir, "README")
	if err := os.WriteFile(other, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := openSpool(t, dir, Options{MaxBytes: testMaxBytes})
	if s.Empty() {
		t.Fatal("spool with a leftover segment is Empty")
	}
	if got := replayAll(t, s); len(got) != 0 {
		t.Errorf("replayed %q from garbage", got)
	}
	assertDrained(t, s, dir)
	if _, err := os.Stat(other); err != nil {
		t.Errorf("non-segment file touched: %v", err)
	}
}

func TestOpenBadOptions(t *testing.T) {
	tests := []struct {
		opts Options
		name string // the option the error must name
	}{
		{Options{}, "MaxBytes"},
		{Options{MaxBytes: -1}, "MaxBytes"},
		{Options{MaxBytes: testMaxBytes, SegmentBytes: -1}, "SegmentBytes"},
	}
	for _, tt := range tests {
		s, err := Open(t.TempDir(), tt.opts)
		if err == nil || s != nil || !strings.Contains(err.Error(), tt.name) || !strings.HasPrefix(err.Error(), "spool: ") {
			t.Errorf("Open(%+v) = %v, %v; want a spool: error naming %s", tt.opts, s, err, tt.name)
		}
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := Open(file, Options{MaxBytes: testMaxBytes}); err == nil || s != nil {
		t.Errorf("Open on a file = %v, %v; want an error", s, err)
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := openSpool(t, t.TempDir(), Options{MaxBytes: testMaxBytes, Metrics: NewMetrics(reg)})
	ps := payloads(10)
	appendAll(t, s, ps)
	for name, want := range map[string]float64{
		"admetric_spool_bytes":          float64(recordBytes(ps)),
		"admetric_spool_records":        10,
		"admetric_spool_appended_total": 10,
		"admetric_spool_replayed_total": 0,
	} {
		if got := metricValue(t, reg, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if got := metricValue(t, reg, "admetric_spool_fsync_seconds"); got < 10 {
		t.Errorf("admetric_spool_fsync_seconds has %v samples, want at least one per sequential append", got)
	}
	replayAll(t, s)
	for name, want := range map[string]float64{
		"admetric_spool_bytes":          0,
		"admetric_spool_records":        0,
		"admetric_spool_replayed_total": 10,
	} {
		if got := metricValue(t, reg, name); got != want {
			t.Errorf("after Replay %s = %v, want %v", name, got, want)
		}
	}
}

func TestDecodeRecords(t *testing.T) {
	a, b := []byte("alpha"), []byte(`{"event_id":"b"}`)
	ra, rb := encodeRecord(nil, a), encodeRecord(nil, b)
	tooLong := slices.Clone(ra)
	tooLong[4], tooLong[5], tooLong[6] = 0x01, 0x00, 0x10 // maxPayload+1
	tests := []struct {
		name        string
		data        []byte
		want        [][]byte
		wantCorrupt int
	}{
		{"nil", nil, nil, 0},
		{"one", ra, [][]byte{a}, 0},
		{"two", slices.Concat(ra, rb), [][]byte{a, b}, 0},
		{"empty payload", encodeRecord(nil, nil), [][]byte{{}}, 0},
		{"magic only", magic[:], nil, 1},
		{"garbage only", []byte("hello, world"), nil, 1},
		{"length over the limit", slices.Concat(tooLong, rb), [][]byte{b}, 1},
		{"three damaged stretches", slices.Concat([]byte("x"), ra, []byte("yy"), rb, []byte("z")), [][]byte{a, b}, 3},
		{"damaged record hiding an intact one", func() []byte {
			outer := encodeRecord(nil, ra)
			outer[8] ^= 1
			return slices.Concat(outer, rb)
		}(), [][]byte{a, b}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, corrupt := decodeAll(tt.data)
			if corrupt != tt.wantCorrupt {
				t.Errorf("corrupt = %d, want %d", corrupt, tt.wantCorrupt)
			}
			assertPayloads(t, got, tt.want)
			for _, p := range got {
				if cap(p) != len(p) {
					t.Errorf("payload %q has spare capacity %d", p, cap(p)-len(p))
				}
			}
		})
	}
}

// TestAppendIOError checks that a failed write is reported, releases its
// reservation, and does not wedge the spool once the disk is back.
func TestAppendIOError(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	s := openSpool(t, dir, Options{MaxBytes: testMaxBytes})
	if err := os.Remove(dir); err != nil { // the next segment cannot be created
		t.Fatal(err)
	}
	err := s.Append(t.Context(), payload(1))
	if err == nil || errors.Is(err, ErrFull) || !strings.HasPrefix(err.Error(), "spool: ") {
		t.Fatalf("Append into a missing directory: %v, want a spool: I/O error", err)
	}
	if !s.Empty() || s.Bytes() != 0 {
		t.Errorf("after a failed Append Empty() = %v, Bytes() = %d", s.Empty(), s.Bytes())
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	appendAll(t, s, [][]byte{payload(2)})
	assertPayloads(t, replayAll(t, s), [][]byte{payload(2)})
}
