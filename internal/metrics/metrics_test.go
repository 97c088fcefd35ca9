package metrics

import (
	"fmt"
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

	want := `
# HELP llm_proxy_tokens_total Tokens charged, by user, model and type (input or output).
# TYPE llm_proxy_tokens_total counter
llm_proxy_tokens_total{model="llama",namespace="team-a",type="input",user="alice"} 10
llm_proxy_tokens_total{model="llama",namespace="team-a",type="input",user="bob"} 7
llm_proxy_tokens_total{model="llama",namespace="team-a",type="output",user="alice"} 5
`
	// bob's embeddings have no output series.
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "llm_proxy_tokens_total"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(m.ttft); n != 1 {
		t.Errorf("ttft series = %d, want 1", n)
	}

	m.ForgetUser("team-a", "alice")
	if n := testutil.CollectAndCount(m.users, "llm_proxy_requests_total"); n != 1 {
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
	want := `
# HELP llm_proxy_requests_total Requests answered by the proxy, by user and model ("" when unknown); llm_proxy_responses_total has their status codes.
# TYPE llm_proxy_requests_total counter
llm_proxy_requests_total{model="m",namespace="ns",user=""} 2
`
	if err := testutil.CollectAndCompare(m.users, strings.NewReader(want), "llm_proxy_requests_total"); err != nil {
		t.Error(err)
	}
}

func TestNilMetricsIsNoop(t *testing.T) {
	var m *Metrics
	m.ObserveRequest(Request{Code: 200})
	m.Reject("", "", ReasonUnauthenticated)
	m.ForgetUser("a", "b")
}

// TestSeriesPerActiveUser: a user who made requests, within budget, adds
// three series (requests, input and output tokens) per model, whatever
// status codes they got; a budget window adds its gauges once it passes the
// first alert threshold.
func TestSeriesPerActiveUser(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg, Options{UserLabel: true})
	count := func() int {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, mf := range mfs {
			for _, mt := range mf.GetMetric() {
				for _, l := range mt.GetLabel() {
					if l.GetName() == "user" && l.GetValue() != "" {
						n++
					}
				}
			}
		}
		return n
	}
	reset := time.Now().Add(time.Hour)
	limit, left := int64(1000), int64(900)
	for i := range 100 {
		user := fmt.Sprintf("user-%d", i)
		for _, code := range []int{200, 200, 400, 502} {
			m.ObserveRequest(Request{Namespace: "ns", User: user, Model: "m", Operation: OperationChat, Code: code, InputTokens: 3, OutputTokens: 2})
		}
		m.ObserveBudget(BudgetSample{Namespace: "ns", Quota: "q", User: user, Window: "Day", ResetAt: reset, LimitTokens: &limit, RemainingTokens: &left}, false)
	}
	if n := count(); n != 300 {
		t.Errorf("%d per-user series for 100 active users, want 300", n)
	}
	m.ObserveBudget(BudgetSample{Namespace: "ns", Quota: "q", User: "user-1", Window: "Day", ResetAt: reset, LimitTokens: &limit, RemainingTokens: &left}, true)
	if n := count(); n != 302 {
		t.Errorf("%d per-user series with one user alerting, want 302 (its remaining and limit gauges)", n)
	}
}

