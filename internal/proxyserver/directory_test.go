package proxyserver

import (
	"context"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/proxy"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
)

func int64p(v int64) *int64 { return &v }

func TestDirectoryViews(t *testing.T) {
	var deleted []string
	d := NewDirectory(func(ns, name string) { deleted = append(deleted, ns+"/"+name) })
	user := func(name, q string, mutate func(*llmv1alpha1.LLMUser)) *llmv1alpha1.LLMUser {
		u := &llmv1alpha1.LLMUser{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID("uid-" + name)},
			Spec: llmv1alpha1.LLMUserSpec{QuotaRef: llmv1alpha1.QuotaReference{Name: q}, Models: []string{"m-*"}}}
		if mutate != nil {
			mutate(u)
		}
		return u
	}
	d.setUser(user("alice", "team", func(u *llmv1alpha1.LLMUser) {
		u.Status.Token = &llmv1alpha1.TokenStatus{Generation: 3}
	}))
	d.setUser(user("bob", "pool", nil))

	a, ok := d.User("ns", "alice")
	if !ok || a.QuotaFound || a.TokenGeneration != 3 || len(a.Budgets) != 0 {
		t.Fatalf("before the quota exists: %+v", a)
	}

	d.setQuota(&llmv1alpha1.LLMQuota{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "team", UID: "uid-team"}, Spec: llmv1alpha1.LLMQuotaSpec{
		Limits: []llmv1alpha1.QuotaLimit{{Window: llmv1alpha1.WindowDay, Tokens: int64p(10)}}, Models: []string{"*"},
		MaxTokensPerRequest: int64p(7), Scope: llmv1alpha1.ScopePerUser, Enforcement: llmv1alpha1.EnforcementDryRun,
		Priority: ptr.To[int32](-5), FairShareWeight: 3,
		Pricing: &llmv1alpha1.Pricing{Currency: "EUR", Models: []llmv1alpha1.ModelPrice{{Model: "m-*", Input: "0.5", Output: "1.25"}}},
	}})
	d.setQuota(&llmv1alpha1.LLMQuota{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "pool", UID: "uid-pool"}, Spec: llmv1alpha1.LLMQuotaSpec{
		Limits: []llmv1alpha1.QuotaLimit{{Window: llmv1alpha1.WindowMonth, Requests: int64p(5)}}, Scope: llmv1alpha1.ScopeShared,
	}})
	a, _ = d.User("ns", "alice")
	if !a.QuotaFound || *a.MaxTokensPerRequest != 7 || len(a.Budgets) != 1 || a.Budgets[0].Key != "user/ns/alice/uid-alice" || a.QuotaUID != "uid-team" || !a.DryRun || !a.Budgets[0].DryRun {
		t.Fatalf("per-user view: %+v", a)
	}
	if a.UserModels[0] != "m-*" || a.Models[0] != "*" {
		t.Errorf("models: %v %v", a.Models, a.UserModels)
	}
	if a.FairShareWeight != 3 {
		t.Errorf("fair share weight %d, want the quota's 3", a.FairShareWeight)
	}
	if a.Priority == nil || *a.Priority != -5 || a.Pricing == nil || a.Pricing.Currency != "EUR" ||
		a.Pricing.Price("m-1") != (quota.Price{Input: 500_000, CachedInput: 500_000, Output: 1_250_000}) {
		t.Errorf("priority %v, pricing %+v: want -5 and m-* at 0.5/0.5/1.25 EUR a million", a.Priority, a.Pricing)
	}
	b, _ := d.User("ns", "bob")
	// Cache isolation: per user by default (the API server defaults the
	// field; here it is empty, which reads the same).
	if a.CacheSalt == "" || a.CacheSalt == b.CacheSalt || a.CacheSalt != proxy.CacheSalt("User", "ns", "alice", "uid-alice", "team", "uid-team") {
		t.Errorf("cache salts %q and %q, want each user their own", a.CacheSalt, b.CacheSalt)
	}
	d.setQuota(&llmv1alpha1.LLMQuota{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "pool", UID: "uid-pool"}, Spec: llmv1alpha1.LLMQuotaSpec{
		Limits: []llmv1alpha1.QuotaLimit{{Window: llmv1alpha1.WindowMonth, Requests: int64p(5)}}, Scope: llmv1alpha1.ScopeShared,
		CacheIsolation: llmv1alpha1.CacheIsolationQuota,
	}})
	d.setUser(user("carol", "pool", nil))
	b, _ = d.User("ns", "bob")
	c, _ := d.User("ns", "carol")
	if len(a.FairnessID) != 1 || a.FairnessID[0] != "ns/user/alice" || len(b.FairnessID) != 1 || b.FairnessID[0] != "ns/quota/pool" || c.FairnessID[0] != "ns/quota/pool" {
		t.Errorf("fairness ids %v, %v, %v: want alice's own, one flow for the Shared pool", a.FairnessID, b.FairnessID, c.FairnessID)
	}
	if b.CacheSalt == "" || b.CacheSalt != c.CacheSalt {
		t.Errorf("Quota isolation: bob %q, carol %q, want one salt for the pool", b.CacheSalt, c.CacheSalt)
	}
	d.deleteUser(user("carol", "pool", nil))
	deleted = nil
	if len(b.Budgets) != 2 || b.Budgets[1].Key != "quota/ns/pool/uid-pool" || b.Budgets[1].Kind != quota.BudgetPool || b.Budgets[1].DryRun ||
		b.Budgets[0].Key != "user/ns/bob/uid-bob" || b.Budgets[0].Limits[0].Requests != nil {
		t.Fatalf("shared view: %+v, want the user's tally and the pool", b)
	}

	// A deleted quota turns its users' views back; a deleted user disappears.
	d.deleteQuota(toolscache.DeletedFinalStateUnknown{Obj: &llmv1alpha1.LLMQuota{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "team"}}})
	if a, _ = d.User("ns", "alice"); a.QuotaFound {
		t.Errorf("quota still found after deletion")
	}
	d.deleteUser(user("bob", "pool", nil))
	if _, ok := d.User("ns", "bob"); ok || len(deleted) != 1 || deleted[0] != "ns/bob" {
		t.Errorf("deleted user still known: %v", deleted)
	}
	if n := len(d.Users()); n != 1 {
		t.Errorf("%d users, want 1", n)
	}
}

