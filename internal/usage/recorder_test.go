package usage

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
)

func TestFlushWritesEachChargedObjectOnce(t *testing.T) {
	e := apiServer(t)
	ns := envtest.NewNamespace(t, e.Client, "usage")
	createQuota(t, e.Client, ns, "team", llmv1alpha1.ScopePerUser,
		llmv1alpha1.QuotaLimit{Window: llmv1alpha1.WindowDay, Tokens: ptr.To[int64](10000), Requests: ptr.To[int64](100)},
		llmv1alpha1.QuotaLimit{Window: llmv1alpha1.WindowMinute, Tokens: ptr.To[int64](5000)})
	for _, u := range []string{"alice", "bob", "carol", "idle"} {
		createUser(t, e.Client, ns, u, "team")
	}
	idleRV := getUser(t, e.Client, ns, "idle").ResourceVersion

	clock := newClock(time.Now().UTC().Truncate(time.Minute).Add(5 * time.Second))
	c := newHookClient(e.Client)
	reg := prometheus.NewPedanticRegistry()
	counter := quota.NewMemory(clock.Now)
	r := New(c, Options{Now: clock.Now, Registerer: reg, Counter: counter})
	s := &spender{t: t, c: e.Client, counter: counter, r: r, now: clock.Now}

	charge := func(user string, in, out int64) {
		if user == "ghost" {
			r.Charge(quota.Charge{Namespace: ns, User: user, Quota: "team", Amount: quota.Amount{Requests: 1, InputTokens: in, OutputTokens: out}})
			return
		}
		s.spend(ns, user, quota.Amount{Requests: 1, InputTokens: in, OutputTokens: out})
	}
	charge("alice", 100, 10)
	charge("alice", 200, 20)
	charge("alice", 300, 30)
	charge("bob", 40, 4)
	charge("bob", 50, 5)
	charge("carol", 7, 0)
	charge("ghost", 1, 1) // no such user: its usage goes with it
	if n := r.Pending(); n != 4 {
		t.Errorf("Pending() = %d before the flush, want 4", n)
	}
	if got := testutilGauge(t, reg, "llm_proxy_status_pending_objects"); got != 4 {
		t.Errorf("llm_proxy_status_pending_objects = %v, want 4", got)
	}

	clock.SetTime(clock.Now().Add(10 * time.Second))
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	for user, want := range map[string]int{"alice": 1, "bob": 1, "carol": 1, "idle": 0, "ghost": 0} {
		if got := c.written(ns, user); got != want {
			t.Errorf("%s: %d status writes, want %d", user, got, want)
		}
	}
	if rv := getUser(t, e.Client, ns, "idle").ResourceVersion; rv != idleRV {
		t.Errorf("idle user written: resourceVersion %s -> %s", idleRV, rv)
	}
	if got := writes(r, kindUser, resultSuccess); got != 3 {
		t.Errorf("writes{success} = %d, want 3", got)
	}
	if got := writes(r, kindUser, resultDropped); got != 1 {
		t.Errorf("writes{dropped} = %d, want 1 (ghost)", got)
	}
	if n := r.Pending(); n != 0 {
		t.Errorf("Pending() = %d after the flush, want 0", n)
	}

	now := clock.Now()
	charged := now.Add(-10 * time.Second)
	for user, want := range map[string]quota.Amount{
		"alice": {Requests: 3, InputTokens: 600, OutputTokens: 60},
		"bob":   {Requests: 2, InputTokens: 90, OutputTokens: 9},
		"carol": {Requests: 1, InputTokens: 7},
	} {
		u := getUser(t, e.Client, ns, user)
		if got := lifetimeOf(t, u.Status.Lifetime); got != totalsOf(want) {
			t.Errorf("%s lifetime = %+v, want %+v", user, got, totalsOf(want))
		}
		if len(u.Status.Usage) != 2 || u.Status.Usage[0].Window != llmv1alpha1.WindowDay || u.Status.Usage[1].Window != llmv1alpha1.WindowMinute {
			t.Fatalf("%s usage = %+v, want Day then Minute (spec order)", user, u.Status.Usage)
		}
		day, minute := u.Status.Usage[0], u.Status.Usage[1]
		if amountOf(day) != want || amountOf(minute) != want || day.TotalTokens != want.Total() {
			t.Errorf("%s usage = %+v / %+v, want %+v in both", user, amountOf(day), amountOf(minute), want)
		}
		if !day.WindowStart.Equal(ptr.To(metav1.NewTime(quota.WindowStart(llmv1alpha1.WindowDay, now)))) ||
			!day.ResetAt.Equal(ptr.To(metav1.NewTime(quota.WindowEnd(llmv1alpha1.WindowDay, now)))) {
			t.Errorf("%s day window %v..%v", user, day.WindowStart, day.ResetAt)
		}
		if day.Remaining == nil || *day.Remaining != 10000-want.Total() || day.RemainingRequests == nil || *day.RemainingRequests != 100-want.Requests {
			t.Errorf("%s day remaining = %v tokens, %v requests", user, ptr.Deref(day.Remaining, -1), ptr.Deref(day.RemainingRequests, -1))
		}
		if minute.RemainingRequests != nil {
			t.Errorf("%s minute remainingRequests = %d, want none: the limit caps tokens only", user, *minute.RemainingRequests)
		}
		if u.Status.LastRequestAt == nil || !u.Status.LastRequestAt.Time.Equal(charged.Truncate(time.Second)) {
			t.Errorf("%s lastRequestAt = %v, want %v", user, u.Status.LastRequestAt, charged)
		}
	}

	// Nothing charged since: nothing written.
	before := c.total()
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := c.total(); got != before {
		t.Errorf("an idle flush wrote %d times", got-before)
	}
}

func testutilGauge(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s not gathered", name)
	return 0
}

