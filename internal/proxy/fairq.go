package proxy

import (
	"context"
	"errors"
	"maps"
	"math"
	"sync"
	"time"

	"github.com/llm-user-operator/llm-user-operator/internal/metrics"
)

// The fair queue in front of each upstream.
//
// vLLM serves the requests it runs first come, first served (or by the
// priority the proxy writes), and does not preempt when its running cap
// (max_num_seqs) is what limits it: without a gate at the proxy there is
// nothing to reorder, and one user with fifty long requests in flight takes
// the model from everyone on the same tier. With FairQueue.MaxInFlight set,
// at most that many requests of this replica run on an upstream at once;
// the rest wait here, and a freed slot goes
//
//   - to the most urgent tier first: the quota's spec.priority, lower first,
//     as vLLM orders it (no priority is tier 0);
//   - within a tier, to the flow with the lowest virtual token counter (VTC,
//     S-LoRA's "Fairness in Serving Large Language Models"): the tokens it
//     was served, input plus twice output (generation is what takes the GPU's
//     time), divided by its quota's spec.fairShareWeight. A flow is a user,
//     or a whole Shared pool (one budget, one tenant: a team with more
//     members does not get more of the GPU). A flow that comes back after
//     idling starts level with the least served of the tier's busy flows
//     (what they were served, not what their running requests are
//     estimated at), so idle time is not banked; on a tie, the flow with
//     fewer requests running goes first.
//
// A request's counter grows by its estimate when it is dispatched (its input
// and the output it was admitted for: fifty requests sent at once do not
// all pass before the counter moves) and is set right by its charge when it
// ends.
//
// Reserved slots: vLLM does not preempt a running request to make room
// under its running cap, so a flow that arrives while another holds every
// slot waits for one of that flow's requests to end, however far ahead it is
// in the queue. With FairQueue.Reserved set, the last Reserved free slots go
// only to flows with nothing running on the upstream (never to overflow):
// one busy flow holds at most MaxInFlight − Reserved, and a user who sends
// one request at a time starts at once beside it. The price is slots left
// idle while nobody else comes: a lone user gets MaxInFlight − Reserved.
//
// A request waits at most QueueTimeout (then 429 queue_timeout); the queue
// holds at most MaxQueued requests, and MaxQueuedPerFlow of one flow (then
// 429 queue_full). A waiting request holds its reservation, so the budget
// arithmetic does not change; a client that leaves while waiting is
// released and charged nothing.

// FairQueue configures the fair queue of every upstream. The zero value is
// no queue: requests go upstream as they come.
type FairQueue struct {
	// MaxInFlight is how many requests of this replica run on one upstream
	// at once (0: unlimited, no queue). PerUpstream overrides it by
	// upstream URL. With several replicas each gates its own requests: set
	// it to the upstream's capacity (vLLM's --max-num-seqs) divided by the
	// replicas.
	MaxInFlight int
	PerUpstream map[string]int
	// Reserved is how many of each upstream's slots are kept for flows with
	// nothing running on it (0: none). At most the upstream's limit − 1.
	Reserved int
	// QueueTimeout is the longest a request waits (default 30s).
	QueueTimeout time.Duration
	// MaxQueued bounds the requests waiting for one upstream (default 1000);
	// MaxQueuedPerFlow those of one flow (default 100).
	MaxQueued, MaxQueuedPerFlow int
	// Shared, when set, shares the virtual token counters with the other
	// replicas every SyncInterval (default 500ms): see [SharedCounters].
	Shared       SharedCounters
	SyncInterval time.Duration
}

// SharedCounters shares what each flow was served between the replicas
// that gate the same upstream, so that a user whose requests land on three
// replicas is not served three times as fast as one whose requests land on
// one. Each replica adds what it served a flow (weighted tokens divided by
// the flow's weight, the counter's unit) to the flow's shared total, and
// adds to its own counter of the flow what the total grew by beyond its
// own additions: the other replicas' service. A flow's counter on a replica
// therefore lags the others' service by at most one SyncInterval.
type SharedCounters interface {
	// Exchange adds served (per flow: what this replica served it since the
	// last call) to the shared totals of upstream's flows, and returns the
	// totals of flows, which include every key of served. A flow without a
	// total yet is absent or 0.
	Exchange(ctx context.Context, upstream string, served map[string]float64, flows []string) (map[string]float64, error)
}

