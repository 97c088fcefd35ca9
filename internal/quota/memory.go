package quota

import (
	"context"
	"slices"
	"sync"
	"time"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
)

// Memory is the in-process [Counter] for a single proxy replica. Its counts
// are lost on restart; [Counter.Seed] restores them from recorded status.
//
// One mutex guards every budget: a request checks a user's budget and a
// Shared quota's pool together, and one lock makes that atomic without lock
// ordering. Holding it costs a few map lookups per request.
type Memory struct {
	now func() time.Time

	mu      sync.Mutex
	budgets map[string]map[llmv1alpha1.Window]*windowCounter
	// inflight counts each concurrency key's requests in flight.
	inflight map[string]int64
	// lifetime is what each budget was charged since it began or was seeded.
	lifetime map[string]Amount
	// lifetimeSeen is the most status was seen to record of each lifetime
	// (see [Replica]).
	lifetimeSeen map[string]Amount
	// nextSweep is when ended windows are next dropped.
	nextSweep time.Time
}

// windowCounter is one budget's counts in the window that started at start.
// It is reused in place when its window rolls over.
type windowCounter struct {
	start    time.Time
	end      time.Time
	used     Amount
	reserved Amount
	// models splits used by model (see chargeModel).
	models []ModelAmount
	// seen and seenModels are the most status was seen to record of this
	// window: seeded from, merged or written (see [Replica]).
	seen       Amount
	seenModels []ModelAmount
}

// sweepEvery is how often ended windows are dropped: the shortest window, so
// memory holds little more than the budgets used within the last minute or
// whose longer windows are still running.
const sweepEvery = time.Minute

var _ Counter = (*Memory)(nil)

// NewMemory returns an empty in-process counter reading time from now.
func NewMemory(now func() time.Time) *Memory {
	return &Memory{now: now, budgets: make(map[string]map[llmv1alpha1.Window]*windowCounter), inflight: make(map[string]int64),
		lifetime: make(map[string]Amount), lifetimeSeen: make(map[string]Amount)}
}

// peek returns s's counts without creating or resetting anything: a counter
// from an earlier window counts as empty.
func (m *Memory) peek(s slot) counts {
	c := m.budgets[s.key][s.window]
	if c == nil || !c.start.Equal(s.start) {
		return counts{}
	}
	return counts{used: c.used, reserved: c.reserved}
}

// counter returns s's counter, creating it or rolling it over to s's window.
func (m *Memory) counter(s slot) *windowCounter {
	ws := m.budgets[s.key]
	if ws == nil {
		ws = make(map[llmv1alpha1.Window]*windowCounter)
		m.budgets[s.key] = ws
	}
	c := ws[s.window]
	if c == nil {
		c = &windowCounter{}
		ws[s.window] = c
	}
	if !c.start.Equal(s.start) {
		*c = windowCounter{start: s.start, end: s.end}
	}
	return c
}

// sweep drops counters whose window has ended, at most once per sweepEvery.
// A reservation still held in such a window has nothing left to release: its
// Settle charges the window current by then.
func (m *Memory) sweep(now time.Time) {
	if now.Before(m.nextSweep) {
		return
	}
	m.nextSweep = now.Add(sweepEvery)
	for key, ws := range m.budgets {
		for w, c := range ws {
			if !now.Before(c.end) {
				delete(ws, w)
			}
		}
		if len(ws) == 0 {
			delete(m.budgets, key)
		}
	}
}

// Reserve implements [Counter]. See the admission rule in plan.go.
func (m *Memory) Reserve(_ context.Context, req Request) (*Reservation, Decision, error) {
	now := m.now()
	p, err := newPlan(req.Budgets, now)
	if err != nil {
		return nil, Decision{}, err
	}
	req.Estimate = nonNegative(req.Estimate)

	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweep(now)
	state := make([]counts, len(p.slots))
	for i, s := range p.slots {
		state[i] = m.peek(s)
	}
	var inflight int64
	if c := req.Concurrency; c != nil {
		inflight = m.inflight[c.Key]
	}
	v := p.decide(state, req, inflight)
	d := Decision{Allowed: v.allowed, Granted: v.grant, WouldGrant: v.wouldGrant, Exceeded: v.exceeded,
		Overflow: v.allowed && v.overage != nil, Overage: v.overage}
	if !v.allowed {
		d.Windows = p.windows(state)
		return nil, d, nil
	}
	for i, s := range p.slots {
		c := m.counter(s)
		c.reserved = c.reserved.Add(v.grant)
		state[i].reserved = c.reserved
	}
	r := &Reservation{Budgets: slices.Clone(req.Budgets), Amount: v.grant, At: now, Model: req.Model, ID: reservationIDs.Add(1)}
	if d.Overflow {
		r.Overflow = overflowBudgets(req.Budgets)
	}
	if c := req.Concurrency; c != nil {
		m.inflight[c.Key]++
		r.concurrency = c.Key
	}
	d.Windows = p.windows(state)
	return r, d, nil
}

