package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/llm-user-operator/llm-user-operator/internal/quota"
)

// vllmUpstream is a fake vLLM that generates the most vLLM could for a
// request: every sequence runs to its cap (as with ignore_eos), and it reads
// the request the way the loosest vLLM version does: a cap that is not a
// positive integer (0, null, negative, not an integer) is no cap, so the
// output runs to the context length, and max_completion_tokens 0 falls back
// to max_tokens (`max_completion_tokens or max_tokens`). An array of prompts
// and n (or best_of) multiply the sequences. It refuses, as vLLM does, a cap
// that with the prompt overflows the context. It decodes the body with
// encoding/json, independently of the proxy's scanner.
type vllmUpstream struct {
	*fakeUpstream
	context int64
}

func newVLLMUpstream(t testing.TB, model string, contextLen int64) *vllmUpstream {
	v := &vllmUpstream{fakeUpstream: newUpstream(t, model), context: contextLen}
	v.handle = v.serve
	return v
}

// capOf reads a cap the way the loosest vLLM does: a positive integer, or
// nothing.
func capOf(raw any) (int64, bool) {
	switch x := raw.(type) {
	case float64:
		if x >= 1 && x == math.Trunc(x) {
			return int64(min(x, 1<<50)), true
		}
	case string:
		var f float64
		if _, err := fmt.Sscan(strings.TrimSpace(x), &f); err == nil && f >= 1 && f == math.Trunc(f) {
			return int64(f), true
		}
	}
	return 0, false
}

// promptTokens counts a prompt as a tokenizer would, roughly: four
// characters of text a token, token ids one each.
func promptTokens(raw any) (tokens, prompts int64) {
	switch x := raw.(type) {
	case string:
		return int64(len(x)/4 + 1), 1
	case []any:
		if len(x) == 0 {
			return 0, 1
		}
		if _, ok := x[0].(float64); ok {
			return int64(len(x)), 1
		}
		for _, p := range x {
			t, _ := promptTokens(p)
			tokens += t
		}
		return tokens, int64(len(x))
	}
	return 1, 1
}

func (v *vllmUpstream) serve(w http.ResponseWriter, r *http.Request, body []byte) {
	var req map[string]any
	if err := json.Unmarshal(body, &req); err != nil {
		w.WriteHeader(400)
		fmt.Fprintf(w, `{"error":{"message":%q,"type":"BadRequestError","param":null,"code":400}}`, err.Error())
		return
	}
	var input, prompts int64 = 0, 1
	var per int64
	var set bool
	switch r.URL.Path {
	case "/v1/chat/completions":
		for _, m := range asSlice(req["messages"]) {
			if mm, ok := m.(map[string]any); ok {
				t, _ := promptTokens(mm["content"])
				input += t
			}
		}
		input += 4
		if per, set = capOf(req["max_completion_tokens"]); !set {
			per, set = capOf(req["max_tokens"])
		}
	case "/v1/completions":
		input, prompts = promptTokens(req["prompt"])
		// Each prompt_embeds entry is its own prompt (of one token here).
		switch pe := req["prompt_embeds"].(type) {
		case string:
			input, prompts = input+1, 1
		case []any:
			if _, ok := req["prompt"]; !ok {
				input, prompts = 0, 0
			}
			input, prompts = input+int64(len(pe)), prompts+int64(len(pe))
		}
		per, set = capOf(req["max_tokens"])
		if _, present := req["max_tokens"]; !present {
			per, set = 16, true
		}
	case "/v1/responses":
		input, _ = promptTokens(req["input"])
		per, set = capOf(req["max_output_tokens"])
	case "/tokenize":
		io.WriteString(w, `{"count":1,"max_model_len":8192,"tokens":[1]}`)
		return
	}
	perPrompt := input / prompts
	if !set {
		per = v.context - perPrompt
	} else if perPrompt+per > v.context {
		w.WriteHeader(400)
		fmt.Fprintf(w, `{"error":{"message":"This model's maximum context length is %d tokens. However, you requested %d tokens (%d in the messages, %d in the completion).","type":"BadRequestError","param":null,"code":400}}`,
			v.context, perPrompt+per, perPrompt, per)
		return
	}
	n := int64(1)
	for _, k := range []string{"n", "best_of"} {
		if c, ok := capOf(req[k]); ok {
			n = max(n, c)
		}
	}
	output := per * n * prompts
	stream, _ := req["stream"].(bool)
	if !stream {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"%s"}}],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}`,
			strings.Repeat("x", int(min(output, 64))), input, output, input+output)
		return
	}
	final, continuous := streamOptions(body)
	w.Header().Set("Content-Type", "text/event-stream")
	fl := w.(http.Flusher)
	for i := int64(1); i <= output; i++ {
		ev := `data: {"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"x"}}]}` + "\n\n"
		if continuous {
			ev = withUsage(ev, int(input), int(i))
		}
		if _, err := io.WriteString(w, ev); err != nil {
			return
		}
		if i%64 == 0 || i == output {
			fl.Flush()
		}
	}
	if final {
		fmt.Fprintf(w, "data: {\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d}}\n\n", input, output, input+output)
	}
	io.WriteString(w, doneEvent)
}

func asSlice(v any) []any {
	s, _ := v.([]any)
	return s
}

// auditCounter records every settled reservation with what it was settled
// to, so a test can check that no request used more than it reserved.
type auditCounter struct {
	quota.Counter
	mu      sync.Mutex
	settled []settled
}

type settled struct{ reserved, actual quota.Amount }

func (a *auditCounter) Settle(ctx context.Context, r *quota.Reservation, actual quota.Amount) error {
	a.mu.Lock()
	a.settled = append(a.settled, settled{r.Amount, actual})
	a.mu.Unlock()
	return a.Counter.Settle(ctx, r, actual)
}

func (a *auditCounter) all() []settled {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]settled(nil), a.settled...)
}