func TestBudgetModes(t *testing.T) {
	ten, three := int64(10), int64(3)
	now := time.Date(2026, 5, 1, 10, 0, 30, 0, time.UTC)
	sample := func(user string) BudgetSample {
		return BudgetSample{Namespace: "ns", Quota: "q", User: user, Window: "Minute", ResetAt: now.Add(30 * time.Second),
			LimitTokens: &ten, RemainingTokens: &three}
	}
	for _, tc := range []struct {
		mode BudgetMode
		want string
	}{
		{BudgetsAlerting, `
llm_proxy_budget_remaining_tokens{namespace="ns",quota="q",user="",window="Minute"} 3
llm_proxy_budget_remaining_tokens{namespace="ns",quota="q",user="carol",window="Minute"} 3
`},
		{BudgetsAll, `
llm_proxy_budget_remaining_tokens{namespace="ns",quota="q",user="",window="Minute"} 3
llm_proxy_budget_remaining_tokens{namespace="ns",quota="q",user="bob",window="Minute"} 3
llm_proxy_budget_remaining_tokens{namespace="ns",quota="q",user="carol",window="Minute"} 3
`},
		{BudgetsNone, `
llm_proxy_budget_remaining_tokens{namespace="ns",quota="q",user="",window="Minute"} 3
`},
	} {
		b := newBudgetBoard(tc.mode, func() time.Time { return now })
		b.observe(sample(""), false)     // a pool: always
		b.observe(sample("bob"), false)  // a user below the threshold
		b.observe(sample("carol"), true) // past it
		want := "# HELP llm_proxy_budget_remaining_tokens " + descHelp(descRemainingTokens) + "\n# TYPE llm_proxy_budget_remaining_tokens gauge" + tc.want
		if err := testutil.CollectAndCompare(b, strings.NewReader(want), "llm_proxy_budget_remaining_tokens"); err != nil {
			t.Errorf("mode %s: %v", tc.mode, err)
		}
		b.forget("ns", "carol")
		if n := testutil.CollectAndCount(b, "llm_proxy_budget_limit_tokens"); n != len(strings.Split(strings.TrimSpace(tc.want), "\n"))-boolInt(tc.mode != BudgetsNone) {
			t.Errorf("mode %s: %d limit series after carol was deleted", tc.mode, n)
		}
		// The window ends: its gauges go.
		now = now.Add(30 * time.Second)
		if n := testutil.CollectAndCount(b); n != 0 {
			t.Errorf("mode %s: %d series after the window ended, want 0", tc.mode, n)
		}
		now = now.Add(-30 * time.Second)
	}
	if _, err := ParseBudgetMode("some"); err == nil {
		t.Error(`ParseBudgetMode("some") accepted`)
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// descHelp is the help text of a Desc, as its String method prints it.
func descHelp(d *prometheus.Desc) string {
	s := d.String()
	i := strings.Index(s, `help: "`) + len(`help: "`)
	return s[i : i+strings.Index(s[i:], `"`)]
}

// TestCostCounter: llm_user_cost_total is what a priced user's requests
// cost, per model, in the quota's currency units; an unpriced request adds
// no series, and a forgotten user's series go.
func TestCostCounter(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := New(reg, Options{UserLabel: true})
	req := func(user, model, currency string, pico int64) {
		m.ObserveRequest(Request{Namespace: "team-a", User: user, Model: model, Operation: OperationChat, Code: 200,
			InputTokens: 10, OutputTokens: 5, Currency: currency, Cost: pico})
	}
	req("alice", "llama", "USD", 78_000_000)        // 0.000078
	req("alice", "llama", "USD", 1_500_000_000_000) // 1.5
	req("alice", "qwen", "USD", 0)                  // a free model of a priced quota: a zero series
	req("bob", "llama", "EUR", 250_000_000_000)     // 0.25
	req("carol", "llama", "", 0)                    // no pricing: no series
	want := `
# HELP llm_user_cost_total What the requests of a user of a priced LLMQuota cost, by model, in units of the quota's currency (exact values are in status).
# TYPE llm_user_cost_total counter
llm_user_cost_total{currency="EUR",model="llama",namespace="team-a",user="bob"} 0.25
llm_user_cost_total{currency="USD",model="llama",namespace="team-a",user="alice"} 1.500078
llm_user_cost_total{currency="USD",model="qwen",namespace="team-a",user="alice"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "llm_user_cost_total"); err != nil {
		t.Error(err)
	}
	m.ForgetUser("team-a", "alice")
	if n := testutil.CollectAndCount(m.users, "llm_user_cost_total"); n != 1 {
		t.Errorf("cost series after forgetting alice = %d, want 1 (bob)", n)
	}
}
