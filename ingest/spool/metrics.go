package spool

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are a spool's Prometheus collectors. The gauges describe one spool,
// so give each Spool its own Metrics (and registry). A nil *Metrics is valid
// and records nothing, so tests and tools need no registry. Safe for
// concurrent use.
type Metrics struct {
	bytes        prometheus.Gauge
	records      prometheus.Gauge
	appended     prometheus.Counter
	replayed     prometheus.Counter
	corrupt      prometheus.Counter
	fsyncSeconds prometheus.Histogram
}

// NewMetrics creates the collectors and registers them with reg. Like
// prometheus.MustRegister it panics when reg already holds them: that is a
// wiring mistake at startup, not a runtime condition.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		bytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "admetric_spool_bytes", Help: "Bytes of spool segment files on disk, record headers included.",
		}),
		records: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "admetric_spool_records", Help: "Records in the spool not yet replayed (best effort: leftovers from a previous run are counted by their headers).",
		}),
		appended: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "admetric_spool_appended_total", Help: "Records appended and fsync'd to the spool.",
		}),
		replayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "admetric_spool_replayed_total", Help: "Records republished from the spool whose segment was then deleted.",
		}),
		corrupt: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "admetric_spool_corrupt_records_total", Help: "Damaged stretches (bad CRC or length, torn tail, garbage) skipped while replaying the spool.",
		}),
		fsyncSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "admetric_spool_fsync_seconds", Help: "Duration of each fsync of a spool segment or of the spool directory.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
	}
	reg.MustRegister(m.bytes, m.records, m.appended, m.replayed, m.corrupt, m.fsyncSeconds)
	return m
}

// set publishes the spool's current size; the caller holds the spool's mutex
// so that concurrent updates cannot publish stale values out of order.
func (m *Metrics) set(bytes, records int64) {
	if m == nil {
		return
	}
	m.bytes.Set(float64(bytes))
	m.records.Set(float64(records))
}

func (m *Metrics) addAppended(n int) {
	if m != nil {
		m.appended.Add(float64(n))
	}
}

func (m *Metrics) addReplayed(n int) {
	if m != nil {
		m.replayed.Add(float64(n))
	}
}

func (m *Metrics) incCorrupt() {
	if m != nil {
		m.corrupt.Inc()
	}
}

func (m *Metrics) observeFsync(d time.Duration) {
	if m != nil {
		m.fsyncSeconds.Observe(d.Seconds())
	}
}