func TestWindowRollOver(t *testing.T) {
	e := apiServer(t)
	ns := envtest.NewNamespace(t, e.Client, "usage")
	createQuota(t, e.Client, ns, "q", llmv1alpha1.ScopePerUser,
		llmv1alpha1.QuotaLimit{Window: llmv1alpha1.WindowMinute, Tokens: ptr.To[int64](1000), Requests: ptr.To[int64](10)},
		llmv1alpha1.QuotaLimit{Window: llmv1alpha1.WindowHour, Tokens: ptr.To[int64](100000)})
	createUser(t, e.Client, ns, "u", "q")

	clock := newClock(t0.Add(10 * time.Second)) // 10:00:10
	counter := quota.NewMemory(clock.Now)
	r := New(e.Client, Options{Now: clock.Now, Counter: counter})
	sp := &spender{t: t, c: e.Client, counter: counter, r: r, now: clock.Now}
	charge := func(at time.Time, in, out int64) {
		clock.SetTime(at)
		sp.spend(ns, "u", quota.Amount{Requests: 1, InputTokens: in, OutputTokens: out})
	}
	flushAt := func(at time.Time) *llmv1alpha1.LLMUser {
		t.Helper()
		clock.SetTime(at)
		if err := r.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
		return getUser(t, e.Client, ns, "u")
	}
	check := func(step string, u *llmv1alpha1.LLMUser, minuteStart time.Time, minute, hour, life quota.Amount) {
		t.Helper()
		if len(u.Status.Usage) != 2 {
			t.Fatalf("%s: usage = %+v", step, u.Status.Usage)
		}
		m, h := u.Status.Usage[0], u.Status.Usage[1]
		if !m.WindowStart.Time.Equal(minuteStart) || !m.ResetAt.Time.Equal(minuteStart.Add(time.Minute)) {
			t.Errorf("%s: minute window %v..%v, want %v..%v", step, m.WindowStart.UTC(), m.ResetAt.UTC(), minuteStart, minuteStart.Add(time.Minute))
		}
		if amountOf(m) != minute || m.TotalTokens != minute.Total() {
			t.Errorf("%s: minute usage %+v, want %+v", step, amountOf(m), minute)
		}
		if ptr.Deref(m.Remaining, -1) != 1000-minute.Total() || ptr.Deref(m.RemainingRequests, -1) != 10-minute.Requests {
			t.Errorf("%s: minute remaining %d tokens %d requests", step, ptr.Deref(m.Remaining, -1), ptr.Deref(m.RemainingRequests, -1))
		}
		if !h.WindowStart.Time.Equal(t0) || amountOf(h) != hour {
			t.Errorf("%s: hour %v %+v, want %v %+v", step, h.WindowStart.UTC(), amountOf(h), t0, hour)
		}
		if got := lifetimeOf(t, u.Status.Lifetime); got != totalsOf(life) {
			t.Errorf("%s: lifetime %+v, want %+v", step, got, totalsOf(life))
		}
	}

	a := quota.Amount{Requests: 1, InputTokens: 100, OutputTokens: 50}
	b := quota.Amount{Requests: 1, InputTokens: 30, OutputTokens: 20}
	c := quota.Amount{Requests: 1, InputTokens: 5, OutputTokens: 5}

	charge(t0.Add(10*time.Second), 100, 50)
	u := flushAt(t0.Add(20 * time.Second))
	check("10:00:20", u, t0, a, a, a)

	charge(t0.Add(65*time.Second), 30, 20)
	u = flushAt(t0.Add(70 * time.Second))
	check("10:01:10", u, t0.Add(time.Minute), b, a.Add(b), a.Add(b))

	// Charged in the last seconds of 10:01, flushed in 10:02: it no longer
	// counts in the minute, still in the hour and the lifetime.
	charge(t0.Add(118*time.Second), 5, 5)
	u = flushAt(t0.Add(123 * time.Second))
	check("10:02:03", u, t0.Add(2*time.Minute), quota.Amount{}, a.Add(b).Add(c), a.Add(b).Add(c))
	if got := u.Status.LastRequestAt; got == nil || !got.Time.Equal(t0.Add(118*time.Second)) {
		t.Errorf("lastRequestAt = %v, want 10:01:58", got)
	}

	// A new charge at 10:02:10, then nothing: at 10:03:20 the status still
	// shows 10:02's minute, until the roll-over scan marks it and it is
	// written with the current minute's zero.
	charge(t0.Add(130*time.Second), 5, 5)
	u = flushAt(t0.Add(140 * time.Second))
	check("10:02:20", u, t0.Add(2*time.Minute), c, a.Add(b).Add(c).Add(c), a.Add(b).Add(c).Add(c))
	clock.SetTime(t0.Add(200 * time.Second))
	// The API server is shared with other tests: look at this one's namespace.
	staleHere := func() []objKey {
		var out []objKey
		for _, k := range r.stale(t.Context(), clock.Now()) {
			if k.namespace == ns {
				out = append(out, k)
			}
		}
		return out
	}
	stale := staleHere()
	if len(stale) != 1 || stale[0].name != "u" {
		t.Fatalf("stale objects %+v, want u", stale)
	}
	r.markStale(stale)
	u = flushAt(t0.Add(200 * time.Second))
	check("10:03:20", u, t0.Add(3*time.Minute), quota.Amount{}, a.Add(b).Add(c).Add(c), a.Add(b).Add(c).Add(c))
	if stale := staleHere(); len(stale) != 0 {
		t.Errorf("stale objects %+v after the roll-over, want none", stale)
	}
}

