package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"strings"
)

// The proxy reads only a handful of top-level members of request bodies and
// response chunks, so it walks the JSON itself instead of decoding it:
//
//   - speed: strings, which are nearly all of a prompt, are skipped with
//     bytes.IndexByte and nothing is allocated;
//   - exactness: encoding/json matches keys case-insensitively, so
//     {"model":"a","Model":"b"} would be read as "b" while vLLM (Python,
//     pydantic) sees "a". Here a key matches only if it is exactly the name
//     once unescaped, which is what Python does.
//
// The walker checks structure (strings, nesting, separators) but not every
// literal; vLLM parses the body again and rejects what is not JSON.

var errJSON = errors.New("malformed JSON")

func isWS(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipWS(b []byte, p int) int {
	for p < len(b) && isWS(b[p]) {
		p++
	}
	return p
}

// skipString returns the index just past the string that opens at b[p].
func skipString(b []byte, p int) (int, error) {
	i := p + 1
	for {
		j := bytes.IndexByte(b[i:], '"')
		if j < 0 {
			return 0, errJSON
		}
		q := i + j
		bs := 0
		for k := q - 1; k > p && b[k] == '\\'; k-- {
			bs++
		}
		if bs%2 == 0 {
			return q + 1, nil
		}
		i = q + 1
	}
}

var structural = [256]bool{'"': true, '{': true, '}': true, '[': true, ']': true}

// skipValue returns the index just past the value that starts at b[p].
func skipValue(b []byte, p int) (int, error) {
	if p >= len(b) {
		return 0, errJSON
	}
	switch b[p] {
	case '"':
		return skipString(b, p)
	case '{', '[':
		depth := 0
		for i := p; i < len(b); i++ {
			if !structural[b[i]] {
				continue
			}
			switch b[i] {
			case '"':
				e, err := skipString(b, i)
				if err != nil {
					return 0, err
				}
				i = e - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1, nil
				}
			}
		}
		return 0, errJSON
	case '}', ']', ',', ':':
		return 0, errJSON
	default: // number, true, false, null (and NaN/Infinity, which Python accepts)
		i := p
		for i < len(b) {
			c := b[i]
			if c == ',' || c == '}' || c == ']' || isWS(c) {
				break
			}
			if c == '{' || c == '[' || c == '"' || c == ':' {
				return 0, errJSON
			}
			i++
		}
		return i, nil
	}
}

// objIter walks the members of one JSON object.
type objIter struct {
	b     []byte
	p     int
	n     int // members read
	done  bool
	err   error
	start int // offset of '{'
}

// newObjIter starts at the object beginning at or after b[p] (after blanks).
func newObjIter(b []byte, p int) objIter {
	p = skipWS(b, p)
	if p >= len(b) || b[p] != '{' {
		return objIter{b: b, done: true, err: errJSON}
	}
	return objIter{b: b, p: p + 1, start: p}
}

// member is one object member: offsets into the walked buffer.
type member struct {
	// key is the unescaped key; it aliases the buffer unless it had escapes.
	key []byte
	// keyStart is the offset of the key's opening quote.
	keyStart         int
	valStart, valEnd int
}

// next returns the next member, or false at the end of the object or on
// error (check it.err).
func (it *objIter) next() (member, bool) {
	if it.done {
		return member{}, false
	}
	b := it.b
	p := skipWS(b, it.p)
	if p >= len(b) {
		return it.fail()
	}
	if b[p] == '}' {
		it.p, it.done = p+1, true
		return member{}, false
	}
	if it.n > 0 {
		if b[p] != ',' {
			return it.fail()
		}
		p = skipWS(b, p+1)
	}
	if p >= len(b) || b[p] != '"' {
		return it.fail()
	}
	ke, err := skipString(b, p)
	if err != nil {
		return it.fail()
	}
	key := b[p+1 : ke-1]
	if bytes.IndexByte(key, '\\') >= 0 {
		var k string
		if json.Unmarshal(b[p:ke], &k) != nil {
			return it.fail()
		}
		key = []byte(k)
	}
	q := skipWS(b, ke)
	if q >= len(b) || b[q] != ':' {
		return it.fail()
	}
	vs := skipWS(b, q+1)
	ve, err := skipValue(b, vs)
	if err != nil {
		return it.fail()
	}
	it.p = ve
	it.n++
	return member{key: key, keyStart: p, valStart: vs, valEnd: ve}, true
}

func (it *objIter) fail() (member, bool) {
	it.done, it.err = true, errJSON
	return member{}, false
}

// jsonString returns the value of a JSON string token, unescaping only when
// needed; ok is false if raw is not a string.
func jsonString(raw []byte) (s []byte, ok bool) {
	if len(raw) < 2 || raw[0] != '"' {
		return nil, false
	}
	inner := raw[1 : len(raw)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return inner, true
	}
	var v string
	if json.Unmarshal(raw, &v) != nil {
		return nil, false
	}
	return []byte(v), true
}

func isNull(raw []byte) bool { return string(raw) == "null" }

// laxInt reads an integer the way pydantic's lax mode does, so the proxy and
// vLLM agree on the value: a JSON integer, a float with no fraction (1e3,
// 100.0) or a string holding either. Anything else is an error rather than a
// guess, because a value vLLM reads differently would escape the cap.
func laxInt(raw []byte) (int64, bool) {
	if s, ok := jsonString(raw); ok {
		raw = bytes.TrimSpace(s)
		if len(raw) > 0 && (raw[0] == '"' || raw[0] == '{' || raw[0] == '[') {
			return 0, false
		}
	}
	if v, ok := parseDigits(raw); ok {
		return v, true
	}
	// Decimal notation only, as Python's int() and float() read strings:
	// ParseFloat would also take hexadecimal, "Inf" and "NaN".
	for _, c := range raw {
		if (c < '0' || c > '9') && c != '.' && c != 'e' && c != 'E' && c != '+' && c != '-' {
			return 0, false
		}
	}
	f, err := strconv.ParseFloat(string(raw), 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f != math.Trunc(f) {
		return 0, false
	}
	if f > math.MaxInt64/2 {
		return math.MaxInt64 / 2, true
	}
	if f < math.MinInt64/2 {
		return math.MinInt64 / 2, true
	}
	return int64(f), true
}

// parseDigits is the allocation-free fast path of laxInt: an optional minus
// and up to 18 digits.
func parseDigits(b []byte) (int64, bool) {
	neg := false
	if len(b) > 0 && b[0] == '-' {
		neg, b = true, b[1:]
	}
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var v int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + int64(c-'0')
	}
	if neg {
		v = -v
	}
	return v, true
}

// laxBool reads a boolean the way pydantic's lax mode does.
func laxBool(raw []byte) (v, ok bool) {
	switch string(raw) {
	case "true", "1", "1.0":
		return true, true
	case "false", "0", "0.0":
		return false, true
	}
	s, isStr := jsonString(raw)
	if !isStr {
		return false, false
	}
	switch strings.ToLower(string(s)) {
	case "1", "on", "t", "true", "y", "yes":
		return true, true
	case "0", "off", "f", "false", "n", "no":
		return false, true
	}
	return false, false
}
