package usage

import (
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/redisserver"
)

// TestOneWriterPerUser: three replicas on one Redis counter, each user
// charged on all three. Each user's status is written once per flush, by
// its owner, and holds all three replicas' usage. Then one replica dies
// without a word: once its lease has expired the others take its users,
// and the marks it was given, and every status is exact again, each
// written once.
func TestOneWriterPerUser(t *testing.T) {
	const users, lease = 300, 10 * time.Second
	e := apiServer(t)
	ns := envtest.NewNamespace(t, e.Client, "owners")
	createQuota(t, e.Client, ns, "q", llmv1alpha1.ScopePerUser, llmv1alpha1.QuotaLimit{Window: llmv1alpha1.WindowDay, Tokens: ptr.To[int64](1_000_000)})
	for i := range users {
		createUser(t, e.Client, ns, fmt.Sprintf("u%03d", i), "q")
	}
	addr, _ := redisserver.Start(t)
	rc := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = rc.Close() })
	clock := newClock(time.Now().UTC())

	patches := newHookClient(e.Client) // every replica's status writes, counted
	type replica struct {
		rec *Recorder
		sp  *spender
	}
	var rs []replica
	for i := range 3 {
		id := fmt.Sprintf("replica-%d", i)
		counter := quota.NewRedis(rc, quota.RedisOptions{Prefix: "llmq:", Now: clock.Now, Lease: lease, ReplicaID: id})
		if err := counter.MarkSeeded(t.Context()); err != nil {
			t.Fatal(err)
		}
		rec := New(patches, Options{Now: clock.Now, Counter: counter,
			Owners: NewRedisOwners(rc, "llmq:", id, lease, clock.Now)})
		rs = append(rs, replica{rec, &spender{t: t, c: e.Client, counter: counter, r: rec, now: clock.Now}})
	}
	syncAll := func(rs []replica) {
		t.Helper()
		for _, r := range rs {
			if err := r.rec.syncOwners(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
	}
	flushAll := func(rs []replica) {
		t.Helper()
		// Every replica's marks reach the owners before anyone writes: a
		// flush, as the interval makes it in production.
		syncAll(rs)
		for _, r := range rs {
			if err := r.rec.Flush(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
	}
	checkAll := func(what string, want llmv1alpha1.UsageTotals) {
		t.Helper()
		var list llmv1alpha1.LLMUserList
		if err := e.Client.List(t.Context(), &list, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		wrong := 0
		for _, u := range list.Items {
			if len(u.Status.Usage) != 1 || u.Status.Usage[0].Requests != want.Requests || u.Status.Usage[0].InputTokens != want.InputTokens ||
				u.Status.Usage[0].OutputTokens != want.OutputTokens {
				if wrong++; wrong <= 3 {
					t.Errorf("%s: %s's status %+v, want %d requests, %d input and %d output tokens", what, u.Name, u.Status.Usage,
						want.Requests, want.InputTokens, want.OutputTokens)
				}
			}
		}
		if wrong > 0 {
			t.Errorf("%s: %d of %d users' status wrong", what, wrong, len(list.Items))
		}
	}

	syncAll(rs) // every replica registered and sees the others
	syncAll(rs)
	for i := range users {
		for j, r := range rs {
			r.sp.spend(ns, fmt.Sprintf("u%03d", i), quota.Amount{Requests: 1, InputTokens: int64(10 + j), OutputTokens: 5})
		}
	}
	flushAll(rs)
	if n := patches.total(); n != users {
		t.Errorf("one flush made %d status patches for %d users, want %d", n, users, users)
	}
	checkAll("after the first flush", llmv1alpha1.UsageTotals{Requests: 3, InputTokens: 33, OutputTokens: 15})

	// replica-2 dies: it charges nothing more and never syncs again. The
	// others charge every user once more; their marks for replica-2's
	// users go to replica-2 until its lease expires.
	alive := rs[:2]
	for i := range users {
		alive[i%2].sp.spend(ns, fmt.Sprintf("u%03d", i), quota.Amount{Requests: 1, InputTokens: 7, OutputTokens: 3})
	}
	syncAll(alive)
	// The survivors keep renewing their leases; replica-2's runs out.
	clock.Step(lease / 2)
	syncAll(alive)
	clock.Step(lease/2 + time.Second)
	flushAll(alive)
	if n := patches.total() - users; n != users {
		t.Errorf("the flush after the handover made %d status patches for %d users, want %d", n, users, users)
	}
	checkAll("after the handover", llmv1alpha1.UsageTotals{Requests: 4, InputTokens: 40, OutputTokens: 18})
	// Nothing is left to write: a flush writes nothing.
	flushAll(alive)
	if n := patches.total() - 2*users; n != 0 {
		t.Errorf("a flush with nothing charged made %d status patches, want 0", n)
	}
}