// Overflow, a request admitted past a soft limit (overage: Demote), is a
// flow of its own (the user's key and overflowFlow) in overflowTier, after
// every priority: it is dispatched only when no request within its quota
// waits for the upstream, and it shares what is left fairly with the
// other overflow flows.
const (
	overflowTier = math.MaxInt32
	overflowFlow = "\x00overflow"
)

// overflowPriority is the priority written into overflow sent to a vLLM
// that schedules by priority (the quota sets spec.priority): after the
// largest a quota may set (1000).
var overflowPriority int32 = 1001

// outputWeight is how much more an output token costs the GPU than an
// input token in the virtual token counter (S-LoRA's w_q = 2, w_p = 1).
const outputWeight = 2

var (
	errQueueTimeout = errors.New("queue timeout")
	errQueueFull    = errors.New("queue full")
	errFlowFull     = errors.New("flow queue full")
)

// fairQueues holds one gate per upstream that has a limit.
type fairQueues struct {
	cfg     FairQueue
	mu      sync.Mutex
	gates   map[string]*fairGate
	metrics *metrics.Metrics
}

// gate returns upstream's gate, or nil when it has no limit.
func (q *fairQueues) gate(upstream string) *fairGate {
	if q == nil {
		return nil
	}
	limit := q.cfg.MaxInFlight
	if n, ok := q.cfg.PerUpstream[upstream]; ok {
		limit = n
	}
	if limit <= 0 {
		return nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	g := q.gates[upstream]
	if g == nil {
		if q.gates == nil {
			q.gates = make(map[string]*fairGate)
		}
		g = &fairGate{limit: limit, reserved: min(max(q.cfg.Reserved, 0), limit-1), timeout: q.cfg.QueueTimeout, maxQueued: q.cfg.MaxQueued, maxPerFlow: q.cfg.MaxQueuedPerFlow,
			flows: make(map[string]*flow), metrics: q.metrics}
		if g.timeout <= 0 {
			g.timeout = 30 * time.Second
		}
		if g.maxQueued <= 0 {
			g.maxQueued = 1000
		}
		if g.maxPerFlow <= 0 {
			g.maxPerFlow = 100
		}
		q.gates[upstream] = g
	}
	return g
}

// fairGate is the queue of one upstream.
type fairGate struct {
	limit, maxQueued, maxPerFlow int
	// reserved is how many of limit only a flow with nothing running takes.
	reserved int
	timeout  time.Duration
	metrics  *metrics.Metrics

	mu       sync.Mutex
	inflight int
	queued   int
	flows    map[string]*flow
	// seq numbers the waiters in arrival order: ties go to the earliest.
	seq uint64
}

// flow is one user's (or Shared pool's) requests at one upstream.
type flow struct {
	key      string
	tier     int32
	vtc      float64
	inflight int
	// holding is what its running requests' dispatches added to vtc: their
	// estimates, set right when they end.
	holding float64
	waiting []*waiter
	// unsent is what this replica served the flow since its last exchange
	// of shared counters; shared is the flow's shared total as last seen,
	// negative before the first exchange.
	unsent, shared float64
}

func (f *flow) busy() bool { return f.inflight > 0 || len(f.waiting) > 0 }

// waiter is one queued request.
type waiter struct {
	flow    *flow
	cost    float64
	seq     uint64
	since   time.Time
	ready   chan struct{}
	granted bool
}

// slot is a dispatched request's place at its upstream; end gives it back.
type slot struct {
	g      *fairGate
	f      *flow
	weight float64
	// held is what the counter was raised by at dispatch.
	held float64
	// waited is how long the request waited for it.
	waited time.Duration
}

// acquire waits for a slot for a request of flow key in tier, weighted
// weight, estimated at estimate weighted tokens (input plus outputWeight ×
// the output it was admitted for). It returns errQueueTimeout,
// errQueueFull, errFlowFull, or ctx's error when the client left first.
func (g *fairGate) acquire(ctx context.Context, key string, tier int32, weight float64, estimate int64) (*slot, error) {
	if weight <= 0 {
		weight = 1
	}
	cost := float64(estimate) / weight
	g.mu.Lock()
	f := g.flows[key]
	if f == nil {
		f = &flow{key: key, tier: tier, shared: -1}
		g.flows[key] = f
	}
	f.tier = tier
	if !f.busy() {
		// Back from idle: no credit for the time away.
		if m, ok := g.minVTC(tier, f); ok && m > f.vtc {
			f.vtc = m
		}
	}
	if g.queued == 0 && g.mayTake(f) {
		g.inflight++
		f.inflight++
		f.vtc += cost
		f.holding += cost
		g.mu.Unlock()
		return &slot{g: g, f: f, weight: weight, held: cost}, nil
	}
	switch {
	case g.queued >= g.maxQueued:
		g.forgetLocked(f)
		g.mu.Unlock()
		return nil, errQueueFull
	case len(f.waiting) >= g.maxPerFlow:
		g.mu.Unlock()
		return nil, errFlowFull
	}
	g.seq++
	w := &waiter{flow: f, cost: cost, seq: g.seq, since: time.Now(), ready: make(chan struct{})}
	f.waiting = append(f.waiting, w)
	g.queued++
	// A free slot while others wait is a reserved one, which this flow
	// may take if it has nothing running.
	sent := g.dispatchLocked()
	g.mu.Unlock()
	g.metrics.Queued(1 - sent)

	t := time.NewTimer(g.timeout)
	defer t.Stop()
	var err error
	select {
	case <-w.ready:
		return &slot{g: g, f: f, weight: weight, held: cost, waited: time.Since(w.since)}, nil
	case <-t.C:
		err = errQueueTimeout
	case <-ctx.Done():
		err = ctx.Err()
	}
	g.mu.Lock()
	if w.granted {
		// Dispatched as it gave up: give the slot to the next.
		g.mu.Unlock()
		(&slot{g: g, f: f, weight: weight, held: cost}).end(0)
		return nil, err
	}
	for i, x := range f.waiting {
		if x == w {
			f.waiting = append(f.waiting[:i], f.waiting[i+1:]...)
			break
		}
	}
	g.queued--
	g.forgetLocked(f)
	g.mu.Unlock()
	g.metrics.Queued(-1)
	return nil, err
}

// end gives the slot back; served is what the request cost in weighted
// tokens (input plus outputWeight × output), which replaces the estimate
// its dispatch counted. The slot goes to the next waiter.
func (s *slot) end(served float64) {
	g := s.g
	g.mu.Lock()
	g.inflight--
	s.f.inflight--
	s.f.vtc += served/s.weight - s.held
	s.f.holding -= s.held
	s.f.unsent += served / s.weight
	sent := g.dispatchLocked()
	g.forgetLocked(s.f)
	if len(g.flows) > 64+2*(g.inflight+g.queued) {
		for _, f := range g.flows {
			g.forgetLocked(f)
		}
	}
	g.mu.Unlock()
	if sent > 0 {
		g.metrics.Queued(-sent)
	}
}

// mayTake reports whether a request of f may have a slot now: one is free,
// and it is not one of the reserved ones, or f has nothing running and is
// not overflow.
func (g *fairGate) mayTake(f *flow) bool {
	if g.inflight >= g.limit {
		return false
	}
	return g.inflight < g.limit-g.reserved || f.inflight == 0 && f.tier != overflowTier
}

// dispatchLocked dispatches waiters while there are slots they may take,
// and returns how many.
func (g *fairGate) dispatchLocked() int {
	n := 0
	for g.nextLocked() != nil {
		n++
	}
	return n
}

// nextLocked dispatches the next waiter that may take a slot, if any: the
// most urgent tier, the lowest counter in it, the longest waiting on a tie.
func (g *fairGate) nextLocked() *waiter {
	if g.queued == 0 || g.inflight >= g.limit {
		return nil
	}
	var best *flow
	for _, f := range g.flows {
		if len(f.waiting) == 0 || !g.mayTake(f) {
			continue
		}
		if best == nil || before(f, best) {
			best = f
		}
	}
	if best == nil {
		return nil
	}
	w := best.waiting[0]
	best.waiting = best.waiting[1:]
	g.queued--
	g.inflight++
	best.inflight++
	best.vtc += w.cost
	best.holding += w.cost
	w.granted = true
	close(w.ready)
	return w
}

// before reports whether f's next request goes before g's: the more urgent
// tier, then the lower counter, then the flow with fewer requests running
// (a flow just lifted to the busy flows' counter ties with them, and it is
// the one with nothing on the GPU), then the earlier request.
func before(f, g *flow) bool {
	switch {
	case f.tier != g.tier:
		return f.tier < g.tier
	case f.vtc != g.vtc:
		return f.vtc < g.vtc
	case f.inflight != g.inflight:
		return f.inflight < g.inflight
	}
	return f.waiting[0].seq < g.waiting[0].seq
}

// minVTC is the lowest counter of the busy flows of tier other than self,
// without what their running requests hold: what they were served. A flow
// lifted to it is level with the busy ones for what is done, and ahead of
// them by what they are running now, so it gets the next free slot rather
// than waiting behind a busy flow whose running requests turned out
// cheaper than estimated.
func (g *fairGate) minVTC(tier int32, self *flow) (float64, bool) {
	found := false
	m := 0.0
	for _, f := range g.flows {
		if f == self || f.tier != tier || !f.busy() {
			continue
		}
		if v := f.vtc - f.holding; !found || v < m {
			m, found = v, true
		}
	}
	return m, found
}

// syncShared exchanges the counters of every gate's flows with the other
// replicas, every SyncInterval until ctx ends.
func (q *fairQueues) syncShared(ctx context.Context) {
	every := q.cfg.SyncInterval
	if every <= 0 {
		every = 500 * time.Millisecond
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		q.mu.Lock()
		gates := make(map[string]*fairGate, len(q.gates))
		maps.Copy(gates, q.gates)
		q.mu.Unlock()
		for upstream, g := range gates {
			_ = g.exchange(ctx, q.cfg.Shared, upstream)
		}
	}
}

// exchange sends what this replica served each flow since the last
// exchange, and adds to each flow's counter what the others served it.
// On an error the service is sent again next time.
func (g *fairGate) exchange(ctx context.Context, sc SharedCounters, upstream string) error {
	g.mu.Lock()
	served := make(map[string]float64)
	flows := make([]string, 0, len(g.flows))
	for k, f := range g.flows {
		if f.unsent != 0 {
			served[k] = f.unsent
			f.unsent = 0
		}
		if served[k] != 0 || f.busy() {
			flows = append(flows, k)
		}
	}
	g.mu.Unlock()
	if len(flows) == 0 {
		return nil
	}
	totals, err := sc.Exchange(ctx, upstream, served, flows)
	g.mu.Lock()
	defer g.mu.Unlock()
	if err != nil {
		for k, v := range served {
			if f := g.flows[k]; f != nil {
				f.unsent += v
			}
		}
		return err
	}
	for _, k := range flows {
		f := g.flows[k]
		if f == nil {
			continue
		}
		total := totals[k]
		if f.shared >= 0 {
			// What the total grew by beyond this replica's own service.
			if others := total - f.shared - served[k]; others > 0 {
				f.vtc += others
			}
		}
		f.shared = total
		g.forgetLocked(f)
	}
	return nil
}

// forgetLocked drops an idle flow once no busy flow of its tier is behind
// it: it would be lifted to their lowest counter on its return anyway, so
// only a flow that is ahead (has used more) needs remembering, and then
// only while others are busy. Memory is bounded by the flows in use.
func (g *fairGate) forgetLocked(f *flow) {
	if f.busy() || f.unsent != 0 {
		// Busy, or what it was served is still to be shared (exchange
		// forgets it then).
		return
	}
	if m, ok := g.minVTC(f.tier, f); !ok || f.vtc <= m {
		delete(g.flows, f.key)
	}
}

// depth returns the requests waiting and running (tests).
func (g *fairGate) depth() (queued, inflight int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.queued, g.inflight
}
