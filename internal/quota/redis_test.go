package quota

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/llm-user-operator/llm-user-operator/internal/testutil/redisserver"
)

func newRedisClient(t testing.TB, addr string) *redis.Client {
	client := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = client.Close() })
	return client
}

func TestRedis(t *testing.T) {
	addr, _ := redisserver.Start(t)
	client := newRedisClient(t, addr)
	// Each subtest gets its own prefix, so one server serves them all.
	var n atomic.Int64
	testCounter(t, func(now func() time.Time) Counter {
		return seeded(t, NewRedis(client, RedisOptions{Prefix: fmt.Sprintf("test%d:", n.Add(1)), Now: now}))
	})
}

// TestRedisKeys checks the key layout and that every key expires an hour
// after its window, by the injected clock.
func TestRedisKeys(t *testing.T) {
	ctx := context.Background()
	addr, _ := redisserver.Start(t)
	client := newRedisClient(t, addr)
	clock := newFakeClock(t0)
	c := seeded(t, NewRedis(client, RedisOptions{Prefix: "llm:", Now: clock.Now}))
	b := UserBudget("team", "alice", "uid-alice", []Limit{{Window: minute, Tokens: ptr(100)}, {Window: day, Requests: ptr(1)}}, false)

	// 6 uncached input tokens at 3, 4 cached at 1, 10 output at 5.
	r, _, err := c.Reserve(ctx, Request{Budgets: []Budget{b}, Estimate: amt(1, 10, 10), Model: "org/model-a", Price: Price{Input: 3, CachedInput: 1, Output: 5}})
	if err != nil {
		t.Fatal(err)
	}
	settle(t, c, r, Amount{Requests: 1, InputTokens: 10, CachedInputTokens: 4, OutputTokens: 10, Cost: 72})
	// Refused: must write nothing.
	if _, d := reserve(t, c, []Budget{b}, amt(1, 1, 1)); d.Allowed {
		t.Fatal("admitted over the day's requests")
	}

	for _, k := range []struct {
		key string
		ttl time.Duration
	}{
		{"llm:user/team/alice/uid-alice:Minute:" + fmt.Sprint(utc("2027-03-10T12:30:00Z").Unix()), 45*time.Second + time.Hour},
		{"llm:user/team/alice/uid-alice:Day:" + fmt.Sprint(utc("2027-03-10T00:00:00Z").Unix()), 11*time.Hour + 29*time.Minute + 45*time.Second + time.Hour},
	} {
		got, err := client.HGetAll(ctx, k.key).Result()
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"req": "1", "in": "10", "cin": "4", "out": "10", "cost": "72"}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s = %v, want %v", k.key, got, want)
		}
		models, err := client.HGetAll(ctx, k.key+":models").Result()
		if err != nil {
			t.Fatal(err)
		}
		if want := map[string]string{"org/model-a": "1 10 4 10 72"}; fmt.Sprint(models) != fmt.Sprint(want) {
			t.Errorf("%s:models = %v, want %v", k.key, models, want)
		}
		for _, key := range []string{k.key, k.key + ":models"} {
			ttl, err := client.PTTL(ctx, key).Result()
			if err != nil {
				t.Fatal(err)
			}
			// Redis counts down from the moment the script ran.
			if ttl > k.ttl || ttl < k.ttl-time.Minute {
				t.Errorf("%s expires in %s, want %s", key, ttl, k.ttl)
			}
		}
	}
	if n, err := client.DBSize(ctx).Result(); err != nil || n != 8 {
		t.Errorf("DBSize = %d, %v; want the 2 window keys and their models, the lifetime, the leases, the seeded marker and the settled key", n, err)
	}
	settled, err := client.Keys(ctx, "llm:settled:*").Result()
	if err != nil || len(settled) != 1 {
		t.Fatalf("settled keys %v, %v; want one", settled, err)
	}
	if ttl, err := client.PTTL(ctx, settled[0]).Result(); err != nil || ttl > 5*time.Minute || ttl < 4*time.Minute {
		t.Errorf("%s expires in %s, %v; want 5m", settled[0], ttl, err)
	}

	// A reservation whose window keys expired is released without
	// recreating them, since they would have no expiry.
	r = admit(t, c, []Budget{UserBudget("team", "bob", "uid-bob", b.Limits, false)}, amt(1, 1, 1))
	if err := client.Del(ctx, "llm:user/team/bob/uid-bob:Minute:"+fmt.Sprint(utc("2027-03-10T12:30:00Z").Unix()),
		"llm:user/team/bob/uid-bob:Day:"+fmt.Sprint(utc("2027-03-10T00:00:00Z").Unix())).Err(); err != nil {
		t.Fatal(err)
	}
	settle(t, c, r, Amount{})
	if n, err := client.Exists(ctx, "llm:user/team/bob/uid-bob:Minute:"+fmt.Sprint(utc("2027-03-10T12:30:00Z").Unix())).Result(); err != nil || n != 0 {
		t.Errorf("releasing into an expired window recreated it (%d, %v)", n, err)
	}

	// A Redis that lost everything (a restart) takes no charge until it is
	// seeded again: a reseed would overwrite it.
	r = admit(t, c, []Budget{UserBudget("team", "carol", "uid-carol", b.Limits, false)}, amt(1, 1, 1))
	if err := client.FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.Settle(ctx, r, amt(0, 1, 1)); !errors.Is(err, ErrUnseeded) {
		t.Errorf("Settle into an emptied Redis: %v, want ErrUnseeded", err)
	}
	if n, err := client.DBSize(ctx).Result(); err != nil || n != 0 {
		t.Errorf("DBSize = %d, %v after settling into an emptied Redis; want 0", n, err)
	}
}

