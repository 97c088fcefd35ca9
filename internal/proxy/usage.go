package proxy

import "bytes"

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
	// choices: -1 absent, 0 empty array, 1 non-empty.
	choices int
	// delta: a Responses API event carrying generated text.
	delta bool
	// cutStart and cutEnd span the usage member with one comma next to it:
	// what to remove to hide the usage.
	cutStart, cutEnd int
}

// inspectJSON reads the top-level "usage" and "choices" of a chat or
// completion object, and "response.usage" of a Responses API event.
func inspectJSON(b []byte) chunkInfo {
	ci := chunkInfo{choices: -1}
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
				if p := skipWS(val, 1); p < len(val) && val[p] == ']' {
					ci.choices = 0
				} else {
					ci.choices = 1
				}
			}
		case "type":
			ci.delta = string(val) == `"response.output_text.delta"`
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

// usageFromTail finds the last "usage" object in the tail of a response too
// large to keep whole. A key cannot hide inside a JSON string (its quotes
// would be escaped), so an unescaped `"usage"` followed by ':' is a key.
func usageFromTail(b []byte) (usage, bool) {
	for end := len(b); end > 0; {
		i := bytes.LastIndex(b[:end], []byte(`"usage"`))
		if i < 0 {
			return usage{}, false
		}
		end = i
		bs := 0
		for k := i - 1; k >= 0 && b[k] == '\\'; k-- {
			bs++
		}
		if bs%2 == 1 {
			continue
		}
		p := skipWS(b, i+len(`"usage"`))
		if p >= len(b) || b[p] != ':' {
			continue
		}
		p = skipWS(b, p+1)
		if p >= len(b) || b[p] != '{' {
			continue
		}
		e, err := skipValue(b, p)
		if err != nil {
			continue
		}
		if u, ok := parseUsage(b[p:e]); ok {
			return u, true
		}
	}
	return usage{}, false
}

// tailBuffer keeps a whole response up to fullMax bytes, and beyond that only
// its last tailKeep bytes, which is where the usage of an OpenAI response is.
type tailBuffer struct {
	b         []byte
	total     int64
	truncated bool
}

const (
	tailFullMax = 1 << 20
	tailKeep    = 64 << 10
)

func (t *tailBuffer) write(p []byte) {
	t.total += int64(len(p))
	if !t.truncated && len(t.b)+len(p) <= tailFullMax {
		t.b = append(t.b, p...)
		return
	}
	t.truncated = true
	if len(p) >= tailKeep {
		t.b = append(t.b[:0], p[len(p)-tailKeep:]...)
		return
	}
	keep := min(tailKeep-len(p), len(t.b))
	n := copy(t.b, t.b[len(t.b)-keep:])
	t.b = append(t.b[:n], p...)
}

// usage extracts the response's usage.
func (t *tailBuffer) usage() (usage, bool) {
	if !t.truncated {
		ci := inspectJSON(t.b)
		return ci.usage, ci.hasUsage
	}
	return usageFromTail(t.b)
}
