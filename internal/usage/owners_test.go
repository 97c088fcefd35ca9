package usage

import (
	"fmt"
	"slices"
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

// ownersRig is three replicas on one Redis counter, each with its recorder
// and its owners, over users u000… of one PerUser quota, and the status
// patches they all make, counted.
type ownersRig struct {
	t       *testing.T
	c       client.Client
	ns      string
	users   int
	clock   *clock
	patches *hookClient
	rs      []ownersReplica
}

type ownersReplica struct {
	rec     *Recorder
	sp      *spender
	owners  *RedisOwners
	counter *quota.Redis
}

const rigLease = 10 * time.Second

func newOwnersRig(t *testing.T, users int) *ownersRig {
	e := apiServer(t)
	ns := envtest.NewNamespace(t, e.Client, "owners")
	createQuota(t, e.Client, ns, "q", llmv1alpha1.ScopePerUser, llmv1alpha1.QuotaLimit{Window: llmv1alpha1.WindowDay, Tokens: ptr.To[int64](1_000_000)})
	for i := range users {
		createUser(t, e.Client, ns, fmt.Sprintf("u%03d", i), "q")
	}
	addr, _ := redisserver.Start(t)
	rc := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = rc.Close() })
	g := &ownersRig{t: t, c: e.Client, ns: ns, users: users, clock: newClock(time.Now().UTC()),
		patches: newHookClient(e.Client)}
	for i := range 3 {
		id := fmt.Sprintf("replica-%d", i)
		counter := quota.NewRedis(rc, quota.RedisOptions{Prefix: "llmq:", Now: g.clock.Now, Lease: rigLease, ReplicaID: id})
		if err := counter.MarkSeeded(t.Context()); err != nil {
			t.Fatal(err)
		}
		owners := NewRedisOwners(rc, "llmq:", id, rigLease, g.clock.Now)
		rec := New(g.patches, Options{Now: g.clock.Now, Counter: counter, Owners: owners})
		g.rs = append(g.rs, ownersReplica{rec, &spender{t: t, c: e.Client, counter: counter, r: rec, now: g.clock.Now}, owners, counter})
	}
	return g
}

func (g *ownersRig) syncAll(rs []ownersReplica) {
	g.t.Helper()
	for _, r := range rs {
		if err := r.rec.syncOwners(g.t.Context()); err != nil {
			g.t.Fatal(err)
		}
	}
}

// flushAll sends every replica's marks to the owners before anyone
// writes, as the interval makes it in production, then flushes each.
func (g *ownersRig) flushAll(rs []ownersReplica) {
	g.t.Helper()
	g.syncAll(rs)
	for _, r := range rs {
		if err := r.rec.Flush(g.t.Context()); err != nil {
			g.t.Fatal(err)
		}
	}
}

func (g *ownersRig) spend(r ownersReplica, user int, a quota.Amount) {
	g.t.Helper()
	r.sp.spend(g.ns, fmt.Sprintf("u%03d", user), a)
}

// checkAll checks every user's status holds want.
func (g *ownersRig) checkAll(what string, want llmv1alpha1.UsageTotals) {
	g.t.Helper()
	var list llmv1alpha1.LLMUserList
	if err := g.c.List(g.t.Context(), &list, client.InNamespace(g.ns)); err != nil {
		g.t.Fatal(err)
	}
	wrong := 0
	for _, u := range list.Items {
		if len(u.Status.Usage) != 1 || u.Status.Usage[0].Requests != want.Requests || u.Status.Usage[0].InputTokens != want.InputTokens ||
			u.Status.Usage[0].OutputTokens != want.OutputTokens {
			if wrong++; wrong <= 3 {
				g.t.Errorf("%s: %s's status %+v, want %d requests, %d input and %d output tokens", what, u.Name, u.Status.Usage,
					want.Requests, want.InputTokens, want.OutputTokens)
			}
		}
	}
	if wrong > 0 {
		g.t.Errorf("%s: %d of %d users' status wrong", what, wrong, len(list.Items))
	}
}

// start registers every replica and lets each see the others, then
// charges every user once on each replica (10, 11 and 12 input tokens, 5
// output) and flushes: one patch per user.
func (g *ownersRig) start() {
	g.t.Helper()
	g.syncAll(g.rs)
	g.syncAll(g.rs)
	for i := range g.users {
		for j, r := range g.rs {
			g.spend(r, i, quota.Amount{Requests: 1, InputTokens: int64(10 + j), OutputTokens: 5})
		}
	}
	g.flushAll(g.rs)
	if n := g.patches.total(); n != g.users {
		g.t.Errorf("one flush made %d status patches for %d users, want %d", n, g.users, g.users)
	}
	g.checkAll("after the first flush", llmv1alpha1.UsageTotals{Requests: 3, InputTokens: 33, OutputTokens: 15})
}

