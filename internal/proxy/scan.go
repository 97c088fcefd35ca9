package proxy

import "bytes"

// jsonScan reads the few members the proxy meters from one JSON document
// that arrives in pieces of any size, without keeping the document: a
// non-streamed answer, or a streamed event too large to hold (vLLM sends a
// beam-search completion as one event, echo repeats a long prompt, and a
// Responses API completion carries the whole response). Memory is flat: the
// state below and at most maxCapture bytes of the value being read.
//
// It finds, by their depth and not by their text, so that a "usage" inside
// user-controlled metadata or a JSON schema is never taken for the real one:
//   - the top-level "usage" object (chat, completions, embeddings, and a
//     Responses API answer);
//   - "response"."usage" (a Responses API stream event);
//   - the top-level "type" string (a Responses API stream event's type);
//   - the "choices" elements, and the "index" of the first.
type jsonScan struct {
	depth int
	// objects has bit d-1 set when the container at depth d is an object;
	// only the first 64 levels are told apart, deeper ones are never
	// matched.
	objects uint64
	// at is the key of the member open at depths 1 to 3 (at[0] unused).
	at [4]uint8
	// str: inside a string; esc: just after a backslash in one; keyStr:
	// that string is a key.
	str, esc, keyStr bool
	// expectKey: the next string of the current object is a key; wantValue:
	// the next non-blank byte starts a value.
	expectKey, wantValue bool
	key                  [16]byte
	keyLen               int // > len(key): longer than any key matched
	keyEscaped           bool

	// capture is the value being read, when capWhat != 0.
	capture  []byte
	capWhat  uint8
	capDepth int // the depth the captured value started at
	capOver  bool

	// What was found.
	usage     usage
	haveUsage bool
	// typ is the top-level type, up to len(typ) bytes; typLen 0 if none.
	typ    [48]byte
	typLen int
	// choices counts the elements of the top-level choices array;
	// index is the first one's index (-1 if none was read).
	choices int
	index   int64
}

const maxCapture = 4 << 10

// Key ids.
const (
	keyOther uint8 = iota
	keyUsage
	keyType
	keyChoices
	keyResponse
	keyIndex
)

func newJSONScan() jsonScan { return jsonScan{index: -1} }

// reset makes the scanner ready for the next document, keeping its buffer.
func (s *jsonScan) reset() {
	c := s.capture[:0]
	*s = jsonScan{index: -1, capture: c}
}

func keyID(k []byte) uint8 {
	switch string(k) {
	case "usage":
		return keyUsage
	case "type":
		return keyType
	case "choices":
		return keyChoices
	case "response":
		return keyResponse
	case "index":
		return keyIndex
	}
	return keyOther
}

func (s *jsonScan) inObject() bool {
	return s.depth > 0 && s.depth <= 64 && s.objects&(1<<(s.depth-1)) != 0
}

// want reports what a value starting now at the current path is to be
// captured as (0: not captured), given its first byte.
func (s *jsonScan) want(c byte) uint8 {
	switch {
	case s.depth == 1 && s.at[1] == keyUsage && c == '{':
		return keyUsage
	case s.depth == 2 && s.at[1] == keyResponse && s.at[2] == keyUsage && c == '{':
		return keyUsage
	case s.depth == 1 && s.at[1] == keyType && c == '"':
		return keyType
	case s.depth == 3 && s.at[1] == keyChoices && s.at[3] == keyIndex && s.choices == 1 && s.index < 0:
		return keyIndex
	}
	return 0
}

// startValue is called at the first byte of every value.
func (s *jsonScan) startValue(c byte) {
	s.wantValue = false
	if s.depth == 2 && s.at[1] == keyChoices && !s.inObject() {
		s.choices++
	}
	if w := s.want(c); w != 0 {
		s.capWhat, s.capDepth, s.capOver = w, s.depth, false
		s.capture = s.capture[:0]
	}
}

func (s *jsonScan) keep(p []byte) {
	if s.capWhat == 0 || s.capOver {
		return
	}
	if len(s.capture)+len(p) > maxCapture {
		s.capOver = true
		return
	}
	s.capture = append(s.capture, p...)
}

// endCapture reads a captured value once it is complete.
func (s *jsonScan) endCapture() {
	what := s.capWhat
	s.capWhat = 0
	if s.capOver {
		return
	}
	v := s.capture
	switch what {
	case keyUsage:
		if u, ok := parseUsage(v); ok {
			s.usage, s.haveUsage = u, true
		}
	case keyType:
		if t, ok := jsonString(v); ok {
			s.typLen = copy(s.typ[:], t)
			if len(t) > len(s.typ) {
				s.typLen = 0 // no event type of interest is that long
			}
		}
	case keyIndex:
		if n, ok := parseDigits(v); ok {
			s.index = n
		}
	}
}

// eventType is the top-level type read, or nil.
func (s *jsonScan) eventType() []byte { return s.typ[:s.typLen] }

