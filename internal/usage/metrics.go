package usage

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Values of the result label of llm_proxy_status_writes_total.
const (
	resultSuccess = "success"
	// resultUnchanged counts objects whose status already showed what the
	// counters hold: no write was made.
	resultUnchanged = "unchanged"
	resultConflict  = "conflict"
	resultError     = "error"
	// resultDropped counts objects deleted before their usage was written.
	resultDropped = "dropped"
	// resultOrphaned counts objects deleted and created again under the
	// same name before their usage was written: it belonged to the old one.
	resultOrphaned = "orphaned"
)

// recorderMetrics are the Recorder's own metrics. Their labels are fixed
// sets (kind: LLMUser or LLMQuota; result: the result* values), so they add
// a handful of series whatever the number of users.
type recorderMetrics struct {
	writes *prometheus.CounterVec
}

func newRecorderMetrics(reg prometheus.Registerer, pending func() int, lag func() time.Duration) *recorderMetrics {
	m := &recorderMetrics{
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llm_proxy_status_writes_total",
			Help: "Usage write-backs to status, by object kind and result (success, unchanged, conflict, error, dropped: the object was deleted, orphaned: it was deleted and created again, and the usage of the deleted one went nowhere).",
		}, []string{"kind", "result"}),
	}
	if reg != nil {
		// The gauge is read at scrape time, so it cannot go stale.
		pendingObjects := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "llm_proxy_status_pending_objects",
			Help: "Objects whose usage is counted but not yet written to status.",
		}, func() float64 { return float64(pending()) })
		lagSeconds := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "llm_proxy_status_lag_seconds",
			Help: "How long the oldest usage not yet written to status has waited.",
		}, func() float64 { return lag().Seconds() })
		reg.MustRegister(m.writes, pendingObjects, lagSeconds)
	}
	return m
}

func (m *recorderMetrics) write(k kind, result string) {
	m.writes.WithLabelValues(k.String(), result).Inc()
}
