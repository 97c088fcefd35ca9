package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"
)

var (
	copyBufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
	answerPool  = sync.Pool{New: func() any { b := make([]byte, 0, smallBody); return &b }}
)

// relayBody copies a non-streamed answer to the client and reads its
// usage: an answer of up to smallBody bytes (nearly all) is kept and read
// whole at the end; a larger one goes through a jsonScan as it passes, so an
// answer of any size is metered in flat memory. A client that leaves does
// not stop the reading: the upstream finishes the answer it was admitted for
// (forward keeps the upstream request alive for that) and the request is
// charged exactly what it used, not a guess (README, "Accounting model").
func (ex *exchange) relayBody(resp *http.Response) {
	out := &clientWriter{w: ex.w, rc: ex.rc, timeout: ex.p.writeTimeout}
	ex.w.WriteHeader(resp.StatusCode)
	bufp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bufp)
	buf := *bufp
	metered := ex.ep.metered()
	var body bodyMeter
	if metered {
		body.start()
		defer body.release()
	}
	var rerr, werr error
	for {
		var n int
		n, rerr = resp.Body.Read(buf)
		if n > 0 {
			if metered {
				body.write(buf[:n])
			}
			if werr == nil {
				_, werr = out.Write(buf[:n])
				if werr != nil && metered {
					// The client left: read on to the usage, but not
					// from an upstream that stalls.
					drain := time.AfterFunc(ex.p.streamIdle, func() { _ = resp.Body.Close() })
					defer drain.Stop()
				}
			}
		}
		if rerr != nil || (werr != nil && !metered) {
			break
		}
	}
	if werr == nil {
		werr = out.flush()
	}
	m := &meter{}
	if metered {
		m.final, m.haveFinal = body.usage()
	}
	o := outcome{answered: true, m: m}
	switch {
	case !errors.Is(rerr, io.EOF) && rerr != nil:
		ex.log(rerr, "Upstream response broke off")
		o.ending = broken
		ex.finish(http.StatusBadGateway, o, "upstream_broken")
		if werr == nil {
			panic(http.ErrAbortHandler) // tell the client the body is incomplete
		}
	case werr != nil || ex.r.Context().Err() != nil:
		o.ending = clientGone
		ex.finish(codeClientClosed, o, "client_closed")
	default:
		o.ending = completed
		ex.finish(resp.StatusCode, o, "")
	}
}

// smallBody is the largest answer kept whole to read its usage.
const smallBody = 64 << 10

// bodyMeter reads a non-streamed answer's usage: whole when it is small,
// with a jsonScan as it passes when it is not.
type bodyMeter struct {
	bp      *[]byte
	small   []byte
	scan    jsonScan
	scanned bool
}

func (b *bodyMeter) start() {
	b.bp = answerPool.Get().(*[]byte)
	b.small = (*b.bp)[:0]
}

func (b *bodyMeter) write(p []byte) {
	if !b.scanned && len(b.small)+len(p) <= smallBody {
		b.small = append(b.small, p...)
		return
	}
	if !b.scanned {
		b.scanned = true
		b.scan = newJSONScan()
		b.scan.feed(b.small)
	}
	b.scan.feed(p)
}

func (b *bodyMeter) usage() (usage, bool) {
	if b.scanned {
		return b.scan.usage, b.scan.haveUsage
	}
	ci := inspectJSON(b.small)
	return ci.usage, ci.hasUsage
}

func (b *bodyMeter) release() {
	*b.bp = b.small[:0]
	if cap(*b.bp) == smallBody {
		answerPool.Put(b.bp)
	}
}

// streamState is what the relay learns of a stream from its events.
type streamState struct {
	m meter
	// complete: the upstream said generation is over (the usage-only final
	// chunk, a Responses API completion event, or data: [DONE] arrived).
	complete bool
	scratch  []byte
	// big reads an event too large for the tap to hold, as it passes.
	big *bigEvent
}

// relayStream copies an SSE stream to the client: a plain copy loop through
// an sseTap, which reads each event's usage and hides what the proxy asked
// for and the client did not, into a clientWriter with a write deadline,
// flushed after every read that produced output. Nothing waits in the proxy
// and nothing is flushed mid-event.
func (ex *exchange) relayStream(ctx context.Context, resp *http.Response, cancel context.CancelCauseFunc) {
	p := ex.p
	out := &clientWriter{w: ex.w, rc: ex.rc, timeout: p.writeTimeout}
	ex.w.WriteHeader(resp.StatusCode)
	werr := out.flush()

	idle := time.AfterFunc(p.streamIdle, func() { cancel(errStreamIdle) })
	defer idle.Stop()

	var st streamState
	perPrompt := int64(0)
	if ex.ep.multiPrompt {
		perPrompt = max(ex.pr.n, 1)
	}
	st.m.init(ex.pr.sequences(), perPrompt)
	tap := newSSETap(out, func(ev []byte, plain bool) tapAction { return ex.inspect(&st, ev, plain) })
	tap.onBig = func(part []byte, end bool) { ex.inspectBig(&st, part, end) }
	defer tap.release()
	var rerr error
	for werr == nil {
		var n int
		n, rerr, werr = tap.readFrom(resp.Body)
		idle.Reset(p.streamIdle)
		if werr == nil && n > 0 {
			werr = out.flush()
		}
		if rerr != nil {
			break
		}
	}
	if st.big != nil && st.big.open {
		// The stream stopped inside an oversized event.
		st.m.unknown = st.m.unknown || !st.m.haveFinal
	}

	o := outcome{answered: true, streamed: true, m: &st.m}
	switch {
	case st.complete && st.m.haveFinal:
		// Generation finished upstream; a client that hangs up after the
		// last event it needs (SDKs close on [DONE]) interrupted nothing.
		o.ending = completed
		ex.finish(resp.StatusCode, o, "")
	case werr != nil || ex.r.Context().Err() != nil:
		o.ending = clientGone
		ex.finish(codeClientClosed, o, "client_closed")
	case !errors.Is(rerr, io.EOF):
		if cause := context.Cause(ctx); cause != nil {
			rerr = cause
		}
		ex.log(rerr, "Upstream stream broke off")
		o.ending = broken
		ex.finish(http.StatusBadGateway, o, "upstream_broken")
		panic(http.ErrAbortHandler) // the client must see the stream did not end well
	default:
		o.ending = completed
		ex.finish(resp.StatusCode, o, "")
	}
}