// TestRedisMatchesMemory runs one random sequence of operations against both
// counters and requires the same answers: the Lua admission rule must be the
// Go one.
func TestRedisMatchesMemory(t *testing.T) {
	ctx := context.Background()
	addr, _ := redisserver.Start(t)
	clock := newFakeClock(t0)
	mem := NewMemory(clock.Now)
	red := seeded(t, NewRedis(newRedisClient(t, addr), RedisOptions{Prefix: "diff:", Now: clock.Now}))

	budgets := []Budget{
		UserBudget("team", "alice", "uid-alice", []Limit{{Window: minute, Tokens: ptr(300), Requests: ptr(4)}, {Window: hour, InputTokens: ptr(1000)}}, false),
		UserBudget("team", "bob", "uid-bob", []Limit{{Window: minute, OutputTokens: ptr(100)}, {Window: day, Tokens: ptr(3000)}}, false),
		PoolBudget("team", "shared", "uid-shared", []Limit{{Window: hour, Tokens: ptr(2000), Requests: ptr(30)}}, false),
		PoolBudget("team", "shadow", "uid-shadow", []Limit{{Window: minute, Tokens: ptr(150)}}, true),
		UserBudget("team", "zero", "uid-zero", []Limit{{Window: hour, OutputTokens: ptr(0)}}, false),
	}
	rng := rand.New(rand.NewPCG(3, 4))
	amount := func(n int64) Amount { return amt(rng.Int64N(2), rng.Int64N(n), rng.Int64N(n)) }
	type pair struct{ mem, red *Reservation }
	var open []pair
	for i := range 3000 {
		switch op := rng.IntN(10); {
		case op < 5:
			var req Request
			for _, b := range rng.Perm(len(budgets))[:1+rng.IntN(3)] {
				req.Budgets = append(req.Budgets, budgets[b])
			}
			req.Estimate = amount(120)
			req.OutputStep = rng.Int64N(4)
			if rng.IntN(3) == 0 {
				req.Concurrency = &Concurrency{Key: req.Budgets[0].Key, Limit: rng.Int64N(4), DryRun: rng.IntN(4) == 0}
			}
			rm, rr := reserveBoth(ctx, t, i, mem, red, req)
			if rm != nil {
				open = append(open, pair{rm, rr})
			}
		case op < 8 && len(open) > 0:
			j := rng.IntN(len(open))
			actual := amount(150)
			settle(t, mem, open[j].mem, actual)
			settle(t, red, open[j].red, actual)
			open = append(open[:j], open[j+1:]...)
		case op == 8:
			b := budgets[rng.IntN(len(budgets))]
			w := b.Limits[rng.IntN(len(b.Limits))].Window
			start := WindowStart(w, clock.Now())
			used := amount(400)
			if err := mem.Seed(ctx, b, w, start, used, nil); err != nil {
				t.Fatal(err)
			}
			if err := red.Seed(ctx, b, w, start, used, nil); err != nil {
				t.Fatal(err)
			}
		default:
			clock.Step(time.Duration(rng.Int64N(int64(40 * time.Second))))
		}
		if t.Failed() {
			t.FailNow()
		}
	}
	for _, b := range budgets {
		checkWindows(t, "final redis vs memory "+b.Key, status(t, red, b), status(t, mem, b)...)
		lr, _ := red.Lifetime(ctx, b)
		lm, _ := mem.Lifetime(ctx, b)
		if lr != lm {
			t.Errorf("lifetime of %s: redis %+v, memory %+v", b.Key, lr, lm)
		}
	}
}

