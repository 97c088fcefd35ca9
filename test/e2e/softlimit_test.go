package e2e_test

import (
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"k8s.io/utils/ptr"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/test/harness"
)

// TestSoftLimit: an LLMQuota whose daily limit is soft (overage: Demote,
// one request, a hard ceiling of twelve) through the reconciled proxy and
// the simulator. Past the soft limit the owl's requests are served, as
// overflow (x-llm-overage: true): at night, with nobody else, all at once;
// by day, beside a user within quota whose requests fill the model server
// and its queue, only after every one of them was dispatched, though they
// were sent while the owl's waited. Status counts the overflow apart, and
// the ceiling refuses as a hard limit does.
func TestSoftLimit(t *testing.T) {
	env, proxy := startFairQueue(t, "soft", 2, 0)
	owl := env.NewAccount(t, llmv1alpha1.LLMQuotaSpec{Limits: []llmv1alpha1.QuotaLimit{{
		Window: llmv1alpha1.WindowDay, Requests: ptr.To[int64](1),
		Overage: llmv1alpha1.OverageDemote, HardLimit: &llmv1alpha1.LimitCaps{Requests: ptr.To[int64](12)},
	}}})
	worker := env.NewAccount(t, harness.DayTokens(10_000_000))
	prompt := strings.TrimSpace(strings.Repeat("the quick brown fox jumps over the lazy dog again ", 4))
	oc, wc := harness.NewClient(proxy.BaseURL, owl.APIKey()), harness.NewClient(proxy.BaseURL, worker.APIKey())

	var ledger harness.Ledger
	var mu sync.Mutex
	var order []string
	send := func(c openai.Client, who string, wantOverage string) {
		var resp *http.Response
		res, err := c.Chat.Completions.New(t.Context(), harness.ChatParams(modelID, prompt, 64), option.WithResponseInto(&resp))
		if err != nil {
			t.Errorf("%s: %v", who, err)
			return
		}
		if got := resp.Header.Get("X-Llm-Overage"); got != wantOverage {
			t.Errorf("%s: x-llm-overage %q, want %q", who, got, wantOverage)
		}
		mu.Lock()
		defer mu.Unlock()
		order = append(order, who)
		if who == "owl" {
			ledger.Add(res.Usage)
		}
	}

	// The one request within the soft limit.
	send(oc, "owl", "")
	inQuota := ledger.Total().TotalTokens
	// Night: nobody else; four overflow requests at once, all served.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { send(oc, "owl", "true") })
	}
	wg.Wait()

	// Day: the worker's six requests fill the two slots and queue four;
	// then the owl's four overflow requests queue behind them.
	order = nil
	for range 6 {
		wg.Go(func() { send(wc, "worker", "") })
	}
	waitQueued(t, proxy.MetricsURL, 4)
	for range 4 {
		wg.Go(func() { send(oc, "owl", "true") })
	}
	waitQueued(t, proxy.MetricsURL, 8)
	wg.Wait()
	if want := "worker,worker,worker,worker,worker,worker,owl,owl,owl,owl"; strings.Join(order, ",") != want {
		t.Errorf("completion order %v, want every request within quota before the overflow", order)
	}

	// Nine requests so far: three more fit under the ceiling of twelve.
	for range 3 {
		send(oc, "owl", "true")
	}
	_, err := oc.Chat.Completions.New(t.Context(), harness.ChatParams(modelID, prompt, 64))
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("past the ceiling: %v, want 429", err)
	}

	// Status: twelve requests charged, eleven of them overflow; the
	// overflow is the owl's whole usage less the first request's.
	total := ledger.Total()
	u := env.WaitUser(t, owl, func(u *llmv1alpha1.LLMUser) (bool, string) {
		ok := len(u.Status.Usage) == 1 && u.Status.Usage[0].Requests == 12 && u.Status.Usage[0].Overflow != nil && u.Status.Usage[0].Overflow.Requests == 11
		return ok, "want 12 requests, 11 of them overflow"
	})
	w := u.Status.Usage[0]
	if w.TotalTokens != total.TotalTokens {
		t.Errorf("status counts %d tokens, the client was told of %d", w.TotalTokens, total.TotalTokens)
	}
	if want := total.TotalTokens - inQuota; w.Overflow.TotalTokens != want {
		t.Errorf("overflow %d tokens, want %d: all but the first request's %d of %d", w.Overflow.TotalTokens, want, inQuota, total.TotalTokens)
	}
	if n, _ := harness.Scrape(t, proxy.MetricsURL).Value("llm_proxy_overflow_requests_total"); n != 11 {
		t.Errorf("llm_proxy_overflow_requests_total = %v, want 11", n)
	}
}
