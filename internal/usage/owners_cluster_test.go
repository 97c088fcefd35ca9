package usage

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/llm-user-operator/llm-user-operator/internal/testutil/redisserver"
)

// TestRedisOwnersOnCluster: the ownership scripts run on a Redis Cluster
// (every key under one hash tag): marks reach their owner, a written mark
// is cleared, and a dead replica's marks go to the live one, which also
// recovers those the dead one had not sent, charged since five seconds
// before its last renewal.
func TestRedisOwnersOnCluster(t *testing.T) {
	cl := redisserver.NewCluster(t)
	client := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), MaxRedirects: 16})
	t.Cleanup(func() { _ = client.Close() })
	t0 := time.Date(2027, 3, 10, 12, 30, 0, 0, time.UTC)
	clock := clocktesting.NewFakeClock(t0)
	a := NewRedisOwners(client, "own:", "a", 10*time.Second, clock.Now)
	b := NewRedisOwners(client, "own:", "b", 10*time.Second, clock.Now)
	var asked []time.Time
	a.RecoverWith(func(_ context.Context, since time.Time) (map[string]time.Time, error) {
		asked = append(asked, since)
		return map[string]time.Time{"0/ns/u7/x": t0}, nil
	})
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
	if len(asked) != 0 {
		t.Errorf("a looked for unsent marks since %v with no replica killed", asked)
	}
	// b dies; once its lease expires, a gets every mark, and the one b
	// had not sent.
	clock.Step(11 * time.Second)
	ms, err := a.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []time.Time{time.Date(2027, 3, 10, 12, 29, 55, 0, time.UTC)}; !slices.EqualFunc(asked, want, time.Time.Equal) {
		t.Errorf("a looked for b's unsent marks since %v, want %v", asked, want)
	}
	if len(ms) != len(keys)+1 || !slices.ContainsFunc(ms, func(m OwnedMark) bool { return m.Key == "0/ns/u7/x" }) {
		t.Fatalf("after b's death a has %d marks %v, want %d with 0/ns/u7/x", len(ms), ms, len(keys)+1)
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
// live one at once, without waiting for its lease to expire, and nobody
// looks for marks it did not send.
func TestRedisOwnersLeave(t *testing.T) {
	addr, _ := redisserver.Start(t)
	client := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = client.Close() })
	clock := clocktesting.NewFakeClock(time.Now())
	a := NewRedisOwners(client, "own:", "a", 10*time.Second, clock.Now)
	b := NewRedisOwners(client, "own:", "b", 10*time.Second, clock.Now)
	a.RecoverWith(func(_ context.Context, since time.Time) (map[string]time.Time, error) {
		t.Errorf("a looked for unsent marks since %v, though b left cleanly", since)
		return nil, nil
	})
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
	// a leaves too, last, with its marks unwritten: they wait for the next
	// replica, c, which takes them and looks for nothing more.
	if err := a.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	clock.Step(time.Minute)
	c := NewRedisOwners(client, "own:", "c", 10*time.Second, clock.Now)
	c.RecoverWith(func(_ context.Context, since time.Time) (map[string]time.Time, error) {
		t.Errorf("c looked for unsent marks since %v, though a left cleanly", since)
		return nil, nil
	})
	if ms, err = c.Sync(ctx); err != nil || len(ms) != len(keys) {
		t.Errorf("after a left, c has %d marks (%v), want all %d", len(ms), err, len(keys))
	}
}
