package e2e_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"k8s.io/utils/ptr"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/test/harness"
)

// micros writes a number of millionths as status writes a cost: an exact
// decimal without trailing zeros.
func micros(n int64) string {
	s := fmt.Sprintf("%d.%06d", n/1_000_000, n%1_000_000)
	return strings.TrimSuffix(strings.TrimRight(s, "0"), ".")
}

// testCostBudget: a priced quota's Day cost budget admits requests while
// their worst case fits, then refuses with 429 insufficient_quota naming the
// budget and its currency; status shows exactly what the client was told it
// used, priced, split by model.
func (s *suite) testCostBudget(t *testing.T) {
	t.Parallel()
	// 2 USD a million tokens of every kind: 2 µUSD a token, so the cost is
	// known from the usage the client sees, cached or not.
	two := llmv1alpha1.Decimal("2")
	a := s.NewAccount(t, llmv1alpha1.LLMQuotaSpec{
		Limits: []llmv1alpha1.QuotaLimit{{Window: llmv1alpha1.WindowDay, Cost: ptr.To[llmv1alpha1.Decimal]("0.0002")}},
		Pricing: &llmv1alpha1.Pricing{Currency: "USD", Models: []llmv1alpha1.ModelPrice{
			{Model: "*", Input: two, CachedInput: &two, Output: two},
		}},
	})
	var tokens, ok int64
	for i := 0; ; i++ {
		if i == 20 {
			t.Fatalf("20 requests admitted under a budget of 200 µUSD at 2 µUSD a token (%d tokens)", tokens)
		}
		res, err := a.Client.Chat.Completions.New(t.Context(), chatParams("Hello"))
		if err == nil {
			tokens += res.Usage.TotalTokens
			ok++
			// The refusal's "used" must be what the client was told.
			waitSettled(t, a.Client)
			continue
		}
		e := harness.RequireAPIError(t, err, http.StatusTooManyRequests)
		if e.Type != "insufficient_quota" || e.Code != "insufficient_quota" {
			t.Errorf("type %q code %q, want insufficient_quota; body: %s", e.Type, e.Code, e.RawJSON())
		}
		for _, want := range []string{"Day cost budget", "budget 0.0002 USD", "used " + micros(2*tokens) + " USD", "resets at"} {
			if !strings.Contains(e.Message, want) {
				t.Errorf("message %q lacks %q", e.Message, want)
			}
		}
		break
	}
	if ok == 0 || 2*tokens > 200 {
		t.Fatalf("%d requests admitted for %d tokens (%d µUSD): want some, and no more than the 200 µUSD budget", ok, tokens, 2*tokens)
	}

	st := s.WaitRequests(t, a, ok)
	w := st.Usage[0]
	cost := micros(2 * tokens)
	if w.Cost != cost || w.Currency != "USD" || w.RemainingCost != micros(200-2*tokens) || w.TotalTokens != tokens {
		t.Errorf("status.usage[0]: cost %q %q, remainingCost %q, %d tokens; want %s USD, %s left, %d tokens",
			w.Cost, w.Currency, w.RemainingCost, w.TotalTokens, cost, micros(200-2*tokens), tokens)
	}
	if len(w.Models) != 1 || w.Models[0].Model != modelID || w.Models[0].Cost != cost || w.Models[0].Requests != ok {
		t.Errorf("status.usage[0].models = %s, want %s: %d requests costing %s", harness.ToJSON(w.Models), modelID, ok, cost)
	}
	if st.Lifetime == nil || st.Lifetime.Cost != cost {
		t.Errorf("status.lifetime = %s, want cost %s", harness.ToJSON(st.Lifetime), cost)
	}
}
