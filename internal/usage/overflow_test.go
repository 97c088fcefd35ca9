package usage

import (
	"testing"
	"time"

	"k8s.io/utils/ptr"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
)

// TestOverflowInStatus: usage admitted past a soft limit shows in the
// window's overflow, for the user and a Shared pool, and a restarted
// counter is seeded with it.
func TestOverflowInStatus(t *testing.T) {
	e := apiServer(t)
	ns := envtest.NewNamespace(t, e.Client, "usage")
	soft := llmv1alpha1.QuotaLimit{Window: llmv1alpha1.WindowDay, Requests: ptr.To[int64](1), Overage: llmv1alpha1.OverageDemote}
	createQuota(t, e.Client, ns, "night", llmv1alpha1.ScopePerUser, soft)
	createQuota(t, e.Client, ns, "team", llmv1alpha1.ScopeShared, soft)
	createUser(t, e.Client, ns, "owl", "night")
	createUser(t, e.Client, ns, "m1", "team")
	createUser(t, e.Client, ns, "m2", "team")

	clock := newClock(time.Now().UTC())
	counter := quota.NewMemory(clock.Now)
	r := New(e.Client, Options{Now: clock.Now, Counter: counter})
	sp := &spender{t: t, c: e.Client, counter: counter, r: r, now: clock.Now}
	sp.spend(ns, "owl", quota.Amount{Requests: 1, InputTokens: 100, OutputTokens: 50}) // within the soft limit
	sp.spend(ns, "owl", quota.Amount{Requests: 1, InputTokens: 20, OutputTokens: 5})
	sp.spend(ns, "owl", quota.Amount{Requests: 1, InputTokens: 30, OutputTokens: 7})
	sp.spend(ns, "m1", quota.Amount{Requests: 1, InputTokens: 40, OutputTokens: 4}) // the pool's one
	sp.spend(ns, "m2", quota.Amount{Requests: 1, InputTokens: 9, OutputTokens: 1})
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}

	checkOverflow := func(what string, got []llmv1alpha1.WindowUsage, want *llmv1alpha1.UsageTotals) {
		t.Helper()
		if len(got) != 1 {
			t.Fatalf("%s: %d entries, want 1", what, len(got))
		}
		if g := got[0].Overflow; (g == nil) != (want == nil) || (g != nil && *g != *want) {
			t.Errorf("%s overflow = %+v, want %+v", what, g, want)
		}
	}
	owl := getUser(t, e.Client, ns, "owl")
	checkOverflow("owl", owl.Status.Usage, &llmv1alpha1.UsageTotals{Requests: 2, InputTokens: 50, OutputTokens: 12, TotalTokens: 62})
	if u := owl.Status.Usage[0]; u.Requests != 3 || u.TotalTokens != 212 {
		t.Errorf("owl's window counts %d requests and %d tokens, want 3 and 212 (overflow included)", u.Requests, u.TotalTokens)
	}
	checkOverflow("m1", getUser(t, e.Client, ns, "m1").Status.Usage, nil)
	checkOverflow("m2", getUser(t, e.Client, ns, "m2").Status.Usage, &llmv1alpha1.UsageTotals{Requests: 1, InputTokens: 9, OutputTokens: 1, TotalTokens: 10})
	team := getQuota(t, e.Client, ns, "team")
	checkOverflow("the pool", team.Status.Usage, &llmv1alpha1.UsageTotals{Requests: 1, InputTokens: 9, OutputTokens: 1, TotalTokens: 10})

	// A new replica starts from status, overflow included.
	fresh := quota.NewMemory(clock.Now)
	if err := SeedFromStatus(t.Context(), fresh, e.Client, clock.Now()); err != nil {
		t.Fatal(err)
	}
	ob := quota.OverflowBudget(quota.BudgetsFor(owl, getQuota(t, e.Client, ns, "night"))[0])
	ws, err := fresh.Status(t.Context(), ob)
	if err != nil {
		t.Fatal(err)
	}
	if want := (quota.Amount{Requests: 2, InputTokens: 50, OutputTokens: 12}); ws[0].Used != want {
		t.Errorf("seeded overflow %+v, want %+v", ws[0].Used, want)
	}
}
