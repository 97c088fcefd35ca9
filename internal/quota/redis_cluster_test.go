package quota

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/redisserver"
)

// The tests in this file run the Redis counter on a real Redis Cluster of
// three masters and three replicas. They share one cluster, and the last
// ones change its topology (a slot migrated, a master lost), so they run in
// order as subtests of one test.

func newClusterClient(t testing.TB, c *redisserver.Cluster) *redis.ClusterClient {
	// Short backoffs, more attempts: a script refused with TRYAGAIN while
	// its slot migrates is tried again within milliseconds.
	client := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), MaxRedirects: 16,
		MinRetryBackoff: time.Millisecond, MaxRetryBackoff: 20 * time.Millisecond})
	t.Cleanup(func() { _ = client.Close() })
	return client
}

func TestRedisCluster(t *testing.T) {
	cl := redisserver.NewCluster(t)
	client := newClusterClient(t, cl)
	ctx := context.Background()

	t.Run("conformance", func(t *testing.T) {
		// Every counter of the suite shares the prefix, hence one marking,
		// and has a tag of its own, hence keys of its own, in a slot of its
		// own (three masters between them).
		if err := NewRedis(client, RedisOptions{Prefix: "conf:", Cluster: true}).MarkSeeded(ctx); err != nil {
			t.Fatal(err)
		}
		var n atomic.Int64
		testCounter(t, func(now func() time.Time) Counter {
			return oneTag{NewRedis(client, RedisOptions{Prefix: "conf:", Now: now, Cluster: true}), fmt.Sprintf("suite%d", n.Add(1))}
		})
	})

	t.Run("hash slots as Redis computes them", func(t *testing.T) {
		for _, tag := range []string{"user/team/alice/uid-alice", "quota/ns/pool/0b5c", "123456789", "a", "{}x"} {
			want, err := client.ClusterKeySlot(ctx, "k{"+tag+"}").Result()
			if err != nil {
				t.Fatal(err)
			}
			if got := hashSlot(tag); int64(got) != want && !strings.Contains(tag, "}") {
				t.Errorf("hashSlot(%q) = %d, Redis says %d", tag, got, want)
			}
		}
		r := NewRedis(client, RedisOptions{Prefix: "llmq:", Cluster: true})
		for s := uint16(0); s < hashSlots; s += 97 {
			for _, k := range []string{r.prefix + "seeded:{" + slotTag(s) + "}", r.leasesOf(s)} {
				if got, err := client.ClusterKeySlot(ctx, k).Result(); err != nil || got != int64(s) {
					t.Errorf("slot of %s = %d, %v; want %d", k, got, err, s)
				}
			}
		}
	})

	t.Run("a shared quota's request is one slot", func(t *testing.T) { testClusterKeys(t, client) })
	t.Run("overflow past a pool's soft limit, under the pool's tag", func(t *testing.T) { testClusterOverflow(t, client) })
	t.Run("leases", func(t *testing.T) { testLeases(t, client, true) })
	t.Run("the marks of recent charges, per slot", func(t *testing.T) { testRecent(t, client, true) })
	t.Run("admission exact across three replicas", func(t *testing.T) { testClusterExact(t, cl) })
	t.Run("a slot migrated during traffic loses nothing", func(t *testing.T) { testClusterMigration(t, cl) })
	t.Run("a master back empty unseeds its slots only", func(t *testing.T) { testClusterEmptyMaster(t, cl) })
	t.Run("a replica promoted keeps what it had", func(t *testing.T) { testClusterFailover(t, cl) })
}

// oneTag gives every budget the same tag: the suite combines budgets
// freely, which on a cluster only budgets of one tag may be.
type oneTag struct {
	*Redis
	tag string
}

func (o oneTag) retag(bs []Budget) []Budget {
	out := make([]Budget, len(bs))
	for i, b := range bs {
		b.Tag = o.tag
		out[i] = b
	}
	return out
}

func (o oneTag) Reserve(ctx context.Context, req Request) (*Reservation, Decision, error) {
	req.Budgets = o.retag(req.Budgets)
	return o.Redis.Reserve(ctx, req)
}

