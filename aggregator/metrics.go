package aggregator

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the aggregator's Prometheus collectors, shared by its consumers.
type Metrics struct {
	folded        prometheus.Counter
	duplicates    prometheus.Counter
	tooOld        prometheus.Counter
	poison        *prometheus.CounterVec
	commitErrors  prometheus.Counter
	commitSeconds prometheus.Histogram
	settled       prometheus.Counter
	archived      prometheus.Counter
	archiveErrors prometheus.Counter
	// archiveExpired counts events past ARCHIVE_RETENTION, not archived.
	archiveExpired prometheus.Counter
	restarts       *prometheus.CounterVec
	invalid        *prometheus.CounterVec
	judgeEntries   *prometheus.GaugeVec
	judgeBytes     *prometheus.GaugeVec
}

// NewMetrics creates the collectors and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		folded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "admetric_rollup_events_folded_total", Help: "Events folded into rollups.",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "admetric_rollup_duplicates_skipped_total", Help: "Event-resolution pairs skipped because the rollup already held them (replay after a crash).",
		}),
		tooOld: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "admetric_rollup_events_too_old_total", Help: "Events older than every rollup retention: archived, in no rollup.",
		}),
		poison: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "admetric_poison_messages_total", Help: "Stream messages that do not decode or validate, by consumer.",
		}, []string{"consumer"}),
		commitErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "admetric_rollup_commit_errors_total", Help: "Failed rollup commits (retried).",
		}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "admetric_rollup_commit_seconds", Help: "Time to fold and commit one batch.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		settled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "admetric_rollup_settled_writes_total", Help: "Writes of settled keys: the visitor sets of ended slots moved out of their rollups.",
		}),
		archived: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "admetric_archive_events_inserted_total", Help: "Events newly written to the PostgreSQL archive.",
		}),
		archiveErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "admetric_archive_errors_total", Help: "Failed archive batch inserts (retried).",
		}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "admetric_consumer_restarts_total",
			Help: "Times a consumer was set up again after NATS failed it (no connection, a missing heartbeat while a leader moved, the consumer deleted), by consumer.",
		}, []string{"consumer"}),
	}
	m.invalid = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "admetric_invalid_events_total", Help: "Events folded as invalid traffic, by reason (counted when the day bucket takes them).",
	}, []string{"reason"})
	m.judgeEntries = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "admetric_ivt_state_entries", Help: "Entries the invalid-traffic rules remember, by partition and kind (clicks, minute counts, servings), as of the last commit.",
	}, []string{"partition", "kind"})
	m.judgeBytes = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "admetric_ivt_state_bytes", Help: "Bytes of the invalid-traffic rules' state as committed to KV, by partition.",
	}, []string{"partition"})
	reg.MustRegister(m.invalid, m.judgeEntries, m.judgeBytes)
	m.archiveExpired = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "admetric_archive_events_expired_total", Help: "Events older than ARCHIVE_RETENTION when the archiver took them: acknowledged, not archived.",
	})
	reg.MustRegister(m.archiveExpired)
	reg.MustRegister(m.folded, m.duplicates, m.tooOld, m.poison, m.commitErrors, m.commitSeconds, m.settled, m.archived, m.archiveErrors, m.restarts)
	return m
}
