package metrics

import (
	"cmp"
	"math"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

const (
	helpRequests = "Requests answered by the proxy, by user and model (\"\" when unknown); llm_proxy_responses_total has their status codes."
	helpTokens   = "Tokens charged, by user, model and type (input or output)."
	helpCost     = "What the requests of a user of a priced LLMQuota cost, by model, in units of the quota's currency (exact values are in status)."
)

var (
	descRequests = prometheus.NewDesc("llm_proxy_requests_total", helpRequests, []string{"namespace", "user", "model"}, nil)
	descTokens   = prometheus.NewDesc("llm_proxy_tokens_total", helpTokens, []string{"namespace", "user", "model", "type"}, nil)
	descCost     = prometheus.NewDesc("llm_user_cost_total", helpCost, []string{"namespace", "user", "model", "currency"}, nil)
)

// userKey is one user's use of one model.
type userKey struct{ model, namespace, user string }

// costKey is what one user's use of one model cost in one currency. The
// label values sort in label-name order: currency, model, namespace, user.
type costKey struct{ currency, model, namespace, user string }

// picoPerUnit converts pico-units of a currency to units.
const picoPerUnit = 1e12

type userCounts struct {
	requests, input, output atomic.Uint64
	// generates: an operation that generates output was counted, so the
	// output series exists (embeddings have none).
	generates, tokens atomic.Bool
}

// userCounters are the per-user counters (llm_proxy_requests_total and
// llm_proxy_tokens_total), the series that grow with the users. They are
// kept in one map rather than CounterVecs, and collected already sorted as
// the registry sorts them (by label values in label-name order), so that a
// scrape of 10,000 users costs a sort of 10,000 keys rather than of
// 30,000 metrics by their label pairs.
type userCounters struct {
	mu sync.RWMutex
	m  map[userKey]*userCounts
	// cost is llm_user_cost_total, in pico-units: only users of priced
	// quotas have a series.
	cost map[costKey]*atomic.Int64
	// gen counts the changes to the keys of m and cost; sorted holds them
	// sorted as of sortedGen, so that a scrape sorts only after users came
	// or went, not every time.
	gen, sortedGen uint64
	sorted         *sortedCounters
}

// sortedCounters are the counters' entries in the registry's order. They
// are never changed once built: a snapshot shares them.
type sortedCounters struct {
	entries []userEntry
	costs   []costEntry
}

func newUserCounters() *userCounters {
	return &userCounters{m: map[userKey]*userCounts{}, cost: map[costKey]*atomic.Int64{}}
}

// addCost adds pico pico-units to k's cost, saturating rather than wrapping.
func (u *userCounters) addCost(k costKey, pico int64) {
	u.mu.RLock()
	c := u.cost[k]
	u.mu.RUnlock()
	if c == nil {
		u.mu.Lock()
		if c = u.cost[k]; c == nil {
			c = &atomic.Int64{}
			u.cost[k] = c
			u.gen++
		}
		u.mu.Unlock()
	}
	for {
		old := c.Load()
		next := old + max(pico, 0)
		if next < old {
			next = math.MaxInt64
		}
		if c.CompareAndSwap(old, next) {
			return
		}
	}
}

func (u *userCounters) get(k userKey) *userCounts {
	u.mu.RLock()
	c := u.m[k]
	u.mu.RUnlock()
	if c != nil {
		return c
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if c = u.m[k]; c == nil {
		c = &userCounts{}
		u.m[k] = c
		u.gen++
	}
	return c
}

func (u *userCounters) forget(namespace, user string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for k := range u.m {
		if k.namespace == namespace && k.user == user {
			delete(u.m, k)
			u.gen++
		}
	}
	for k := range u.cost {
		if k.namespace == namespace && k.user == user {
			delete(u.cost, k)
			u.gen++
		}
	}
}

func (u *userCounters) Describe(ch chan<- *prometheus.Desc) {
	ch <- descRequests
	ch <- descTokens
	ch <- descCost
}

type costEntry struct {
	costKey
	c *atomic.Int64
}

type userEntry struct {
	userKey
	c *userCounts
}

// snapshot returns the counters, each list sorted as the registry orders
// its family's metrics (by label values in label-name order): costs by
// currency, model, namespace, user; entries by model, namespace, user. The
// lists are shared: callers must not change them. They are sorted again
// only when users came or went since the last snapshot, outside the lock,
// so that requests of new users do not wait for the sort.
func (u *userCounters) snapshot() ([]userEntry, []costEntry) {
	u.mu.RLock()
	if u.sorted != nil && u.sortedGen == u.gen {
		s := u.sorted
		u.mu.RUnlock()
		return s.entries, s.costs
	}
	gen := u.gen
	s := &sortedCounters{entries: make([]userEntry, 0, len(u.m)), costs: make([]costEntry, 0, len(u.cost))}
	for k, c := range u.m {
		s.entries = append(s.entries, userEntry{k, c})
	}
	for k, c := range u.cost {
		s.costs = append(s.costs, costEntry{k, c})
	}
	u.mu.RUnlock()
	slices.SortFunc(s.costs, func(a, b costEntry) int {
		return cmp.Or(cmp.Compare(a.currency, b.currency), cmp.Compare(a.model, b.model), cmp.Compare(a.namespace, b.namespace), cmp.Compare(a.user, b.user))
	})
	slices.SortFunc(s.entries, func(a, b userEntry) int {
		return cmp.Or(cmp.Compare(a.model, b.model), cmp.Compare(a.namespace, b.namespace), cmp.Compare(a.user, b.user))
	})
	u.mu.Lock()
	if u.sorted == nil || gen > u.sortedGen {
		u.sorted, u.sortedGen = s, gen
	}
	u.mu.Unlock()
	return s.entries, s.costs
}

// tokenSeries calls f for each llm_proxy_tokens_total series of entries,
// in the registry's order: within a model and namespace, every input
// series sorts before every output one.
func tokenSeries(entries []userEntry, f func(e userEntry, typ string, v uint64)) {
	for start := 0; start < len(entries); {
		end := start + 1
		for end < len(entries) && entries[end].model == entries[start].model && entries[end].namespace == entries[start].namespace {
			end++
		}
		group := entries[start:end]
		for _, e := range group {
			if e.c.tokens.Load() {
				f(e, TokenTypeInput, e.c.input.Load())
			}
		}
		for _, e := range group {
			if e.c.tokens.Load() && e.c.generates.Load() {
				f(e, TokenTypeOutput, e.c.output.Load())
			}
		}
		start = end
	}
}

func (u *userCounters) Collect(ch chan<- prometheus.Metric) {
	entries, costs := u.snapshot()
	for _, e := range costs {
		ch <- prometheus.MustNewConstMetric(descCost, prometheus.CounterValue, float64(e.c.Load())/picoPerUnit, e.namespace, e.user, e.model, e.currency)
	}
	for _, e := range entries {
		ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(e.c.requests.Load()), e.namespace, e.user, e.model)
	}
	tokenSeries(entries, func(e userEntry, typ string, v uint64) {
		ch <- prometheus.MustNewConstMetric(descTokens, prometheus.CounterValue, float64(v), e.namespace, e.user, e.model, typ)
	})
}
