package ingest

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the intake's Prometheus collectors. A nil *Metrics records nothing.
type Metrics struct {
	outcomes *prometheus.CounterVec
	replays  prometheus.Counter
	byName   map[string]prometheus.Counter
}

// NewMetrics creates the collectors and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "admetric_ingest_events_total",
			Help: "Events offered to the publisher, by outcome: accepted, duplicate, spooled, busy, spool_full, unavailable.",
		}, []string{"outcome"}),
		replays: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "admetric_ingest_replayed_total", Help: "Spooled events republished to the stream and acknowledged.",
		}),
	}
	reg.MustRegister(m.outcomes, m.replays)
	m.byName = map[string]prometheus.Counter{}
	for _, o := range []string{"accepted", "duplicate", "spooled", "busy", "spool_full", "unavailable"} {
		m.byName[o] = m.outcomes.WithLabelValues(o)
	}
	return m
}

func (m *Metrics) outcome(o string) {
	if m != nil {
		if c, ok := m.byName[o]; ok {
			c.Inc()
			return
		}
		m.outcomes.WithLabelValues(o).Inc()
	}
}

func (m *Metrics) replayed(n int) {
	if m != nil {
		m.replays.Add(float64(n))
	}
}
