package proxy

import (
	"net/http"
	"slices"
	"strconv"

	"github.com/llm-user-operator/llm-user-operator/internal/metrics"
	"github.com/llm-user-operator/llm-user-operator/internal/openaiapi"
)

// endpoint describes one proxied API path.
type endpoint struct {
	path string
	// operation is the gen_ai_operation_name; "" for paths that generate
	// nothing (tokenize), which are neither reserved nor charged.
	operation string
	// maxFields cap the output tokens, in the order vLLM prefers them.
	maxFields []string
	// inject is the field set to the per-request cap when no maxField is set.
	inject string
	// streamUsage: the API takes stream_options.include_usage.
	streamUsage bool
	embeddings  bool
}

func (e *endpoint) metered() bool { return e.operation != "" }

var (
	epChat = &endpoint{path: "/v1/chat/completions", operation: metrics.OperationChat,
		maxFields: []string{"max_completion_tokens", "max_tokens"}, inject: "max_completion_tokens", streamUsage: true}
	epCompletions = &endpoint{path: "/v1/completions", operation: metrics.OperationTextCompletion,
		maxFields: []string{"max_tokens"}, inject: "max_tokens", streamUsage: true}
	epEmbeddings = &endpoint{path: "/v1/embeddings", operation: metrics.OperationEmbeddings, embeddings: true}
	epResponses  = &endpoint{path: "/v1/responses", operation: metrics.OperationChat,
		maxFields: []string{"max_output_tokens"}, inject: "max_output_tokens"}
	epTokenize   = &endpoint{path: "/tokenize"}
	epDetokenize = &endpoint{path: "/detokenize"}
)

// promptFields hold the prompt; their size estimates the input tokens.
var promptFields = []string{"messages", "prompt", "input", "instructions", "tools"}

// maxField is one output-token cap field of a request.
type maxField struct {
	set, null  bool
	v          int64
	start, end int // value span, for replacing a null
}

// parsed is what the proxy reads from a request body.
type parsed struct {
	model  []byte
	stream bool
	// streamOpts is the stream_options value span; start<0 when absent.
	streamOptsStart, streamOptsEnd int
	includeUsage                   bool
	max                            [2]maxField
	n                              int64
	promptBytes                    int
	closeBrace                     int
}

// apiError is a refusal in OpenAI's shape.
type apiError struct {
	status           int
	typ, code, param string
	message          string
}

func badRequest(param, msg string) *apiError {
	return &apiError{status: http.StatusBadRequest, typ: openaiapi.TypeInvalidRequest, param: param, message: msg}
}

// parseRequest reads the members the proxy needs. Later duplicates win, as
// in Python's json module.
func parseRequest(body []byte, ep *endpoint, pr *parsed) *apiError {
	*pr = parsed{streamOptsStart: -1, n: 1}
	it := newObjIter(body, 0)
	if it.err != nil {
		return badRequest("", "The request body must be a JSON object.")
	}
	hasModel := false
	for m, ok := it.next(); ok; m, ok = it.next() {
		key, val := m.key, body[m.valStart:m.valEnd]
		switch string(key) {
		case "model":
			s, ok := jsonString(val)
			if !ok {
				return badRequest("model", "model must be a string.")
			}
			pr.model, hasModel = s, true
		case "stream":
			if isNull(val) {
				pr.stream = false
				continue
			}
			v, ok := laxBool(val)
			if !ok {
				return badRequest("stream", "stream must be a boolean.")
			}
			pr.stream = v
		case "stream_options":
			pr.streamOptsStart, pr.streamOptsEnd = m.valStart, m.valEnd
		case "n":
			if isNull(val) {
				pr.n = 1
				continue
			}
			v, ok := laxInt(val)
			if !ok {
				return badRequest("n", "n must be an integer.")
			}
			pr.n = max(v, 1)
		default:
			matched := false
			for i, f := range ep.maxFields {
				if string(key) != f {
					continue
				}
				matched = true
				mf := maxField{start: m.valStart, end: m.valEnd}
				if isNull(val) {
					mf.null = true
				} else {
					v, ok := laxInt(val)
					if !ok {
						return badRequest(f, f+" must be an integer.")
					}
					mf.set, mf.v = true, v
				}
				pr.max[i] = mf
			}
			if matched {
				continue
			}
			for _, f := range promptFields {
				if string(key) == f {
					pr.promptBytes += len(val)
					break
				}
			}
		}
	}
	if it.err != nil {
		return badRequest("", "The request body is not valid JSON.")
	}
	if skipWS(body, it.p) != len(body) {
		return badRequest("", "The request body has data after the JSON object.")
	}
	if !hasModel || len(pr.model) == 0 {
		return badRequest("model", "You must provide a model parameter.")
	}
	pr.closeBrace = it.p - 1
	if pr.streamOptsStart >= 0 {
		so := body[pr.streamOptsStart:pr.streamOptsEnd]
		if !isNull(so) {
			if so[0] != '{' {
				return badRequest("stream_options", "stream_options must be an object.")
			}
			inner := newObjIter(so, 0)
			for m, ok := inner.next(); ok; m, ok = inner.next() {
				if string(m.key) == "include_usage" {
					v := so[m.valStart:m.valEnd]
					pr.includeUsage = false
					if !isNull(v) {
						b, ok := laxBool(v)
						if !ok {
							return badRequest("stream_options", "stream_options.include_usage must be a boolean.")
						}
						pr.includeUsage = b
					}
				}
			}
		}
	}
	return nil
}

