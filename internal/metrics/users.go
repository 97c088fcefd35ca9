package metrics

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	descRequests = prometheus.NewDesc("llm_proxy_requests_total",
		"Requests answered by the proxy, by user and model (\"\" when unknown); llm_proxy_responses_total has their status codes.",
		[]string{"namespace", "user", "model"}, nil)
	descTokens = prometheus.NewDesc("llm_proxy_tokens_total",
		"Tokens charged, by user, model and type (input or output).",
		[]string{"namespace", "user", "model", "type"}, nil)
)

// userKey is one user's use of one model.
type userKey struct{ model, namespace, user string }

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
}

func newUserCounters() *userCounters { return &userCounters{m: map[userKey]*userCounts{}} }

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
	}
	return c
}

func (u *userCounters) forget(namespace, user string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for k := range u.m {
		if k.namespace == namespace && k.user == user {
			delete(u.m, k)
		}
	}
}

func (u *userCounters) Describe(ch chan<- *prometheus.Desc) {
	ch <- descRequests
	ch <- descTokens
}

type userEntry struct {
	userKey
	c *userCounts
}

func (u *userCounters) Collect(ch chan<- prometheus.Metric) {
	u.mu.RLock()
	entries := make([]userEntry, 0, len(u.m))
	for k, c := range u.m {
		entries = append(entries, userEntry{k, c})
	}
	u.mu.RUnlock()
	// The registry orders a family's metrics by their label values taken in
	// label-name order: model, namespace, (type,) user.
	slices.SortFunc(entries, func(a, b userEntry) int {
		return cmp.Or(cmp.Compare(a.model, b.model), cmp.Compare(a.namespace, b.namespace), cmp.Compare(a.user, b.user))
	})
	for _, e := range entries {
		ch <- prometheus.MustNewConstMetric(descRequests, prometheus.CounterValue, float64(e.c.requests.Load()), e.namespace, e.user, e.model)
	}
	// Within a model and namespace, every input series sorts before every
	// output one.
	for start := 0; start < len(entries); {
		end := start + 1
		for end < len(entries) && entries[end].model == entries[start].model && entries[end].namespace == entries[start].namespace {
			end++
		}
		group := entries[start:end]
		for _, e := range group {
			if e.c.tokens.Load() {
				ch <- prometheus.MustNewConstMetric(descTokens, prometheus.CounterValue, float64(e.c.input.Load()), e.namespace, e.user, e.model, TokenTypeInput)
			}
		}
		for _, e := range group {
			if e.c.tokens.Load() && e.c.generates.Load() {
				ch <- prometheus.MustNewConstMetric(descTokens, prometheus.CounterValue, float64(e.c.output.Load()), e.namespace, e.user, e.model, TokenTypeOutput)
			}
		}
		start = end
	}
}