// TestRedisMatchesMemoryCosts is TestRedisMatchesMemory with prices, cost
// caps and models, at two scales: costs of a few thousand pico-units, and
// costs near the 64-bit limit, which Redis's Lua (whose numbers are
// doubles) must handle as exactly as Go.
func TestRedisMatchesMemoryCosts(t *testing.T) {
	ctx := context.Background()
	addr, _ := redisserver.Start(t)
	for _, scale := range []struct {
		name   string
		caps   int64 // the cost caps
		unit   int64 // about what a request costs
		prices []int64
	}{
		{"small", 200_000, 2_000, []int64{0, 1, 2, 7, 13}},
		{"near the limit", 9_000_000_000_000_000_000, 3_000_000_000_000_000, []int64{0, 999_983, 1_000_000, 123_456_789_011, 9_999_999_999_999}},
	} {
		t.Run(scale.name, func(t *testing.T) {
			clock := newFakeClock(t0)
			mem := NewMemory(clock.Now)
			red := seeded(t, NewRedis(newRedisClient(t, addr), RedisOptions{Prefix: "costs-" + scale.name + ":", Now: clock.Now}))
			c := scale.caps
			budgets := []Budget{
				UserBudget("team", "alice", "uid-alice", []Limit{{Window: minute, Cost: ptr(c), Requests: ptr(40)}, {Window: hour, Cost: ptr(c)}}, false),
				UserBudget("team", "bob", "uid-bob", []Limit{{Window: minute, Tokens: ptr(30000)}, {Window: day, Cost: ptr(c - 1)}}, false),
				PoolBudget("team", "shared", "uid-shared", []Limit{{Window: hour, Cost: ptr(c), OutputTokens: ptr(20000)}}, false),
				PoolBudget("team", "shadow", "uid-shadow", []Limit{{Window: minute, Cost: ptr(c - scale.unit)}}, true),
				UserBudget("team", "broke", "uid-broke", []Limit{{Window: hour, Cost: ptr(0)}}, false),
			}
			rng := rand.New(rand.NewPCG(5, uint64(c)))
			price := func() Price {
				p := scale.prices
				return Price{Input: p[rng.IntN(len(p))], CachedInput: p[rng.IntN(len(p))], Output: p[rng.IntN(len(p))]}
			}
			models := make([]string, MaxModels+4)
			for i := range models {
				models[i] = fmt.Sprintf("org/model-%d", i)
			}
			amount := func(n int64) Amount {
				in := rng.Int64N(n)
				return Amount{Requests: rng.Int64N(2), InputTokens: in, CachedInputTokens: rng.Int64N(in + 1), OutputTokens: rng.Int64N(n)}
			}
			type pair struct {
				mem, red *Reservation
				price    Price
			}
			var open []pair
			try := func(i int, req Request) {
				t.Helper()
				rm, rr := reserveBoth(ctx, t, i, mem, red, req)
				if rm != nil {
					open = append(open, pair{rm, rr, req.Price})
				}
			}
			estimate := func(budgets ...Budget) Request {
				req := Request{Budgets: budgets, Estimate: amount(300), OutputStep: rng.Int64N(4), Model: models[rng.IntN(len(models))], Price: price()}
				req.Estimate.CachedInputTokens = 0
				return req
			}
			for i := range 3000 {
				switch op := rng.IntN(10); {
				case op < 5:
					var bs []Budget
					for _, b := range rng.Perm(len(budgets))[:1+rng.IntN(3)] {
						bs = append(bs, budgets[b])
					}
					try(i, estimate(bs...))
				case op < 8 && len(open) > 0:
					j := rng.IntN(len(open))
					actual := amount(400)
					actual.Cost = open[j].price.Cost(actual)
					settle(t, mem, open[j].mem, actual)
					settle(t, red, open[j].red, actual)
					open = append(open[:j], open[j+1:]...)
				case op == 8:
					b := budgets[rng.IntN(len(budgets))]
					w := b.Limits[rng.IntN(len(b.Limits))].Window
					start := WindowStart(w, clock.Now())
					used := amount(400)
					// A minute near its cap, where the output is lowered to
					// what is left, until the minute ends.
					used.Cost = rng.Int64N(c / 4)
					if w == minute {
						used.Cost = c - rng.Int64N(scale.unit/2)
					}
					seed := []ModelAmount{{Model: models[rng.IntN(len(models))], Amount: used}, {Model: OtherModels, Amount: amount(50)}}
					if err := mem.Seed(ctx, b, w, start, used, seed); err != nil {
						t.Fatal(err)
					}
					if err := red.Seed(ctx, b, w, start, used, seed); err != nil {
						t.Fatal(err)
					}
					if w == minute {
						// Little is left: a short prompt's output is lowered to it.
						req := estimate(b)
						req.Estimate.InputTokens = rng.Int64N(20)
						req.Estimate.OutputTokens = 100 + rng.Int64N(200)
						req.OutputStep = 1 + rng.Int64N(3)
						req.Price.Output = scale.prices[1+rng.IntN(len(scale.prices)-1)]
						try(i, req)
					}
				default:
					clock.Step(time.Duration(rng.Int64N(int64(40 * time.Second))))
				}
				if t.Failed() {
					t.FailNow()
				}
			}
			for _, b := range budgets {
				sr, sm := status(t, red, b), status(t, mem, b)
				checkWindows(t, "final redis vs memory "+b.Key, sr, sm...)
				for i := range sr {
					if fmt.Sprint(sr[i].Models) != fmt.Sprint(sm[i].Models) {
						t.Errorf("%s %s models: redis %v, memory %v", b.Key, sr[i].Limit.Window, sr[i].Models, sm[i].Models)
					}
				}
				lr, _ := red.Lifetime(ctx, b)
				lm, _ := mem.Lifetime(ctx, b)
				if lr != lm {
					t.Errorf("lifetime of %s: redis %+v, memory %+v", b.Key, lr, lm)
				}
			}
		})
	}
}