func (o oneTag) Settle(ctx context.Context, r *Reservation, actual Amount) error {
	if r != nil {
		r.Budgets = o.retag(r.Budgets)
	}
	return o.Redis.Settle(ctx, r, actual)
}

func (o oneTag) Status(ctx context.Context, b Budget) ([]WindowStatus, error) {
	b.Tag = o.tag
	return o.Redis.Status(ctx, b)
}

func (o oneTag) Seed(ctx context.Context, b Budget, w llmv1alpha1.Window, start time.Time, used Amount, models []ModelAmount) error {
	b.Tag = o.tag
	return o.Redis.Seed(ctx, b, w, start, used, models)
}

func (o oneTag) Lifetime(ctx context.Context, b Budget) (Amount, error) {
	b.Tag = o.tag
	return o.Redis.Lifetime(ctx, b)
}

func (o oneTag) SeedLifetime(ctx context.Context, b Budget, used Amount) error {
	b.Tag = o.tag
	return o.Redis.SeedLifetime(ctx, b, used)
}

// sharedQuota is a Shared LLMQuota with a daily cap of requests.
func sharedQuota(name string, requests int64) *llmv1alpha1.LLMQuota {
	return &llmv1alpha1.LLMQuota{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: name, UID: types.UID("uid-" + name)},
		Spec: llmv1alpha1.LLMQuotaSpec{Scope: llmv1alpha1.ScopeShared, Limits: []llmv1alpha1.QuotaLimit{{Window: day, Requests: ptr(requests)}}}}
}

// perUserQuota is a PerUser LLMQuota with a daily cap of requests.
func perUserQuota(name string, requests int64) *llmv1alpha1.LLMQuota {
	q := sharedQuota(name, requests)
	q.Spec.Scope = llmv1alpha1.ScopePerUser
	return q
}

func llmUser(name string) *llmv1alpha1.LLMUser {
	return &llmv1alpha1.LLMUser{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: name, UID: types.UID("uid-" + name)}}
}

// testClusterKeys checks the key layout of a Shared quota's request: the
// user's tally and the pool, the in-flight hash and the settled key, all
// under the pool's tag; and that Status, Lifetime and Seed of the tally
// find the same keys.
func testClusterKeys(t *testing.T, client *redis.ClusterClient) {
	ctx := context.Background()
	c := seeded(t, NewRedis(client, RedisOptions{Prefix: "keys:", Now: newFakeClock(t0).Now, Cluster: true, ReplicaID: "r1"}))
	bs := BudgetsFor(llmUser("alice"), sharedQuota("pool", 10))
	r, d, err := c.Reserve(ctx, Request{Budgets: bs, Estimate: amt(1, 10, 10), Concurrency: &Concurrency{Key: bs[0].Key, Limit: 2}, Model: "m"})
	if err != nil || !d.Allowed {
		t.Fatalf("Reserve: %v %+v", err, d)
	}
	if n, err := client.HLen(ctx, "keys:inflight:{quota/team/pool/uid-pool}user/team/alice/uid-alice").Result(); err != nil || n != 1 {
		t.Errorf("in-flight hash while held: %d fields, %v", n, err)
	}
	settle(t, c, r, amt(1, 10, 5))
	start := strconv.FormatInt(WindowStart(day, t0).Unix(), 10)
	slot := hashSlot("quota/team/pool/uid-pool")
	for _, k := range []string{
		"keys:{quota/team/pool/uid-pool}user/team/alice/uid-alice:Day:" + start,
		"keys:{quota/team/pool/uid-pool}user/team/alice/uid-alice:Day:" + start + ":models",
		"keys:{quota/team/pool/uid-pool}user/team/alice/uid-alice:lifetime",
		"keys:{quota/team/pool/uid-pool}:Day:" + start,
		"keys:{quota/team/pool/uid-pool}:Day:" + start + ":models",
		"keys:{quota/team/pool/uid-pool}:lifetime",
		"keys:settled:{quota/team/pool/uid-pool}:r1:" + strconv.FormatUint(r.ID, 36),
		"keys:leases:{" + slotTag(slot) + "}",
		"keys:seeded:{" + slotTag(slot) + "}",
	} {
		if n, err := client.Exists(ctx, k).Result(); err != nil || n != 1 {
			t.Errorf("key %s: exists %d, %v", k, n, err)
		}
	}
	checkWindows(t, "tally", status(t, c, bs[0]), window(bs[0], 0, t0, amt(1, 10, 5), Amount{}))
	if lt, err := c.Lifetime(ctx, bs[0]); err != nil || lt != amt(1, 10, 5) {
		t.Errorf("tally lifetime = %+v, %v", lt, err)
	}
	if err := c.Seed(ctx, bs[1], day, t0, amt(3, 30, 30), nil); err != nil {
		t.Fatal(err)
	}
	checkWindows(t, "pool seeded", status(t, c, bs[1]), window(bs[1], 0, t0, amt(3, 30, 30), Amount{}))

	// Budgets of two tags cannot share a script: an error, not CROSSSLOT.
	other := UserBudget("team", "bob", "uid-bob", nil, false)
	if _, _, err := c.Reserve(ctx, Request{Budgets: []Budget{bs[1], other}, Estimate: amt(1, 1, 1)}); err == nil || !strings.Contains(err.Error(), "different tags") {
		t.Errorf("Reserve across tags: %v, want an error naming the tags", err)
	}
}

