package proxy

import (
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/llm-user-operator/llm-user-operator/internal/testutil/redisserver"
)

// TestFairGateSharedCounters: two replicas gate the same upstream and share
// their counters through a real Redis. Alice and bob wait level on replica
// 1, alice first; replica 2 serves alice meanwhile. Once the replicas
// exchange, replica 1 knows alice was served elsewhere, and bob goes first.
// Without the exchange alice, who came first, would.
func TestFairGateSharedCounters(t *testing.T) {
	addr, _ := redisserver.Start(t)
	client := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = client.Close() })
	shared := NewRedisCounters(client, "test:fairq:", 0)
	const up = "http://vllm"
	r1, r2 := newSched(t, 1), newSched(t, 1)
	exchange := func(s *sched) {
		t.Helper()
		if err := s.g.exchange(t.Context(), shared, up); err != nil {
			t.Fatal(err)
		}
	}

	r1.send("x0", "xavier", 0, 1) // holds replica 1's slot
	r1.send("a1", "alice", 0, 1)
	r1.send("b1", "bob", 0, 1)
	exchange(r1) // the first exchange only notes where the totals stand

	r2.send("a2", "alice", 0, 1)
	r2.finishServed("a2", 10000)
	exchange(r2)
	exchange(r1)

	checkOrder(t, "with shared counters", r1.drain("x0"), []string{"b1", "a1"})

	// What each replica sent is in Redis: alice's 10000 from replica 2,
	// and replica 1's own 200 of xavier and of bob once exchanged.
	exchange(r1)
	for flow, want := range map[string]float64{"alice": 10200, "bob": 200, "xavier": 200} {
		got, err := client.Get(t.Context(), "test:fairq:"+up+"|"+flow).Float64()
		if err != nil || got != want {
			t.Errorf("%s's shared total %v (%v), want %v", flow, got, err, want)
		}
	}
}