func TestConflictRetriedOnce(t *testing.T) {
	e := apiServer(t)
	ns := envtest.NewNamespace(t, e.Client, "usage")
	createQuota(t, e.Client, ns, "q", llmv1alpha1.ScopePerUser,
		llmv1alpha1.QuotaLimit{Window: llmv1alpha1.WindowDay, Tokens: ptr.To[int64](1000)})
	createUser(t, e.Client, ns, "u", "q")

	clock := newClock(time.Now().UTC())
	c := newHookClient(e.Client)
	counter := quota.NewMemory(clock.Now)
	r := New(c, Options{Now: clock.Now, Counter: counter})
	sp := &spender{t: t, c: e.Client, counter: counter, r: r, now: clock.Now}
	a := quota.Amount{Requests: 1, InputTokens: 10, OutputTokens: 5}
	b := quota.Amount{Requests: 2, InputTokens: 100, OutputTokens: 50}

	sp.spend(ns, "u", a)
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}

	// The operator writes a condition between the recorder's read and its
	// patch: the patch carries the old resourceVersion and must conflict.
	var bumped int
	c.mu.Lock()
	c.before = func(ctx context.Context, _ int, obj client.Object) error {
		if bumped > 0 {
			return nil
		}
		bumped++
		fresh := &llmv1alpha1.LLMUser{}
		if err := e.Client.Get(ctx, client.ObjectKeyFromObject(obj), fresh); err != nil {
			return err
		}
		orig := fresh.DeepCopy()
		meta.SetStatusCondition(&fresh.Status.Conditions, metav1.Condition{
			Type: llmv1alpha1.ConditionTokenIssued, Status: metav1.ConditionTrue, Reason: llmv1alpha1.ReasonIssued, Message: "issued",
		})
		return e.Client.Status().Patch(ctx, fresh, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{}))
	}
	c.mu.Unlock()

	sp.spend(ns, "u", b)
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := writes(r, kindUser, resultConflict); got != 1 {
		t.Errorf("writes{conflict} = %d, want 1", got)
	}
	if got := c.written(ns, "u"); got != 2 {
		t.Errorf("%d successful writes, want 2 (one per flush)", got)
	}
	u := getUser(t, e.Client, ns, "u")
	if got, want := lifetimeOf(t, u.Status.Lifetime), totalsOf(a.Add(b)); got != want {
		t.Errorf("lifetime = %+v, want %+v: the usage must land exactly once", got, want)
	}
	if got := amountOf(u.Status.Usage[0]); got != a.Add(b) {
		t.Errorf("day usage = %+v, want %+v", got, a.Add(b))
	}
	if !meta.IsStatusConditionTrue(u.Status.Conditions, llmv1alpha1.ConditionTokenIssued) {
		t.Errorf("the other writer's condition was lost: %+v", u.Status.Conditions)
	}
}

func TestAPIServerErrorsKeepUsage(t *testing.T) {
	e := apiServer(t)
	ns := envtest.NewNamespace(t, e.Client, "usage")
	createQuota(t, e.Client, ns, "q", llmv1alpha1.ScopePerUser,
		llmv1alpha1.QuotaLimit{Window: llmv1alpha1.WindowDay, Tokens: ptr.To[int64](100000)})
	createUser(t, e.Client, ns, "u1", "q")
	createUser(t, e.Client, ns, "u2", "q")

	clock := newClock(time.Now().UTC())
	c := newHookClient(e.Client)
	counter := quota.NewMemory(clock.Now)
	r := New(c, Options{Now: clock.Now, Counter: counter})
	sp := &spender{t: t, c: e.Client, counter: counter, r: r, now: clock.Now}
	a := quota.Amount{Requests: 1, InputTokens: 10, OutputTokens: 1}
	charge := func(user string) { sp.spend(ns, user, a) }

	// The first 3 patches fail; the first failure also sees a request of
	// u1 settle while the flush is running.
	var once sync.Once
	c.mu.Lock()
	c.before = func(_ context.Context, n int, _ client.Object) error {
		if n > 3 {
			return nil
		}
		once.Do(func() { charge("u1") })
		return apierrors.NewServiceUnavailable("etcd is down")
	}
	c.mu.Unlock()

	charge("u1")
	charge("u2")
	charge("u2")
	if err := r.Flush(t.Context()); err == nil {
		t.Fatal("Flush succeeded while every patch failed")
	} else {
		t.Logf("first flush: %v", err)
	}
	if n := r.Pending(); n != 2 {
		t.Errorf("Pending() = %d after a failed flush, want 2", n)
	}
	charge("u1")
	if err := r.Flush(t.Context()); err == nil {
		t.Fatal("second Flush succeeded although patch 3 failed")
	}
	if n := r.Pending(); n == 0 {
		t.Error("Pending() = 0 after a failed flush")
	}
	if err := r.Flush(t.Context()); err != nil {
		t.Fatalf("third flush: %v", err)
	}
	if n := r.Pending(); n != 0 {
		t.Errorf("Pending() = %d after a good flush, want 0", n)
	}
	if got := writes(r, kindUser, resultError); got != 3 {
		t.Errorf("writes{error} = %d, want 3", got)
	}
	for user, n := range map[string]int64{"u1": 3, "u2": 2} {
		u := getUser(t, e.Client, ns, user)
		want := quota.Amount{Requests: n, InputTokens: 10 * n, OutputTokens: n}
		if got := lifetimeOf(t, u.Status.Lifetime); got != totalsOf(want) {
			t.Errorf("%s lifetime = %+v, want %+v", user, got, totalsOf(want))
		}
		if got := amountOf(u.Status.Usage[0]); got != want {
			t.Errorf("%s day usage = %+v, want %+v", user, got, want)
		}
		if got := c.written(ns, user); got != 1 {
			t.Errorf("%s written %d times, want 1", user, got)
		}
	}
}

