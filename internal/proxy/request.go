package proxy

import (
	"net/http"

	"github.com/llm-user-operator/llm-user-operator/internal/openaiapi"
)

// capValue is one output-cap field as the request gave it.
type capValue struct {
	// present: the member exists, whatever its value.
	present bool
	// set: the value is a positive integer, a cap. Anything else (null, 0,
	// a negative number, a fraction, a string that is not an integer, a
	// boolean) leaves the field unset, which is how vLLM reads a cap it
	// cannot use: see readCap.
	set bool
	v   int64
	// canonical: written as a plain decimal integer, exactly as the proxy
	// would write v.
	canonical bool
	// start and end are the value's span in the body.
	start, end int
}

// span is a member's value in the body; start < 0 when absent.
type span struct{ start, end int }

// parsed is what the proxy reads from a request body: what it needs to
// route, to bound the output and to meter it.
type parsed struct {
	model  []byte
	stream bool
	// streamOpts is the stream_options value.
	streamOpts                    span
	includeUsage, continuousUsage bool
	// caps are the endpoint's cap fields, in the order of endpoint.capFields.
	caps [2]capValue
	// n and bestOf are the sequences generated per prompt (at least 1;
	// bestOf 0 when absent).
	n, bestOf int64
	// prompts is how many prompts the request carries (an array of prompts
	// makes one sequence set each); at least 1.
	prompts int64
	// promptSeen: the request has a prompt field (besides prompt_embeds).
	promptSeen bool
	// promptBytes is the size of the prompt fields, text counted by bytes;
	// promptTokens counts prompts given as token ids.
	promptBytes  int
	promptTokens int64
	// media counts the content parts that are not text (images, audio,
	// video, embeddings), each bounded by the media bound.
	media int64
	// embedPrompts counts the prompts given as embeddings; embedBytes is
	// their size as sent.
	embedPrompts int64
	embedBytes   int
	// background and builtinTools are Responses API options whose
	// generation the proxy cannot meter; storedContext is a reference to a
	// response stored upstream.
	background, builtinTools, storedContext bool
	// owned: the client sent a member the proxy owns (ownedEdits drops
	// it); kvTransfer: one of them is kv_transfer_params.
	owned, kvTransfer bool
	closeBrace        int
}

// dropper collects the splices that remove members of an object, each with
// the comma that joins it to the rest, coalescing neighbours so that no two
// splices overlap.
type dropper struct {
	spans []span
	// lastKept is the end of the last member kept, -1 before the first;
	// lead is where a run of dropped members before the first kept one
	// starts (-1: none), leadEnd where it ends.
	lastKept, lead, leadEnd int
	prevDropped             bool
}

func newDropper() dropper { return dropper{lastKept: -1, lead: -1} }

// keep records a member that stays.
func (d *dropper) keep(m member) {
	if d.lead >= 0 {
		// Up to the kept key, so the comma after the last dropped member goes.
		d.spans = append(d.spans, span{d.lead, m.keyStart})
		d.lead = -1
	}
	d.lastKept, d.prevDropped = m.valEnd, false
}

// drop records a member to remove.
func (d *dropper) drop(m member) {
	switch {
	case d.lastKept < 0:
		if d.lead < 0 {
			d.lead = m.keyStart
		}
		d.leadEnd = m.valEnd
	case d.prevDropped:
		d.spans[len(d.spans)-1].end = m.valEnd
	default:
		// From the end of the kept member before it: its comma goes too.
		d.spans = append(d.spans, span{d.lastKept, m.valEnd})
	}
	d.prevDropped = true
}