// expire lets replica-2's lease run out while the others keep renewing
// theirs, then flushes the survivors.
func (g *ownersRig) expire(alive []ownersReplica) {
	g.t.Helper()
	g.syncAll(alive)
	g.clock.Step(rigLease / 2)
	g.syncAll(alive)
	g.clock.Step(rigLease/2 + time.Second)
	g.flushAll(alive)
}

// TestOneWriterPerUser: three replicas on one Redis counter, each user
// charged on all three. Each user's status is written once per flush, by
// its owner, and holds all three replicas' usage. Then one replica dies
// without a word: once its lease has expired the others take its users,
// and the marks it was given, and every status is exact again, each
// written once.
func TestOneWriterPerUser(t *testing.T) {
	const users = 300
	g := newOwnersRig(t, users)
	g.start()

	// replica-2 dies: it charges nothing more and never syncs again. The
	// others charge every user once more; their marks for replica-2's
	// users go to replica-2 until its lease expires.
	alive := g.rs[:2]
	for i := range users {
		g.spend(alive[i%2], i, quota.Amount{Requests: 1, InputTokens: 7, OutputTokens: 3})
	}
	g.expire(alive)
	if n := g.patches.total() - users; n != users {
		t.Errorf("the flush after the handover made %d status patches for %d users, want %d", n, users, users)
	}
	g.checkAll("after the handover", llmv1alpha1.UsageTotals{Requests: 4, InputTokens: 40, OutputTokens: 18})
	// Nothing is left to write: a flush writes nothing.
	g.flushAll(alive)
	if n := g.patches.total() - 2*users; n != 0 {
		t.Errorf("a flush with nothing charged made %d status patches, want 0", n)
	}
}

// TestKilledReplicaMarksRecovered: a replica charges every user and is
// killed before it sends a single mark. The counter recorded the marks
// with the charges; once its lease has expired, a survivor reads them and
// sends them to the owners, and every user's status is exact, each written
// once.
func TestKilledReplicaMarksRecovered(t *testing.T) {
	const users = 300
	g := newOwnersRig(t, users)
	for _, r := range g.rs {
		r.owners.RecoverWith(r.counter.Recent)
	}
	g.start()

	// replica-2 charges every user, then dies: no Send, no Sync.
	for i := range users {
		g.spend(g.rs[2], i, quota.Amount{Requests: 1, InputTokens: 7, OutputTokens: 3})
	}
	alive := g.rs[:2]
	g.expire(alive)
	if n := g.patches.total() - users; n != users {
		t.Errorf("the flush after replica-2 was killed made %d status patches for %d users, want %d", n, users, users)
	}
	g.checkAll("after replica-2 was killed", llmv1alpha1.UsageTotals{Requests: 4, InputTokens: 40, OutputTokens: 18})
	// Recovered once: the next flushes write nothing.
	g.flushAll(alive)
	g.flushAll(alive)
	if n := g.patches.total() - 2*users; n != 0 {
		t.Errorf("two flushes with nothing charged made %d status patches, want 0", n)
	}
}

// TestChargeObjects: a charge names its user, and its pool when it went to
// a Shared quota, as the owners' marks name them, and the recorder reads
// them back as the same objects.
func TestChargeObjects(t *testing.T) {
	for _, tc := range []struct {
		c    quota.Charge
		want []string
	}{
		{quota.Charge{Namespace: "team", User: "alice", UserUID: "u-1", Quota: "q", QuotaUID: "q-1"}, []string{"0/team/alice/u-1"}},
		{quota.Charge{Namespace: "team", User: "alice", UserUID: "u-1", Quota: "q", QuotaUID: "q-1", Pool: true},
			[]string{"0/team/alice/u-1", "1/team/q/q-1"}},
		{quota.Charge{Namespace: "team", Quota: "q", QuotaUID: "q-1", Pool: true}, nil},
	} {
		got := tc.c.Objects()
		if !slices.Equal(got, tc.want) {
			t.Errorf("%+v.Objects() = %q, want %q", tc.c, got, tc.want)
		}
		for _, s := range got {
			if k, ok := parseObjKey(s); !ok || k.String() != s {
				t.Errorf("parseObjKey(%q) = %+v, %v: does not read back", s, k, ok)
			}
		}
	}
	if k, _ := parseObjKey("1/team/q/q-1"); k != (objKey{kindQuota, "team", "q", "q-1"}) {
		t.Errorf("parseObjKey(1/team/q/q-1) = %+v, want the LLMQuota team/q of uid q-1", k)
	}
}