func TestSharedQuotaPoolsUsage(t *testing.T) {
	e := apiServer(t)
	ns := envtest.NewNamespace(t, e.Client, "usage")
	createQuota(t, e.Client, ns, "pool", llmv1alpha1.ScopeShared,
		llmv1alpha1.QuotaLimit{Window: llmv1alpha1.WindowDay, Tokens: ptr.To[int64](1000), Requests: ptr.To[int64](50)})
	createUser(t, e.Client, ns, "x", "pool")
	createUser(t, e.Client, ns, "y", "pool")

	clock := newClock(time.Now().UTC())
	c := newHookClient(e.Client)
	counter := quota.NewMemory(clock.Now)
	r := New(c, Options{Now: clock.Now, Counter: counter})
	sp := &spender{t: t, c: e.Client, counter: counter, r: r, now: clock.Now}
	ax := quota.Amount{Requests: 1, InputTokens: 100, OutputTokens: 50}
	ay := quota.Amount{Requests: 1, InputTokens: 10, OutputTokens: 5}
	for _, ch := range []struct {
		user string
		a    quota.Amount
	}{{"x", ax}, {"x", ax}, {"y", ay}} {
		sp.spend(ns, ch.user, ch.a)
	}
	if n := r.Pending(); n != 3 {
		t.Errorf("Pending() = %d, want 3 (x, y, pool)", n)
	}
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}

	sum := ax.Add(ax).Add(ay)
	q := getQuota(t, e.Client, ns, "pool")
	if len(q.Status.Usage) != 1 || amountOf(q.Status.Usage[0]) != sum {
		t.Fatalf("pool usage = %+v, want %+v", q.Status.Usage, sum)
	}
	if got := q.Status.Usage[0]; ptr.Deref(got.Remaining, -1) != 1000-sum.Total() || ptr.Deref(got.RemainingRequests, -1) != 50-sum.Requests {
		t.Errorf("pool remaining = %d tokens %d requests, want %d and %d", ptr.Deref(got.Remaining, -1), ptr.Deref(got.RemainingRequests, -1), 1000-sum.Total(), 50-sum.Requests)
	}
	if got := lifetimeOf(t, q.Status.Lifetime); got != totalsOf(sum) {
		t.Errorf("pool lifetime = %+v, want %+v", got, totalsOf(sum))
	}
	if q.Status.LastRequestAt == nil {
		t.Error("pool lastRequestAt not set")
	}
	for user, want := range map[string]quota.Amount{"x": ax.Add(ax), "y": ay} {
		u := getUser(t, e.Client, ns, user)
		if len(u.Status.Usage) != 1 || amountOf(u.Status.Usage[0]) != want {
			t.Errorf("%s usage = %+v, want %+v", user, u.Status.Usage, want)
			continue
		}
		if rem := u.Status.Usage[0].Remaining; rem != nil {
			t.Errorf("%s remaining = %d, want none: what is left belongs to the pool", user, *rem)
		}
		if got := lifetimeOf(t, u.Status.Lifetime); got != totalsOf(want) {
			t.Errorf("%s lifetime = %+v, want %+v", user, got, totalsOf(want))
		}
	}
	for _, name := range []string{"x", "y", "pool"} {
		if got := c.written(ns, name); got != 1 {
			t.Errorf("%s written %d times, want 1", name, got)
		}
	}
	if got := writes(r, kindQuota, resultSuccess); got != 1 {
		t.Errorf("writes{LLMQuota,success} = %d, want 1", got)
	}
}

