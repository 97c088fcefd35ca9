package proxyserver

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llm-user-operator/llm-user-operator/internal/quota"
)

// failover applies the configured failure mode of a shared counter store
// (Redis) and makes it visible. Fail closed (the default): a request whose
// reservation cannot be made is refused with 503 by the proxy. Fail open:
// it is admitted unreserved; its usage is still charged to status through the
// usage sink, but the shared counters miss it, so replicas may overshoot a
// budget while the store is down.
type failover struct {
	quota.Counter
	open      bool
	errors    *prometheus.CounterVec
	available prometheus.Gauge
}

func newFailover(c quota.Counter, open bool, reg prometheus.Registerer) *failover {
	f := &failover{
		Counter: c, open: open,
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llm_proxy_counter_errors_total",
			Help: "Quota counter store errors by operation and the action taken (admitted: fail-open; refused: fail-closed).",
		}, []string{"operation", "action"}),
		available: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "llm_proxy_counter_available",
			Help: "1 while the quota counter store answered its last call, 0 after a failure.",
		}),
	}
	f.available.Set(1)
	reg.MustRegister(f.errors, f.available)
	return f
}

func (f *failover) observe(op string, err error) {
	if err == nil {
		f.available.Set(1)
		return
	}
	f.available.Set(0)
	action := "refused"
	if f.open || op != "reserve" {
		action = "admitted"
	}
	f.errors.WithLabelValues(op, action).Inc()
}

func (f *failover) Reserve(ctx context.Context, req quota.Request) (*quota.Reservation, quota.Decision, error) {
	res, dec, err := f.Counter.Reserve(ctx, req)
	f.observe("reserve", err)
	if err != nil && f.open {
		return nil, quota.Decision{Allowed: true}, nil
	}
	return res, dec, err
}

func (f *failover) Settle(ctx context.Context, r *quota.Reservation, actual quota.Amount) error {
	err := f.Counter.Settle(ctx, r, actual)
	f.observe("settle", err)
	return err
}
