package token

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"
)

// CacheStats are the counters of a verifier's cache.
type CacheStats struct {
	// Hits counts verifications answered from the cache.
	Hits uint64
	// Misses counts verifications that ran the full check while the cache
	// was enabled (including those that failed).
	Misses uint64
	// Entries is the current number of cached tokens.
	Entries int
}

// cache maps a token to its verified claims. It is sharded by hash so that
// parallel readers of different tokens rarely touch the same lock or counter.
// Entries are keyed by a 64-bit hash of the raw token and store the raw token,
// so a hash collision is a miss, never a wrong answer.
type cache struct {
	seed     maphash.Seed
	mask     uint64
	perShard int
	shards   []cacheShard
}

type cacheShard struct {
	mu     sync.RWMutex
	m      map[uint64]*cacheEntry
	hits   atomic.Uint64
	misses atomic.Uint64
	_      [64]byte // keep neighbouring shards' hot fields on separate cache lines
}

type cacheEntry struct {
	raw    string
	keys   *keySet
	claims *Claims
	// exp and nbf (already lowered by the skew) in Unix nanoseconds; the
	// entry is served only for nbf <= now < exp.
	exp, nbf int64
}

const maxShards = 32

func newCache(size int) *cache {
	n := 1
	for n*2 <= maxShards && n*2 <= size {
		n *= 2
	}
	c := &cache{
		seed:     maphash.MakeSeed(),
		mask:     uint64(n - 1),
		perShard: size / n,
		shards:   make([]cacheShard, n),
	}
	for i := range c.shards {
		c.shards[i].m = make(map[uint64]*cacheEntry)
	}
	return c
}

func (c *cache) hash(raw string) uint64 { return maphash.String(c.seed, raw) }

func (c *cache) get(h uint64, raw string, ks *keySet, now time.Time) *Claims {
	s := &c.shards[h&c.mask]
	s.mu.RLock()
	e := s.m[h]
	s.mu.RUnlock()
	if e != nil && e.raw == raw && e.keys == ks {
		if n := now.UnixNano(); n < e.exp && n >= e.nbf {
			s.hits.Add(1)
			return e.claims
		}
	}
	s.misses.Add(1)
	return nil
}

func (c *cache) put(h uint64, raw string, ks *keySet, claims *Claims, now time.Time, skew time.Duration) {
	exp := claims.ExpiresAt.UnixNano()
	if now.UnixNano() >= exp {
		return // accepted only thanks to the skew; nothing left to cache
	}
	var nbf int64
	if claims.NotBefore != nil {
		nbf = claims.NotBefore.Add(-skew).UnixNano()
	}
	e := &cacheEntry{raw: raw, keys: ks, claims: claims, exp: exp, nbf: nbf}
	s := &c.shards[h&c.mask]
	s.mu.Lock()
	if _, ok := s.m[h]; !ok && len(s.m) >= c.perShard {
		// Map iteration starts at a random position, so this evicts a
		// random entry in O(1): cheaper than LRU bookkeeping on every hit,
		// and a token evicted while still in use costs one re-verification.
		for k := range s.m {
			delete(s.m, k)
			break
		}
	}
	s.m[h] = e
	s.mu.Unlock()
}

func (c *cache) clear() {
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		clear(s.m)
		s.mu.Unlock()
	}
}

func (c *cache) stats() CacheStats {
	var st CacheStats
	for i := range c.shards {
		s := &c.shards[i]
		st.Hits += s.hits.Load()
		st.Misses += s.misses.Load()
		s.mu.RLock()
		st.Entries += len(s.m)
		s.mu.RUnlock()
	}
	return st
}
