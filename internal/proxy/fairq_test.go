package proxy

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llm-user-operator/llm-user-operator/internal/quota"
	"github.com/llm-user-operator/llm-user-operator/internal/token"
)

// sched drives one fair gate of one slot: requests are sent one at a time
// (each queued, or dispatched, before the next is sent), and finishing the
// request in flight dispatches the next, whose name it returns. Every
// request's input estimate is 100 tokens and it is served 100 input and 50
// output tokens: 200 weighted tokens.
type sched struct {
	t          *testing.T
	g          *fairGate
	mu         sync.Mutex
	held       map[string]*slot
	dispatched chan string
	errs       chan error
}

func newSched(t *testing.T, limit int) *sched {
	return newSchedReserved(t, limit, 0)
}

func newSchedReserved(t *testing.T, limit, reserved int) *sched {
	q := &fairQueues{cfg: FairQueue{MaxInFlight: limit, Reserved: reserved, QueueTimeout: time.Minute}}
	return &sched{t: t, g: q.gate("http://vllm"), held: map[string]*slot{}, dispatched: make(chan string, 100), errs: make(chan error, 100)}
}

// send sends request name of flow key; it returns once the gate holds it,
// and, when it went straight through, once it is dispatched.
func (s *sched) send(name, key string, tier int32, weight float64) {
	s.t.Helper()
	q0, f0 := s.g.depth()
	go func() {
		sl, err := s.g.acquire(context.Background(), key, tier, weight, 100)
		if err != nil {
			s.errs <- err
			return
		}
		s.mu.Lock()
		s.held[name] = sl
		s.mu.Unlock()
		s.dispatched <- name
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		q, f := s.g.depth()
		if q == q0+1 {
			return
		}
		if f == f0+1 {
			if got := s.next(); got != name {
				s.t.Fatalf("sent %s, %s was dispatched", name, got)
			}
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("the gate did not take %s", name)
		}
		time.Sleep(time.Millisecond)
	}
}

func (s *sched) next() string {
	s.t.Helper()
	select {
	case n := <-s.dispatched:
		return n
	case err := <-s.errs:
		s.t.Fatalf("acquire: %v", err)
	case <-time.After(5 * time.Second):
		s.t.Fatal("nothing dispatched")
	}
	return ""
}

// finish ends name (served 200 weighted tokens) and returns what was
// dispatched in its place ("" when nothing waits).
func (s *sched) finish(name string) string {
	s.t.Helper()
	return s.finishServed(name, 200)
}

func (s *sched) finishServed(name string, served float64) string {
	s.t.Helper()
	s.mu.Lock()
	sl := s.held[name]
	delete(s.held, name)
	s.mu.Unlock()
	if sl == nil {
		s.t.Fatalf("%s is not in flight", name)
	}
	q, _ := s.g.depth()
	sl.end(served)
	if q == 0 {
		return ""
	}
	return s.next()
}

// finishIdle ends name and checks that nothing was dispatched in its place,
// though requests wait: the slot it frees is a reserved one.
func (s *sched) finishIdle(name string) {
	s.t.Helper()
	s.mu.Lock()
	sl := s.held[name]
	delete(s.held, name)
	s.mu.Unlock()
	q, f := s.g.depth()
	sl.end(200)
	if q2, f2 := s.g.depth(); q2 != q || f2 != f-1 {
		s.t.Fatalf("finishing %s: %d waiting and %d running, want %d and %d (the freed slot kept idle)", name, q2, f2, q, f-1)
	}
}

// drain finishes the request in flight, and each dispatched after it, and
// returns the order they were dispatched in.
func (s *sched) drain(first string) []string {
	s.t.Helper()
	var order []string
	for cur := first; ; {
		n := s.finish(cur)
		if n == "" {
			return order
		}
		order = append(order, n)
		cur = n
	}
}

func checkOrder(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s: dispatched %v, want %v", what, got, want)
	}
}

