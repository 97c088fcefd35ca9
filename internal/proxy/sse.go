package proxy

import (
	"bytes"
	"io"
	"sync"
)

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

// eventEnd finds where an SSE event ends in bytes that arrive in pieces: at
// the first empty line, whatever mix of "\n", "\r\n" and "\r" ends its lines.
// The zero value is at the start of an event's first line.
type eventEnd struct {
	midLine bool // inside a line, not at its start
	cr      bool // the last byte was a '\r' that may be followed by '\n'
	// crEnd: the event ended at a '\r' that was the last byte seen, which
	// may be the first half of a "\r\n" that belongs to it too.
	crEnd bool
}

// scan returns how many bytes of p belong to the current event and whether
// its end is among them.
func (e *eventEnd) scan(p []byte) (int, bool) {
	if e.crEnd {
		e.crEnd = false
		if len(p) > 0 && p[0] == '\n' {
			return 1, true
		}
		return 0, true
	}
	for i := 0; i < len(p); i++ {
		j := bytes.IndexAny(p[i:], "\r\n")
		if j < 0 {
			e.midLine, e.cr = len(p) > i || e.midLine, false
			return len(p), false
		}
		if j > 0 {
			e.midLine, e.cr = true, false
			i += j
		}
		switch p[i] {
		case '\n':
			if e.cr { // the second half of "\r\n": the line ended at '\r'
				e.cr = false
				continue
			}
			if !e.midLine {
				return i + 1, true
			}
			e.midLine = false
		case '\r':
			if !e.midLine {
				switch {
				case i+1 == len(p):
					e.crEnd = true
					return len(p), false
				case p[i+1] == '\n':
					return i + 2, true
				}
				return i + 1, true
			}
			e.midLine, e.cr = false, true
		}
	}
	return len(p), false
}

// tapAction is what the relay does with one event.
type tapAction struct {
	drop bool
	// cut, when cutEnd > cutStart, removes ev[cutStart:cutEnd] (a member
	// of the event's JSON) and passes the rest.
	cutStart, cutEnd int
}

// sseTap is what a stream is copied through: it reads from the upstream into
// its own buffer, hands every complete event to inspect, and writes what it
// keeps to the client at once. An event larger than maxTapEvent is passed on
// as it arrives, shown to onBig part by part (which reads it in flat
// memory), and reading resumes at the next event, so no event can make the
// tap buffer without bound or stop it reading the usage that follows.
type sseTap struct {
	dst     io.Writer
	inspect func(ev []byte, plain bool) tapAction
	buf     []byte
	// over: inside an event too large to inspect, passed through until end
	// finds where it ends.
	over bool
	end  eventEnd
	// oversized counts the events passed through uninspected.
	oversized int
	// onBig, when set, sees the bytes of every oversized event as they
	// pass, end reporting the event's last part.
	onBig func(part []byte, end bool)
}

const (
	tapInitial  = 4 << 10
	maxTapEvent = 64 << 10
)

var tapBufPool = sync.Pool{New: func() any { b := make([]byte, 0, tapInitial); return &b }}

func newSSETap(dst io.Writer, inspect func(ev []byte, plain bool) tapAction) *sseTap {
	return &sseTap{dst: dst, inspect: inspect, buf: (*tapBufPool.Get().(*[]byte))[:0]}
}

// release returns the buffer to the pool.
func (t *sseTap) release() {
	if cap(t.buf) == tapInitial {
		b := t.buf[:0]
		tapBufPool.Put(&b)
	}
	t.buf = nil
}

// makeRoom grows a full buffer up to maxTapEvent; past it, one event fills
// the buffer, and what has arrived of it is passed on, the rest as it comes.
func (t *sseTap) makeRoom() error {
	if cap(t.buf) < maxTapEvent {
		b := make([]byte, len(t.buf), min(2*cap(t.buf), maxTapEvent))
		copy(b, t.buf)
		t.release()
		t.buf = b
		return nil
	}
	t.oversized++
	t.over, t.end = true, eventEnd{}
	n, done := t.end.scan(t.buf)
	if t.onBig != nil {
		t.onBig(t.buf[:n], done)
	}
	if _, werr := t.dst.Write(t.buf[:n]); werr != nil {
		return werr
	}
	t.buf = t.buf[:copy(t.buf, t.buf[n:])]
	t.over = !done
	return nil
}

// readFrom does one Read from r into the tap and passes on every event it
// completes. It returns how many bytes it read, the read error, and the
// first write error.
func (t *sseTap) readFrom(r io.Reader) (int, error, error) {
	if len(t.buf) == cap(t.buf) {
		if werr := t.makeRoom(); werr != nil {
			return 0, nil, werr
		}
	}
	n, rerr := r.Read(t.buf[len(t.buf):cap(t.buf)])
	data := t.buf[:len(t.buf)+n]
	off := 0
	if t.over {
		m, done := t.end.scan(data)
		if t.onBig != nil {
			t.onBig(data[:m], done)
		}
		if _, werr := t.dst.Write(data[:m]); werr != nil {
			return n, rerr, werr
		}
		off, t.over = m, !done
	}
	atEOF := rerr != nil
	run := off
	var werr error
	for off < len(data) && !t.over {
		m, plain := sseEvent(data[off:], atEOF)
		if m == 0 {
			if !atEOF {
				break
			}
			m, plain = len(data)-off, false // an unterminated last event
		}
		ev := data[off : off+m]
		if a := t.inspect(ev, plain); a.drop || a.cutEnd > a.cutStart {
			if _, werr = t.dst.Write(data[run:off]); werr != nil {
				return n, rerr, werr
			}
			if !a.drop {
				if _, werr = t.dst.Write(ev[:a.cutStart]); werr == nil {
					_, werr = t.dst.Write(ev[a.cutEnd:])
				}
				if werr != nil {
					return n, rerr, werr
				}
			}
			run = off + m
		}
		off += m
	}
	if run < off {
		if _, werr = t.dst.Write(data[run:off]); werr != nil {
			return n, rerr, werr
		}
	}
	t.buf = t.buf[:copy(t.buf[:cap(t.buf)], data[off:])]
	return n, rerr, nil
}
