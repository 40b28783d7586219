package spool

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkAppendParallel measures group-commit throughput: 32 appenders per
// GOMAXPROCS, each Append waiting for its fsync, on the real filesystem of
// b.TempDir. records/s is the figure that matters; fsyncs/record shows how many
// appends share each fsync (directory fsyncs included).
func BenchmarkAppendParallel(b *testing.B) {
	reg := prometheus.NewRegistry()
	s, err := Open(b.TempDir(), Options{MaxBytes: 1 << 40, SegmentBytes: 64 << 20, Metrics: NewMetrics(reg)})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	p := payload(0) // about the size of a real event
	b.SetParallelism(32)
	b.ReportAllocs()
	b.SetBytes(int64(headerSize + len(p)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := s.Append(b.Context(), p); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	b.ReportMetric(metricValue(b, reg, "admetric_spool_fsync_seconds")/float64(b.N), "fsyncs/record")
}