// TestFairGateTiersAndCounters: the most urgent tier first, whatever the
// counters; within a tier, the flow served the fewest tokens first, not the
// first to come; a flow that arrives is lifted to the busy flows' lowest
// counter.
func TestFairGateTiersAndCounters(t *testing.T) {
	s := newSched(t, 1)
	s.send("h0", "heavy", 0, 1) // straight through: heavy's counter 100
	s.send("h1", "heavy", 0, 1)
	s.send("h2", "heavy", 0, 1)
	s.send("h3", "heavy", 0, 1)
	s.send("l1", "light", 0, 1)   // lifted to heavy's 100
	s.send("p1", "urgent", -1, 1) // a more urgent tier
	// h0 ends: heavy 200. p1 first (tier -1); then light (100) before
	// heavy (200) though heavy's requests came first.
	checkOrder(t, "tiers and counters", s.drain("h0"), []string{"p1", "l1", "h1", "h2", "h3"})
}

// TestFairGateTieGoesToTheIdle: a flow lifted to a busy flow's counter ties
// with it; the tie goes to the one with nothing running, not to the busy
// flow's earlier request.
func TestFairGateTieGoesToTheIdle(t *testing.T) {
	s := newSched(t, 2)
	s.send("a0", "a", 0, 1) // a: 100, of which 100 running
	s.send("b0", "b", 0, 1) // b: lifted to a's 0 done, then 100 running
	s.send("b1", "b", 0, 1)
	s.send("a1", "a", 0, 1)
	// a0 served what it was estimated at: a stays at 100, like b, but has
	// nothing running: a1 goes before the earlier b1.
	if got := s.finishServed("a0", 100); got != "a1" {
		t.Errorf("after a0: %s dispatched, want a1", got)
	}
}

// TestFairGateLiftBelowRunning: a flow that arrives is lifted to what the
// busy flows were served, not to what their running requests are estimated
// at: a running request that costs less than its estimate does not put the
// busy flow's next request ahead of the newcomer.
func TestFairGateLiftBelowRunning(t *testing.T) {
	s := newSched(t, 1)
	s.send("n0", "noisy", 0, 1) // noisy: 0 served, 100 running
	s.send("n1", "noisy", 0, 1)
	s.send("v1", "victim", 0, 1) // lifted to 0
	// n0 was cheaper than estimated: noisy 50.
	if got := s.finishServed("n0", 50); got != "v1" {
		t.Errorf("after n0: %s dispatched, want v1", got)
	}
}

// TestFairGateLiftOnReturn: a flow that was idle while another was served
// does not bank the time: it starts where the busy flow is, and the two
// alternate, rather than the newcomer taking every slot until it catches up.
// (A flow that goes idle while nobody else is busy is forgotten: counters
// only order busy flows.)
func TestFairGateLiftOnReturn(t *testing.T) {
	s := newSched(t, 1)
	// heavy is served three requests back to back, always one waiting.
	s.send("h0", "heavy", 0, 1)
	for i, n := range []string{"h1", "h2", "h3"} {
		s.send(n, "heavy", 0, 1)
		if got := s.finish([]string{"h0", "h1", "h2"}[i]); got != n {
			t.Fatalf("%s dispatched, want %s", got, n)
		}
	}
	// heavy: 600 served, h3 running.
	s.send("n1", "new", 0, 1) // lifted to 600, not 0
	s.send("n2", "new", 0, 1)
	s.send("n3", "new", 0, 1)
	s.send("h4", "heavy", 0, 1)
	s.send("h5", "heavy", 0, 1)
	// h3 ends: heavy 800, new 600: n1 (800 once done); a tie, both idle: n2,
	// the earlier (1000); h4 (1000); a tie: n3; h5.
	checkOrder(t, "lift on return", s.drain("h3"), []string{"n1", "n2", "h4", "n3", "h5"})
}

