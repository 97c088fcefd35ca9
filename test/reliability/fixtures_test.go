package reliability_test

import (
	"testing"

	"github.com/openai/openai-go/v3"

	"github.com/llm-user-operator/llm-user-operator/test/harness"
)

// chatParams asks for at most maxTokens tokens in answer to prompt.
func chatParams(prompt string, maxTokens int64) openai.ChatCompletionNewParams {
	return harness.ChatParams(modelID, prompt, maxTokens)
}

// checkUsage fails t unless usage is a complete report: the SDK parsed it,
// and its total is the sum of its parts (status adds the parts).
func checkUsage(t *testing.T, what string, u openai.CompletionUsage, valid bool) {
	t.Helper()
	if !valid || u.PromptTokens == 0 || u.CompletionTokens == 0 || u.TotalTokens != u.PromptTokens+u.CompletionTokens {
		t.Errorf("%s: usage %s is missing or inconsistent", what, u.RawJSON())
	}
}