func TestSeedFromStatusRestoresBudgets(t *testing.T) {
	e := apiServer(t)
	ns := envtest.NewNamespace(t, e.Client, "usage")
	dayTokens := []llmv1alpha1.QuotaLimit{{Window: llmv1alpha1.WindowDay, Tokens: ptr.To[int64](1000)}}
	poolLimits := []llmv1alpha1.QuotaLimit{{Window: llmv1alpha1.WindowDay, Requests: ptr.To[int64](2)}}
	createQuota(t, e.Client, ns, "solo", llmv1alpha1.ScopePerUser, dayTokens...)
	createQuota(t, e.Client, ns, "pool", llmv1alpha1.ScopeShared, poolLimits...)
	createUser(t, e.Client, ns, "spent", "solo")
	createUser(t, e.Client, ns, "fresh", "solo")
	createUser(t, e.Client, ns, "m1", "pool")
	createUser(t, e.Client, ns, "m2", "pool")

	now := time.Now().UTC()
	clock := newClock(now)
	spentCounter := quota.NewMemory(clock.Now)
	r := New(e.Client, Options{Now: clock.Now, Counter: spentCounter})
	sp := &spender{t: t, c: e.Client, counter: spentCounter, r: r, now: clock.Now}
	sp.spend(ns, "spent", quota.Amount{Requests: 3, InputTokens: 600, OutputTokens: 400})
	sp.spend(ns, "fresh", quota.Amount{Requests: 1, InputTokens: 10, OutputTokens: 10})
	sp.spend(ns, "m1", quota.Amount{Requests: 1, InputTokens: 1})
	sp.spend(ns, "m2", quota.Amount{Requests: 1, InputTokens: 1})
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}

	solo := func(user string) quota.Budget {
		return quota.UserBudget(ns, user, string(getUser(t, e.Client, ns, user).UID), quota.LimitsFromSpec(dayTokens), false)
	}
	var pq llmv1alpha1.LLMQuota
	if err := e.Client.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: "pool"}, &pq); err != nil {
		t.Fatal(err)
	}
	pool := quota.PoolBudget(ns, "pool", string(pq.UID), quota.LimitsFromSpec(poolLimits), false)
	estimate := quota.Amount{Requests: 1, InputTokens: 10, OutputTokens: 10}
	admits := func(m *quota.Memory, b quota.Budget) bool {
		t.Helper()
		_, d, err := m.Reserve(t.Context(), quota.Request{Budgets: []quota.Budget{b}, Estimate: estimate})
		if err != nil {
			t.Fatal(err)
		}
		return d.Allowed
	}

	// A replica restarted the same day.
	m := quota.NewMemory(clock.Now)
	if err := SeedFromStatus(t.Context(), m, e.Client, now, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if admits(m, solo("spent")) {
		t.Error("spent: admitted although status shows the day's 1000 tokens used")
	}
	if !admits(m, solo("fresh")) {
		t.Error("fresh: refused with 20 of 1000 tokens used")
	}
	if admits(m, pool) {
		t.Error("pool: admitted although status shows both of the day's requests used")
	}
	st, err := m.Status(t.Context(), solo("fresh"))
	if err != nil {
		t.Fatal(err)
	}
	if want := (quota.Amount{Requests: 1, InputTokens: 10, OutputTokens: 10}); st[0].Used != want {
		t.Errorf("fresh seeded with %+v, want %+v", st[0].Used, want)
	}
	if got, _ := m.Lifetime(t.Context(), solo("spent")); got != (quota.Amount{Requests: 3, InputTokens: 600, OutputTokens: 400}) {
		t.Errorf("spent's lifetime seeded with %+v, want 3/600/400", got)
	}

	// Each budget is seeded under the tag its requests use: a Shared
	// quota's user under its pool's, so that on Redis Cluster the seeded
	// counters are the ones the user's requests draw on.
	tags := &seedTags{Counter: quota.NewMemory(clock.Now), tags: map[string]string{}}
	if err := SeedFromStatus(t.Context(), tags, e.Client, now, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	m1 := quota.UserKey(ns, "m1", string(getUser(t, e.Client, ns, "m1").UID))
	for key, want := range map[string]string{solo("spent").Key: solo("spent").Key, m1: pool.Key, pool.Key: pool.Key} {
		if got := tags.tags[key]; got != want {
			t.Errorf("%s seeded under tag %q, want %q", key, got, want)
		}
	}

	// A replica restarted the next day: the recorded windows have ended.
	tomorrow := quota.WindowEnd(llmv1alpha1.WindowDay, now).Add(time.Hour)
	m = quota.NewMemory(func() time.Time { return tomorrow })
	if err := SeedFromStatus(t.Context(), m, e.Client, tomorrow, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if !admits(m, solo("spent")) || !admits(m, pool) {
		t.Error("ended windows were seeded")
	}
}

func TestStartFlushesPeriodically(t *testing.T) {
	e := apiServer(t)
	ns := envtest.NewNamespace(t, e.Client, "usage")
	createQuota(t, e.Client, ns, "q", llmv1alpha1.ScopePerUser)
	createUser(t, e.Client, ns, "u", "q")

	counter := quota.NewMemory(time.Now)
	r := New(e.Client, Options{FlushInterval: 20 * time.Millisecond, Counter: counter})
	sp := &spender{t: t, c: e.Client, counter: counter, r: r, now: time.Now}
	if r.NeedLeaderElection() {
		t.Error("NeedLeaderElection() = true: every replica must write its own usage")
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- r.Start(ctx) }()

	sp.spend(ns, "u", quota.Amount{Requests: 1, InputTokens: 3})
	poll.Until(t, 10*time.Second, func() error {
		u := getUser(t, e.Client, ns, "u")
		if u.Status.Lifetime == nil {
			return errors.New("Start did not flush yet")
		}
		if u.Status.Lifetime.InputTokens != 3 || len(u.Status.Usage) != 0 {
			t.Fatalf("lifetime %+v usage %+v, want 3 input tokens and no windows (no limits)", u.Status.Lifetime, u.Status.Usage)
		}
		return nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Start returned %v", err)
	}
}

func TestLoadOneWritePerUser(t *testing.T) {
	const users, chargesEach = 1000, 5
	e := apiServer(t)
	ns := envtest.NewNamespace(t, e.Client, "usage")
	createQuota(t, e.Client, ns, "q", llmv1alpha1.ScopePerUser,
		llmv1alpha1.QuotaLimit{Window: llmv1alpha1.WindowHour, Tokens: ptr.To[int64](1 << 20)},
		llmv1alpha1.QuotaLimit{Window: llmv1alpha1.WindowDay, Requests: ptr.To[int64](1000)})
	name := func(i int) string { return fmt.Sprintf("user-%04d", i) }

	created := time.Now()
	var wg sync.WaitGroup
	work := make(chan int)
	for range 8 {
		wg.Go(func() {
			for i := range work {
				u := &llmv1alpha1.LLMUser{
					ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name(i)},
					Spec:       llmv1alpha1.LLMUserSpec{QuotaRef: llmv1alpha1.QuotaReference{Name: "q"}},
				}
				if err := e.Client.Create(context.Background(), u); err != nil {
					t.Error(err)
				}
			}
		})
	}
	for i := range users {
		work <- i
	}
	close(work)
	wg.Wait()
	t.Logf("created %d users in %v", users, time.Since(created).Round(time.Millisecond))

	clock := newClock(time.Now().UTC())
	c := newHookClient(e.Client)
	counter := quota.NewMemory(clock.Now)
	r := New(c, Options{Now: clock.Now, Counter: counter})
	var list0 llmv1alpha1.LLMUserList
	if err := e.Client.List(t.Context(), &list0, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	q := getQuota(t, e.Client, ns, "q")
	charged := time.Now()
	for range chargesEach {
		for i := range list0.Items {
			u := &list0.Items[i]
			var idx int
			if _, err := fmt.Sscanf(u.Name, "user-%04d", &idx); err != nil {
				t.Fatal(err)
			}
			a := quota.Amount{Requests: 1, InputTokens: int64(idx), OutputTokens: 1}
			res, _, err := counter.Reserve(t.Context(), quota.Request{Budgets: quota.BudgetsFor(u, q), Estimate: a})
			if err != nil {
				t.Fatal(err)
			}
			_ = counter.Settle(t.Context(), res, a)
			r.Charge(quota.Charge{Namespace: ns, User: u.Name, UserUID: string(u.UID), Quota: "q", Amount: a, At: clock.Now()})
		}
	}
	chargeTook := time.Since(charged)
	if n := r.Pending(); n != users {
		t.Fatalf("Pending() = %d, want %d", n, users)
	}

	started := time.Now()
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	took := time.Since(started)
	t.Logf("%d charges (with their counter updates) took %v (%v each); one flush wrote %d objects in %v with %d concurrent writes",
		users*chargesEach, chargeTook.Round(time.Microsecond), chargeTook/(users*chargesEach), c.total(), took.Round(time.Millisecond), 8)

	if got := c.total(); got != users {
		t.Errorf("%d status writes, want exactly %d", got, users)
	}
	var list llmv1alpha1.LLMUserList
	if err := e.Client.List(t.Context(), &list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	wrong := 0
	for i := range list.Items {
		u := &list.Items[i]
		var idx int
		if _, err := fmt.Sscanf(u.Name, "user-%04d", &idx); err != nil {
			t.Fatal(err)
		}
		if c.written(ns, u.Name) != 1 {
			wrong++
			continue
		}
		want := quota.Amount{Requests: chargesEach, InputTokens: chargesEach * int64(idx), OutputTokens: chargesEach}
		if lifetimeOf(t, u.Status.Lifetime) != totalsOf(want) || len(u.Status.Usage) != 2 || amountOf(u.Status.Usage[0]) != want {
			wrong++
		}
	}
	if wrong > 0 {
		t.Errorf("%d of %d users not written exactly once with exact totals", wrong, len(list.Items))
	}
}

// TestUsageFollowsTheUID: usage charged to an LLMUser that is deleted and
// created again under the same name before the flush belongs to the deleted
// one: it is written to nobody's status, and the metric says so; the new
// user's own usage is written.
func TestUsageFollowsTheUID(t *testing.T) {
	e := apiServer(t)
	ns := envtest.NewNamespace(t, e.Client, "usage")
	createQuota(t, e.Client, ns, "team", llmv1alpha1.ScopeShared,
		llmv1alpha1.QuotaLimit{Window: llmv1alpha1.WindowDay, Tokens: ptr.To[int64](10000)})
	createUser(t, e.Client, ns, "u", "team")
	old := getUser(t, e.Client, ns, "u")
	var q llmv1alpha1.LLMQuota
	if err := e.Client.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: "team"}, &q); err != nil {
		t.Fatal(err)
	}

	counter := quota.NewMemory(time.Now)
	r := New(e.Client, Options{Counter: counter})
	sp := &spender{t: t, c: e.Client, counter: counter, r: r, now: time.Now}
	sp.spend(ns, "u", quota.Amount{Requests: 1, InputTokens: 300, OutputTokens: 30})

	if err := e.Client.Delete(t.Context(), old); err != nil {
		t.Fatal(err)
	}
	createUser(t, e.Client, ns, "u", "team")
	fresh := getUser(t, e.Client, ns, "u")
	if fresh.UID == old.UID {
		t.Fatal("the recreated user has the old uid")
	}
	sp.spend(ns, "u", quota.Amount{Requests: 1, InputTokens: 5, OutputTokens: 1})
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	u := getUser(t, e.Client, ns, "u")
	if lt := u.Status.Lifetime; lt == nil || lt.Requests != 1 || lt.InputTokens != 5 || lt.OutputTokens != 1 {
		t.Errorf("recreated user's lifetime = %+v, want only its own 1 request, 5 in, 1 out", lt)
	}
	if got := writes(r, kindUser, resultOrphaned); got != 1 {
		t.Errorf("writes{orphaned} = %d, want 1", got)
	}
	// The pool is the same object throughout: it has both.
	if err := e.Client.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: "team"}, &q); err != nil {
		t.Fatal(err)
	}
	if lt := q.Status.Lifetime; lt == nil || lt.Requests != 2 || lt.InputTokens != 305 {
		t.Errorf("pool lifetime = %+v, want 2 requests, 305 in", lt)
	}
}

