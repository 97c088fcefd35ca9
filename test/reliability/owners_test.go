package reliability_test

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/redisserver"
	"github.com/llm-user-operator/llm-user-operator/test/harness"
)

// testOwnerKilled: three proxies on one Redis, every user served by all
// three; then one is SIGKILLed before its flush. Each user's status has one
// writer, its owner; the killed replica's users are taken by the others
// once its lease has expired, with the marks it held, and every user's
// status is exact within a lease and a flush of the kill.
func (s *suite) testOwnerKilled(t *testing.T) {
	t.Parallel()
	const (
		users = 12
		lease = 3 * time.Second
		flush = 5 * time.Second
	)
	redis := redisserver.New(t)
	flags := []string{"--counter=redis", "--redis-addr", redis.Addr(), "--redis-lease", lease.String(), "--flush-interval", flush.String()}
	var proxies []harness.Proxy
	for i := range 3 {
		proxies = append(proxies, s.StartProxy(t, "proxy-owner-"+strconv.Itoa(i), harness.ProxyConfig{Upstream: s.fast.URL, Flags: flags}))
	}
	// Every replica has renewed its writer lease and seen the others.
	rc := goredis.NewClient(&goredis.Options{Addr: redis.Addr()})
	t.Cleanup(func() { _ = rc.Close() })
	waitLeases := func(n int) {
		t.Helper()
		poll.Until(t, 30*time.Second, func() error {
			m, err := rc.HGetAll(t.Context(), "llmq:{llmq-owners}:leases").Result()
			if err != nil {
				return err
			}
			return poll.Check(len(m) == n, fmt.Sprintf("writer leases %v, want %d", m, n))
		})
	}
	waitLeases(3)
	time.Sleep(1500 * time.Millisecond) // each has read the others' leases

	accounts := make([]*harness.Account, users)
	ledgers := make([]harness.Ledger, users)
	send := func(i int, p harness.Proxy) {
		t.Helper()
		c := harness.NewClient(p.BaseURL, accounts[i].APIKey())
		res, err := c.Chat.Completions.New(t.Context(), chatParams("Hello", 16))
		if err != nil {
			t.Fatalf("user %d: %v", i, err)
		}
		ledgers[i].Add(res.Usage)
	}
	// A first request each, written: each owner then waits a flush
	// interval before it writes the user again.
	for i := range accounts {
		accounts[i] = s.NewAccount(t, harness.DayTokens(1_000_000))
		send(i, proxies[0])
	}
	for i, a := range accounts {
		s.WaitCharged(t, a, ledgers[i].Total())
	}
	// Then one through each replica, and the third dies before its flush.
	for i := range accounts {
		for _, p := range proxies {
			send(i, p)
		}
	}
	time.Sleep(500 * time.Millisecond) // the marks go out every 100ms
	proxies[2].Kill(t)
	killed := time.Now()
	behind := 0
	for i, a := range accounts {
		if st := s.ReadStatus(t, a); len(st.Usage) == 0 || st.Usage[0].Requests != ledgers[i].Total().Requests {
			behind++
		}
	}
	if behind == 0 {
		t.Fatal("every user was written before the kill: the test's timing proves nothing")
	}

	for i, a := range accounts {
		want := ledgers[i].Total()
		st := s.WaitUser(t, a, func(u *llmv1alpha1.LLMUser) (bool, string) {
			ok := len(u.Status.Usage) == 1 && u.Status.Usage[0].Requests >= want.Requests
			return ok, fmt.Sprintf("user %d: want %d requests in status", i, want.Requests)
		}).Status
		harness.CheckCharged(t, st, want)
	}
	took := time.Since(killed)
	t.Logf("%d of %d users behind at the kill; every one exact %s after it (lease %s, flush %s)", behind, users, took.Round(100*time.Millisecond), lease, flush)
	// The killed replica's lease and marks are gone: handed on.
	waitLeases(2)
	live, err := rc.HGetAll(t.Context(), "llmq:{llmq-owners}:leases").Result()
	if err != nil {
		t.Fatal(err)
	}
	hashes, err := rc.Keys(t.Context(), "llmq:{llmq-owners}:changed:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hashes {
		if _, ok := live[strings.TrimPrefix(h, "llmq:{llmq-owners}:changed:")]; !ok {
			t.Errorf("%s is left of a replica that is not live (live: %v)", h, live)
		}
	}
}