// feed scans the next piece of the document.
func (s *jsonScan) feed(p []byte) {
	for i := 0; i < len(p); i++ {
		if s.str {
			i = s.inString(p, i)
			continue
		}
		c := p[i]
		if isWS(c) {
			if s.capWhat == keyIndex && s.depth == s.capDepth {
				s.endCapture()
			}
			continue
		}
		if s.wantValue && c != ']' && c != '}' {
			s.startValue(c)
		}
		switch c {
		case '"':
			s.str, s.esc = true, false
			s.keyStr = s.expectKey && s.inObject()
			if s.keyStr {
				s.keyLen, s.keyEscaped = 0, false
			}
			s.keep(p[i : i+1])
		case '{', '[':
			s.keep(p[i : i+1])
			s.depth++
			if s.depth <= 64 {
				if c == '{' {
					s.objects |= 1 << (s.depth - 1)
				} else {
					s.objects &^= 1 << (s.depth - 1)
				}
			}
			if s.depth < len(s.at) {
				s.at[s.depth] = keyOther
			}
			s.expectKey, s.wantValue = c == '{', c == '['
		case '}', ']':
			if s.capWhat == keyIndex && s.depth == s.capDepth {
				s.endCapture()
			}
			s.keep(p[i : i+1])
			if s.depth > 0 {
				s.depth--
			}
			if s.capWhat != 0 && s.depth == s.capDepth {
				s.endCapture()
			}
			s.expectKey, s.wantValue = false, false
		case ':':
			s.keep(p[i : i+1])
			s.wantValue = true
		case ',':
			if s.capWhat == keyIndex && s.depth == s.capDepth {
				s.endCapture()
			}
			s.keep(p[i : i+1])
			if s.inObject() {
				s.expectKey = true
				if s.depth < len(s.at) {
					s.at[s.depth] = keyOther
				}
			} else {
				s.wantValue = true
			}
		default:
			// A number or literal: kept only when captured (an index).
			j := i
			for j < len(p) && !isWS(p[j]) && p[j] != ',' && p[j] != '}' && p[j] != ']' && p[j] != '"' && p[j] != '{' && p[j] != '[' && p[j] != ':' {
				j++
			}
			s.keep(p[i:j])
			i = j - 1
		}
	}
}

// inString consumes string bytes from p[i:] and returns the index of the
// last byte consumed.
func (s *jsonScan) inString(p []byte, i int) int {
	for i < len(p) {
		c := p[i]
		switch {
		case s.esc:
			s.esc = false
			s.keyByte(c)
			s.keep(p[i : i+1])
			i++
		case c == '\\':
			s.esc = true
			s.keyEscaped = s.keyEscaped || s.keyStr
			s.keyByte(c)
			s.keep(p[i : i+1])
			i++
		case c == '"':
			s.str = false
			s.keep(p[i : i+1])
			if s.keyStr {
				s.endKey()
			} else if s.capWhat == keyType && s.depth == s.capDepth {
				s.endCapture()
			}
			return i
		default:
			// Skip to the next quote or backslash at once.
			j := len(p)
			if k := bytes.IndexByte(p[i:], '"'); k >= 0 {
				j = i + k
			}
			if k := bytes.IndexByte(p[i:j], '\\'); k >= 0 {
				j = i + k
			}
			if s.keyStr {
				for _, b := range p[i:j] {
					s.keyByte(b)
				}
			}
			s.keep(p[i:j])
			i = j
		}
	}
	return len(p) - 1
}

func (s *jsonScan) keyByte(c byte) {
	if !s.keyStr {
		return
	}
	if s.keyLen < len(s.key) {
		s.key[s.keyLen] = c
	}
	s.keyLen++
}

// endKey records which member is now open at the current depth.
func (s *jsonScan) endKey() {
	s.expectKey = false
	if s.depth >= len(s.at) {
		return
	}
	id := keyOther
	switch {
	case s.keyLen > len(s.key):
	case s.keyEscaped:
		// Python reads "us\u0061ge" as usage: unescape as it would.
		raw := make([]byte, 0, s.keyLen+2)
		raw = append(append(append(raw, '"'), s.key[:s.keyLen]...), '"')
		if k, ok := jsonString(raw); ok {
			id = keyID(k)
		}
	default:
		id = keyID(s.key[:s.keyLen])
	}
	s.at[s.depth] = id
}

// bigEvent reads one SSE event too large to hold, part by part: the values
// of its data lines go through a jsonScan (lines joined by "\n", which is
// JSON whitespace, as SSE joins them), every other field is skipped.
type bigEvent struct {
	json jsonScan
	open bool
	// field is the start of the current line's field name; fieldLen its
	// length so far (past len(field): not "data").
	field    [4]byte
	fieldLen int
	// inName: reading the field name; inData: inside a data value;
	// skipSpace: the next byte is the optional blank after "data:".
	inName, inData, skipSpace bool
	prevCR                    bool
	dataLines                 int
}

func (b *bigEvent) start() {
	b.json.reset()
	b.open, b.inName, b.inData, b.skipSpace, b.prevCR = true, true, false, false, false
	b.fieldLen, b.dataLines = 0, 0
}

func (b *bigEvent) feed(p []byte) {
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c == '\n' && b.prevCR {
			b.prevCR = false
			continue
		}
		b.prevCR = c == '\r'
		switch {
		case c == '\r' || c == '\n':
			b.inName, b.inData, b.skipSpace, b.fieldLen = true, false, false, 0
		case b.inName:
			if c == ':' {
				b.inName = false
				if b.fieldLen == 4 && string(b.field[:]) == "data" {
					b.inData, b.skipSpace = true, true
					if b.dataLines > 0 {
						b.json.feed([]byte{'\n'})
					}
					b.dataLines++
				}
				continue
			}
			if b.fieldLen < len(b.field) {
				b.field[b.fieldLen] = c
			}
			b.fieldLen++
		case b.inData:
			if b.skipSpace {
				b.skipSpace = false
				if c == ' ' {
					continue
				}
			}
			j := i
			for j < len(p) && p[j] != '\r' && p[j] != '\n' {
				j++
			}
			b.json.feed(p[i:j])
			i = j - 1
		}
	}
}
