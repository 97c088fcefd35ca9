package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestObserveRequestAndForgetUser(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := New(reg, Options{UserLabel: true})
	m.ObserveRequest(Request{Namespace: "team-a", User: "alice", Model: "llama", Operation: OperationChat,
		Code: 200, InputTokens: 10, OutputTokens: 5, Duration: time.Second, TTFT: 50 * time.Millisecond})
	m.ObserveRequest(Request{Namespace: "team-a", User: "bob", Model: "llama", Operation: OperationEmbeddings,
		Code: 200, InputTokens: 7, Duration: time.Second})
	m.Reject("team-a", "alice", ReasonRateLimit)

	if got := testutil.ToFloat64(m.tokens.WithLabelValues("team-a", "alice", "llama", "output")); got != 5 {
		t.Errorf("alice output tokens = %v, want 5", got)
	}
	if n := testutil.CollectAndCount(m.tokens); n != 3 { // alice in+out, bob in only
		t.Errorf("token series = %d, want 3", n)
	}
	if n := testutil.CollectAndCount(m.ttft); n != 1 {
		t.Errorf("ttft series = %d, want 1", n)
	}

	m.ForgetUser("team-a", "alice")
	if n := testutil.CollectAndCount(m.requests); n != 1 {
		t.Errorf("requests series after forgetting alice = %d, want 1 (bob)", n)
	}
	if n := testutil.CollectAndCount(m.rejections); n != 0 {
		t.Errorf("rejection series after forgetting alice = %d, want 0", n)
	}
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
}

func TestUserLabelOff(t *testing.T) {
	m := New(nil, Options{})
	m.ObserveRequest(Request{Namespace: "ns", User: "alice", Model: "m", Operation: OperationChat, Code: 200, InputTokens: 1, OutputTokens: 1})
	m.ObserveRequest(Request{Namespace: "ns", User: "bob", Model: "m", Operation: OperationChat, Code: 200, InputTokens: 1, OutputTokens: 1})
	if got := testutil.ToFloat64(m.requests.WithLabelValues("ns", "", "m", "200")); got != 2 {
		t.Errorf("aggregated requests = %v, want 2", got)
	}
}

func TestNilMetricsIsNoop(t *testing.T) {
	var m *Metrics
	m.ObserveRequest(Request{Code: 200})
	m.Reject("", "", ReasonUnauthenticated)
	m.ForgetUser("a", "b")
}

func TestBudgetCollector(t *testing.T) {
	ten, three := int64(10), int64(3)
	samples := []BudgetSample{{Namespace: "ns", User: "alice", Quota: "q", Window: "Minute", LimitTokens: &ten, RemainingTokens: &three}}
	c := NewBudgetCollector(func() []BudgetSample { return samples })
	want := `
# HELP llm_proxy_budget_remaining_tokens Tokens left in the window under its tightest token cap, including reservations of requests in flight.
# TYPE llm_proxy_budget_remaining_tokens gauge
llm_proxy_budget_remaining_tokens{namespace="ns",quota="q",user="alice",window="Minute"} 3
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "llm_proxy_budget_remaining_tokens"); err != nil {
		t.Fatal(err)
	}
	// The user is deleted: the next scrape has no series for it.
	samples = nil
	if n := testutil.CollectAndCount(c); n != 0 {
		t.Errorf("series after deletion = %d, want 0", n)
	}
}
