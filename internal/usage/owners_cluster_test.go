package usage

import (
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/llm-user-operator/llm-user-operator/internal/testutil/redisserver"
)

// TestRedisOwnersOnCluster: the ownership scripts run on a Redis Cluster
// (every key under one hash tag): marks reach their owner, a written mark
// is cleared, and a dead replica's marks go to the live one.
func TestRedisOwnersOnCluster(t *testing.T) {
	cl := redisserver.NewCluster(t)
	client := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), MaxRedirects: 16})
	t.Cleanup(func() { _ = client.Close() })
	clock := clocktesting.NewFakeClock(time.Now())
	a := NewRedisOwners(client, "own:", "a", 10*time.Second, clock.Now)
	b := NewRedisOwners(client, "own:", "b", 10*time.Second, clock.Now)
	ctx := t.Context()
	for range 2 { // both registered, both see both
		for _, o := range []*RedisOwners{a, b} {
			if _, err := o.Sync(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	keys := []string{"0/ns/u1/x", "0/ns/u2/x", "0/ns/u3/x", "0/ns/u4/x", "0/ns/u5/x", "0/ns/u6/x"}
	for _, k := range keys {
		a.Mark(k, clock.Now(), false)
	}
	if err := a.Send(ctx); err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for name, o := range map[string]*RedisOwners{"a": a, "b": b} {
		ms, err := o.Sync(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			got[name] = append(got[name], m.Key)
			if !o.Owns(m.Key) {
				t.Errorf("%s was handed %s, which it does not own", name, m.Key)
			}
		}
		slices.Sort(got[name])
	}
	if len(got["a"])+len(got["b"]) != len(keys) || len(got["a"]) == 0 || len(got["b"]) == 0 {
		t.Fatalf("marks split %v, want all %d between both replicas", got, len(keys))
	}
	// b dies; once its lease expires, a gets every mark.
	clock.Step(11 * time.Second)
	ms, err := a.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != len(keys) {
		t.Fatalf("after b's death a has %d marks, want %d", len(ms), len(keys))
	}
	for _, m := range ms {
		if err := a.Written(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if ms, err = a.Sync(ctx); err != nil || len(ms) != 0 {
		t.Errorf("after writing them a has marks %v (%v), want none", ms, err)
	}
}

// TestRedisOwnersLeave: a replica that stops cleanly hands its marks to the
// live one at once, without waiting for its lease to expire.
func TestRedisOwnersLeave(t *testing.T) {
	addr, _ := redisserver.Start(t)
	client := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = client.Close() })
	clock := clocktesting.NewFakeClock(time.Now())
	a := NewRedisOwners(client, "own:", "a", 10*time.Second, clock.Now)
	b := NewRedisOwners(client, "own:", "b", 10*time.Second, clock.Now)
	ctx := t.Context()
	for range 2 {
		for _, o := range []*RedisOwners{a, b} {
			if _, err := o.Sync(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	keys := []string{"0/ns/u1/x", "0/ns/u2/x", "0/ns/u3/x", "0/ns/u4/x", "0/ns/u5/x", "0/ns/u6/x"}
	for _, k := range keys {
		b.Mark(k, clock.Now(), false)
	}
	if err := b.Send(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	ms, err := a.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != len(keys) {
		t.Errorf("after b left, a has %d marks, want all %d", len(ms), len(keys))
	}
	if leases, _ := client.HKeys(ctx, "own:{llmq-owners}:leases").Result(); !slices.Equal(leases, []string{"a"}) {
		t.Errorf("leases after b left: %v, want [a]", leases)
	}
}
