package reliability_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/openai/openai-go/v3"

	"github.com/llm-user-operator/llm-user-operator/internal/testutil/redisserver"
	"github.com/llm-user-operator/llm-user-operator/test/harness"
)

// testReplicas: replicas sharing one Redis admit a tight budget as one
// proxy would, and status, whichever replica writes it, holds exactly what
// all of them charged: nothing counted twice, nothing lost.
func (s *suite) testReplicas(t *testing.T) {
	t.Parallel()
	for _, n := range []int{2, 3} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			t.Parallel()
			s.replicas(t, n)
		})
	}
}

// replicas runs n proxies on one Redis and has many clients spend one
// user's Day budget through all of them, round robin, until each client is
// refused.
func (s *suite) replicas(t *testing.T, n int) {
	const (
		limit     = 2000
		maxTokens = 8
		clients   = 24
	)
	a := s.NewAccount(t, harness.DayTokens(limit))
	redis := redisserver.New(t)
	proxies := make([]harness.Proxy, n)
	sdk := make([]openai.Client, n)
	for i := range proxies {
		proxies[i] = s.StartProxy(t, "proxy-"+strconv.Itoa(i+1), harness.ProxyConfig{Upstream: s.fast.URL,
			Flags: []string{"--counter=redis", "--redis-addr", redis.Addr(), "--flush-interval", "1s"}})
		sdk[i] = harness.NewClient(proxies[i].BaseURL, a.APIKey())
	}

	params := chatParams("Hello", maxTokens)
	body, err := json.Marshal(params)
	if err != nil {
		t.Fatal(err)
	}
	// One reservation is the proxy's estimate of the request: a token per
	// four bytes of the prompt fields (here messages) plus 8, and max_tokens
	// (internal/proxy, estimate). The prompt fields are part of the body the
	// SDK sends, so this is an upper bound. The simulator in random mode
	// never reports more than that (its prompt costs 6 tokens, its answer at
	// most max_tokens), so admission, which holds used + reserved +
	// estimate <= limit, keeps the charge within the limit; the README
	// promises at most one reservation over it.
	reservation := int64(len(body)/4 + 8 + maxTokens)

	var (
		l       harness.Ledger
		next    atomic.Uint64
		sent    atomic.Int64
		ok      = make([]atomic.Int64, n)
		refused = make([]atomic.Int64, n)
		wg      sync.WaitGroup
	)
	// Every request costs at least a token, so more requests than the limit
	// means the proxies never refused.
	const maxRequests = limit
	for range clients {
		wg.Go(func() {
			for {
				if sent.Add(1) > maxRequests {
					t.Errorf("still admitted after %d requests against a limit of %d tokens", maxRequests, limit)
					return
				}
				i := int(next.Add(1) % uint64(n))
				res, err := sdk[i].Chat.Completions.New(t.Context(), params)
				if err == nil {
					checkUsage(t, "an admitted request", res.Usage, res.JSON.Usage.Valid())
					l.Add(res.Usage)
					ok[i].Add(1)
					continue
				}
				e := harness.APIError(err)
				if e == nil {
					t.Errorf("proxy-%d: %v, want an answer or OpenAI's 429", i+1, err)
					return
				}
				// A Day budget is a quota, not a rate: OpenAI's insufficient_quota.
				if why := harness.ErrorShape(e, http.StatusTooManyRequests, "insufficient_quota", "insufficient_quota"); why != "" {
					t.Errorf("proxy-%d refused a request: %s", i+1, why)
					return
				}
				refused[i].Add(1)
				return
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for i := range n {
		if ok[i].Load() == 0 {
			t.Errorf("proxy-%d admitted no request: the budget was not shared", i+1)
		}
	}

	want := l.Total()
	st := s.WaitCharged(t, a, want)
	used := st.Usage[0].TotalTokens
	if used > limit+reservation {
		t.Errorf("status charges %d tokens, more than the limit %d plus one reservation (at most %d)", used, limit, reservation)
	}
	// When the last client was refused, every other client was done, so
	// what was held then was what was charged plus at most one reservation
	// per client not yet settled, and the refused request did not fit: the
	// final charge is above limit - (clients+1)*reservation. Less means the
	// replicas refused a budget that was not spent.
	if floor := limit - (clients+1)*reservation; used <= floor {
		t.Errorf("status charges %d tokens when the last client was refused, want above %d (limit %d - %d * reservation %d)",
			used, floor, limit, clients+1, reservation)
	}
	wantRemaining := max(limit-used, 0)
	if r := st.Usage[0].Remaining; r == nil || *r != wantRemaining {
		t.Errorf("status.usage[0].remaining = %s, want %d", harness.ToJSON(r), wantRemaining)
	}

	var perProxy, writes string
	for i, p := range proxies {
		m := harness.Scrape(t, p.MetricsURL)
		success, _ := m.Value("llm_proxy_status_writes_total", "kind=LLMUser", "result=success")
		conflict, _ := m.Value("llm_proxy_status_writes_total", "kind=LLMUser", "result=conflict")
		perProxy += fmt.Sprintf(" proxy-%d: %d ok, %d refused;", i+1, ok[i].Load(), refused[i].Load())
		writes += fmt.Sprintf(" proxy-%d: %v written, %v conflicts;", i+1, success, conflict)
	}
	t.Logf("%d replicas, %d clients:%s charged %d tokens in %d requests, limit %d, one reservation <= %d; status writes:%s",
		n, clients, perProxy, used, want.Requests, limit, reservation, writes)
}
