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

// field is what one request member means to the proxy: how it is read for
// the input estimate and the output bound, or why the proxy owns it.
type field uint8

const (
	// fieldIgnored: not metered (sampling parameters, formats...); the zero
	// value, so any member the table does not name passes as it is.
	fieldIgnored field = iota
	fieldModel
	fieldStream
	// fieldStreamOptions is rewritten to ask for usage (edits.go).
	fieldStreamOptions
	// fieldText is input text, estimated at four bytes a token with the
	// JSON around it.
	fieldText
	// fieldMessages is a conversation (chat messages, Responses API input
	// items): its text as fieldText, plus every content part that is not
	// text (an image, audio, video, embeddings) at the media bound.
	fieldMessages
	// fieldPrompt is a prompt: text, token ids (counted exactly), or, on a
	// multiPrompt endpoint, an array of prompts, each its own sequences.
	fieldPrompt
	// fieldPromptEmbeds is a prompt given as embeddings (a base64 tensor,
	// or a list of them, each its own prompt). Its length cannot be read
	// without decoding the tensor: each is bounded by the context length.
	fieldPromptEmbeds
	// fieldN and fieldBestOf multiply the sequences of each prompt (beam
	// search runs n beams: vLLM's to_beam_search_params takes beam_width=n).
	fieldN
	fieldBestOf
	// fieldTools is input text; on the Responses API a tool the server
	// runs itself is refused.
	fieldTools
	// fieldOwned is set by the proxy alone: the client's members are
	// dropped and the proxy writes its own (owned.go).
	fieldOwned
	// fieldBackground is refused when true: a background response goes on
	// generating after the request returns.
	fieldBackground
	// fieldStoredContext (previous_response_id) makes vLLM prepend a stored
	// response, whose size the proxy cannot see and which is not isolated
	// between users: refused.
	fieldStoredContext
)

// Owned members, each with why the proxy sets it (owned.go).
const (
	// ownPriority: vLLM schedules by it (--scheduling-policy priority); a
	// user must not promote themselves. The quota's spec.priority replaces it.
	ownPriority = "priority"
	// ownRequestID: /v1/responses takes its request id, which is also the
	// stored response's id, from the body (vllm/entrypoints/openai/responses
	// serving.py, _create_responses: request.request_id), so two users could
	// collide. Chat and completions prefer the X-Request-Id header the proxy
	// sets (engine/serving.py, _base_request_id); the body's is dropped too.
	ownRequestID = "request_id"
	// ownCacheSalt: vLLM salts the prefix cache's block hashes with it
	// (chat, completions, responses protocol.py: cache_salt), which isolates
	// one tenant's cached prefixes from another's; the proxy sets it per the
	// quota's spec.cacheIsolation.
	ownCacheSalt = "cache_salt"
	// ownKVTransfer: instructions to a prefill/decode connector
	// (kv_transfer_params into SamplingParams.extra_args): only an upstream
	// whose configuration allows it receives the client's.
	ownKVTransfer = "kv_transfer_params"
)

// endpoint describes one proxied API path: everything the proxy knows about
// it is in this table, so an endpoint or a field that vLLM adds is one row.
// The proxy serves exactly the paths of [endpoints].
type endpoint struct {
	path string
	kind kind
	// operation is the gen_ai_operation_name of the metrics; "" for utility.
	operation string
	// fields says what each request member is; members not named are
	// passed on unread.
	fields map[string]field
	// capFields are the fields that cap the output of one sequence, in the
	// order vLLM prefers them. The first is the one the proxy writes.
	capFields []string
	// defaultCap is the cap vLLM applies when the request omits every cap
	// field (not when it sets one to null): 16 for text completions. Zero
	// means up to the model's context length.
	defaultCap int64
	// promptField names the prompt in messages about it.
	promptField string
	// multiPrompt: an array of prompts (not of tokens) makes several
	// prompts, each with its own sequences. Their continuous usage reports
	// each prompt apart: choice i belongs to prompt i / n
	// (completion/serving.py, completion_stream_generator:
	// i = output.index + prompt_idx * num_choices).
	multiPrompt bool
	// streamUsage: the API takes stream_options.include_usage and
	// continuous_usage_stats (chat and completions; the Responses API has
	// no stream_options and reports usage only in response.completed).
	streamUsage bool
	// outputEvents are the stream event types that carry generated output,
	// for APIs whose events are typed (the Responses API); nil for chat and
	// completions, whose output is in choices.
	outputEvents map[string]bool
	// usageEvents are the event types whose response.usage is the whole
	// request's.
	usageEvents map[string]bool
	// owned are the owned members the upstream takes on this endpoint: the
	// proxy writes these (others it only drops).
	takesPriority, takesCacheSalt, bodyRequestID bool
}