// TestFairGateWeights: a flow of weight 2 is served twice the tokens of one
// of weight 1 while both wait; on equal counters the earlier request goes.
func TestFairGateWeights(t *testing.T) {
	s := newSched(t, 1)
	s.send("x", "blocker", 0, 1)
	for _, n := range []string{"a1", "a2", "a3", "a4", "a5", "a6"} {
		s.send(n, "double", 0, 2)
	}
	for _, n := range []string{"b1", "b2", "b3", "b4", "b5", "b6"} {
		s.send(n, "single", 0, 1)
	}
	checkOrder(t, "weights", s.drain("x"),
		[]string{"a1", "b1", "a2", "a3", "b2", "a4", "a5", "b3", "a6", "b4", "b5", "b6"})
}

// TestFairGateBounds: a request waits at most the timeout; a client that
// leaves is taken out of the queue; the queue and each flow's share of it
// are bounded; and every slot comes back.
func TestFairGateBounds(t *testing.T) {
	q := &fairQueues{cfg: FairQueue{MaxInFlight: 1, QueueTimeout: 50 * time.Millisecond, MaxQueued: 2, MaxQueuedPerFlow: 1}}
	g := q.gate("http://vllm")
	ctx := context.Background()
	held, err := g.acquire(ctx, "a", 0, 1, 10)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.acquire(ctx, "b", 0, 1, 10); !errors.Is(err, errQueueTimeout) {
		t.Errorf("waiting past the timeout: %v, want %v", err, errQueueTimeout)
	}
	if n, _ := g.depth(); n != 0 {
		t.Errorf("%d queued after the timeout, want 0", n)
	}

	left, leave := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { _, err := g.acquire(left, "c", 0, 1, 10); done <- err }()
	waitQueued(t, g, 1)
	// c's one place is taken; a second flow fills the queue; a third finds
	// it full.
	if _, err := g.acquire(ctx, "c", 0, 1, 10); !errors.Is(err, errFlowFull) {
		t.Errorf("a second request of c: %v, want %v", err, errFlowFull)
	}
	go func() { _, _ = g.acquire(left, "d", 0, 1, 10) }()
	waitQueued(t, g, 2)
	if _, err := g.acquire(ctx, "e", 0, 1, 10); !errors.Is(err, errQueueFull) {
		t.Errorf("with the queue full: %v, want %v", err, errQueueFull)
	}
	leave()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("a client that left: %v, want %v", err, context.Canceled)
	}
	waitQueued(t, g, 0)
	held.end(20)
	if q, f := g.depth(); q != 0 || f != 0 {
		t.Errorf("%d queued and %d in flight at the end, want none", q, f)
	}
	if s, err := g.acquire(ctx, "b", 0, 1, 10); err != nil {
		t.Errorf("the freed slot: %v", err)
	} else {
		s.end(20)
	}
}