// maxTokens returns the effective output cap the request asked for (the
// first set field in vLLM's order of preference), or ok=false.
func (pr *parsed) maxTokens(ep *endpoint) (int64, bool) {
	for i := range ep.maxFields {
		if pr.max[i].set {
			return pr.max[i].v, true
		}
	}
	return 0, false
}

// splice replaces body[start:end] with text.
type splice struct {
	start, end int
	text       []byte
}

// applySplices writes body with the splices (sorted by start, not
// overlapping) applied into dst.
func applySplices(dst, body []byte, sp []splice) []byte {
	slices.SortStableFunc(sp, func(a, b splice) int { return a.start - b.start })
	last := 0
	for _, s := range sp {
		dst = append(dst, body[last:s.start]...)
		dst = append(dst, s.text...)
		last = s.end
	}
	return append(dst, body[last:]...)
}

// edits computes the surgical changes a request needs: the per-request cap
// when no output cap was given, and include_usage for streams. It returns
// whether usage was forced (so the usage-only chunk must be hidden again).
func (pr *parsed) edits(body []byte, ep *endpoint, capTokens *int64, sp []splice) ([]splice, bool) {
	if capTokens != nil && ep.inject != "" {
		if _, ok := pr.maxTokens(ep); !ok {
			v := strconv.AppendInt(nil, *capTokens, 10)
			idx := slices.Index(ep.maxFields, ep.inject)
			if mf := pr.max[idx]; mf.null {
				sp = append(sp, splice{start: mf.start, end: mf.end, text: v})
			} else {
				text := make([]byte, 0, len(ep.inject)+24)
				text = append(text, `,"`...)
				text = append(text, ep.inject...)
				text = append(text, `":`...)
				text = append(text, v...)
				sp = append(sp, splice{start: pr.closeBrace, end: pr.closeBrace, text: text})
			}
		}
	}
	if !ep.streamUsage || !pr.stream || pr.includeUsage {
		return sp, false
	}
	const usageOn = `{"include_usage":true}`
	if pr.streamOptsStart < 0 {
		sp = append(sp, splice{start: pr.closeBrace, end: pr.closeBrace, text: []byte(`,"stream_options":` + usageOn)})
		return sp, true
	}
	so := body[pr.streamOptsStart:pr.streamOptsEnd]
	if isNull(so) {
		sp = append(sp, splice{start: pr.streamOptsStart, end: pr.streamOptsEnd, text: []byte(usageOn)})
		return sp, true
	}
	// An object without include_usage true: set the member, or add it.
	var last member
	found := false
	it := newObjIter(so, 0)
	for m, ok := it.next(); ok; m, ok = it.next() {
		if string(m.key) == "include_usage" {
			last, found = m, true
		}
	}
	if found {
		sp = append(sp, splice{start: pr.streamOptsStart + last.valStart, end: pr.streamOptsStart + last.valEnd, text: []byte("true")})
		return sp, true
	}
	text := []byte(`"include_usage":true`)
	if it.n > 0 {
		text = append(text, ',')
	}
	at := pr.streamOptsStart + it.start + 1
	sp = append(sp, splice{start: at, end: at, text: text})
	return sp, true
}