// TestRedisLeases checks that the holds of a replica that stopped renewing
// its lease (it crashed) are dropped once the lease has expired, while a live
// replica's holds stay as long as it renews.
func TestRedisLeases(t *testing.T) {
	addr, _ := redisserver.Start(t)
	testLeases(t, newRedisClient(t, addr), false)
}

func testLeases(t *testing.T, client redis.UniversalClient, cluster bool) {
	ctx := context.Background()
	clock := newFakeClock(t0)
	opts := func(id string) RedisOptions {
		return RedisOptions{Prefix: "lease:", Now: clock.Now, Lease: 30 * time.Second, ReplicaID: id, Cluster: cluster}
	}
	crashed := seeded(t, NewRedis(client, opts("crashed")))
	alive := NewRedis(client, opts("alive"))
	b := UserBudget("team", "alice", "uid-alice", []Limit{{Window: day, Tokens: ptr(1000)}}, false)
	conc := &Concurrency{Key: b.Key, Limit: 2}
	hold := func(c *Redis, est Amount) *Reservation {
		t.Helper()
		r, d, err := c.Reserve(ctx, Request{Budgets: []Budget{b}, Estimate: est, Concurrency: conc})
		if err != nil || !d.Allowed {
			t.Fatalf("Reserve(%+v): %v %+v", est, err, d.Exceeded)
		}
		return r
	}
	hold(crashed, amt(1, 300, 300))
	long := hold(alive, amt(1, 100, 100))

	// Within the lease both replicas' holds count: 800 held, 2 in flight.
	clock.Step(29 * time.Second)
	if err := alive.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	_, d, err := alive.Reserve(ctx, Request{Budgets: []Budget{b}, Estimate: amt(1, 100, 101)})
	if err != nil {
		t.Fatal(err)
	}
	checkExceeded(t, d.Exceeded, &Exceeded{Budget: b.Key, Window: day, Resource: ResourceTokens, Limit: 1000, Used: 800, ResetAt: WindowEnd(day, t0)})
	if _, d, _ := alive.Reserve(ctx, Request{Budgets: []Budget{b}, Estimate: amt(1, 1, 1), Concurrency: conc}); d.Allowed {
		t.Fatal("a third request in flight was admitted")
	}

	// The crashed replica never renews; the live one does, so its hold of
	// a long request stays while the crashed one's goes.
	clock.Step(2 * time.Second)
	if err := alive.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	checkWindows(t, "after the crashed replica's lease", status(t, alive, b), window(b, 0, clock.Now(), Amount{}, amt(1, 100, 100)))
	r := hold(alive, amt(1, 600, 200))
	key := alive.key(b.Tag, slot{key: b.Key, window: day, start: WindowStart(day, t0)})
	got, err := client.HGetAll(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	// The crashed replica's fields were dropped by that Reserve.
	want := map[string]string{"q:alive": "2", "i:alive": "700", "o:alive": "300"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s = %v, want %v", key, got, want)
	}
	settle(t, alive, r, amt(1, 600, 150))
	settle(t, alive, long, amt(1, 100, 90))
	checkWindows(t, "settled", status(t, alive, b), window(b, 0, clock.Now(), amt(2, 700, 240), Amount{}))
	got, _ = client.HGetAll(ctx, key).Result()
	if want := map[string]string{"req": "2", "in": "700", "out": "240"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s = %v after settling, want %v", key, got, want)
	}
	if n, _ := client.HLen(ctx, alive.inflightKey(b.Tag, b.Key)).Result(); n != 0 {
		t.Errorf("in-flight hash has %d fields after every request settled, want 0", n)
	}
}

// TestRedisSettledPerReplica checks that two replicas settling reservations
// with the same id both count: a reservation id is unique only within its
// process, and every replica numbers its own from 1, so the settled key that
// makes a retried Settle a no-op must name the replica too.
func TestRedisSettledPerReplica(t *testing.T) {
	ctx := context.Background()
	addr, _ := redisserver.Start(t)
	client := newRedisClient(t, addr)
	clock := newFakeClock(t0)
	opts := func(id string) RedisOptions {
		return RedisOptions{Prefix: "rep:", Now: clock.Now, ReplicaID: id}
	}
	a := seeded(t, NewRedis(client, opts("a")))
	b := NewRedis(client, opts("b"))
	budget := UserBudget("team", "alice", "uid-alice", []Limit{{Window: day, Tokens: ptr(1000), Requests: ptr(10)}}, false)

	ra := admit(t, a, []Budget{budget}, amt(1, 100, 100))
	rb := admit(t, b, []Budget{budget}, amt(1, 100, 100))
	// Both processes' first reservation.
	ra.ID, rb.ID = 1, 1
	settle(t, a, ra, amt(1, 40, 60))
	settle(t, b, rb, amt(1, 30, 20))
	checkWindows(t, "both settled", status(t, a, budget), window(budget, 0, t0, amt(2, 70, 80), Amount{}))

	// A retry on either replica is still a no-op.
	settle(t, a, ra, amt(1, 40, 60))
	settle(t, b, rb, amt(1, 30, 20))
	checkWindows(t, "after retries", status(t, b, budget), window(budget, 0, t0, amt(2, 70, 80), Amount{}))

	settled, err := client.Keys(ctx, "rep:settled:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(settled)
	if want := []string{"rep:settled:a:1", "rep:settled:b:1"}; !slices.Equal(settled, want) {
		t.Errorf("settled keys %v, want %v", settled, want)
	}
}

// TestRedisUnavailable checks that an outage is an error, not a decision,
// and that the counter works again, empty, once Redis is back.
func TestRedisUnavailable(t *testing.T) {
	ctx := context.Background()
	srv := redisserver.New(t)
	client := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1, DialTimeout: time.Second})
	t.Cleanup(func() { _ = client.Close() })
	c := seeded(t, NewRedis(client, RedisOptions{Prefix: "llm:", Now: newFakeClock(t0).Now}))
	b := UserBudget("team", "alice", "uid-alice", []Limit{{Window: hour, Tokens: ptr(100)}}, false)
	r := admit(t, c, []Budget{b}, amt(1, 10, 10))

	srv.Stop()
	if _, _, err := c.Reserve(ctx, Request{Budgets: []Budget{b}, Estimate: amt(1, 1, 1)}); err == nil {
		t.Error("Reserve succeeded with Redis down")
	}
	if err := c.Settle(ctx, r, amt(1, 10, 10)); err == nil {
		t.Error("Settle succeeded with Redis down")
	}
	if _, err := c.Status(ctx, b); err == nil {
		t.Error("Status succeeded with Redis down")
	}
	if err := c.Seed(ctx, b, hour, t0, amt(1, 1, 1), nil); err == nil {
		t.Error("Seed succeeded with Redis down")
	}

	srv.Restart()
	// The restarted server lost every count: admission must wait for seeding.
	if _, _, err := c.Reserve(ctx, Request{Budgets: []Budget{b}, Estimate: amt(1, 1, 1)}); !errors.Is(err, ErrUnseeded) {
		t.Fatalf("Reserve on an empty Redis: %v, want ErrUnseeded", err)
	}
	if err := c.MarkSeeded(ctx); err != nil {
		t.Fatal(err)
	}
	// The new server has never seen the scripts: Run falls back to EVAL.
	charge(t, c, []Budget{b}, amt(1, 10, 10))
	checkWindows(t, "after restart", status(t, c, b), window(b, 0, t0, amt(1, 10, 10), Amount{}))
}