// done returns the spans to remove.
func (d *dropper) done() []span {
	if d.lead >= 0 {
		d.spans = append(d.spans, span{d.lead, d.leadEnd})
		d.lead = -1
	}
	return d.spans
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
// in Python's json module, which is what vLLM parses the body with; a key
// matches only when it is exactly the name once unescaped, as in Python.
// A value the proxy cannot read the way vLLM would is refused rather than
// guessed, unless it is an output cap (see readCap).
func parseRequest(body []byte, ep *endpoint, pr *parsed) *apiError {
	*pr = parsed{streamOpts: span{-1, -1}, n: 1, prompts: 1}
	it := newObjIter(body, 0)
	if it.err != nil {
		return badRequest("", "The request body must be a JSON object.")
	}
	hasModel := false
	for m, ok := it.next(); ok; m, ok = it.next() {
		key, val := m.key, body[m.valStart:m.valEnd]
		f := ep.fields[string(key)]
		if f == fieldOwned {
			pr.owned = true
			pr.kvTransfer = pr.kvTransfer || string(key) == ownKVTransfer
			continue
		}
		if i := capIndex(ep, key); i >= 0 {
			pr.caps[i] = readCap(val, m.valStart, m.valEnd)
			continue
		}
		var err *apiError
		switch f {
		case fieldModel:
			s, ok := jsonString(val)
			if !ok {
				return badRequest("model", "model must be a string.")
			}
			pr.model, hasModel = s, true
		case fieldStream:
			pr.stream, err = readBool("stream", val)
		case fieldStreamOptions:
			pr.streamOpts = span{m.valStart, m.valEnd}
		case fieldN:
			pr.n, err = readCount("n", val, 1)
		case fieldBestOf:
			pr.bestOf, err = readCount("best_of", val, 0)
		case fieldBackground:
			pr.background, err = readBool("background", val)
		case fieldStoredContext:
			pr.storedContext = !isNull(val)
		case fieldTools:
			pr.promptBytes += len(val)
			if ep.outputEvents != nil {
				pr.builtinTools = hasBuiltinTool(val)
			}
		case fieldText:
			pr.promptBytes += len(val)
		case fieldMessages:
			pr.promptBytes += len(val)
			pr.media += mediaParts(val)
		case fieldPrompt:
			readPrompt(ep, val, pr)
		case fieldPromptEmbeds:
			readPromptEmbeds(val, pr)
		}
		if err != nil {
			return err
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
	return pr.readStreamOptions(body)
}

func capIndex(ep *endpoint, key []byte) int {
	for i, f := range ep.capFields {
		if string(key) == f {
			return i
		}
	}
	return -1
}

// readCap reads an output cap the way it bounds vLLM's output. vLLM takes a
// positive integer (pydantic's lax mode also takes 100.0, 1e2 and "100") as
// the cap; null means none; 0 means none to older vLLM, which reads
// `max_completion_tokens or max_tokens`, and an error to newer vLLM;
// negative numbers and non-integers are errors. The proxy reads every value
// that is not a positive integer as no cap: it then writes a cap of its own
// (or refuses), so whichever way an upstream reads the original value, it
// generates no more than the proxy reserved.
func readCap(raw []byte, start, end int) capValue {
	c := capValue{present: true, start: start, end: end}
	if v, ok := parseDigits(raw); ok {
		c.v, c.set = v, v > 0
		c.canonical = c.set && raw[0] != '0'
		return c
	}
	if v, ok := laxInt(raw); ok && v > 0 {
		c.v, c.set = v, true
	}
	return c
}

func readBool(field string, raw []byte) (bool, *apiError) {
	if isNull(raw) {
		return false, nil
	}
	v, ok := laxBool(raw)
	if !ok {
		return false, badRequest(field, field+" must be a boolean.")
	}
	return v, nil
}

// readCount reads n or best_of: a missing or null value is def, a value
// below 1 is 1 (vLLM refuses it anyway), anything not an integer is refused.
func readCount(field string, raw []byte, def int64) (int64, *apiError) {
	if isNull(raw) {
		return def, nil
	}
	v, ok := laxInt(raw)
	if !ok {
		return 0, badRequest(field, field+" must be an integer.")
	}
	return max(v, 1), nil
}

// readPrompt measures the prompt field. For endpoints that take an array of
// prompts, each prompt generates its own sequences; an array of integers is
// one prompt given as token ids, which are counted exactly.
func readPrompt(ep *endpoint, val []byte, pr *parsed) {
	pr.promptSeen = true
	pr.promptBytes += len(val)
	if !ep.multiPrompt && ep.kind != embedding {
		return
	}
	if len(val) == 0 || val[0] != '[' {
		return
	}
	n, ints, nested := arrayShape(val)
	switch {
	case ints == n && n > 0: // [1, 2, 3]: one prompt of token ids
		pr.promptTokens += int64(n)
		pr.promptBytes -= len(val)
	case n > 0:
		if ep.multiPrompt {
			pr.prompts = int64(n)
		}
		pr.promptTokens += nested
		if nested > 0 {
			pr.promptBytes -= len(val)
		}
	}
}

// readPromptEmbeds counts prompts given as embeddings: one base64 tensor,
// or a list of them, each its own prompt (completion/protocol.py,
// CompletionRequest.prompt_embeds: bytes | list[bytes]).
func readPromptEmbeds(val []byte, pr *parsed) {
	switch {
	case len(val) > 0 && val[0] == '"':
		pr.embedPrompts++
	case len(val) > 0 && val[0] == '[':
		n, _, _ := arrayShape(val)
		pr.embedPrompts += int64(n)
	default:
		return // null, or what vLLM refuses
	}
	pr.embedBytes += len(val)
}

// textParts are the content part types that are text, counted by their
// bytes (chat_utils.py: text, input_text, output_text, refusal, thinking;
// the Responses API's reasoning and summary text).
var textParts = map[string]bool{
	"text": true, "input_text": true, "output_text": true, "refusal": true, "thinking": true,
	"reasoning_text": true, "summary_text": true,
}

// mediaItems are the Responses API input item types that are media.
var mediaItems = map[string]bool{"input_image": true, "input_audio": true, "input_file": true, "image_url": true, "audio_url": true, "video_url": true}

// mediaParts counts the content parts of a conversation that are not text:
// images, audio, video and embeddings, whose tokens the bytes of the
// request do not tell (an image URL is a few bytes and thousands of
// tokens). A part is text when its type is a text type, or when it has no
// type and nothing but text; every other part counts, as vLLM accepts a
// part without a type by the key it has (chat_utils.py,
// _parse_chat_message_content_part).
func mediaParts(conv []byte) int64 {
	if len(conv) == 0 || conv[0] != '[' {
		return 0
	}
	var n int64
	eachElement(conv, func(item []byte) {
		if len(item) == 0 || item[0] != '{' {
			return
		}
		it := newObjIter(item, 0)
		for m, ok := it.next(); ok; m, ok = it.next() {
			val := item[m.valStart:m.valEnd]
			switch string(m.key) {
			case "content":
				if len(val) > 0 && val[0] == '[' {
					eachElement(val, func(part []byte) {
						if isMediaPart(part) {
							n++
						}
					})
				}
			case "type":
				if t, ok := jsonString(val); ok && mediaItems[string(t)] {
					n++
				}
			}
		}
	})
	return n
}

// isMediaPart reports whether one content part is not text.
func isMediaPart(part []byte) bool {
	if len(part) == 0 || part[0] != '{' {
		return false
	}
	typed, text, other := false, false, false
	it := newObjIter(part, 0)
	for m, ok := it.next(); ok; m, ok = it.next() {
		switch string(m.key) {
		case "type":
			t, ok := jsonString(part[m.valStart:m.valEnd])
			typed, text = true, ok && textParts[string(t)]
		case "text":
		default:
			other = true
		}
	}
	if typed {
		return !text
	}
	return other
}

// eachElement calls fn with every element of a JSON array, stopping at the
// first malformed one (vLLM refuses the body then).
func eachElement(arr []byte, fn func(elem []byte)) {
	p := skipWS(arr, 1)
	for p < len(arr) && arr[p] != ']' {
		e, err := skipValue(arr, p)
		if err != nil {
			return
		}
		fn(arr[p:e])
		p = skipWS(arr, e)
		if p < len(arr) && arr[p] == ',' {
			p = skipWS(arr, p+1)
		}
	}
}

// arrayShape counts the elements of a JSON array, how many of them are
// numbers, and how many numbers the arrays among them hold (prompts given
// as token ids). It stops at the first malformed element; vLLM parses the
// body again and refuses what is not JSON.
func arrayShape(arr []byte) (elems, ints int, nested int64) {
	p := skipWS(arr, 1)
	for p < len(arr) && arr[p] != ']' {
		e, err := skipValue(arr, p)
		if err != nil {
			return elems, ints, nested
		}
		elems++
		switch c := arr[p]; {
		case c == '-' || (c >= '0' && c <= '9'):
			ints++
		case c == '[':
			n, k, _ := arrayShape(arr[p:e])
			if n == k {
				nested += int64(k)
			}
		}
		p = skipWS(arr, e)
		if p < len(arr) && arr[p] == ',' {
			p = skipWS(arr, p+1)
		}
	}
	return elems, ints, nested
}

// hasBuiltinTool reports whether a Responses API tools array names a tool
// other than a function: one the server runs itself (web search, code
// interpreter, MCP), which can make it generate several turns.
func hasBuiltinTool(tools []byte) bool {
	if len(tools) == 0 || tools[0] != '[' {
		return false
	}
	p := skipWS(tools, 1)
	for p < len(tools) && tools[p] != ']' {
		e, err := skipValue(tools, p)
		if err != nil {
			return false
		}
		if tools[p] == '{' {
			it := newObjIter(tools[p:e], 0)
			for m, ok := it.next(); ok; m, ok = it.next() {
				if string(m.key) == "type" && string(tools[p+m.valStart:p+m.valEnd]) != `"function"` {
					return true
				}
			}
		}
		p = skipWS(tools, e)
		if p < len(tools) && tools[p] == ',' {
			p = skipWS(tools, p+1)
		}
	}
	return false
}

// readStreamOptions reads stream_options once the whole body is known.
func (pr *parsed) readStreamOptions(body []byte) *apiError {
	if pr.streamOpts.start < 0 {
		return nil
	}
	so := body[pr.streamOpts.start:pr.streamOpts.end]
	if isNull(so) {
		return nil
	}
	if so[0] != '{' {
		return badRequest("stream_options", "stream_options must be an object.")
	}
	inner := newObjIter(so, 0)
	for m, ok := inner.next(); ok; m, ok = inner.next() {
		var dst *bool
		switch string(m.key) {
		case "include_usage":
			dst = &pr.includeUsage
		case "continuous_usage_stats":
			dst = &pr.continuousUsage
		default:
			continue
		}
		v, err := readBool("stream_options."+string(m.key), so[m.valStart:m.valEnd])
		if err != nil {
			err.param = "stream_options"
			return err
		}
		*dst = v
	}
	if inner.err != nil {
		return badRequest("stream_options", "stream_options is not valid JSON.")
	}
	return nil
}

// requestedCap returns the output cap per sequence the request asked for:
// the first set cap field in vLLM's order of preference, and its index.
func (pr *parsed) requestedCap() (v int64, field int, ok bool) {
	for i := range pr.caps {
		if pr.caps[i].set {
			return pr.caps[i].v, i, true
		}
	}
	return 0, -1, false
}

// anyCapPresent reports whether the request named a cap field at all.
func (pr *parsed) anyCapPresent() bool {
	return pr.caps[0].present || pr.caps[1].present
}

// sequences is how many output sequences the request generates: n (or
// best_of, when larger) for each prompt.
func (pr *parsed) sequences() int64 {
	return min(max(pr.n, pr.bestOf, 1), 1<<20) * pr.allPrompts()
}

// allPrompts is how many prompts the request carries: its text or token
// prompts and its prompts given as embeddings (each list entry its own);
// at least 1.
func (pr *parsed) allPrompts() int64 {
	n := pr.embedPrompts
	if pr.promptSeen || n == 0 {
		n += pr.prompts
	}
	return min(n, 1<<20)
}
