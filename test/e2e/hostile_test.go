package e2e_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"k8s.io/utils/ptr"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/test/harness"
)

// testHostile sends, through the real proxy to the simulator, the request
// shapes that asked for more than was reserved before the proxy bounded
// every request's output (issue 8's table): with a cap of 16 tokens per
// request, no answer has more than 16 completion tokens, what goes past
// the cap is refused with 400, and a small budget spent by many clients at
// once is never exceeded in status.
func (s *suite) testHostile(t *testing.T) {
	t.Parallel()
	const (
		limit  = 2000
		maxPer = 16
	)
	a := s.NewAccount(t, llmv1alpha1.LLMQuotaSpec{
		Limits:              []llmv1alpha1.QuotaLimit{{Window: llmv1alpha1.WindowDay, Tokens: ptr.To[int64](limit)}},
		MaxTokensPerRequest: ptr.To[int64](maxPer),
	})
	prompts := func(n int) string {
		return `["` + strings.TrimSuffix(strings.Repeat(`Hello there","`, n), `","`) + `"]`
	}
	send := func(path, body string) (int, []byte) {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, s.proxy.BaseURL+strings.TrimPrefix(path, "/v1"), strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+a.APIKey())
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	type usage struct {
		Usage struct {
			PromptTokens     int64 `json:"prompt_tokens"`
			CompletionTokens int64 `json:"completion_tokens"`
		} `json:"usage"`
	}
	for _, tc := range []struct {
		name, path, body string
		status           int
	}{
		{"max_completion_tokens 0", "/v1/chat/completions", `{"model":"` + modelID + `","messages":[{"role":"user","content":"Hello"}],"max_completion_tokens":0}`, 200},
		{`max_tokens "0"`, "/v1/chat/completions", `{"model":"` + modelID + `","messages":[{"role":"user","content":"Hello"}],"max_tokens":"0"}`, 200},
		{"20 prompts at the cap", "/v1/completions", `{"model":"` + modelID + `","prompt":` + prompts(20) + `,"max_tokens":16}`, 400},
		{"4 prompts, no max_tokens", "/v1/completions", `{"model":"` + modelID + `","prompt":` + prompts(4) + `,"max_tokens":null}`, 200},
		{"n 8 at the cap", "/v1/chat/completions", `{"model":"` + modelID + `","messages":[{"role":"user","content":"Hello"}],"max_tokens":16,"n":8}`, 400},
		{"n 8, no max_tokens", "/v1/chat/completions", `{"model":"` + modelID + `","messages":[{"role":"user","content":"Hello"}],"n":8}`, 200},
		{"background", "/v1/responses", `{"model":"` + modelID + `","input":"Hello","background":true}`, 400},
	} {
		code, b := send(tc.path, tc.body)
		if code != tc.status {
			t.Errorf("%s: status %d, want %d: %s", tc.name, code, tc.status, b)
			continue
		}
		if code != 200 {
			continue
		}
		var u usage
		if err := json.Unmarshal(b, &u); err != nil {
			t.Errorf("%s: %v: %s", tc.name, err, b)
			continue
		}
		if u.Usage.CompletionTokens > maxPer {
			t.Errorf("%s: %d completion tokens, over the cap of %d per request", tc.name, u.Usage.CompletionTokens, maxPer)
		}
	}

	// Many clients at once spend the rest of the budget: status never
	// shows more than the limit.
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	for range 16 {
		wg.Go(func() {
			for range 20 {
				code, _ := send("/v1/chat/completions", `{"model":"`+modelID+`","messages":[{"role":"user","content":"Hello"}],"max_completion_tokens":0}`)
				mu.Lock()
				codes[code]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if codes[200] == 0 || codes[429] == 0 || codes[200]+codes[429] != 320 {
		t.Errorf("statuses %v: want successes, then 429 once the budget is spent", codes)
	}
	st := s.WaitUser(t, a, func(u *llmv1alpha1.LLMUser) (bool, string) {
		return u.Status.Lifetime != nil && s.proxyPending(t) == 0, "usage not flushed yet"
	})
	if used := st.Status.Usage[0].TotalTokens; used > limit {
		t.Errorf("status shows %d tokens used of a limit of %d", used, limit)
	} else {
		t.Logf("%d requests admitted, %d refused; %d of %d tokens used", codes[200], codes[429], used, limit)
	}
}

// proxyPending is how many objects the proxy has not yet written to status.
func (s *suite) proxyPending(t *testing.T) float64 {
	v, _ := harness.Scrape(t, s.proxy.MetricsURL).Value("llm_proxy_status_pending_objects")
	return v
}
