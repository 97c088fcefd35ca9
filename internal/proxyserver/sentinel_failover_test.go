package proxyserver

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/redisserver"
)

// TestCounterSentinelFailover: the counter the proxy builds for
// --redis-mode=sentinel goes on through a failover. Forty requests are
// charged on the master and replicated (WAIT); the master is killed; the
// Sentinel promotes the replica, and the counter, through the same client,
// finds every charge there, seeded marker included, and goes on admitting.
// What a failover can lose is what the master had not replicated when it
// died (README, "Redis Cluster and Sentinel"): here, by WAIT, nothing.
func TestCounterSentinelFailover(t *testing.T) {
	master, replica := redisserver.New(t), redisserver.New(t)
	host, port, err := net.SplitHostPort(master.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := redisserver.Command(replica.Addr(), "REPLICAOF", host, port); err != nil {
		t.Fatal(err)
	}
	sentinel := redisserver.NewSentinel(t, "counters", master.Addr())
	// The Sentinel learns of the replica from the master's INFO.
	sc := redis.NewSentinelClient(&redis.Options{Addr: sentinel.Addr()})
	t.Cleanup(func() { _ = sc.Close() })
	poll.Until(t, 30*time.Second, func() error {
		rs, err := sc.Replicas(t.Context(), "counters").Result()
		if err != nil {
			return err
		}
		return poll.Check(len(rs) == 1, "the Sentinel does not list the replica yet")
	})

	store := seededCounter(t, "--redis-mode=sentinel", "--redis-addrs="+sentinel.Addr(), "--redis-master-name=counters")
	ctx := context.Background()
	b := quota.UserBudget("team", "alice", "u1", []quota.Limit{{Window: llmv1alpha1.WindowDay, Requests: new(int64(100))}}, false)
	charge := func() error {
		r, d, err := store.Reserve(ctx, quota.Request{Budgets: []quota.Budget{b}, Estimate: quota.Amount{Requests: 1, InputTokens: 10}})
		if err != nil {
			return err
		}
		if !d.Allowed {
			t.Fatalf("refused: %+v", d.Exceeded)
		}
		return store.Settle(ctx, r, quota.Amount{Requests: 1, InputTokens: 7})
	}
	for range 40 {
		if err := charge(); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := redisserver.Command(master.Addr(), "WAIT", "1", "5000"); err != nil || n != "1" {
		t.Fatalf("WAIT: %q %v, want the replica to have every write", n, err)
	}

	master.Stop()
	// Through the failover the client finds the new master; a request may
	// fail while there is none.
	poll.Until(t, 60*time.Second, func() error { return charge() })
	lt, err := store.Lifetime(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	if lt.Requests != 41 || lt.InputTokens != 287 {
		t.Errorf("lifetime after the failover %+v, want 41 requests and 287 input tokens: the 40 before it and one after", lt)
	}
	rc := redis.NewClient(&redis.Options{Addr: replica.Addr()})
	t.Cleanup(func() { _ = rc.Close() })
	if role, err := rc.Do(ctx, "ROLE").Slice(); err != nil || len(role) == 0 || role[0] != "master" {
		t.Errorf("the replica's role after the failover: %v %v, want master", role, err)
	}
}
