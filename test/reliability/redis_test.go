package reliability_test

import (
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"

	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/redisserver"
	"github.com/llm-user-operator/llm-user-operator/test/harness"
)

// testRedisOutage: with Redis down, a proxy refuses with 503
// quota_unavailable (the default) or admits unreserved (fail-open), says so
// in its metrics, recovers when Redis is back, and status records every
// answered request exactly either way.
func (s *suite) testRedisOutage(t *testing.T) {
	t.Parallel()
	t.Run("FailClosed", func(t *testing.T) {
		t.Parallel()
		s.redisOutage(t, false)
	})
	t.Run("FailOpen", func(t *testing.T) {
		t.Parallel()
		s.redisOutage(t, true)
	})
	t.Run("SpentBudgetSurvivesRestart", s.testSpentBudgetSurvivesRedisRestart)
}

// testSpentBudgetSurvivesRedisRestart: Redis keeps nothing on disk here (as
// in most deployments of a cache), so it comes back empty. A user who
// spent the Day budget must still be refused once it is back: status
// records the spending (the test waits until it does), the README says
// admission is exact across replicas, and internal/quota/redis.go says
// that counts lost in a Redis restart are restored from status with
// Counter.Seed.
func (s *suite) testSpentBudgetSurvivesRedisRestart(t *testing.T) {
	t.Parallel()
	const limit, maxTokens = 300, 8
	a := s.NewAccount(t, harness.DayTokens(limit))
	rs := redisserver.New(t)
	p := s.StartProxy(t, "proxy", harness.ProxyConfig{Upstream: s.fast.URL, Flags: []string{
		"--counter=redis", "--redis-addr", rs.Addr(), "--flush-interval", "1s",
	}})
	c := harness.NewClient(p.BaseURL, a.APIKey())

	var l harness.Ledger
	// send makes one request and returns the refusal, nil if answered.
	send := func() *openai.Error {
		t.Helper()
		res, err := c.Chat.Completions.New(t.Context(), chatParams("Hello", maxTokens))
		if err == nil {
			checkUsage(t, "an admitted request", res.Usage, res.JSON.Usage.Valid())
			l.Add(res.Usage)
			return nil
		}
		e := harness.APIError(err)
		if e == nil {
			t.Fatalf("a request: %v", err)
		}
		return e
	}
	var refusal *openai.Error
	for range limit {
		if refusal = send(); refusal != nil {
			break
		}
	}
	if refusal == nil || refusal.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("spending a budget of %d tokens ended with %v, want a 429", limit, refusal)
	}
	spent := s.WaitCharged(t, a, l.Total())

	rs.Restart()
	// Until the proxy's client dials Redis again, it answers 503.
	poll.Until(t, 15*time.Second, func() error {
		refusal = send()
		return poll.Check(refusal == nil || refusal.StatusCode != http.StatusServiceUnavailable, "503 while the proxy reconnects to Redis")
	})
	if refusal == nil {
		// Measure the hole: how much more the user gets.
		for range limit {
			if refusal = send(); refusal != nil {
				break
			}
		}
		after := l.Total()
		t.Errorf("with Redis restarted empty, a user who had spent %d of the %d tokens of the Day was admitted again, "+
			"%d more requests and %d more tokens (%d in all, %d%% of the limit): the shared counters were not restored from status",
			spent.Lifetime.TotalTokens, limit, after.Requests-spent.Lifetime.Requests, after.TotalTokens-spent.Lifetime.TotalTokens,
			after.TotalTokens, 100*after.TotalTokens/limit)
	} else if why := harness.ErrorShape(refusal, http.StatusTooManyRequests, "insufficient_quota", "insufficient_quota"); why != "" {
		t.Errorf("with Redis restarted empty, a user who spent the budget got: %s", why)
	}
	s.WaitCharged(t, a, l.Total())
}

// attempt is one request of the load, with when it ran.
type attempt struct {
	start, end time.Time
	err        error
}

// load sends requests from a few clients until stopped, adding what they
// were told to a ledger and keeping every attempt.
type load struct {
	mu       sync.Mutex
	attempts []attempt
	stop     chan struct{}
	wg       sync.WaitGroup
}

// count returns how many attempts started after since and ended, and how
// many of those succeeded.
func (ld *load) count(since time.Time) (ended, ok int) {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	for _, a := range ld.attempts {
		if a.start.After(since) {
			ended++
			if a.err == nil {
				ok++
			}
		}
	}
	return ended, ok
}