// testClusterOverflow: a Shared quota's request past a soft limit is
// charged to the overflow tallies of the user's share and of the pool too,
// all in the pool's slot.
func testClusterOverflow(t *testing.T, client *redis.ClusterClient) {
	ctx := context.Background()
	c := seeded(t, NewRedis(client, RedisOptions{Prefix: "over:", Now: newFakeClock(t0).Now, Cluster: true}))
	q := sharedQuota("soft", 1)
	q.Spec.Limits[0].Overage = llmv1alpha1.OverageDemote
	bs := BudgetsFor(llmUser("alice"), q)
	charge(t, c, bs, amt(1, 10, 10))
	r, d, err := c.Reserve(ctx, Request{Budgets: bs, Estimate: amt(1, 10, 10)})
	if err != nil || !d.Allowed || !d.Overflow {
		t.Fatalf("past the soft limit: %v, %+v; want admitted as overflow", err, d)
	}
	settle(t, c, r, amt(1, 10, 5))
	for _, b := range bs {
		over := OverflowBudget(b)
		if TagOf(over) != bs[1].Key {
			t.Errorf("%s: tag %q, want the pool's", over.Key, TagOf(over))
		}
		checkWindows(t, over.Key, status(t, c, over), window(over, 0, t0, amt(1, 10, 5), Amount{}))
		checkWindows(t, b.Key, status(t, c, b), window(b, 0, t0, amt(2, 20, 15), Amount{}))
	}
}

// trafficUser is one user of the traffic tests with its budgets.
type trafficUser struct {
	budgets  []Budget
	attempts int
}