// Settle implements [Counter]. A window that ended since the reservation has
// nothing left to release, and its usage no longer limits anything.
func (m *Memory) Settle(_ context.Context, r *Reservation, actual Amount) error {
	if r == nil {
		return errNilReservation
	}
	p, err := newPlan(r.Budgets, r.At)
	if err != nil {
		return err
	}
	var over plan
	var now time.Time
	if len(r.Overflow) > 0 {
		if over, err = newPlan(r.Overflow, r.At); err != nil {
			return err
		}
		now = m.now()
	}
	held := nonNegative(r.Amount)
	actual = nonNegative(actual)

	m.mu.Lock()
	defer m.mu.Unlock()
	if r.settled {
		return nil
	}
	r.settled = true
	for _, s := range p.slots {
		c := m.budgets[s.key][s.window]
		if c == nil || !c.start.Equal(s.start) {
			continue
		}
		c.reserved = subFloor(c.reserved, held)
		if !actual.IsZero() {
			c.used = c.used.Add(actual)
			c.models = chargeModel(c.models, r.Model, actual)
		}
	}
	if !actual.IsZero() {
		for _, k := range keys(r.Budgets) {
			m.lifetime[k] = m.lifetime[k].Add(actual)
		}
		// Overflow tallies hold nothing reserved: their counters start with
		// the first charge, in the window the request was admitted in.
		for _, s := range over.slots {
			c := m.budgets[s.key][s.window]
			switch {
			case c == nil && now.Before(s.end):
				c = m.counter(s)
			case c == nil || !c.start.Equal(s.start):
				continue
			}
			c.used = c.used.Add(actual)
			c.models = chargeModel(c.models, r.Model, actual)
		}
	}
	if k := r.concurrency; k != "" {
		if n := m.inflight[k] - 1; n > 0 {
			m.inflight[k] = n
		} else {
			delete(m.inflight, k)
		}
	}
	return nil
}

// Status implements [Counter].
func (m *Memory) Status(_ context.Context, b Budget) ([]WindowStatus, error) {
	p, err := newPlan([]Budget{b}, m.now())
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	state := make([]counts, len(p.slots))
	for i, s := range p.slots {
		state[i] = m.peek(s)
		if c := m.budgets[s.key][s.window]; c != nil && c.start.Equal(s.start) {
			state[i].models = sortModels(slices.Clone(c.models))
		}
	}
	return p.windows(state), nil
}

// Seed implements [Counter].
func (m *Memory) Seed(_ context.Context, b Budget, w llmv1alpha1.Window, start time.Time, used Amount, models []ModelAmount) error {
	s, ok, err := seedSlot(b.Key, w, start, m.now())
	if err != nil || !ok {
		return err
	}
	used = nonNegative(used)
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.counter(s)
	c.used = raise(c.used, used)
	c.models = raiseModels(c.models, models)
	// What was seeded is what status recorded: a later Merge adds only
	// what another replica recorded beyond it.
	c.seen = raise(c.seen, used)
	c.seenModels = raiseModels(c.seenModels, models)
	return nil
}

// Lifetime implements [Counter].
func (m *Memory) Lifetime(_ context.Context, b Budget) (Amount, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lifetime[b.Key], nil
}

// SeedLifetime implements [Counter].
func (m *Memory) SeedLifetime(_ context.Context, b Budget, used Amount) error {
	budget := b.Key
	m.mu.Lock()
	defer m.mu.Unlock()
	m.lifetime[budget] = raise(m.lifetime[budget], nonNegative(used))
	m.lifetimeSeen[budget] = raise(m.lifetimeSeen[budget], nonNegative(used))
	return nil
}

// Forget drops every counter of a budget, for a user or quota that was
// deleted; the sweep would otherwise keep its longest window until it ends.
func (m *Memory) Forget(budgetKey string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.budgets, budgetKey)
	delete(m.lifetime, budgetKey)
	delete(m.lifetimeSeen, budgetKey)
}
