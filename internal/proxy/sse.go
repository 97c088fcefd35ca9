package proxy

import "bytes"

// The SSE reader is incremental and lossless: it only finds where events end,
// so the proxy can forward each event's exact bytes (or drop it) as soon as
// its closing blank line arrives. Lines end in "\n", "\r\n" or "\r", as the
// HTML living standard allows; an event ends at the first empty line.

var blankLF = []byte("\n\n")

// sseEvent returns the length of the first complete event in b, including
// the empty line that ends it, or 0 if b holds no complete event yet. A
// leading empty line is an event of its own (with no fields). A "\r" as the
// last byte of b may be the first half of "\r\n", so it only ends a line at
// EOF. plain reports that the event uses only "\n" line ends (as vLLM does),
// which lets sseData take its fast path.
func sseEvent(b []byte, atEOF bool) (n int, plain bool) {
	// Fast path: with no '\r' before it, the first "\n\n" ends the event.
	if len(b) > 0 && b[0] == '\n' {
		return 1, true
	}
	i := bytes.Index(b, blankLF)
	lim := i
	if lim < 0 {
		lim = len(b)
	}
	if bytes.IndexByte(b[:lim], '\r') < 0 {
		if i < 0 {
			return 0, false
		}
		return i + 2, true
	}
	return sseEventSlow(b, atEOF), false
}

// sseEventSlow is sseEvent for events with "\r" line ends, line by line.
func sseEventSlow(b []byte, atEOF bool) int {
	p := 0
	for p < len(b) {
		i := lineEnd(b[p:])
		if i < 0 {
			return 0
		}
		q := p + i
		if b[q] == '\r' {
			switch {
			case q+1 < len(b) && b[q+1] == '\n':
				q += 2
			case q+1 < len(b) || atEOF:
				q++
			default:
				return 0
			}
		} else {
			q++
		}
		if i == 0 {
			return q
		}
		p = q
	}
	return 0
}

// lineEnd returns the index of the first '\r' or '\n' in b, or -1.
func lineEnd(b []byte) int {
	n := bytes.IndexByte(b, '\n')
	lim := n
	if lim < 0 {
		lim = len(b)
	}
	if r := bytes.IndexByte(b[:lim], '\r'); r >= 0 {
		return r
	}
	return n
}

// sseData returns the event's data: the values of its "data" fields joined by
// "\n". When the event has exactly one data line the result aliases ev;
// otherwise it is built in scratch. hasData is false when no data field exists
// (comments, bare "event:" or "id:" lines, empty events).
func sseData(ev []byte, plain bool, scratch []byte) (data []byte, hasData bool, newScratch []byte) {
	// Fast path: "data: ...\n\n", the shape of nearly every LLM event.
	if plain && len(ev) >= 7 && string(ev[:5]) == "data:" && bytes.IndexByte(ev, '\n') == len(ev)-2 {
		v := ev[5 : len(ev)-2]
		if len(v) > 0 && v[0] == ' ' {
			v = v[1:]
		}
		return v, true, scratch
	}
	var first []byte
	n := 0
	for len(ev) > 0 {
		i := lineEnd(ev)
		var line []byte
		if i < 0 {
			line, ev = ev, nil
		} else {
			line = ev[:i]
			if ev[i] == '\r' && i+1 < len(ev) && ev[i+1] == '\n' {
				ev = ev[i+2:]
			} else {
				ev = ev[i+1:]
			}
		}
		if len(line) < 4 || line[0] != 'd' || string(line[:4]) != "data" {
			continue
		}
		var val []byte
		switch {
		case len(line) == 4:
			val = line[4:]
		case line[4] == ':':
			val = line[5:]
			if len(val) > 0 && val[0] == ' ' {
				val = val[1:]
			}
		default:
			continue // a field such as "datafoo"
		}
		switch n {
		case 0:
			first = val
		case 1:
			scratch = append(scratch[:0], first...)
			fallthrough
		default:
			scratch = append(scratch, '\n')
			scratch = append(scratch, val...)
		}
		n++
	}
	switch n {
	case 0:
		return nil, false, scratch
	case 1:
		return first, true, scratch
	default:
		return scratch, true, scratch
	}
}
