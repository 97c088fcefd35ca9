package usage

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
)

// TestTwoInProcessReplicasExact is a rolling update with the in-process
// counter: the old replica serves, the new one starts from status beside
// it, both serve the same users (and a Shared pool) while each writes
// status every few milliseconds, racing the other; then the old one stops
// with a last flush and the new one serves on. Every user's status, and
// the pool's, must show exactly what both replicas charged.
func TestTwoInProcessReplicasExact(t *testing.T) {
	const users = 12
	e := apiServer(t)
	ns := envtest.NewNamespace(t, e.Client, "usage")
	createQuota(t, e.Client, ns, "solo", llmv1alpha1.ScopePerUser,
		llmv1alpha1.QuotaLimit{Window: llmv1alpha1.WindowDay, Tokens: ptr.To[int64](1 << 30)},
		llmv1alpha1.QuotaLimit{Window: llmv1alpha1.WindowHour, Requests: ptr.To[int64](1 << 20)})
	createQuota(t, e.Client, ns, "pool", llmv1alpha1.ScopeShared,
		llmv1alpha1.QuotaLimit{Window: llmv1alpha1.WindowDay, Tokens: ptr.To[int64](1 << 30)})
	names := make([]string, 0, users)
	for i := range users {
		name, q := fmt.Sprintf("u%02d", i), "solo"
		if i%4 == 3 {
			q = "pool"
		}
		createUser(t, e.Client, ns, name, q)
		names = append(names, name)
	}

	type replica struct {
		counter *quota.Memory
		r       *Recorder
		sp      *spender
		stop    context.CancelFunc
		done    chan error
	}
	start := func() *replica {
		counter := quota.NewMemory(time.Now)
		if err := SeedFromStatus(t.Context(), counter, e.Client, time.Now(), client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		r := New(e.Client, Options{Counter: counter, FlushInterval: 5 * time.Millisecond, WriteRate: 10000})
		ctx, cancel := context.WithCancel(t.Context())
		rep := &replica{counter: counter, r: r, stop: cancel, done: make(chan error, 1),
			sp: &spender{t: t, c: e.Client, counter: counter, r: r, now: time.Now}}
		go func() { rep.done <- r.Start(ctx) }()
		return rep
	}
	var mu sync.Mutex
	want := make(map[string]quota.Amount)
	pool := quota.Amount{}
	spend := func(rep *replica, i int, a quota.Amount) {
		rep.sp.spend(ns, names[i], a)
		mu.Lock()
		defer mu.Unlock()
		want[names[i]] = want[names[i]].Add(a)
		if i%4 == 3 {
			pool = pool.Add(a)
		}
	}
	amount := func(n int) quota.Amount {
		return quota.Amount{Requests: 1, InputTokens: int64(10 + n%7), OutputTokens: int64(1 + n%13)}
	}

	old := start()
	for n := range 3 * users {
		spend(old, n%users, amount(n))
	}
	if err := old.r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	// The new pod starts from what status shows, and both serve.
	cur := start()
	var wg sync.WaitGroup
	for _, rep := range []*replica{old, cur} {
		wg.Go(func() {
			for n := range 20 * users {
				spend(rep, (n*5+1)%users, amount(n))
			}
		})
	}
	wg.Wait()
	// The old pod is stopped: drained, a last flush.
	old.stop()
	if err := <-old.done; err != nil {
		t.Fatal(err)
	}
	if err := old.r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	for n := range 2 * users {
		spend(cur, n%users, amount(n))
	}
	cur.stop()
	if err := <-cur.done; err != nil {
		t.Fatal(err)
	}
	if err := cur.r.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}

	var served quota.Amount
	for _, name := range names {
		u := getUser(t, e.Client, ns, name)
		w := want[name]
		served = served.Add(w)
		if got := lifetimeOf(t, u.Status.Lifetime); got != totalsOf(w) {
			t.Errorf("%s: lifetime %+v, want %+v", name, got, totalsOf(w))
		}
		if len(u.Status.Usage) > 0 && amountOf(u.Status.Usage[0]) != w {
			t.Errorf("%s: day usage %+v, want %+v", name, amountOf(u.Status.Usage[0]), w)
		}
	}
	q := getQuota(t, e.Client, ns, "pool")
	if got := lifetimeOf(t, q.Status.Lifetime); got != totalsOf(pool) {
		t.Errorf("pool: lifetime %+v, want %+v", got, totalsOf(pool))
	}
	if len(q.Status.Usage) != 1 || amountOf(q.Status.Usage[0]) != pool {
		t.Errorf("pool: usage %+v, want one day entry of %+v", q.Status.Usage, pool)
	}
	t.Logf("%d requests (%d tokens) served by two replicas, all in status", served.Requests, served.Total())
	// The new replica's counter, which admits from now on, holds what the
	// old one served too.
	u := getUser(t, e.Client, ns, names[0])
	b := quota.BudgetsFor(u, getQuota(t, e.Client, ns, "solo"))[0]
	ws, err := cur.counter.Status(t.Context(), b)
	if err != nil {
		t.Fatal(err)
	}
	if ws[0].Used != want[names[0]] {
		t.Errorf("the new replica's counter holds %+v of %s's day, want %+v", ws[0].Used, names[0], want[names[0]])
	}
}
