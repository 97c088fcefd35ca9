package proxy

import (
	"net/http"
	"strings"

	"github.com/llm-user-operator/llm-user-operator/internal/metrics"
	"github.com/llm-user-operator/llm-user-operator/internal/openaiapi"
)

// kind is what an endpoint does with a request, which decides how it is
// metered.
type kind uint8

const (
	// generation produces output tokens, bounded by a cap field.
	generation kind = iota
	// embedding reads input only.
	embedding
	// utility (tokenize, detokenize) generates nothing; it counts as a
	// request against requests limits and nothing else.
	utility
)

// endpoint describes one proxied API path. The proxy serves exactly the
// paths of [endpoints].
type endpoint struct {
	path string
	kind kind
	// operation is the gen_ai_operation_name of the metrics; "" for utility.
	operation string
	// capFields are the fields that cap the output of one sequence, in the
	// order vLLM prefers them. The first is the one the proxy writes.
	capFields []string
	// defaultCap is the cap vLLM applies when the request omits every cap
	// field (not when it sets one to null): 16 for text completions. Zero
	// means up to the model's context length.
	defaultCap int64
	// promptField holds the prompt; for multiPrompt endpoints an array of
	// prompts (not of tokens) makes several sequences each.
	promptField string
	multiPrompt bool
	// streamUsage: the API takes stream_options.include_usage and
	// continuous_usage_stats.
	streamUsage bool
	// responses: the Responses API, with its own unmeterable options.
	responses bool
	// priority: vLLM takes a scheduling priority in the request body.
	priority bool
}

// metered reports whether the endpoint's usage is charged in tokens.
func (e *endpoint) metered() bool { return e.kind != utility }

// capField is the cap field the proxy writes.
func (e *endpoint) capField() string { return e.capFields[0] }

var (
	epChat = &endpoint{path: "/v1/chat/completions", kind: generation, operation: metrics.OperationChat,
		capFields: []string{"max_completion_tokens", "max_tokens"}, promptField: "messages", streamUsage: true, priority: true}
	epCompletions = &endpoint{path: "/v1/completions", kind: generation, operation: metrics.OperationTextCompletion,
		capFields: []string{"max_tokens"}, defaultCap: 16, promptField: "prompt", multiPrompt: true, streamUsage: true, priority: true}
	epEmbeddings = &endpoint{path: "/v1/embeddings", kind: embedding, operation: metrics.OperationEmbeddings,
		promptField: "input", priority: true}
	epResponses = &endpoint{path: "/v1/responses", kind: generation, operation: metrics.OperationChat,
		capFields: []string{"max_output_tokens"}, promptField: "input", responses: true, priority: true}
	epTokenize   = &endpoint{path: "/tokenize", kind: utility, promptField: "prompt"}
	epDetokenize = &endpoint{path: "/detokenize", kind: utility}

	// endpoints is every API path the proxy forwards.
	endpoints = []*endpoint{epChat, epCompletions, epEmbeddings, epResponses, epTokenize, epDetokenize}
)

// routes registers the proxy's paths on a mux: each endpoint of the table,
// the model listing, the caller's usage, and an OpenAI-shaped 404 for
// everything else.
func (p *Proxy) routes() http.Handler {
	mux := http.NewServeMux()
	paths := make([]string, 0, len(endpoints)+1)
	for _, ep := range endpoints {
		mux.Handle(ep.path, p.apiHandler(ep))
		paths = append(paths, ep.path)
	}
	mux.HandleFunc("/v1/models", func(w http.ResponseWriter, r *http.Request) {
		if methodIs(w, r, http.MethodGet) {
			p.serveModels(w, r, "")
		}
	})
	mux.HandleFunc("/v1/models/{id...}", func(w http.ResponseWriter, r *http.Request) {
		if methodIs(w, r, http.MethodGet) {
			p.serveModels(w, r, r.PathValue("id"))
		}
	})
	// The caller's own usage: not an upstream endpoint, neither charged nor
	// counted (selfusage.go).
	mux.HandleFunc("/v1/usage", func(w http.ResponseWriter, r *http.Request) {
		if methodIs(w, r, http.MethodGet) {
			p.serveUsage(w, r)
		}
	})
	paths = append(paths, "/v1/models", "/v1/usage")
	unknown := "Unknown path %s. This proxy serves " + strings.Join(paths, ", ") + "."
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		openaiapi.WriteError(w, http.StatusNotFound, openaiapi.TypeInvalidRequest, openaiapi.CodeNotFound, "",
			strings.Replace(unknown, "%s", r.URL.Path, 1))
	})
	return mux
}

func methodIs(w http.ResponseWriter, r *http.Request, m string) bool {
	if r.Method == m {
		return true
	}
	w.Header()["Allow"] = []string{m}
	openaiapi.WriteError(w, http.StatusMethodNotAllowed, openaiapi.TypeInvalidRequest, openaiapi.CodeMethodNotAllowed, "",
		r.Method+" is not allowed on "+r.URL.Path+"; use "+m+".")
	return false
}
