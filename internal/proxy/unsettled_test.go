package proxy

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/llm-user-operator/llm-user-operator/internal/quota"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
)

// flakyCounter fails every Settle while down.
type flakyCounter struct {
	quota.Counter
	mu      sync.Mutex
	down    bool
	settles int
}

func (f *flakyCounter) Settle(ctx context.Context, r *quota.Reservation, actual quota.Amount) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.settles++
	if f.down {
		return errors.New("connection refused")
	}
	return f.Counter.Settle(ctx, r, actual)
}

func (f *flakyCounter) setDown(down bool) {
	f.mu.Lock()
	f.down = down
	f.mu.Unlock()
}

// TestUnsettledRetried: a request that finishes while the store cannot take
// its settle is charged once the store answers, and only then reported to
// the sink (status is written from the counters).
func TestUnsettledRetried(t *testing.T) {
	var flaky *flakyCounter
	e := newEnv(t, func(o *Options) {
		flaky = &flakyCounter{Counter: o.Counter}
		o.Counter = flaky
	})
	for range 2 {
		resp := e.do(t, "POST", "/v1/chat/completions", chatBody)
		expectStatus(t, resp, 200)
		readAll(t, resp)
	}
	e.sink.wait(t)
	e.sink.wait(t)
	flaky.setDown(true)
	for range 3 {
		resp := e.do(t, "POST", "/v1/chat/completions", chatBody)
		expectStatus(t, resp, 200)
		readAll(t, resp)
	}
	// A request settles just after its client has the answer.
	poll.Until(t, 10*time.Second, func() error {
		e.proxy.unsettled.mu.Lock()
		n := len(e.proxy.unsettled.items)
		e.proxy.unsettled.mu.Unlock()
		return poll.Check(n == 3, fmt.Sprintf("%d settles kept", n))
	})
	budget := aliceUser().Budgets[0]
	used := func() quota.Amount {
		st, err := e.mem.Status(t.Context(), budget)
		if err != nil {
			t.Fatal(err)
		}
		return st[0].Used
	}
	if got := used(); got != (quota.Amount{Requests: 2, InputTokens: 22, OutputTokens: 14}) {
		t.Errorf("used with the store down = %+v, want the 2 requests settled before", got)
	}
	if n := len(e.sink.all()); n != 2 {
		t.Errorf("%d charges reported with 3 settles waiting, want 2", n)
	}
	if n := e.proxy.SettleKept(t.Context()); n != 3 {
		t.Errorf("SettleKept with the store down keeps %d, want 3", n)
	}

	flaky.setDown(false)
	if n := e.proxy.SettleKept(t.Context()); n != 0 {
		t.Errorf("SettleKept with the store back keeps %d, want 0", n)
	}
	if got := used(); got != (quota.Amount{Requests: 5, InputTokens: 55, OutputTokens: 35}) {
		t.Errorf("used after the retry = %+v, want all 5 requests", got)
	}
	if got := st(t, e, budget).Reserved; !got.IsZero() {
		t.Errorf("reserved after the retry = %+v, want every hold released", got)
	}
	cs := e.sink.all()
	if len(cs) != 5 {
		t.Fatalf("%d charges reported, want 5", len(cs))
	}
	for _, c := range cs[2:] {
		if c.User != "alice" || c.Amount != (quota.Amount{Requests: 1, InputTokens: 11, OutputTokens: 7}) {
			t.Errorf("retried charge = %+v", c)
		}
	}
	// A retry that already landed changes nothing.
	if n := e.proxy.SettleKept(t.Context()); n != 0 {
		t.Errorf("SettleKept again keeps %d", n)
	}
	if got := used(); got.Requests != 5 {
		t.Errorf("used after another pass = %+v", got)
	}
}

func st(t *testing.T, e *env, b quota.Budget) quota.WindowStatus {
	t.Helper()
	s, err := e.mem.Status(t.Context(), b)
	if err != nil || len(s) == 0 {
		t.Fatalf("Status: %v %v", s, err)
	}
	return s[0]
}