// testClusterExact sends concurrent traffic through three counters (three
// proxy replicas) on the cluster: four users of a Shared pool capped at 300
// requests a day, four PerUser users capped at 50 each. Whatever the
// interleaving, exactly the caps are admitted and charged.
func testClusterExact(t *testing.T, cl *redisserver.Cluster) {
	ctx := context.Background()
	clock := newFakeClock(t0)
	var counters []*Redis
	for i := range 3 {
		counters = append(counters, NewRedis(newClusterClient(t, cl), RedisOptions{Prefix: "exact:", Now: clock.Now, Cluster: true, ReplicaID: fmt.Sprint("replica", i)}))
	}
	seeded(t, counters[0])
	pool := sharedQuota("pool", 300)
	solo := perUserQuota("solo", 50)
	var users []trafficUser
	for i := range 4 {
		users = append(users, trafficUser{BudgetsFor(llmUser(fmt.Sprint("shared", i)), pool), 100})
		users = append(users, trafficUser{BudgetsFor(llmUser(fmt.Sprint("own", i)), solo), 80})
	}
	var admitted [8]atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Worker w sends every user's attempts w, w+8, ... through
			// replica w%3.
			c := counters[w%3]
			for i, u := range users {
				for a := w; a < u.attempts; a += 8 {
					r, d, err := c.Reserve(ctx, Request{Budgets: u.budgets, Estimate: amt(1, 10, 10), Model: "m"})
					if err != nil {
						errs <- err
						return
					}
					if !d.Allowed {
						continue
					}
					if err := c.Settle(ctx, r, amt(1, 10, 5)); err != nil {
						errs <- err
						return
					}
					admitted[i].Add(1)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var tallies int64
	for i, u := range users {
		ws := status(t, counters[i%3], u.budgets[0])
		if u.budgets[0].Tag == u.budgets[0].Key {
			checkWindows(t, "own "+u.budgets[0].Key, ws, window(u.budgets[0], 0, t0, amt(50, 500, 250), Amount{}))
			if admitted[i].Load() != 50 {
				t.Errorf("%s: %d admitted, want 50", u.budgets[0].Key, admitted[i].Load())
			}
			continue
		}
		tallies += ws[0].Used.Requests
		if ws[0].Used.Requests != admitted[i].Load() || ws[0].Reserved != (Amount{}) {
			t.Errorf("tally %s: %+v, %d admitted", u.budgets[0].Key, ws[0], admitted[i].Load())
		}
	}
	if tallies != 300 {
		t.Errorf("the pool's users were admitted %d requests, want 300", tallies)
	}
	pb := users[0].budgets[1]
	checkWindows(t, "pool", status(t, counters[1], pb), window(pb, 0, t0, amt(300, 3000, 1500), Amount{}))
	if lt, _ := counters[2].Lifetime(ctx, pb); lt != amt(300, 3000, 1500) {
		t.Errorf("pool lifetime %+v, want 300 requests, 3000 in, 1500 out", lt)
	}
	// The budgets' tags spread over the masters.
	masters := map[string]bool{}
	for _, u := range users {
		masters[masterOf(t, cl, hashSlot(TagOf(u.budgets[0])))] = true
	}
	if len(masters) < 2 {
		t.Errorf("every budget on one master %v: the test does not cross masters", masters)
	}
}

// nodeInfo is one line of CLUSTER NODES.
type nodeInfo struct {
	id, addr, role, master string
	slots                  []string
}

func clusterNodes(t testing.TB, cl *redisserver.Cluster) []nodeInfo {
	t.Helper()
	// Each node is asked about itself: its own line is authoritative, where
	// another's view may lag a failover or a migration.
	var nodes []nodeInfo
	for _, n := range cl.Nodes {
		out, err := redisserver.Command(n.Addr(), "CLUSTER", "NODES")
		if err != nil {
			continue
		}
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			f := strings.Fields(l)
			if len(f) < 8 || !strings.Contains(f[2], "myself") {
				continue
			}
			info := nodeInfo{id: f[0], addr: n.Addr(), master: f[3], slots: f[8:], role: "replica"}
			if strings.Contains(f[2], "master") {
				info.role = "master"
			}
			nodes = append(nodes, info)
		}
	}
	if len(nodes) == 0 {
		t.Fatal("no cluster node answers")
	}
	return nodes
}

// masterOf is the address of the master serving slot s.
func masterOf(t testing.TB, cl *redisserver.Cluster, s uint16) string {
	t.Helper()
	for _, n := range clusterNodes(t, cl) {
		if n.role != "master" {
			continue
		}
		for _, r := range n.slots {
			lo, hi, ok := strings.Cut(r, "-")
			if !ok {
				hi = lo
			}
			a, err1 := strconv.Atoi(lo)
			b, err2 := strconv.Atoi(hi)
			if err1 == nil && err2 == nil && a <= int(s) && int(s) <= b {
				return n.addr
			}
		}
	}
	t.Fatalf("no master serves slot %d", s)
	return ""
}

func nodeID(t testing.TB, addr string) string {
	t.Helper()
	id, err := redisserver.Command(addr, "CLUSTER", "MYID")
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// retry runs f until it succeeds: what the proxy does with a settle the
// store refused, and what a client does with a request answered 503.
func retry(t testing.TB, retries *atomic.Int64, f func() error) {
	for i := 0; ; i++ {
		err := f()
		if err == nil {
			return
		}
		if i == 1000 {
			t.Errorf("still failing after 1000 attempts: %v", err)
			return
		}
		retries.Add(1)
		time.Sleep(2 * time.Millisecond)
	}
}

// testClusterMigration moves the slot of one user's budget to another
// master, key by key, while three replicas keep admitting and settling that
// user's requests; a script refused meanwhile (TRYAGAIN, ASK) is retried as
// the proxy would. Every settled request is counted exactly once.
func testClusterMigration(t *testing.T, cl *redisserver.Cluster) {
	ctx := context.Background()
	clock := newFakeClock(t0)
	var counters []*Redis
	for i := range 3 {
		counters = append(counters, NewRedis(newClusterClient(t, cl), RedisOptions{Prefix: "mig:", Now: clock.Now, Cluster: true, ReplicaID: fmt.Sprint("replica", i)}))
	}
	seeded(t, counters[0])
	bs := BudgetsFor(llmUser("mover"), perUserQuota("solo", 1_000_000))
	slot := hashSlot(TagOf(bs[0]))
	src := masterOf(t, cl, slot)
	var dst string
	for _, n := range clusterNodes(t, cl) {
		if n.role == "master" && n.addr != src {
			dst = n.addr
			break
		}
	}
	srcID, dstID := nodeID(t, src), nodeID(t, dst)

	var migrating, done atomic.Bool
	var admitted, duringMigration, retries atomic.Int64
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := counters[w%3]
			// Traffic goes on until 100 more requests were admitted after
			// the migration ended.
			var after int64
			for after < 100 {
				var r *Reservation
				retry(t, &retries, func() (err error) {
					r, _, err = c.Reserve(ctx, Request{Budgets: bs, Estimate: amt(1, 10, 10), Model: "m"})
					return err
				})
				if r == nil {
					t.Error("refused under a cap of a million")
					return
				}
				during := migrating.Load()
				retry(t, &retries, func() error { return c.Settle(ctx, r, amt(1, 10, 3)) })
				admitted.Add(1)
				if during || migrating.Load() {
					duringMigration.Add(1)
				}
				if done.Load() {
					after += 6
				}
			}
		}()
	}

	for admitted.Load() < 200 {
		time.Sleep(time.Millisecond)
	}
	// CLUSTER SETSLOT ... IMPORTING / MIGRATING, MIGRATE key by key, then
	// SETSLOT ... NODE: what redis-cli --cluster reshard does, slowed down.
	host, port, _ := net.SplitHostPort(dst)
	mustCommand(t, dst, "CLUSTER", "SETSLOT", fmt.Sprint(slot), "IMPORTING", srcID)
	mustCommand(t, src, "CLUSTER", "SETSLOT", fmt.Sprint(slot), "MIGRATING", dstID)
	migrating.Store(true)
	srcClient := redis.NewClient(&redis.Options{Addr: src})
	defer func() { _ = srcClient.Close() }()
	moved := 0
	for {
		keys, err := srcClient.ClusterGetKeysInSlot(ctx, int(slot), 1).Result()
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) == 0 {
			break
		}
		if err := srcClient.Migrate(ctx, host, port, keys[0], 0, 5*time.Second).Err(); err != nil {
			t.Fatalf("MIGRATE %s: %v", keys[0], err)
		}
		moved++
		time.Sleep(5 * time.Millisecond)
	}
	for _, a := range []string{dst, src} {
		mustCommand(t, a, "CLUSTER", "SETSLOT", fmt.Sprint(slot), "NODE", dstID)
	}
	for _, n := range clusterNodes(t, cl) {
		if n.role == "master" && n.addr != src && n.addr != dst {
			mustCommand(t, n.addr, "CLUSTER", "SETSLOT", fmt.Sprint(slot), "NODE", dstID)
		}
	}
	migrating.Store(false)
	done.Store(true)
	wg.Wait()
	cl.WaitOK(t)

	if got := masterOf(t, cl, slot); got != dst {
		t.Fatalf("slot %d is on %s after the migration, want %s", slot, got, dst)
	}
	n := admitted.Load()
	t.Logf("%d keys moved; %d requests admitted, %d of them reserved or settled while the slot migrated; %d calls retried", moved, n, duringMigration.Load(), retries.Load())
	if duringMigration.Load() == 0 {
		t.Error("no request was reserved or settled during the migration: the test proves nothing")
	}
	checkWindows(t, "after the migration", status(t, counters[0], bs[0]), window(bs[0], 0, t0, amt(n, 10*n, 3*n), Amount{}))
	if lt, _ := counters[1].Lifetime(ctx, bs[0]); lt != amt(n, 10*n, 3*n) {
		t.Errorf("lifetime %+v, want %d requests", lt, n)
	}
}

