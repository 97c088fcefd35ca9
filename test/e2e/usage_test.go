package e2e_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"k8s.io/apimachinery/pkg/api/meta"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/test/harness"
)

// testTokenSecret checks what a pod gets from envFrom: a token, the same
// token as OPENAI_API_KEY, the proxy's URL and the expiry.
func (s *suite) testTokenSecret(t *testing.T) {
	t.Parallel()
	a := s.NewAccount(t, harness.DayTokens(1_000_000))
	if a.Env["token"] == "" || a.Env["OPENAI_API_KEY"] != a.Env["token"] {
		t.Errorf("Secret keys token and OPENAI_API_KEY differ or are empty")
	}
	if got := a.Env["OPENAI_BASE_URL"]; got != s.proxy.BaseURL {
		t.Errorf("OPENAI_BASE_URL = %q, want the proxy's %q", got, s.proxy.BaseURL)
	}
	exp, err := time.Parse(time.RFC3339, a.Env["expiresAt"])
	if err != nil {
		t.Errorf("expiresAt %q is not RFC 3339: %v", a.Env["expiresAt"], err)
	} else if d := time.Until(exp); d < 23*time.Hour || d > 25*time.Hour {
		t.Errorf("expiresAt %s is %s away, want the default TTL of 24h", exp, d)
	}
	var u llmv1alpha1.LLMUser
	if err := s.Client.Get(t.Context(), a.Key(), &u); err != nil {
		t.Fatal(err)
	}
	if !meta.IsStatusConditionTrue(u.Status.Conditions, llmv1alpha1.ConditionTokenIssued) {
		t.Errorf("TokenIssued is not True: %s", harness.ToJSON(u.Status.Conditions))
	}
}

// testChatCompletion: non-streamed chat answers carry usage, and exactly that
// usage reaches the LLMUser's status and the proxy's metrics.
func (s *suite) testChatCompletion(t *testing.T) {
	t.Parallel()
	const limit = 1_000_000
	a := s.NewAccount(t, harness.DayTokens(limit))
	var usages []openai.CompletionUsage
	for i := range 2 {
		var resp *http.Response
		res, err := a.Client.Chat.Completions.New(t.Context(), chatParams("Say hello to the end-to-end test."), option.WithResponseInto(&resp))
		if err != nil {
			t.Fatalf("chat completion %d: %v", i, err)
		}
		if len(res.Choices) == 0 || res.Choices[0].Message.Content == "" {
			t.Fatalf("chat completion %d has no content: %s", i, res.RawJSON())
		}
		if !res.JSON.Usage.Valid() || res.Usage.PromptTokens == 0 || res.Usage.CompletionTokens == 0 {
			t.Fatalf("chat completion %d reports no usage: %s", i, res.RawJSON())
		}
		if res.Model != modelID {
			t.Errorf("model %q, want %q", res.Model, modelID)
		}
		if got := resp.Header.Get("X-Ratelimit-Limit-Tokens"); got != "1000000" {
			t.Errorf("x-ratelimit-limit-tokens = %q, want the Day limit 1000000", got)
		}
		usages = append(usages, res.Usage)
	}

	want := harness.Totals(usages...)
	st := s.WaitRequests(t, a, want.Requests)
	harness.CheckCharged(t, st, want)
	w := st.Usage[0]
	if w.Window != llmv1alpha1.WindowDay {
		t.Errorf("status.usage[0].window = %s, want Day", w.Window)
	}
	if w.Remaining == nil || *w.Remaining != limit-want.TotalTokens {
		t.Errorf("status.usage[0].remaining = %v, want %d", harness.ToJSON(w.Remaining), limit-want.TotalTokens)
	}
	if st.LastRequestAt == nil {
		t.Errorf("status.lastRequestAt is not set")
	}
	checkMetrics(t, s.proxy.MetricsURL, a, want)
}

// streams is how many streams each streaming test makes: the client closing
// its connection as soon as it has read [DONE] races with the proxy's own
// end of the stream, and a few streams give that race a fair chance to show.
const streams = 5