func BenchmarkRedisReserveSettle(b *testing.B) {
	addr, _ := redisserver.Start(b)
	benchReserveSettle(b, seeded(b, NewRedis(newRedisClient(b, addr), RedisOptions{Prefix: "bench:"})))
}

// reserveBoth makes operation i's reservation on both counters and fails t
// unless they decide alike, window by window.
func reserveBoth(ctx context.Context, t *testing.T, i int, mem *Memory, red *Redis, req Request) (*Reservation, *Reservation) {
	t.Helper()
	rm, dm, err := mem.Reserve(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	rr, dr, err := red.Reserve(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if dm.Allowed != dr.Allowed || !sameExceeded(dm.Exceeded, dr.Exceeded) || dm.Granted != dr.Granted || dm.WouldGrant != dr.WouldGrant {
		t.Fatalf("op %d: memory %v %+v granted %+v would %+v, redis %v %+v granted %+v would %+v", i,
			dm.Allowed, dm.Exceeded, dm.Granted, dm.WouldGrant, dr.Allowed, dr.Exceeded, dr.Granted, dr.WouldGrant)
	}
	checkWindows(t, fmt.Sprintf("op %d redis vs memory", i), dr.Windows, dm.Windows...)
	return rm, rr
}

func seeded(t testing.TB, r *Redis) *Redis {
	t.Helper()
	if err := r.MarkSeeded(context.Background()); err != nil {
		t.Fatal(err)
	}
	return r
}
