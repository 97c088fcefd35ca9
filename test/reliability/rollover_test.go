package reliability_test

import (
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"

	"github.com/llm-user-operator/llm-user-operator/test/harness"
)

// testRollover is a rolling update with the in-process counter, as the
// operator does it (maxSurge 1, maxUnavailable 0): a second proxy starts
// beside the first, seeded from status; both serve the same two users, each
// writing status every second; the first gets SIGTERM with streams in
// flight and finishes them; the second serves on. Each replica counts only
// what it served, so status is exact only if each merges what the other
// wrote (internal/usage): it must equal what the clients were told.
func (s *suite) testRollover(t *testing.T) {
	t.Parallel()
	const limit = 10_000_000
	accounts := []*harness.Account{s.NewAccount(t, harness.DayTokens(limit)), s.NewAccount(t, harness.DayTokens(limit))}
	sim := s.StartSimulator(t, "simulator-rollover", "--mode", "echo",
		"--time-to-first-token", "50ms", "--inter-token-latency", "20ms")
	flags := []string{"--flush-interval", "1s", "--shutdown-grace", "20s"}
	old := s.StartProxy(t, "proxy-old", harness.ProxyConfig{Upstream: sim.URL, Flags: flags})

	ledgers := make([]harness.Ledger, len(accounts))
	var failures atomic.Int64
	// stream sends one streamed request; it reports false when the proxy
	// refused it before sending anything (the old one, once stopping).
	stream := func(c openai.Client, i int, stopping <-chan struct{}) bool {
		params := chatParams(echoPrompt, echoMaxTokens)
		params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
		st := c.Chat.Completions.NewStreaming(t.Context(), params)
		var usage *openai.CompletionUsage
		chunks := 0
		for st.Next() {
			chunks++
			if ch := st.Current(); ch.JSON.Usage.Valid() {
				u := ch.Usage
				usage = &u
			}
		}
		if err := st.Err(); err != nil {
			select {
			case <-stopping:
				if chunks == 0 {
					return false
				}
			default:
			}
			failures.Add(1)
			t.Errorf("user %d: stream failed after %d chunks: %v", i, chunks, err)
			return false
		}
		if usage == nil {
			failures.Add(1)
			t.Errorf("user %d: stream ended without its usage chunk", i)
			return false
		}
		checkUsage(t, "stream of user "+strconv.Itoa(i), *usage, true)
		ledgers[i].Add(*usage)
		return true
	}
	// Before the update: the old proxy alone.
	var wg sync.WaitGroup
	for i, a := range accounts {
		c := harness.NewClient(old.BaseURL, a.APIKey())
		for range 2 {
			wg.Go(func() { stream(c, i, nil) })
		}
	}
	wg.Wait()

	// The new pod starts beside it; clients reach both (the Service).
	cur := s.StartProxy(t, "proxy-new", harness.ProxyConfig{Upstream: sim.URL, Flags: flags})
	stopOld, stopAll := make(chan struct{}), make(chan struct{})
	var onOld, onNew atomic.Int64
	for i, a := range accounts {
		for _, p := range []struct {
			proxy harness.Proxy
			stop  chan struct{}
			n     *atomic.Int64
		}{{old, stopOld, &onOld}, {cur, stopAll, &onNew}} {
			c := harness.NewClient(p.proxy.BaseURL, a.APIKey())
			for range 3 {
				wg.Go(func() {
					for {
						select {
						case <-p.stop:
							return
						case <-stopAll:
							return
						default:
						}
						if stream(c, i, stopOld) {
							p.n.Add(1)
						}
					}
				})
			}
		}
	}
	// Several flushes of each, racing, with streams always in flight.
	time.Sleep(4 * time.Second)
	close(stopOld)
	if err := old.Terminate(t, 40*time.Second); err != nil {
		t.Errorf("the old proxy exited with %v after SIGTERM, want status 0", err)
	}
	time.Sleep(3 * time.Second)
	close(stopAll)
	wg.Wait()
	if failures.Load() > 0 {
		t.FailNow()
	}
	if onOld.Load() < 6 || onNew.Load() < 6 {
		t.Fatalf("%d streams through the old proxy and %d through the new one during the update: too few to test the merge", onOld.Load(), onNew.Load())
	}
	for i, a := range accounts {
		want := ledgers[i].Total()
		s.WaitCharged(t, a, want)
		t.Logf("user %d: %d tokens in %d requests, exact in status", i, want.TotalTokens, want.Requests)
	}
	t.Logf("during the update: %d streams through the old proxy, %d through the new", onOld.Load(), onNew.Load())
}
