package proxy

import (
	"context"
	"sync"
	"time"

	"github.com/llm-user-operator/llm-user-operator/internal/quota"
)

// maxUnsettled bounds the settles kept for a retry, about 300 bytes each.
// Past it the oldest is given up (and logged): an outage of the shared
// store long enough to fill it has bigger problems than the last requests'
// usage.
const maxUnsettled = 100_000

// unsettledRetry is how often the kept settles are tried again.
const unsettledRetry = time.Second

// unsettled keeps the settles the counter did not take (the shared store was
// unreachable, or its reply was lost) and tries them again until it does.
// A retried Settle is charged once whatever became of the first try
// ([quota.Counter] Settle is idempotent), and its charge reaches the usage
// sink only then: status is written from the counters, so it must not be
// told of usage they do not hold yet.
type unsettled struct {
	mu    sync.Mutex
	items []settlement
}

type settlement struct {
	res    *quota.Reservation
	actual quota.Amount
	// charge is reported to the sink once settled; its Amount is zero
	// for a release.
	charge quota.Charge
}

// settle settles s, or keeps it for a retry.
func (p *Proxy) settle(ctx context.Context, s settlement) {
	if err := p.counter.Settle(ctx, s.res, s.actual); err != nil {
		p.log.Error(err, "Settling quota failed; keeping it to retry", "namespace", s.charge.Namespace, "user", s.charge.User)
		p.keepUnsettled(s)
		return
	}
	p.charged(s.charge)
}

func (p *Proxy) charged(c quota.Charge) {
	if p.sink != nil && !c.Amount.IsZero() {
		p.sink.Charge(c)
	}
}

func (p *Proxy) keepUnsettled(s settlement) {
	u := &p.unsettled
	u.mu.Lock()
	if len(u.items) >= maxUnsettled {
		lost := u.items[0]
		u.items = u.items[1:]
		p.log.Error(nil, "Too many settles waiting for the quota store; giving the oldest up",
			"namespace", lost.charge.Namespace, "user", lost.charge.User, "amount", lost.actual)
	}
	u.items = append(u.items, s)
	n := len(u.items)
	u.mu.Unlock()
	p.metrics.SetUnsettled(n)
}

// RetrySettles tries the kept settles again every second until ctx is done.
// It blocks, like a controller-runtime Runnable.
func (p *Proxy) RetrySettles(ctx context.Context) error {
	t := time.NewTicker(unsettledRetry)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			p.SettleKept(ctx)
		}
	}
}

// SettleKept tries every kept settle once, in the order they were kept,
// and stops at the first that fails (the store is still unreachable); it
// returns how many are still kept. Call it once more after the last request
// finished, before the final flush of usage.
func (p *Proxy) SettleKept(ctx context.Context) int {
	u := &p.unsettled
	u.mu.Lock()
	items := u.items
	u.items = nil
	u.mu.Unlock()
	done := 0
	for _, s := range items {
		if ctx.Err() != nil {
			break
		}
		if err := p.counter.Settle(ctx, s.res, s.actual); err != nil {
			break
		}
		p.charged(s.charge)
		done++
	}
	u.mu.Lock()
	// Those kept meanwhile go after the ones still waiting.
	u.items = append(items[done:len(items):len(items)], u.items...)
	n := len(u.items)
	u.mu.Unlock()
	p.metrics.SetUnsettled(n)
	return n
}