func mustCommand(t testing.TB, addr string, args ...string) {
	t.Helper()
	if _, err := redisserver.Command(addr, args...); err != nil {
		t.Fatalf("%s: %v", addr, err)
	}
}

// testClusterEmptyMaster restarts one master empty before its replica can
// take over (the node keeps its slots, as a master without persistence
// does): Reserve and Settle in its slots fail with ErrUnseeded until the
// counters are seeded again, while the other masters' slots go on.
func testClusterEmptyMaster(t *testing.T, cl *redisserver.Cluster) {
	ctx := context.Background()
	client := newClusterClient(t, cl)
	clock := newFakeClock(t0)
	c := seeded(t, NewRedis(client, RedisOptions{Prefix: "empty:", Now: clock.Now, Cluster: true}))
	// Two users whose budgets live on different masters.
	var lost, kept Budget
	for i := 0; kept.Key == "" || lost.Key == ""; i++ {
		b := UserBudget("team", fmt.Sprint("u", i), fmt.Sprint("uid", i), []Limit{{Window: day, Requests: ptr(100)}}, false)
		switch {
		case lost.Key == "":
			lost = b
		case masterOf(t, cl, hashSlot(b.Tag)) != masterOf(t, cl, hashSlot(lost.Tag)):
			kept = b
		}
	}
	r := admit(t, c, []Budget{lost}, amt(1, 10, 10))
	charge(t, c, []Budget{kept}, amt(1, 10, 10))

	node := cl.Node(masterOf(t, cl, hashSlot(lost.Tag)))
	node.Restart()
	cl.WaitOK(t)
	retryErr := func(f func() error) error {
		// The client learns of the restart through a failed connection.
		var err error
		for range 50 {
			if err = f(); err == nil || errors.Is(err, ErrUnseeded) {
				return err
			}
			time.Sleep(20 * time.Millisecond)
		}
		return err
	}
	if err := retryErr(func() error {
		_, _, err := c.Reserve(ctx, Request{Budgets: []Budget{lost}, Estimate: amt(1, 1, 1)})
		return err
	}); !errors.Is(err, ErrUnseeded) {
		t.Fatalf("Reserve on the master back empty: %v, want ErrUnseeded", err)
	}
	if err := retryErr(func() error { return c.Settle(ctx, r, amt(1, 10, 10)) }); !errors.Is(err, ErrUnseeded) {
		t.Fatalf("Settle on the master back empty: %v, want ErrUnseeded", err)
	}
	charge(t, c, []Budget{kept}, amt(1, 10, 10))
	checkWindows(t, "the other master", status(t, c, kept), window(kept, 0, t0, amt(2, 20, 20), Amount{}))

	// Seeding from status (what the proxy does on ErrUnseeded) restores it.
	if err := c.Seed(ctx, lost, day, t0, amt(5, 50, 50), nil); err != nil {
		t.Fatal(err)
	}
	if err := c.MarkSeeded(ctx); err != nil {
		t.Fatal(err)
	}
	settle(t, c, r, amt(1, 10, 10))
	checkWindows(t, "reseeded", status(t, c, lost), window(lost, 0, t0, amt(6, 60, 60), Amount{}))
}

