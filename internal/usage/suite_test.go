package usage

import (
	"context"
	clocktesting "k8s.io/utils/clock/testing"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
)

var (
	_ manager.Runnable               = (*Recorder)(nil)
	_ manager.LeaderElectionRunnable = (*Recorder)(nil)
)

// The API server is shared by the package's tests and started by the first
// that needs it, so that the pure tests run without one.
var (
	envOnce sync.Once
	env     *envtest.Env
	envErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if env != nil {
		env.Stop()
	}
	os.Exit(code)
}

func apiServer(t *testing.T) *envtest.Env {
	t.Helper()
	envOnce.Do(func() { env, envErr = envtest.New() })
	if envErr != nil {
		t.Fatal(envErr)
	}
	return env
}

func createQuota(t *testing.T, c client.Client, ns, name string, scope llmv1alpha1.QuotaScope, limits ...llmv1alpha1.QuotaLimit) {
	t.Helper()
	q := &llmv1alpha1.LLMQuota{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       llmv1alpha1.LLMQuotaSpec{Limits: limits, Scope: scope},
	}
	if err := c.Create(t.Context(), q); err != nil {
		t.Fatal(err)
	}
}

func createUser(t *testing.T, c client.Client, ns, name, quotaName string) {
	t.Helper()
	u := &llmv1alpha1.LLMUser{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       llmv1alpha1.LLMUserSpec{QuotaRef: llmv1alpha1.QuotaReference{Name: quotaName}},
	}
	if err := c.Create(t.Context(), u); err != nil {
		t.Fatal(err)
	}
}

func getUser(t *testing.T, c client.Client, ns, name string) *llmv1alpha1.LLMUser {
	t.Helper()
	u := &llmv1alpha1.LLMUser{}
	if err := c.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: name}, u); err != nil {
		t.Fatal(err)
	}
	return u
}

func getQuota(t *testing.T, c client.Client, ns, name string) *llmv1alpha1.LLMQuota {
	t.Helper()
	q := &llmv1alpha1.LLMQuota{}
	if err := c.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: name}, q); err != nil {
		t.Fatal(err)
	}
	return q
}

// clock is a settable fake clock.
type clock = clocktesting.FakeClock

func newClock(t time.Time) *clock { return clocktesting.NewFakeClock(t) }

// hookClient counts successful status patches per object and lets a test
// act before each one: bump the object, or fail the patch.
type hookClient struct {
	client.Client

	mu      sync.Mutex
	patches map[string]int
	attempt int
	// before runs before every status patch (n counts from 1); a non-nil
	// error is returned instead of patching.
	before func(ctx context.Context, n int, obj client.Object) error
}

func newHookClient(c client.Client) *hookClient {
	return &hookClient{Client: c, patches: make(map[string]int)}
}

func (c *hookClient) Status() client.SubResourceWriter {
	return &hookStatus{SubResourceWriter: c.Client.Status(), c: c}
}

// written returns the successful status patches of the object named ns/name.
func (c *hookClient) written(ns, name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.patches[ns+"/"+name]
}

// total returns every successful status patch.
func (c *hookClient) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.patches {
		n += v
	}
	return n
}

type hookStatus struct {
	client.SubResourceWriter
	c *hookClient
}

func (s *hookStatus) Patch(ctx context.Context, obj client.Object, patch client.Patch, opts ...client.SubResourcePatchOption) error {
	s.c.mu.Lock()
	s.c.attempt++
	n, before := s.c.attempt, s.c.before
	s.c.mu.Unlock()
	if before != nil {
		if err := before(ctx, n, obj); err != nil {
			return err
		}
	}
	if err := s.SubResourceWriter.Patch(ctx, obj, patch, opts...); err != nil {
		return err
	}
	s.c.mu.Lock()
	s.c.patches[obj.GetNamespace()+"/"+obj.GetName()]++
	s.c.mu.Unlock()
	return nil
}

func writes(r *Recorder, k kind, result string) int {
	return int(testutil.ToFloat64(r.metrics.writes.WithLabelValues(k.String(), result)))
}

func amountOf(e llmv1alpha1.WindowUsage) quota.Amount {
	return quota.Amount{Requests: e.Requests, InputTokens: e.InputTokens, OutputTokens: e.OutputTokens}
}

func totalsOf(a quota.Amount) llmv1alpha1.UsageTotals {
	return llmv1alpha1.UsageTotals{Requests: a.Requests, InputTokens: a.InputTokens, OutputTokens: a.OutputTokens, TotalTokens: a.Total()}
}

func lifetimeOf(t *testing.T, lt *llmv1alpha1.UsageTotals) llmv1alpha1.UsageTotals {
	t.Helper()
	if lt == nil {
		return llmv1alpha1.UsageTotals{}
	}
	return *lt
}

// spender spends usage the way the proxy does: it reserves and settles each
// request in the user's budgets of a counter, and tells the recorder.
type spender struct {
	t       *testing.T
	c       client.Client
	counter quota.Counter
	r       *Recorder
	now     func() time.Time
}

// spend charges a to user ns/name and returns the charge.
func (s *spender) spend(ns, name string, a quota.Amount) quota.Charge {
	s.t.Helper()
	return s.spendOn(ns, name, "", a)
}

// spendOn is spend of a request to model, priced as the user's quota prices
// it (a.Cost is set from the tokens).
func (s *spender) spendOn(ns, name, model string, a quota.Amount) quota.Charge {
	s.t.Helper()
	u := getUser(s.t, s.c, ns, name)
	q := getQuota(s.t, s.c, ns, u.Spec.QuotaRef.Name)
	budgets := quota.BudgetsFor(u, q)
	price := quota.PricingFromSpec(q.Spec.Pricing).Price(model)
	a.Cost = price.Cost(a)
	est := a
	est.CachedInputTokens = 0
	res, d, err := s.counter.Reserve(s.t.Context(), quota.Request{Budgets: budgets, Estimate: est, Model: model, Price: price})
	if err != nil || !d.Allowed {
		s.t.Fatalf("reserving %+v for %s: %v %+v", a, name, err, d.Exceeded)
	}
	ch := quota.Charge{Namespace: ns, User: name, UserUID: string(u.UID), Quota: q.Name, QuotaUID: string(q.UID),
		Pool: q.Spec.Scope == llmv1alpha1.ScopeShared, Model: model, Amount: a, At: s.now()}
	// As the proxy settles: the marks go with the charge.
	res.Marks = ch.Objects()
	if err := s.counter.Settle(s.t.Context(), res, a); err != nil {
		s.t.Fatal(err)
	}
	s.r.Charge(ch)
	return ch
}