// testStreamWithoutUsage: a client that did not ask for stream usage gets
// no usage-only chunk, although the proxy asked the upstream for it to
// charge the user exactly.
func (s *suite) testStreamWithoutUsage(t *testing.T) {
	t.Parallel()
	a := s.NewAccount(t, harness.DayTokens(1_000_000))
	const prompt = "Tell a very short story."
	// The simulator's tokenizer is deterministic: ask it directly what the
	// prompt costs, without charging anyone.
	upstream := harness.NewClient(s.simURL+"/v1", "unused")
	probe, err := upstream.Chat.Completions.New(t.Context(), chatParams(prompt))
	if err != nil {
		t.Fatalf("asking the simulator directly: %v", err)
	}
	wantIn := probe.Usage.PromptTokens

	want := llmv1alpha1.UsageTotals{}
	for i := range streams {
		stream := a.Client.Chat.Completions.NewStreaming(t.Context(), chatParams(prompt))
		chunks, generated := 0, int64(0)
		for stream.Next() {
			c := stream.Current()
			chunks++
			if len(c.Choices) == 0 {
				t.Errorf("stream %d chunk %d has no choices (a usage chunk the client did not ask for?): %s", i, chunks, c.RawJSON())
			}
			if c.JSON.Usage.Valid() {
				t.Errorf("stream %d chunk %d carries usage the client did not ask for: %s", i, chunks, c.RawJSON())
			}
			for _, ch := range c.Choices {
				if ch.Delta.Content != "" {
					generated++
				}
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		if generated == 0 {
			t.Fatalf("stream %d: no content in %d chunks", i, chunks)
		}
		// The simulator streams one token per chunk with content, so the
		// streamed content is exactly what it reports to the proxy.
		want.Requests++
		want.InputTokens += wantIn
		want.OutputTokens += generated
		want.TotalTokens += wantIn + generated
	}
	harness.CheckCharged(t, s.WaitRequests(t, a, streams), want)
	checkMetrics(t, s.proxy.MetricsURL, a, want)
}

// testStreamWithUsage: a client that asks for stream usage gets the final
// usage-only chunk, and is charged exactly what it says.
func (s *suite) testStreamWithUsage(t *testing.T) {
	t.Parallel()
	a := s.NewAccount(t, harness.DayTokens(1_000_000))
	params := chatParams("Tell a very short story.")
	params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	var usages []openai.CompletionUsage
	for i := range streams {
		stream := a.Client.Chat.Completions.NewStreaming(t.Context(), params)
		var usage *openai.CompletionUsage
		generated := 0
		for stream.Next() {
			c := stream.Current()
			if usage != nil {
				t.Errorf("stream %d: a chunk after the usage chunk: %s", i, c.RawJSON())
			}
			if c.JSON.Usage.Valid() {
				if len(c.Choices) != 0 {
					t.Errorf("stream %d: the usage chunk has choices: %s", i, c.RawJSON())
				}
				usage = &c.Usage
				continue
			}
			if len(c.Choices) == 0 {
				t.Errorf("stream %d: a chunk with neither choices nor usage: %s", i, c.RawJSON())
			}
			for _, ch := range c.Choices {
				if ch.Delta.Content != "" {
					generated++
				}
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		if usage == nil {
			t.Fatalf("stream %d ended without the usage chunk", i)
		}
		if generated == 0 || usage.PromptTokens == 0 || usage.CompletionTokens == 0 {
			t.Fatalf("stream %d: %d content chunks, usage %s", i, generated, usage.RawJSON())
		}
		usages = append(usages, *usage)
	}
	want := harness.Totals(usages...)
	harness.CheckCharged(t, s.WaitRequests(t, a, want.Requests), want)
	checkMetrics(t, s.proxy.MetricsURL, a, want)
}

// testCompletionsAndEmbeddings: the legacy completions API is charged like
// chat, embeddings are charged their input only.
func (s *suite) testCompletionsAndEmbeddings(t *testing.T) {
	t.Parallel()
	a := s.NewAccount(t, harness.DayTokens(1_000_000))
	comp, err := a.Client.Completions.New(t.Context(), openai.CompletionNewParams{
		Model:     openai.CompletionNewParamsModel(modelID),
		Prompt:    openai.CompletionNewParamsPromptUnion{OfString: openai.String("Once upon a time")},
		MaxTokens: openai.Int(16),
	})
	if err != nil {
		t.Fatalf("completion: %v", err)
	}
	if len(comp.Choices) == 0 || comp.Choices[0].Text == "" || comp.Usage.PromptTokens == 0 || comp.Usage.CompletionTokens == 0 {
		t.Fatalf("completion without text or usage: %s", comp.RawJSON())
	}
	emb, err := a.Client.Embeddings.New(t.Context(), openai.EmbeddingNewParams{
		Model:          modelID,
		Input:          openai.EmbeddingNewParamsInputUnion{OfString: openai.String("The quick brown fox jumps over the lazy dog.")},
		EncodingFormat: openai.EmbeddingNewParamsEncodingFormatFloat,
	})
	if err != nil {
		t.Fatalf("embeddings: %v", err)
	}
	if len(emb.Data) != 1 || len(emb.Data[0].Embedding) == 0 || emb.Usage.PromptTokens == 0 {
		t.Fatalf("embeddings without a vector or usage: data=%d usage=%s", len(emb.Data), emb.Usage.RawJSON())
	}
	want := harness.Totals(comp.Usage)
	want.Requests++
	want.InputTokens += emb.Usage.PromptTokens
	want.TotalTokens += emb.Usage.PromptTokens
	harness.CheckCharged(t, s.WaitRequests(t, a, want.Requests), want)
	checkMetrics(t, s.proxy.MetricsURL, a, want)
}
