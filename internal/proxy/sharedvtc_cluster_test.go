package proxy

import (
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/llm-user-operator/llm-user-operator/internal/testutil/redisserver"
)

// TestRedisCountersOnCluster: the fair queues' shared counters, one key per
// upstream and flow, in one pipeline over the masters of a Redis Cluster.
func TestRedisCountersOnCluster(t *testing.T) {
	cl := redisserver.NewCluster(t)
	client := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs(), MaxRedirects: 16})
	t.Cleanup(func() { _ = client.Close() })
	sc := NewRedisCounters(client, "fq:", 0)
	flows := []string{"ns/user/a", "ns/user/b", "ns/user/c", "ns/quota/d", "ns/user/e", "ns/user/f"}
	served := map[string]float64{"ns/user/a": 100, "ns/user/c": 250.5, "ns/quota/d": 7}
	if _, err := sc.Exchange(t.Context(), "http://vllm", served, flows); err != nil {
		t.Fatal(err)
	}
	got, err := sc.Exchange(t.Context(), "http://vllm", map[string]float64{"ns/user/a": 1}, flows)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"ns/user/a": 101, "ns/user/c": 250.5, "ns/quota/d": 7}
	for _, f := range flows {
		if got[f] != want[f] {
			t.Errorf("%s: %v, want %v", f, got[f], want[f])
		}
	}
}
