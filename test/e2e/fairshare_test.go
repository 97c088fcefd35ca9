package e2e_test

import (
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"

	"github.com/llm-user-operator/llm-user-operator/internal/operatorconfig"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
	"github.com/llm-user-operator/llm-user-operator/test/harness"
)

// TestFairShare: a noisy user's ten long requests, sent at once, fill a
// model server that runs two at a time; a victim's one request, sent after
// them, is served next, not after all of them. The operator's
// proxy.fairQueue.maxInFlight reaches the reconciled proxy, which holds
// the noisy user's requests in its queue, where the victim's, whose user
// was served fewer tokens, goes first. Without the gate the simulator would
// run them first come, first served, and the victim would finish last.
// The test asserts the order of completion, not times.
func TestFairShare(t *testing.T) {
	const slots, noisy = 2, 10
	env, proxy := startFairQueue(t, "fair", slots, 0)
	noisyUser := env.NewAccount(t, harness.DayTokens(10_000_000))
	victim := env.NewAccount(t, harness.DayTokens(10_000_000))
	prompt := strings.TrimSpace(strings.Repeat("the quick brown fox jumps over the lazy dog again ", 4))

	var mu sync.Mutex
	var order []string
	done := func(who string) {
		mu.Lock()
		defer mu.Unlock()
		order = append(order, who)
	}
	var wg sync.WaitGroup
	nc := harness.NewClient(proxy.BaseURL, noisyUser.APIKey())
	for i := range noisy {
		wg.Go(func() {
			if _, err := nc.Chat.Completions.New(t.Context(), harness.ChatParams(modelID, prompt, 64)); err != nil {
				t.Errorf("noisy request %d: %v", i, err)
			}
			done("noisy")
		})
	}
	// Every noisy request is in: two run, eight wait in the proxy.
	waitQueued(t, proxy.MetricsURL, noisy-slots)
	vc := harness.NewClient(proxy.BaseURL, victim.APIKey())
	res, err := vc.Chat.Completions.New(t.Context(), harness.ChatParams(modelID, prompt, 64))
	if err != nil {
		t.Fatalf("the victim's request: %v", err)
	}
	done("victim")
	wg.Wait()

	before := 0
	for _, who := range order {
		if who == "victim" {
			break
		}
		before++
	}
	// The two running when it came, and at most the next two: the slot
	// freed first goes to it.
	if before > 2*slots {
		t.Errorf("%d of the noisy user's requests finished before the victim's (order %v), want at most %d: the victim waited behind the noisy user's queue", before, order, 2*slots)
	}
	checkCompletionUsage(t, res)
	t.Logf("completion order: %v", order)
	var dispatched uint64
	for _, m := range harness.Scrape(t, proxy.MetricsURL)["llm_proxy_queue_wait_seconds"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "tier" && l.GetValue() == "0" {
				dispatched += m.GetHistogram().GetSampleCount()
			}
		}
	}
	if dispatched != noisy+1 {
		t.Errorf("llm_proxy_queue_wait_seconds{tier=\"0\"} counts %d dispatches, want %d", dispatched, noisy+1)
	}
}

// TestFairShareReservedSlot: the same noisy user in front of a simulator
// that runs three at a time, with proxy.fairQueue.reservedSlots 1: the
// noisy user holds two slots and the other eight wait (proof that the
// setting reached the reconciled proxy), and the victim's request takes the
// third at once: at most the two running when it came finish before it
// (it may pass one of them: they started only milliseconds earlier and run
// as long). Without the reserved slot it would wait for one of three to
// end, and all three would finish first.
func TestFairShareReservedSlot(t *testing.T) {
	const slots, noisy = 3, 10
	env, proxy := startFairQueue(t, "reserved", slots, 1)
	noisyUser := env.NewAccount(t, harness.DayTokens(10_000_000))
	victim := env.NewAccount(t, harness.DayTokens(10_000_000))
	prompt := strings.TrimSpace(strings.Repeat("the quick brown fox jumps over the lazy dog again ", 4))

	var mu sync.Mutex
	var order []string
	done := func(who string) {
		mu.Lock()
		defer mu.Unlock()
		order = append(order, who)
	}
	var wg sync.WaitGroup
	nc := harness.NewClient(proxy.BaseURL, noisyUser.APIKey())
	for i := range noisy {
		wg.Go(func() {
			if _, err := nc.Chat.Completions.New(t.Context(), harness.ChatParams(modelID, prompt, 64)); err != nil {
				t.Errorf("noisy request %d: %v", i, err)
			}
			done("noisy")
		})
	}
	waitQueued(t, proxy.MetricsURL, 8)
	vc := harness.NewClient(proxy.BaseURL, victim.APIKey())
	res, err := vc.Chat.Completions.New(t.Context(), harness.ChatParams(modelID, prompt, 64))
	if err != nil {
		t.Fatalf("the victim's request: %v", err)
	}
	done("victim")
	wg.Wait()
	checkCompletionUsage(t, res)
	t.Logf("completion order: %v", order)
	if i := slices.Index(order, "victim"); i > 2 {
		t.Errorf("the victim's request finished after %d of the noisy user's (order %v), want after at most the 2 running when it came", i, order)
	}
}

// startFairQueue starts an operator whose reconciled proxy gates the
// simulator with a fair queue of slots (reserved of them for users with
// nothing running), in front of a simulator that runs as many: in echo
// mode a 40-word prompt streams back a token every 20ms, so a request
// lasts about a second.
func startFairQueue(t *testing.T, name string, slots, reserved int) (*harness.Env, harness.Proxy) {
	t.Helper()
	env := harness.Start(t, harness.Options{Issuer: "https://e2e-" + name, Model: modelID, NamespacePrefix: name, FlushWait: flushWait})
	sim := env.StartSimulator(t, "llm-d-inference-sim", "--mode", "echo", "--max-num-seqs", strconv.Itoa(slots),
		"--time-to-first-token", "50ms", "--inter-token-latency", "20ms")
	mgr := env.StartManager(t, harness.ManagerConfig{Proxy: func(p *operatorconfig.Proxy) {
		proxySettings(sim.URL, proxyFlushInterval)(p)
		p.FairQueue.MaxInFlight = int32(slots)
		p.FairQueue.ReservedSlots = int32(reserved)
	}})
	return env, env.StartReconciledProxy(t, "proxy", mgr)
}

// waitQueued waits until the proxy's fair queues hold n requests.
func waitQueued(t *testing.T, metricsURL string, n int) {
	t.Helper()
	poll.Until(t, 30*time.Second, func() error {
		q, _ := harness.Scrape(t, metricsURL).Value("llm_proxy_queued_requests")
		return poll.Check(q == float64(n), "the proxy holds "+strconv.FormatFloat(q, 'f', -1, 64)+" requests, want "+strconv.Itoa(n))
	})
}

func checkCompletionUsage(t *testing.T, res *openai.ChatCompletion) {
	t.Helper()
	if res.Usage.PromptTokens == 0 || res.Usage.CompletionTokens == 0 {
		t.Errorf("usage %s is missing", res.Usage.RawJSON())
	}
}
