package proxyserver

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llm-user-operator/llm-user-operator/internal/quota"
)

// failover applies the configured failure mode of a shared counter store
// (Redis) and makes it visible. Fail closed (the default): a request whose
// reservation cannot be made is refused with 503 by the proxy. Fail open:
// it is admitted with a reservation that holds nothing
// ([quota.Unreserved]), so replicas may overshoot a budget while the store
// is down; its usage is charged all the same once the store answers again,
// since the proxy retries every Settle that failed.
//
// A store that restarted empty answers [quota.ErrUnseeded]: the first call
// to see it seeds the store again from status (reseed), and the call is
// retried, so a restart of Redis never hands out fresh budgets, and no
// charge lands in counters that the reseed would overwrite.
type failover struct {
	quota.Counter
	open      bool
	errors    *prometheus.CounterVec
	available prometheus.Gauge
	up        atomic.Bool
	reseed    func(context.Context) error
	reseedMu  sync.Mutex
	reseeds   atomic.Uint64
}

func newFailover(c quota.Counter, open bool, reseed func(context.Context) error, reg prometheus.Registerer) *failover {
	f := &failover{
		Counter: c, open: open, reseed: reseed,
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llm_proxy_counter_errors_total",
			Help: "Quota counter store errors by operation and the action taken (reserve: admitted when failing open, refused when failing closed; settle: retried).",
		}, []string{"operation", "action"}),
		available: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "llm_proxy_counter_available",
			Help: "1 while the quota counter store answered its last call, 0 after a failure.",
		}),
	}
	f.available.Set(1)
	f.up.Store(true)
	reg.MustRegister(f.errors, f.available)
	return f
}

func (f *failover) observe(op string, err error) {
	f.up.Store(err == nil)
	if err == nil {
		f.available.Set(1)
		return
	}
	f.available.Set(0)
	action := "refused"
	switch {
	case op != "reserve":
		action = "retried" // the proxy settles again until the store answers
	case f.open:
		action = "admitted"
	}
	f.errors.WithLabelValues(op, action).Inc()
}

// Available reports whether the store answered its last call.
func (f *failover) Available() bool { return f.up.Load() }

func (f *failover) Reserve(ctx context.Context, req quota.Request) (*quota.Reservation, quota.Decision, error) {
	seen := f.reseeds.Load()
	res, dec, err := f.Counter.Reserve(ctx, req)
	if errors.Is(err, quota.ErrUnseeded) && f.reseed != nil {
		if err = f.seedOnce(ctx, seen); err == nil {
			res, dec, err = f.Counter.Reserve(ctx, req)
		}
	}
	f.observe("reserve", err)
	if err != nil && f.open {
		// Admitted unreserved, with the estimate it would have held.
		return quota.Unreserved(req, time.Now()), quota.Decision{Allowed: true, Granted: req.Estimate, WouldGrant: req.Estimate}, nil
	}
	return res, dec, err
}

func (f *failover) Settle(ctx context.Context, r *quota.Reservation, actual quota.Amount) error {
	seen := f.reseeds.Load()
	err := f.Counter.Settle(ctx, r, actual)
	if errors.Is(err, quota.ErrUnseeded) && f.reseed != nil {
		if err = f.seedOnce(ctx, seen); err == nil {
			err = f.Counter.Settle(ctx, r, actual)
		}
	}
	f.observe("settle", err)
	return err
}

// seedOnce reseeds the store unless another request already did since seen.
func (f *failover) seedOnce(ctx context.Context, seen uint64) error {
	f.reseedMu.Lock()
	defer f.reseedMu.Unlock()
	if f.reseeds.Load() != seen {
		return nil
	}
	if err := f.reseed(ctx); err != nil {
		return err
	}
	f.reseeds.Add(1)
	return nil
}
