package proxy

// usage is what an upstream reported for one request. Chat and completions
// say prompt_tokens/completion_tokens; the Responses API says
// input_tokens/output_tokens; both are read. Cached is the part of the
// prompt found in the prefix cache: prompt_tokens_details.cached_tokens
// (input_tokens_details for the Responses API), which vLLM reports when run
// with --enable-prompt-tokens-details; absent, it is 0.
type usage struct {
	Prompt, Completion, Cached int64
}

// parseUsage reads a usage object.
func parseUsage(obj []byte) (usage, bool) {
	var u usage
	it := newObjIter(obj, 0)
	found := false
	for m, ok := it.next(); ok; m, ok = it.next() {
		val := obj[m.valStart:m.valEnd]
		var dst *int64
		switch string(m.key) {
		case "prompt_tokens", "input_tokens":
			dst = &u.Prompt
		case "completion_tokens", "output_tokens":
			dst = &u.Completion
		case "prompt_tokens_details", "input_tokens_details":
			if len(val) > 0 && val[0] == '{' {
				u.Cached = cachedTokens(val)
			}
			continue
		default:
			continue
		}
		if v, ok := parseDigits(val); ok && v >= 0 {
			*dst = v
			found = true
		}
	}
	return u, found && it.err == nil
}

// cachedTokens reads cached_tokens from a tokens-details object; anything
// but a non-negative integer counts as none cached.
func cachedTokens(obj []byte) int64 {
	var n int64
	it := newObjIter(obj, 0)
	for m, ok := it.next(); ok; m, ok = it.next() {
		if string(m.key) != "cached_tokens" {
			continue
		}
		n = 0
		if v, ok := parseDigits(obj[m.valStart:m.valEnd]); ok {
			n = v
		}
	}
	if it.err != nil {
		return 0
	}
	return n
}

// chunkInfo is what the proxy needs from one JSON document: a response body
// or a streamed chunk.
type chunkInfo struct {
	usage    usage
	hasUsage bool // a usage object (not null) was present
	// choices: -1 absent, else how many elements the choices array has;
	// index is the first one's index (-1 if it has none).
	choices int
	index   int64
	// typ is a Responses API event's type.
	typ []byte
	// cutStart and cutEnd span the usage member with one comma next to it:
	// what to remove to hide the usage.
	cutStart, cutEnd int
}

// inspectJSON reads the top-level "usage", "choices" and "type" of a chat
// or completion object or a Responses API event, and "response.usage" of
// the latter.
func inspectJSON(b []byte) chunkInfo {
	ci := chunkInfo{choices: -1, index: -1}
	it := newObjIter(b, 0)
	prevEnd := -1
	for m, ok := it.next(); ok; m, ok = it.next() {
		val := b[m.valStart:m.valEnd]
		switch string(m.key) {
		case "usage":
			if len(val) > 0 && val[0] == '{' {
				ci.usage, ci.hasUsage = parseUsage(val)
				ci.cutStart, ci.cutEnd = usageCut(b, prevEnd, m)
			}
		case "choices":
			if len(val) > 0 && val[0] == '[' {
				ci.choices = 0
				eachElement(val, func(c []byte) {
					if ci.choices == 0 {
						ci.index = choiceIndex(c)
					}
					ci.choices++
				})
			}
		case "type":
			ci.typ, _ = jsonString(val)
		case "response":
			if len(val) > 0 && val[0] == '{' && !ci.hasUsage {
				if inner := inspectJSON(val); inner.hasUsage {
					ci.usage, ci.hasUsage = inner.usage, true
				}
			}
		}
		prevEnd = m.valEnd
	}
	return ci
}

// choiceIndex reads a choice's index (-1 when it has none).
func choiceIndex(c []byte) int64 {
	it := newObjIter(c, 0)
	for m, ok := it.next(); ok; m, ok = it.next() {
		if string(m.key) == "index" {
			if v, ok := parseDigits(c[m.valStart:m.valEnd]); ok {
				return v
			}
			return -1
		}
	}
	return -1
}

// usageCut spans member m with the comma that joins it to its neighbour:
// the comma before it (from the end of the previous value), or, for the
// first member, the comma after it.
func usageCut(b []byte, prevEnd int, m member) (int, int) {
	if prevEnd >= 0 {
		return prevEnd, m.valEnd
	}
	end := skipWS(b, m.valEnd)
	if end < len(b) && b[end] == ',' {
		end = skipWS(b, end+1)
	}
	return m.keyStart, end
}
