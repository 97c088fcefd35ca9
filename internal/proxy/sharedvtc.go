package proxy

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisCounters keeps the fair queues' shared counters ([SharedCounters])
// in Redis, the counter store the replicas already share: one key per
// upstream and flow holding a float, which expires when no replica has
// exchanged it for ttl. Every key is read and written alone, so a Redis
// Cluster serves them from any slot.
type RedisCounters struct {
	client redis.UniversalClient
	prefix string
	ttl    time.Duration
}

// NewRedisCounters returns shared counters under prefix in client's Redis.
// A flow's total is forgotten after ttl (default 10 minutes) without an
// exchange: by then every replica has forgotten the flow as well.
func NewRedisCounters(client redis.UniversalClient, prefix string, ttl time.Duration) *RedisCounters {
	if ttl <= 0 {
		ttl = 10 * time.Minute
	}
	return &RedisCounters{client: client, prefix: prefix, ttl: ttl}
}

func (r *RedisCounters) key(upstream, flow string) string { return r.prefix + upstream + "|" + flow }

// Exchange implements [SharedCounters] in one pipeline.
func (r *RedisCounters) Exchange(ctx context.Context, upstream string, served map[string]float64, flows []string) (map[string]float64, error) {
	pipe := r.client.Pipeline()
	adds := make(map[string]*redis.FloatCmd, len(served))
	gets := make(map[string]*redis.StringCmd, len(flows))
	for _, f := range flows {
		k := r.key(upstream, f)
		if d := served[f]; d != 0 {
			adds[f] = pipe.IncrByFloat(ctx, k, d)
		} else {
			gets[f] = pipe.Get(ctx, k)
		}
		pipe.Expire(ctx, k, r.ttl)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("fair queue: exchanging counters in redis: %w", err)
	}
	out := make(map[string]float64, len(flows))
	for f, c := range adds {
		out[f] = c.Val()
	}
	for f, c := range gets {
		if v, err := c.Float64(); err == nil {
			out[f] = v
		}
	}
	return out, nil
}