// metered reports whether the endpoint's usage is charged in tokens.
func (e *endpoint) metered() bool { return e.kind != utility }

// capField is the cap field the proxy writes.
func (e *endpoint) capField() string { return e.capFields[0] }

// owned are the members the proxy owns on every endpoint.
var owned = map[string]field{ownPriority: fieldOwned, ownRequestID: fieldOwned, ownCacheSalt: fieldOwned, ownKVTransfer: fieldOwned}

// with returns the owned members, model, stream and stream_options plus rows.
func with(rows map[string]field) map[string]field {
	m := map[string]field{"model": fieldModel, "stream": fieldStream}
	for k, v := range owned {
		m[k] = v
	}
	for k, v := range rows {
		m[k] = v
	}
	return m
}

var (
	// Chat: vllm/entrypoints/openai/chat_completion/protocol.py,
	// ChatCompletionRequest. messages carry text and content parts (image_url,
	// input_audio, audio_url, video_url, image_embeds, ...: chat_utils.py,
	// MM_PARSER_MAP); documents, tools, chat_template and its kwargs are
	// rendered into the prompt; n is the choices (and beam width).
	epChat = &endpoint{path: "/v1/chat/completions", kind: generation, operation: metrics.OperationChat,
		fields: with(map[string]field{
			"messages": fieldMessages, "documents": fieldText, "tools": fieldTools, "chat_template": fieldText,
			"chat_template_kwargs": fieldText, "stream_options": fieldStreamOptions, "n": fieldN, "best_of": fieldBestOf,
		}),
		capFields: []string{"max_completion_tokens", "max_tokens"}, promptField: "messages", streamUsage: true,
		takesPriority: true, takesCacheSalt: true}
	// Completions: completion/protocol.py, CompletionRequest. prompt is text,
	// token ids or a list of either (each its own prompt); prompt_embeds a
	// base64 tensor or a list of them (each its own prompt); suffix is text.
	epCompletions = &endpoint{path: "/v1/completions", kind: generation, operation: metrics.OperationTextCompletion,
		fields: with(map[string]field{
			"prompt": fieldPrompt, "prompt_embeds": fieldPromptEmbeds, "suffix": fieldText,
			"stream_options": fieldStreamOptions, "n": fieldN, "best_of": fieldBestOf,
		}),
		capFields: []string{"max_tokens"}, defaultCap: 16, promptField: "prompt", multiPrompt: true, streamUsage: true,
		takesPriority: true, takesCacheSalt: true}
	// Embeddings: pooling/embed/protocol.py, EmbeddingCompletionRequest
	// (input: text, token ids, or a list of them) or EmbeddingChatRequest
	// (messages, rendered with chat_template).
	epEmbeddings = &endpoint{path: "/v1/embeddings", kind: embedding, operation: metrics.OperationEmbeddings,
		fields: with(map[string]field{
			"input": fieldPrompt, "messages": fieldMessages, "chat_template": fieldText, "chat_template_kwargs": fieldText,
		}),
		promptField: "input", takesPriority: true}
	// Responses: responses/protocol.py, ResponsesRequest; events from
	// responses/serving.py, responses_stream_generator. Every *.delta event
	// vLLM emits is generated output (the mcp_call and code_interpreter ones
	// come from gpt-oss models); usage comes only in response.completed.
	// request_id is the response's id (see ownRequestID). previous_input_messages
	// and previous_response carry an earlier turn statelessly, as text.
	epResponses = &endpoint{path: "/v1/responses", kind: generation, operation: metrics.OperationChat,
		fields: with(map[string]field{
			"input": fieldMessages, "instructions": fieldText, "tools": fieldTools, "previous_input_messages": fieldMessages,
			"previous_response": fieldMessages, "background": fieldBackground, "previous_response_id": fieldStoredContext,
		}),
		capFields: []string{"max_output_tokens"}, promptField: "input",
		outputEvents: map[string]bool{
			"response.output_text.delta": true, "response.reasoning_text.delta": true, "response.reasoning_summary_text.delta": true,
			"response.function_call_arguments.delta": true, "response.mcp_call_arguments.delta": true,
			"response.code_interpreter_call_code.delta": true, "response.refusal.delta": true, "response.audio.delta": true,
			"response.audio.transcript.delta": true, "response.custom_tool_call_input.delta": true,
		},
		usageEvents:   map[string]bool{"response.completed": true, "response.incomplete": true, "response.failed": true},
		takesPriority: true, takesCacheSalt: true, bodyRequestID: true}
	// Tokenize takes a prompt or messages and generates nothing.
	epTokenize   = &endpoint{path: "/tokenize", kind: utility, fields: with(nil), promptField: "prompt"}
	epDetokenize = &endpoint{path: "/detokenize", kind: utility, fields: with(nil)}

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