type brokenCounter struct{ quota.Counter }

func (brokenCounter) Reserve(context.Context, quota.Request) (*quota.Reservation, quota.Decision, error) {
	return nil, quota.Decision{}, errors.New("connection refused")
}

func TestFailoverModes(t *testing.T) {
	for _, open := range []bool{false, true} {
		reg := prometheus.NewRegistry()
		f := newFailover(brokenCounter{}, open, nil, reg)
		b := quota.UserBudget("ns", "alice", "uid-alice", nil, false)
		res, dec, err := f.Reserve(context.Background(), quota.Request{Budgets: []quota.Budget{b}, Estimate: quota.Amount{Requests: 1, InputTokens: 5}})
		if open && (err != nil || !dec.Allowed || dec.Granted != (quota.Amount{Requests: 1, InputTokens: 5}) ||
			res == nil || !res.Amount.IsZero() || len(res.Budgets) != 1 || res.Budgets[0].Key != b.Key) {
			t.Errorf("fail-open: res=%+v dec=%+v err=%v, want admitted with a reservation of alice's budget that holds nothing", res, dec, err)
		}
		if !open && err == nil {
			t.Error("fail-closed: the error must reach the proxy (503)")
		}
		action := map[bool]string{true: "admitted", false: "refused"}[open]
		if v := testutil.ToFloat64(f.errors.WithLabelValues("reserve", action)); v != 1 {
			t.Errorf("open=%v: llm_proxy_counter_errors_total{action=%q} = %v", open, action, v)
		}
		if v := testutil.ToFloat64(f.available); v != 0 {
			t.Errorf("open=%v: llm_proxy_counter_available = %v", open, v)
		}
	}
}

// emptiedCounter answers ErrUnseeded until it is seeded, as a restarted Redis does.
type emptiedCounter struct {
	quota.Counter
	seeded   bool
	reserves int
}

func (e *emptiedCounter) Reserve(context.Context, quota.Request) (*quota.Reservation, quota.Decision, error) {
	e.reserves++
	if !e.seeded {
		return nil, quota.Decision{}, quota.ErrUnseeded
	}
	return &quota.Reservation{}, quota.Decision{Allowed: true}, nil
}

func TestFailoverReseedsAnEmptiedStore(t *testing.T) {
	store := &emptiedCounter{}
	seeds := 0
	f := newFailover(store, false, func(context.Context) error {
		seeds++
		store.seeded = true
		return nil
	}, prometheus.NewRegistry())
	for range 3 {
		if _, dec, err := f.Reserve(context.Background(), quota.Request{}); err != nil || !dec.Allowed {
			t.Fatalf("reserve after reseed: %+v %v", dec, err)
		}
	}
	if seeds != 1 || store.reserves != 4 {
		t.Errorf("seeded %d times, %d reserves; want 1 seed and one retried reserve", seeds, store.reserves)
	}
}