// redisOutage: Redis becomes unreachable under load and comes back with its
// data (it persists, as the chart's Redis does). Every answered request is
// charged exactly once: the settles that failed during the outage are
// settled again once it is back.
func (s *suite) redisOutage(t *testing.T, failOpen bool) {
	a := s.NewAccount(t, harness.DayTokens(1_000_000))
	rs := redisserver.New(t, redisserver.Durable())
	p := s.StartProxy(t, "proxy", harness.ProxyConfig{Upstream: s.fast.URL, Flags: []string{
		"--counter=redis", "--redis-addr", rs.Addr(), "--redis-fail-open=" + strconv.FormatBool(failOpen),
		"--flush-interval", "1s",
	}})
	c := harness.NewClient(p.BaseURL, a.APIKey())

	var l harness.Ledger
	ld := &load{stop: make(chan struct{})}
	for range 3 {
		ld.wg.Go(func() {
			for {
				select {
				case <-ld.stop:
					return
				default:
				}
				at := attempt{start: time.Now()}
				res, err := c.Chat.Completions.New(t.Context(), chatParams("Hello", 16))
				at.end, at.err = time.Now(), err
				if err == nil {
					checkUsage(t, "an admitted request", res.Usage, res.JSON.Usage.Valid())
					l.Add(res.Usage)
				}
				ld.mu.Lock()
				ld.attempts = append(ld.attempts, at)
				ld.mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	stopLoad := sync.OnceFunc(func() {
		close(ld.stop)
		ld.wg.Wait()
	})
	t.Cleanup(stopLoad)

	began := time.Now()
	poll.Until(t, 15*time.Second, func() error {
		_, ok := ld.count(began)
		return poll.Check(ok >= 10, fmt.Sprintf("%d requests answered before the outage, want 10", ok))
	})

	rs.Stop()
	stopped := time.Now()
	poll.Until(t, 15*time.Second, func() error {
		ended, _ := ld.count(stopped)
		return poll.Check(ended >= 10, fmt.Sprintf("%d requests made during the outage, want 10", ended))
	})
	scraping := time.Now()
	m := harness.Scrape(t, p.MetricsURL)
	scrapeTook := time.Since(scraping)
	if v, ok := m.Value("llm_proxy_counter_available"); !ok || v != 0 {
		t.Errorf("llm_proxy_counter_available = %v (present %t) with Redis down, want 0", v, ok)
	}
	want, other := "refused", "admitted"
	if failOpen {
		want, other = other, want
	}
	if v, _ := m.Value("llm_proxy_counter_errors_total", "operation=reserve", "action="+want); v == 0 {
		t.Errorf("llm_proxy_counter_errors_total{operation=reserve,action=%s} is 0 with Redis down", want)
	}
	if v, _ := m.Value("llm_proxy_counter_errors_total", "operation=reserve", "action="+other); v != 0 {
		t.Errorf("llm_proxy_counter_errors_total{operation=reserve,action=%s} = %v, want 0 with --redis-fail-open=%t", other, v, failOpen)
	}
	reserveErrors, _ := m.Value("llm_proxy_counter_errors_total", "operation=reserve")

	restarting := time.Now()
	rs.Restart()
	restarted := time.Now()
	// The proxy's Redis client does not dial again at once: after a run of
	// dial errors go-redis probes the server once a second until it
	// answers. Redis is back for the proxy when the proxy says so.
	var recovered time.Time
	poll.Until(t, 15*time.Second, func() error {
		v, _ := harness.Scrape(t, p.MetricsURL).Value("llm_proxy_counter_available")
		recovered = time.Now()
		return poll.Check(v == 1, fmt.Sprintf("llm_proxy_counter_available = %v with Redis back, want 1", v))
	})
	poll.Until(t, 15*time.Second, func() error {
		_, ok := ld.count(recovered)
		return poll.Check(ok >= 10, fmt.Sprintf("%d requests answered after Redis came back, want 10", ok))
	})
	stopLoad()

	// Judge each attempt by when it ran: during the outage (wholly between
	// the stop and the restart), after it (started once the proxy had
	// reported Redis available again), or across a change, where either
	// outcome is right.
	var during, duringOK, refusedAcross int
	// Report the first few attempts of each phase that went wrong, and how
	// many did.
	wrong := map[string]int{}
	complain := func(phase, format string, args ...any) {
		if wrong[phase]++; wrong[phase] <= 3 {
			t.Errorf("a request "+phase+": "+format, args...)
		}
	}
	for _, at := range ld.attempts {
		phase := "across a change of Redis"
		switch {
		case at.end.Before(stopped) && at.err == nil:
			continue
		case at.start.After(stopped) && at.end.Before(restarting):
			phase = "during the outage"
			during++
		case at.start.After(recovered):
			phase = "after Redis came back"
		}
		if at.err == nil {
			if phase == "during the outage" {
				duringOK++
				if !failOpen {
					complain(phase, "answered with --redis-fail-open=false, want 503")
				}
			}
			continue
		}
		e := harness.APIError(at.err)
		switch {
		case e == nil:
			complain(phase, "%v", at.err)
		case failOpen || phase == "after Redis came back" || at.end.Before(stopped):
			complain(phase, "%d %s with --redis-fail-open=%t, want an answer", e.StatusCode, e.RawJSON(), failOpen)
		default:
			if why := harness.ErrorShape(e, http.StatusServiceUnavailable, "server_error", "quota_unavailable"); why != "" {
				complain(phase, "%s", why)
			}
			if phase != "during the outage" {
				refusedAcross++
			}
		}
	}
	for phase, n := range wrong {
		if n > 3 {
			t.Errorf("%d requests in all went wrong %s", n, phase)
		}
	}
	if failOpen && duringOK != during {
		t.Errorf("%d of %d requests during the outage were answered, want all with --redis-fail-open=true", duringOK, during)
	}

	total := l.Total()
	s.WaitCharged(t, a, total)
	t.Logf("--redis-fail-open=%t: %d requests during a %s outage, %d answered (%d refused across the stop or the recovery); "+
		"%v reserve errors; /metrics took %s with Redis down; the proxy used Redis again %s after its restart; status %+v",
		failOpen, during, restarting.Sub(stopped).Round(time.Millisecond), duringOK, refusedAcross, reserveErrors,
		scrapeTook.Round(time.Millisecond), recovered.Sub(restarted).Round(time.Millisecond), total)
}
