package quota

import (
	"reflect"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
)

func TestBudgetsFor(t *testing.T) {
	u := &llmv1alpha1.LLMUser{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "alice", UID: "u1"}}
	quotaOf := func(scope llmv1alpha1.QuotaScope, enf llmv1alpha1.Enforcement, thresholds []int32, limits ...llmv1alpha1.QuotaLimit) *llmv1alpha1.LLMQuota {
		return &llmv1alpha1.LLMQuota{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "q", UID: "q1"},
			Spec: llmv1alpha1.LLMQuotaSpec{Scope: scope, Enforcement: enf, AlertThresholds: thresholds, Limits: limits}}
	}
	day := llmv1alpha1.QuotaLimit{Window: llmv1alpha1.WindowDay, Tokens: ptr(100)}
	for _, tc := range []struct {
		name string
		q    *llmv1alpha1.LLMQuota
		want []Budget
	}{
		{"per user", quotaOf(llmv1alpha1.ScopePerUser, "", []int32{50}, day), []Budget{
			{Key: "user/ns/alice/u1", Kind: BudgetUser, Namespace: "ns", Name: "alice", UID: "u1", Limits: []Limit{{Window: llmv1alpha1.WindowDay, Tokens: ptr(100)}}, Thresholds: []int32{50}, Tag: "user/ns/alice/u1"},
		}},
		{"no limits: a lifetime", quotaOf(llmv1alpha1.ScopePerUser, "", nil), []Budget{
			{Key: "user/ns/alice/u1", Kind: BudgetUser, Namespace: "ns", Name: "alice", UID: "u1", Limits: []Limit{}, Thresholds: []int32{80, 95}, Tag: "user/ns/alice/u1"},
		}},
		// The user's tally shares its pool's tag: one script charges both.
		{"shared, dry run", quotaOf(llmv1alpha1.ScopeShared, llmv1alpha1.EnforcementDryRun, nil, day), []Budget{
			{Key: "user/ns/alice/u1", Kind: BudgetUser, Namespace: "ns", Name: "alice", UID: "u1", Limits: []Limit{{Window: llmv1alpha1.WindowDay}}, DryRun: true, Tag: "quota/ns/q/q1"},
			{Key: "quota/ns/q/q1", Kind: BudgetPool, Namespace: "ns", Name: "q", UID: "q1", Limits: []Limit{{Window: llmv1alpha1.WindowDay, Tokens: ptr(100)}}, DryRun: true, Thresholds: []int32{80, 95}, Tag: "quota/ns/q/q1"},
		}},
	} {
		if got := BudgetsFor(u, tc.q); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.name, got, tc.want)
		}
	}
}

func TestCrossed(t *testing.T) {
	b := UserBudget("ns", "a", "u", []Limit{{Window: llmv1alpha1.WindowDay, Tokens: ptr(1000), Requests: ptr(10)}}, false)
	b.Thresholds = []int32{80, 95}
	w := func(used, reserved Amount) []WindowStatus {
		return []WindowStatus{{Budget: b.Key, Limit: b.Limits[0], Used: used, Reserved: reserved}}
	}
	for _, tc := range []struct {
		name           string
		used, reserved Amount
		granted        Amount
		want           bool
	}{
		{"under every threshold", amt(1, 100, 100), amt(1, 50, 50), amt(1, 50, 50), false},
		{"to 80% of tokens", amt(1, 300, 400), amt(1, 50, 50), amt(1, 50, 50), true},        // 700 -> 800
		{"already past 80%", amt(1, 400, 400), amt(1, 10, 10), amt(1, 10, 10), false},       // 800 -> 820
		{"to 95%", amt(1, 450, 450), amt(1, 30, 30), amt(1, 30, 30), true},                  // 900 -> 960
		{"to the limit", amt(1, 480, 480), amt(1, 20, 20), amt(1, 20, 20), true},            // 960 -> 1000
		{"to 80% of requests", amt(7, 1, 1), amt(1, 0, 0), amt(1, 0, 0), true},              // 7 -> 8 of 10
		{"a tally window has no caps", Amount{}, amt(1, 999, 999), amt(1, 999, 999), false}, // see below
	} {
		ws := w(tc.used, tc.reserved)
		budgets := []Budget{b}
		if tc.name == "a tally window has no caps" {
			ws[0].Limit = Limit{Window: llmv1alpha1.WindowDay}
		}
		if got := Crossed(ws, budgets, tc.granted); got != tc.want {
			t.Errorf("%s: Crossed = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestAlerting(t *testing.T) {
	limit := Limit{Window: llmv1alpha1.WindowDay, Tokens: ptr(1000), Requests: ptr(10)}
	for _, tc := range []struct {
		name       string
		used       Amount
		reserved   Amount
		thresholds []int32
		want       bool
	}{
		{"below the first threshold", amt(1, 300, 400), Amount{}, []int32{80, 95}, false},
		{"at the first threshold", amt(1, 300, 500), Amount{}, []int32{95, 80}, true},
		{"reservations count", amt(1, 300, 400), amt(0, 0, 100), []int32{80}, true},
		{"requests count", amt(8, 1, 1), Amount{}, []int32{80}, true},
		{"no thresholds: only exhaustion", amt(9, 900, 99), Amount{}, nil, false},
		{"no thresholds, exhausted", amt(10, 1, 1), Amount{}, nil, true},
	} {
		w := WindowStatus{Limit: limit, Used: tc.used, Reserved: tc.reserved}
		if got := Alerting(w, tc.thresholds); got != tc.want {
			t.Errorf("%s: Alerting = %t, want %t", tc.name, got, tc.want)
		}
	}
	if Alerting(WindowStatus{Limit: Limit{Window: llmv1alpha1.WindowDay}, Used: amt(100, 100, 100)}, []int32{1}) {
		t.Error("a window with no caps is never alerting")
	}
}

func TestTagOf(t *testing.T) {
	pool := PoolBudget("ns", "q", "q1", nil, false)
	derived := Budget{Key: "overflow/" + pool.Key, Tag: TagOf(pool)}
	for _, tc := range []struct {
		b    Budget
		want string
	}{
		{UserBudget("ns", "alice", "u1", nil, false), "user/ns/alice/u1"},
		{pool, "quota/ns/q/q1"},
		{derived, "quota/ns/q/q1"},
		{Budget{Key: "bare"}, "bare"},
	} {
		if got := TagOf(tc.b); got != tc.want {
			t.Errorf("TagOf(%s) = %q, want %q", tc.b.Key, got, tc.want)
		}
	}
}