var (
	usageKey = []byte(`"usage"`)
	doneData = []byte("[DONE]")
)

// inspect reads one event: output events are counted per sequence, usage
// is kept, and the usage the client did not ask for is hidden again: the
// usage-only final chunk is dropped, a content chunk's usage member cut out.
func (ex *exchange) inspect(st *streamState, ev []byte, plain bool) tapAction {
	data, has, scratch := sseData(ev, plain, st.scratch)
	st.scratch = scratch
	if !has || len(data) == 0 || data[0] != '{' {
		if has && bytes.Equal(data, doneData) {
			st.complete = true
		}
		return tapAction{} // [DONE], comments, keep-alives
	}
	if ex.ep.streamUsage && len(st.m.seqs) == 1 && !bytes.Contains(data, usageKey) {
		// The hot path: a chat or completion chunk of a one-sequence
		// request without usage is an output chunk, and has nothing else
		// the proxy needs.
		ex.sawOutput(st, 0, 1, nil)
		return tapAction{}
	}
	ci := inspectJSON(data)
	return ex.account(st, ci.choices, ci.index, ci.typ, ci.usage, ci.hasUsage, func() tapAction {
		if ex.hideContinuous && ci.choices == 1 && plain && ci.cutEnd > ci.cutStart {
			// With one data line, data aliases ev after "data:" and a blank.
			off := len(ev) - 2 - len(data)
			return tapAction{cutStart: off + ci.cutStart, cutEnd: off + ci.cutEnd}
		}
		return tapAction{}
	})
}

// account applies what one event said: the endpoint's table tells output
// events (choices, or a typed Responses API delta) and the events whose
// usage is the whole request's.
func (ex *exchange) account(st *streamState, choices int, index int64, typ []byte, u usage, hasUsage bool, cut func() tapAction) tapAction {
	ep := ex.ep
	if ep.outputEvents != nil {
		switch {
		case ep.outputEvents[string(typ)]:
			ex.sawOutput(st, 0, 1, nil)
		case hasUsage && ep.usageEvents[string(typ)]:
			st.m.final, st.m.haveFinal, st.complete = u, true, true
		}
		return tapAction{}
	}
	if choices <= 0 {
		if hasUsage {
			// The usage-only final chunk: the whole request's.
			st.m.final, st.m.haveFinal, st.complete = u, true, true
			return tapAction{drop: ex.hideFinal}
		}
		return tapAction{}
	}
	if choices > 1 && hasUsage {
		// Several choices in one event with one usage: the whole
		// response at once (older vLLM streamed beam search so).
		st.m.final, st.m.haveFinal = u, true
		ex.sawOutput(st, index, choices, nil)
		return tapAction{}
	}
	var cont *usage
	if hasUsage {
		cont = &u
	}
	ex.sawOutput(st, index, choices, cont)
	if hasUsage && cut != nil {
		return cut()
	}
	return tapAction{}
}

func (ex *exchange) sawOutput(st *streamState, index int64, n int, cont *usage) {
	st.m.output(index, n, cont)
	if ex.ttft == 0 {
		ex.ttft = max(time.Since(ex.began), time.Nanosecond)
	}
}

// inspectBig reads an event too large for the tap to hold, part by part as
// it passes to the client, and accounts for it at its end. Without usage,
// an output event's size is unknown: the stream is then charged by the
// rule's last resort unless the upstream's final usage follows.
func (ex *exchange) inspectBig(st *streamState, part []byte, end bool) {
	if st.big == nil {
		st.big = &bigEvent{}
	}
	b := st.big
	if !b.open {
		b.start()
	}
	b.feed(part)
	if !end {
		return
	}
	b.open = false
	s := &b.json
	isOutput := s.choices > 0 || (ex.ep.outputEvents != nil && ex.ep.outputEvents[string(s.eventType())])
	ex.account(st, s.choices, s.index, s.eventType(), s.usage, s.haveUsage, nil)
	if isOutput && !s.haveUsage {
		st.m.unknown = true
	}
}