// testClusterFailover kills a master once its replica has every write and
// promotes the replica: nothing is lost, and the marker came along, so
// admission goes on without a reseed. (Writes the replica had not yet
// received when its master died would be lost; see [Redis].)
func testClusterFailover(t *testing.T, cl *redisserver.Cluster) {
	ctx := context.Background()
	client := newClusterClient(t, cl)
	clock := newFakeClock(t0)
	c := seeded(t, NewRedis(client, RedisOptions{Prefix: "fo:", Now: clock.Now, Cluster: true}))
	bs := BudgetsFor(llmUser("alice"), sharedQuota("pool", 100))
	charge(t, c, bs, amt(1, 10, 10))
	held := admit(t, c, bs, amt(1, 20, 20))

	slot := hashSlot(bs[1].Tag)
	master := masterOf(t, cl, slot)
	masterID := nodeID(t, master)
	var replica string
	for _, n := range clusterNodes(t, cl) {
		if n.role == "replica" && n.master == masterID {
			replica = n.addr
		}
	}
	if replica == "" {
		t.Fatalf("master %s has no replica", master)
	}
	// WAIT for the replica on the master's own connection is not ours to
	// send; compare replication offsets instead.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		m, _ := redisserver.Command(master, "INFO", "replication")
		r, _ := redisserver.Command(replica, "INFO", "replication")
		if off := field(m, "master_repl_offset"); off != "" && off == field(r, "slave_repl_offset") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the replica did not catch up")
		}
	}
	cl.Node(master).Stop()
	mustCommand(t, replica, "CLUSTER", "FAILOVER", "TAKEOVER")
	for deadline := time.Now().Add(10 * time.Second); masterOf(t, cl, slot) != replica; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the replica %s was not promoted", replica)
		}
	}
	// The client would learn the new topology from the dead master's
	// connection errors within seconds; ask it now.
	client.ReloadState(ctx)
	var err error
	for range 100 {
		if err = c.Settle(ctx, held, amt(1, 20, 5)); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("Settle after the failover: %v", err)
	}
	charge(t, c, bs, amt(1, 10, 10))
	checkWindows(t, "pool after the failover", status(t, c, bs[1]), window(bs[1], 0, t0, amt(3, 40, 25), Amount{}))
	checkWindows(t, "tally after the failover", status(t, c, bs[0]), window(bs[0], 0, t0, amt(3, 40, 25), Amount{}))
}

