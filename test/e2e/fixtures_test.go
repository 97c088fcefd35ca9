package e2e_test

import (
	"testing"

	"github.com/openai/openai-go/v3"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/test/harness"
)

// chatParams asks for a short answer to prompt.
func chatParams(prompt string) openai.ChatCompletionNewParams {
	return harness.ChatParams(modelID, prompt, 16)
}

// checkMetrics checks that the proxy's counters for the account say what
// want says.
func checkMetrics(t *testing.T, metricsURL string, a *harness.Account, want llmv1alpha1.UsageTotals) {
	t.Helper()
	m := harness.ScrapeUser(t, metricsURL, a.Namespace, a.Name)
	if m.InputTokens != want.InputTokens || m.OutputTokens != want.OutputTokens {
		t.Errorf("llm_proxy_tokens_total input=%d output=%d, want %d and %d", m.InputTokens, m.OutputTokens, want.InputTokens, want.OutputTokens)
	}
	if m.Requests != want.Requests {
		t.Errorf("llm_proxy_requests_total = %d, want %d", m.Requests, want.Requests)
	}
}