// lostReply is an interposer between a client and the API server that lets
// the first status patch through to the API server and then loses its
// reply, as a connection that drops after the server applied the write.
type lostReply struct {
	next http.RoundTripper
	mu   sync.Mutex
	lost int
}

func (l *lostReply) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := l.next.RoundTrip(req)
	if err != nil || req.Method != http.MethodPatch || !strings.HasSuffix(req.URL.Path, "/status") {
		return resp, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost > 0 {
		return resp, nil
	}
	l.lost++
	_ = resp.Body.Close()
	return nil, fmt.Errorf("read tcp: connection reset by peer (after the API server applied %s)", req.URL.Path)
}

// TestLostReplyCountedOnce: a status write that the API server applied but
// whose reply was lost is retried, and the usage is in status exactly once.
func TestLostReplyCountedOnce(t *testing.T) {
	e := apiServer(t)
	ns := envtest.NewNamespace(t, e.Client, "usage")
	createQuota(t, e.Client, ns, "q", llmv1alpha1.ScopePerUser,
		llmv1alpha1.QuotaLimit{Window: llmv1alpha1.WindowDay, Tokens: ptr.To[int64](100000)})
	createUser(t, e.Client, ns, "u", "q")

	cfg := rest.CopyConfig(e.Config)
	interposer := &lostReply{}
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { interposer.next = rt; return interposer }
	c, err := client.New(cfg, client.Options{Scheme: e.Client.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	clock := newClock(time.Now().UTC())
	counter := quota.NewMemory(clock.Now)
	r := New(c, Options{Now: clock.Now, Counter: counter})
	sp := &spender{t: t, c: e.Client, counter: counter, r: r, now: clock.Now}
	a := quota.Amount{Requests: 1, InputTokens: 120, OutputTokens: 30}
	sp.spend(ns, "u", a)

	if err := r.Flush(t.Context()); err == nil {
		t.Fatal("the flush whose reply was lost reported success")
	}
	// The API server applied it all the same.
	if got := lifetimeOf(t, getUser(t, e.Client, ns, "u").Status.Lifetime); got != totalsOf(a) {
		t.Fatalf("lifetime after the lost reply = %+v, want %+v applied", got, totalsOf(a))
	}
	if n := r.Pending(); n != 1 {
		t.Fatalf("Pending() = %d, want 1: the write must be retried", n)
	}
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	u := getUser(t, e.Client, ns, "u")
	if got := lifetimeOf(t, u.Status.Lifetime); got != totalsOf(a) {
		t.Errorf("lifetime after the retry = %+v, want %+v: counted once", got, totalsOf(a))
	}
	if got := amountOf(u.Status.Usage[0]); got != a {
		t.Errorf("day usage after the retry = %+v, want %+v", got, a)
	}
	if interposer.lost != 1 {
		t.Errorf("%d replies lost, want 1", interposer.lost)
	}
}

// TestWriteRateAndOrder: writes are handed out no faster than the rate
// allows, with a burst of one tick's worth (3 at 30/s), alerting objects
// first, then the longest waiting; an object is not due again within its
// interval.
func TestWriteRateAndOrder(t *testing.T) {
	clock := newClock(t0)
	r := New(nil, Options{Now: clock.Now, WriteRate: 30, FlushInterval: 10 * time.Second})
	charge := func(name string, alert bool) {
		r.Charge(quota.Charge{Namespace: "ns", User: name, UserUID: "uid-" + name, Amount: quota.Amount{Requests: 1}, Alert: alert})
		clock.Step(time.Millisecond)
	}
	for _, n := range []string{"a", "b", "c", "d", "e"} {
		charge(n, false)
	}
	charge("f", true)
	charge("g", true)

	handed := func() []string {
		work := make(chan objKey, 100)
		r.turn(t.Context(), clock.Now(), work)
		close(work)
		var names []string
		for k := range work {
			names = append(names, k.name)
			r.done(k, r.objects[k].seq, written)
		}
		return names
	}
	if got := handed(); strings.Join(got, ",") != "f,g,a" {
		t.Errorf("first turn wrote %v, want the alerting f and g, then the oldest a: 3, one tick of the rate", got)
	}
	if got := handed(); len(got) != 0 {
		t.Errorf("a turn in the same instant wrote %v, want nothing: the rate is spent", got)
	}
	clock.Step(time.Second)
	if got := handed(); strings.Join(got, ",") != "b,c,d" {
		t.Errorf("a second later wrote %v, want the next 3 oldest: a quiet second saves no more than a tick's worth", got)
	}
	// f is charged again at once: written objects wait their interval, an
	// alerting one a second.
	charge("f", true)
	charge("a", false)
	clock.Step(time.Second)
	if got := handed(); strings.Join(got, ",") != "f,e" {
		t.Errorf("wrote %v, want f (alerting, a second after its write) and e; not a, written under 10s ago", got)
	}
	clock.Step(10 * time.Second)
	if got := handed(); strings.Join(got, ",") != "a" {
		t.Errorf("wrote %v, want a once its interval passed", got)
	}
	if r.Pending() != 0 {
		t.Errorf("Pending() = %d, want 0", r.Pending())
	}
}

// TestPricedStatusRoundTrip: a priced Shared quota's users and pool show
// cost, cached input tokens and the per-model split of each window in
// status, and a replica seeded from that status holds the same counts.
func TestPricedStatusRoundTrip(t *testing.T) {
	e := apiServer(t)
	ns := envtest.NewNamespace(t, e.Client, "usage")
	q := &llmv1alpha1.LLMQuota{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "priced"},
		Spec: llmv1alpha1.LLMQuotaSpec{
			Scope:  llmv1alpha1.ScopeShared,
			Limits: []llmv1alpha1.QuotaLimit{{Window: llmv1alpha1.WindowDay, Cost: ptr.To[llmv1alpha1.Decimal]("10")}},
			Pricing: &llmv1alpha1.Pricing{Currency: "USD", Models: []llmv1alpha1.ModelPrice{
				// Per million: 2 input, 0.5 cached input, 8 output.
				{Model: "big/*", Input: "2", CachedInput: ptr.To[llmv1alpha1.Decimal]("0.5"), Output: "8"},
			}},
		},
	}
	if err := e.Client.Create(t.Context(), q); err != nil {
		t.Fatal(err)
	}
	createUser(t, e.Client, ns, "ann", "priced")
	createUser(t, e.Client, ns, "ben", "priced")

	now := time.Now().UTC()
	clock := newClock(now)
	counter := quota.NewMemory(clock.Now)
	r := New(e.Client, Options{Now: clock.Now, Counter: counter})
	sp := &spender{t: t, c: e.Client, counter: counter, r: r, now: clock.Now}
	// 1000 in (400 cached), 100 out: 600·2 + 400·0.5 + 100·8 = 2200 µUSD.
	sp.spendOn(ns, "ann", "big/one", quota.Amount{Requests: 1, InputTokens: 1000, CachedInputTokens: 400, OutputTokens: 100})
	// Free: no price matches.
	sp.spendOn(ns, "ann", "small", quota.Amount{Requests: 1, InputTokens: 50, OutputTokens: 5})
	// 500 in, 250 out: 1000 + 2000 = 3000 µUSD.
	sp.spendOn(ns, "ben", "big/two", quota.Amount{Requests: 1, InputTokens: 500, OutputTokens: 250})
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}

	ann := getUser(t, e.Client, ns, "ann").Status
	if len(ann.Usage) != 1 {
		t.Fatalf("ann's usage = %+v, want one Day entry", ann.Usage)
	}
	w := ann.Usage[0]
	if w.Cost != "0.0022" || w.Currency != "USD" || w.CachedInputTokens != 400 || w.InputTokens != 1050 || w.RemainingCost != "" {
		t.Errorf("ann's day: cost %q %q, cached %d of %d input, remainingCost %q; want 0.0022 USD, 400 of 1050, none (a share of a pool)",
			w.Cost, w.Currency, w.CachedInputTokens, w.InputTokens, w.RemainingCost)
	}
	wantModels := []llmv1alpha1.ModelUsage{
		{Model: "big/one", Requests: 1, InputTokens: 1000, CachedInputTokens: 400, OutputTokens: 100, Cost: "0.0022"},
		{Model: "small", Requests: 1, InputTokens: 50, OutputTokens: 5, Cost: "0"},
	}
	if fmt.Sprint(w.Models) != fmt.Sprint(wantModels) {
		t.Errorf("ann's models = %+v, want %+v", w.Models, wantModels)
	}
	if lt := ann.Lifetime; lt == nil || lt.Cost != "0.0022" || lt.CachedInputTokens != 400 {
		t.Errorf("ann's lifetime = %+v, want cost 0.0022 and 400 cached", lt)
	}
	pool := getQuota(t, e.Client, ns, "priced").Status
	if len(pool.Usage) != 1 || pool.Usage[0].Cost != "0.0052" || pool.Usage[0].RemainingCost != "9.9948" || len(pool.Usage[0].Models) != 3 {
		t.Errorf("pool usage = %+v, want cost 0.0052, 9.9948 left, 3 models", pool.Usage)
	}

	// A replica restarted the same day holds what status recorded, split included.
	m := quota.NewMemory(clock.Now)
	if err := SeedFromStatus(t.Context(), m, e.Client, now, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	pq := getQuota(t, e.Client, ns, "priced")
	bs := quota.BudgetsFor(getUser(t, e.Client, ns, "ann"), pq)
	for _, b := range bs {
		got, err := m.Status(t.Context(), b)
		if err != nil {
			t.Fatal(err)
		}
		want, err := counter.Status(t.Context(), b)
		if err != nil {
			t.Fatal(err)
		}
		if got[0].Used != want[0].Used || fmt.Sprint(got[0].Models) != fmt.Sprint(want[0].Models) {
			t.Errorf("%s seeded with %+v %+v, want %+v %+v", b.Key, got[0].Used, got[0].Models, want[0].Used, want[0].Models)
		}
		lg, _ := m.Lifetime(t.Context(), b)
		lw, _ := counter.Lifetime(t.Context(), b)
		if lg != lw {
			t.Errorf("%s lifetime seeded with %+v, want %+v", b.Key, lg, lw)
		}
	}
}

// TestAlertOutlivesAPlainCharge: a user whose charge crossed an alert
// threshold keeps its place at the head of the queue when a plain charge
// follows before its write: the alert is not forgotten by the next request.
func TestAlertOutlivesAPlainCharge(t *testing.T) {
	clock := newClock(t0)
	// 10 writes a second: one a tick.
	r := New(nil, Options{Now: clock.Now, WriteRate: 10, FlushInterval: 10 * time.Second})
	charge := func(name string, alert bool) {
		r.Charge(quota.Charge{Namespace: "ns", User: name, UserUID: "uid-" + name, Amount: quota.Amount{Requests: 1}, Alert: alert})
		clock.Step(time.Millisecond)
	}
	charge("a", false)
	charge("b", true)
	charge("b", false)

	work := make(chan objKey, 10)
	r.turn(t.Context(), clock.Now(), work)
	close(work)
	var got []string
	for k := range work {
		got = append(got, k.name)
	}
	if strings.Join(got, ",") != "b" {
		t.Errorf("the turn wrote %v, want the alerting b ahead of the older a", got)
	}
	if !r.objects[objKey{kindUser, "ns", "b", "uid-b"}].alert {
		t.Error("b lost its alert to the plain charge that followed")
	}
}

// TestChargeDuringWriteStaysDirty: a charge that arrives while its object's
// status is being written may not be in what that write read, so the write
// does not mark it written: the object stays pending (and alerting, if the
// charge alerted) for the next turn.
func TestChargeDuringWriteStaysDirty(t *testing.T) {
	clock := newClock(t0)
	r := New(nil, Options{Now: clock.Now, FlushInterval: 10 * time.Second})
	k := objKey{kindUser, "ns", "a", "uid-a"}
	charge := func(alert bool) {
		r.Charge(quota.Charge{Namespace: "ns", User: "a", UserUID: "uid-a", Amount: quota.Amount{Requests: 1}, Alert: alert})
	}

	charge(false)
	seq, _, ok := r.take(k)
	if !ok {
		t.Fatal("take: a is busy")
	}
	if _, _, ok := r.take(k); ok {
		t.Error("take while a write is in flight succeeded: two writes of one object at once")
	}
	charge(true) // during the write
	r.done(k, seq, written)
	if got := r.Pending(); got != 1 {
		t.Fatalf("Pending() = %d after a write that missed a charge, want 1", got)
	}
	if got := r.due(clock.Now(), true); len(got) != 1 || got[0] != k {
		t.Errorf("due = %v, want a again", got)
	}
	clock.Step(time.Second)
	if got := r.due(clock.Now(), false); len(got) != 1 || got[0] != k {
		t.Errorf("due a second later = %v, want a: the charge it missed alerted", got)
	}

	// The next write sees every charge: nothing left.
	seq, _, _ = r.take(k)
	r.done(k, seq, written)
	if got := r.Pending(); got != 0 {
		t.Errorf("Pending() = %d after a write that saw every charge, want 0", got)
	}
}

// TestChargeDuringPatchWrittenByNextFlush: a request settled while its user's
// status is being patched is not in that patch (the counter was read before
// it), so the flush leaves the user pending and the next one writes it.
func TestChargeDuringPatchWrittenByNextFlush(t *testing.T) {
	e := apiServer(t)
	ns := envtest.NewNamespace(t, e.Client, "usage")
	createQuota(t, e.Client, ns, "q", llmv1alpha1.ScopePerUser,
		llmv1alpha1.QuotaLimit{Window: llmv1alpha1.WindowDay, Tokens: ptr.To[int64](1000)})
	createUser(t, e.Client, ns, "u", "q")

	clock := newClock(time.Now().UTC())
	c := newHookClient(e.Client)
	counter := quota.NewMemory(clock.Now)
	r := New(c, Options{Now: clock.Now, Counter: counter})
	sp := &spender{t: t, c: e.Client, counter: counter, r: r, now: clock.Now}

	sp.spend(ns, "u", quota.Amount{Requests: 1, InputTokens: 10, OutputTokens: 5})
	u := getUser(t, e.Client, ns, "u")
	budgets := quota.BudgetsFor(u, getQuota(t, e.Client, ns, "q"))
	// The hook runs on a write worker: it settles the second request as
	// the proxy does and reports a failure through the patch, not t.
	c.mu.Lock()
	c.before = func(ctx context.Context, n int, _ client.Object) error {
		if n != 1 {
			return nil
		}
		a := quota.Amount{Requests: 1, InputTokens: 100, OutputTokens: 50}
		res, d, err := counter.Reserve(ctx, quota.Request{Budgets: budgets, Estimate: a})
		if err != nil || !d.Allowed {
			return fmt.Errorf("reserving during the patch: %w %+v", err, d.Exceeded)
		}
		if err := counter.Settle(ctx, res, a); err != nil {
			return err
		}
		r.Charge(quota.Charge{Namespace: ns, User: "u", UserUID: string(u.UID), Quota: "q", Amount: a, At: clock.Now()})
		return nil
	}
	c.mu.Unlock()

	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := amountOf(getUser(t, e.Client, ns, "u").Status.Usage[0]); got != (quota.Amount{Requests: 1, InputTokens: 10, OutputTokens: 5}) {
		t.Errorf("day usage after the first flush = %+v, want the charge made before it only", got)
	}
	if n := r.Pending(); n != 1 {
		t.Fatalf("Pending() = %d after a flush whose patch missed a charge, want 1", n)
	}
	if err := r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := amountOf(getUser(t, e.Client, ns, "u").Status.Usage[0]); got != (quota.Amount{Requests: 2, InputTokens: 110, OutputTokens: 55}) {
		t.Errorf("day usage after the second flush = %+v, want both charges", got)
	}
	if got := c.written(ns, "u"); got != 2 {
		t.Errorf("%d status writes, want 2 (one per flush)", got)
	}
	if n := r.Pending(); n != 0 {
		t.Errorf("Pending() = %d after the second flush, want 0", n)
	}
}

// seedTags records the tag each budget was seeded under.
type seedTags struct {
	quota.Counter
	tags map[string]string
}

func (s *seedTags) Seed(ctx context.Context, b quota.Budget, w llmv1alpha1.Window, start time.Time, used quota.Amount, models []quota.ModelAmount) error {
	s.tags[b.Key] = b.Tag
	return s.Counter.Seed(ctx, b, w, start, used, models)
}

func (s *seedTags) SeedLifetime(ctx context.Context, b quota.Budget, used quota.Amount) error {
	s.tags[b.Key] = b.Tag
	return s.Counter.SeedLifetime(ctx, b, used)
}