// field is the value of name in an INFO reply.
func field(info, name string) string {
	for _, l := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(l, name+":"); ok {
			return v
		}
	}
	return ""
}

// BenchmarkRedisClusterReserveSettle measures a reservation and its settle
// on a cluster of three masters: users of one Shared pool (one slot, so one
// master, takes them all) and PerUser users (spread over the masters).
func BenchmarkRedisClusterReserveSettle(b *testing.B) {
	cl := redisserver.NewCluster(b)
	client := newClusterClient(b, cl)
	c := seeded(b, NewRedis(client, RedisOptions{Prefix: "bench:", Cluster: true}))
	ctx := context.Background()
	big := ptr(1 << 50)
	limits := []Limit{{Window: minute, Requests: big}, {Window: day, Tokens: big}}
	for _, shared := range []bool{true, false} {
		name := "per user"
		if shared {
			name = "shared pool"
		}
		b.Run(name, func(b *testing.B) {
			var users atomic.Int64
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				n := fmt.Sprint("user", users.Add(1))
				budgets := []Budget{UserBudget("team", n, "uid-"+n, limits, false)}
				if shared {
					budgets = BudgetsFor(llmUser(n), &llmv1alpha1.LLMQuota{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "pool", UID: "uid-pool"},
						Spec: llmv1alpha1.LLMQuotaSpec{Scope: llmv1alpha1.ScopeShared, Limits: []llmv1alpha1.QuotaLimit{{Window: minute, Requests: big}, {Window: day, Tokens: big}}}})
				}
				req := Request{Budgets: budgets, Estimate: amt(1, 500, 500)}
				for pb.Next() {
					r, d, err := c.Reserve(ctx, req)
					if err != nil || !d.Allowed {
						b.Fatalf("Reserve: %v, %+v", err, d.Exceeded)
					}
					if err := c.Settle(ctx, r, amt(1, 500, 200)); err != nil {
						b.Fatalf("Settle: %v", err)
					}
				}
			})
		})
	}
}