func waitQueued(t *testing.T, g *fairGate, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if q, _ := g.depth(); q == n {
			return
		}
		if time.Now().After(deadline) {
			q, _ := g.depth()
			t.Fatalf("%d queued, want %d", q, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestFairGateUnlimited: no limit, no gate.
func TestFairGateUnlimited(t *testing.T) {
	var none *fairQueues
	if none.gate("http://vllm") != nil {
		t.Error("a nil fairQueues gave a gate")
	}
	q := &fairQueues{cfg: FairQueue{PerUpstream: map[string]int{"http://a": 2}}}
	if q.gate("http://b") != nil {
		t.Error("an upstream without a limit got a gate")
	}
	if g := q.gate("http://a"); g == nil || g.limit != 2 {
		t.Errorf("the upstream with its own limit: %+v", g)
	}
}

// TestFairGateCounterUnits: a dispatch raises the flow's counter by its
// input estimate over its weight, and its end by the rest of what it was
// served (input plus twice output) over its weight.
func TestFairGateCounterUnits(t *testing.T) {
	q := &fairQueues{cfg: FairQueue{MaxInFlight: 4}}
	g := q.gate("http://vllm")
	vtc := func(key string) float64 {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.flows[key].vtc
	}
	s1, err := g.acquire(context.Background(), "w", 0, 2, 100)
	if err != nil {
		t.Fatal(err)
	}
	if got := vtc("w"); got != 50 {
		t.Errorf("after a dispatch of 100 input tokens at weight 2: counter %v, want 50", got)
	}
	s2, err := g.acquire(context.Background(), "w", 0, 2, 40)
	if err != nil {
		t.Fatal(err)
	}
	s1.end(float64(120 + outputWeight*90)) // 300 weighted tokens
	if got := vtc("w"); got != 170 {
		t.Errorf("after the first ended having served 300 weighted tokens: counter %v, want 170 (150 + 20 held by the second)", got)
	}
	s2.end(40)
}

// TestFairQueueThroughTheProxy: with one slot at the upstream, a second
// user's request waits holding its reservation, and gets an OpenAI-shaped
// 429 queue_timeout with Retry-After when the slot does not come in time;
// a client that leaves while waiting is released; nothing either of them
// did is charged, and the upstream never runs two requests at once.
func TestFairQueueThroughTheProxy(t *testing.T) {
	up := newUpstream(t, "meta-llama/Llama-3.1-8B")
	release := make(chan struct{})
	var mu sync.Mutex
	running, most := 0, 0
	up.handle = func(w http.ResponseWriter, r *http.Request, body []byte) {
		mu.Lock()
		running++
		most = max(most, running)
		mu.Unlock()
		<-release
		mu.Lock()
		running--
		mu.Unlock()
		defaultHandler(w, r, body)
	}
	e := newEnv(t, func(o *Options) {
		o.FairQueue = FairQueue{MaxInFlight: 1, QueueTimeout: 300 * time.Millisecond, MaxQueuedPerFlow: 1}
	}, up)
	bob := aliceUser()
	bob.Name, bob.UID = "bob", "uid-bob"
	bob.Budgets = []quota.Budget{quota.UserBudget("team-a", "bob", "uid-bob", bob.Budgets[0].Limits, false)}
	bob.FairnessID = FairnessID("team-a", "bob", "gold", false)
	e.dir.set(bob)
	e.verifier().claims["tok-bob"] = &token.Claims{Namespace: "team-a", Name: "bob", UID: "uid-bob", Generation: 2}
	g := e.proxy.fair.gate(up.URL)
	body := `{"model":"meta-llama/Llama-3.1-8B","messages":[{"role":"user","content":"hi"}],"max_tokens":10}`

	first := make(chan *http.Response, 1)
	go func() { first <- e.do(t, http.MethodPost, "/v1/chat/completions", body) }()
	waitDepth(t, g, 0, 1)

	resp := e.do(t, http.MethodPost, "/v1/chat/completions", body, "tok-bob")
	expectStatus(t, resp, http.StatusTooManyRequests)
	if ra := resp.Header.Get("Retry-After"); ra != "5" {
		t.Errorf("Retry-After %q, want 5", ra)
	}
	if e := readErr(t, resp); str(e.Error.Code) != "queue_timeout" || e.Error.Type != "rate_limit_error" || !strings.Contains(e.Error.Message, "waited 300ms") {
		t.Errorf("error %+v, want rate_limit_error queue_timeout saying how long it waited", e.Error)
	}

	ctx, leave := context.WithCancel(t.Context())
	left := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, e.srv.URL+"/v1/chat/completions", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer tok-bob")
		_, err := e.srv.Client().Do(req)
		left <- err
	}()
	waitDepth(t, g, 1, 1)
	bobBudget := bob.Budgets[0]
	if ws, _ := e.mem.Status(t.Context(), bobBudget); ws[0].Reserved.Requests != 1 {
		t.Errorf("a waiting request holds %+v, want its reservation", ws[0].Reserved)
	}
	// bob has his one place in the queue: another request of his is
	// refused at once.
	full := e.do(t, http.MethodPost, "/v1/chat/completions", body, "tok-bob")
	expectStatus(t, full, http.StatusTooManyRequests)
	if ra := full.Header.Get("Retry-After"); ra != "5" {
		t.Errorf("queue_full: Retry-After %q, want 5", ra)
	}
	if e := readErr(t, full); str(e.Error.Code) != "queue_full" || e.Error.Type != "rate_limit_error" || !strings.Contains(e.Error.Message, "at the limit (1)") {
		t.Errorf("error %+v, want rate_limit_error queue_full saying how many wait", e.Error)
	}
	leave()
	if err := <-left; err == nil {
		t.Error("the request whose client left got an answer")
	}
	waitDepth(t, g, 0, 1)

	close(release)
	expectStatus(t, <-first, http.StatusOK)
	waitDepth(t, g, 0, 0)
	if ws, _ := e.mem.Status(t.Context(), bobBudget); ws[0].Used != (quota.Amount{}) || ws[0].Reserved != (quota.Amount{}) {
		t.Errorf("bob's budget used %+v and reserved %+v, want nothing: neither request ran", ws[0].Used, ws[0].Reserved)
	}
	if most != 1 {
		t.Errorf("the upstream ran %d requests at once, want 1", most)
	}
}

func waitDepth(t *testing.T, g *fairGate, queued, inflight int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		q, f := g.depth()
		if q == queued && f == inflight {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d queued and %d in flight, want %d and %d", q, f, queued, inflight)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestFairGateReservedSlots: with 3 slots and 1 reserved, one busy flow holds
// at most 2; a flow with nothing running takes the third at once, though the
// busy flow's requests wait ahead of it; a flow with a request running, and
// overflow, wait for an ordinary slot; a freed reserved slot stays idle
// rather than go to them.
func TestFairGateReservedSlots(t *testing.T) {
	s := newSchedReserved(t, 3, 1)
	s.send("n0", "noisy", 0, 1) // straight through
	s.send("n1", "noisy", 0, 1) // straight through: noisy holds 2
	s.send("n2", "noisy", 0, 1) // waits: the third slot is reserved
	s.send("n3", "noisy", 0, 1)
	if q, f := s.g.depth(); q != 2 || f != 2 {
		t.Fatalf("noisy alone: %d waiting and %d running, want 2 and 2", q, f)
	}
	s.send("v0", "victim", 0, 1)                       // dispatched at once, into the reserved slot
	s.send("v1", "victim", 0, 1)                       // waits: the victim has a request running
	s.send("o0", "over"+overflowFlow, overflowTier, 1) // waits: overflow never takes a reserved slot
	// Two of three still run, so the free slot is the reserved one, and
	// every flow waiting has a request running or is overflow.
	s.finishIdle("n0")
	// Now an ordinary slot is free too: the victim is served least (200
	// against noisy's 300), so v1; then the reserved slot stays idle again.
	if got := s.finish("v0"); got != "v1" {
		t.Fatalf("v0 ended: dispatched %s, want v1", got)
	}
	if q, f := s.g.depth(); q != 3 || f != 2 {
		t.Fatalf("after v1: %d waiting and %d running, want 3 and 2", q, f)
	}
	var order []string
	for _, name := range []string{"n1", "v1", "n2"} {
		order = append(order, s.finish(name))
	}
	checkOrder(t, "ordinary slots", order, []string{"n2", "n3", "o0"})
}

// TestFairGateReservedSlotsTwoAtOnce: one end can dispatch two: the
// ordinary slot it frees goes to the flow served least (y), and the ended
// flow, now with nothing running, takes the reserved slot.
func TestFairGateReservedSlotsTwoAtOnce(t *testing.T) {
	s := newSchedReserved(t, 3, 1)
	s.send("x0", "x", 0, 1) // x's counter 100
	s.send("y0", "y", 0, 1) // y lifted to 0, then 100
	s.send("x1", "x", 0, 1) // waits: the free slot is reserved, x runs one
	s.send("y1", "y", 0, 1)
	got := []string{s.finish("x0"), s.next()} // both wake at once: their order on the channel is the goroutines'
	slices.Sort(got)
	checkOrder(t, "one end", got, []string{"x1", "y1"})
	if q, f := s.g.depth(); q != 0 || f != 3 {
		t.Fatalf("%d waiting and %d running, want 0 and 3", q, f)
	}
}
