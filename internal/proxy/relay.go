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

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
var tailPool = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// relayBody copies a non-streamed answer to the client while keeping a
// bounded copy to read the usage from once it is complete.
func (ex *exchange) relayBody(resp *http.Response) {
	out := &clientWriter{w: ex.w, rc: ex.rc, timeout: ex.p.writeTimeout}
	ex.w.WriteHeader(resp.StatusCode)
	bufp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bufp)
	tp := tailPool.Get().(*[]byte)
	tail := tailBuffer{b: (*tp)[:0]}
	defer func() {
		if cap(tail.b) <= tailKeep*2 {
			*tp = tail.b[:0]
			tailPool.Put(tp)
		}
	}()
	buf := *bufp
	metered := ex.ep.metered()
	var rerr, werr error
	for werr == nil {
		var n int
		n, rerr = resp.Body.Read(buf)
		if n > 0 {
			if metered {
				tail.write(buf[:n])
			}
			_, werr = out.Write(buf[:n])
		}
		if rerr != nil {
			break
		}
	}
	if werr == nil {
		werr = out.flush()
	}
	o := outcome{started: true, seen: tail.total / 4}
	if metered {
		o.usage, o.haveUsage = tail.usage()
	}
	switch {
	case werr != nil || ex.r.Context().Err() != nil:
		o.ending = clientGone
		ex.finish(codeClientClosed, settle(ex.ep, ex.est, o), "client_closed")
	case !errors.Is(rerr, io.EOF):
		ex.log(rerr, "Upstream response broke off")
		o.ending = broken
		ex.finish(http.StatusBadGateway, settle(ex.ep, ex.est, o), "upstream_broken")
		panic(http.ErrAbortHandler) // tell the client the body is incomplete
	default:
		o.ending = completed
		ex.finish(resp.StatusCode, settle(ex.ep, ex.est, o), "")
	}
}

// streamState is what the relay learns of a stream from its events.
type streamState struct {
	// chunks counts the events carrying generated output.
	chunks    int64
	last      usage
	haveUsage bool
	// complete: the upstream said generation is over (the usage-only final
	// chunk, a Responses API completion event, or data: [DONE] arrived).
	complete bool
	scratch  []byte
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
	tap := newSSETap(out, func(ev []byte, plain bool) tapAction { return ex.inspect(&st, ev, plain) })
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
	if tap.oversized > 0 {
		// An event too large to read was output: count it so that, without
		// usage, it is charged at least as a chunk.
		st.chunks += int64(tap.oversized)
	}

	o := outcome{started: true, usage: st.last, haveUsage: st.haveUsage, seen: st.chunks}
	switch {
	case st.complete && st.haveUsage:
		// Generation finished upstream; a client that hangs up after the
		// last event it needs (SDKs close on [DONE]) interrupted nothing.
		o.ending = completed
		ex.finish(resp.StatusCode, settle(ex.ep, ex.est, o), "")
	case werr != nil || ex.r.Context().Err() != nil:
		o.ending = clientGone
		ex.finish(codeClientClosed, settle(ex.ep, ex.est, o), "client_closed")
	case !errors.Is(rerr, io.EOF):
		if cause := context.Cause(ctx); cause != nil {
			rerr = cause
		}
		ex.log(rerr, "Upstream stream broke off")
		o.ending = broken
		ex.finish(http.StatusBadGateway, settle(ex.ep, ex.est, o), "upstream_broken")
		panic(http.ErrAbortHandler) // the client must see the stream did not end well
	default:
		o.ending = completed
		ex.finish(resp.StatusCode, settle(ex.ep, ex.est, o), "")
	}
}

var (
	usageKey = []byte(`"usage"`)
	doneData = []byte("[DONE]")
)

// inspect reads one event: output chunks are counted, usage is kept, and
// the usage the client did not ask for is hidden again: the usage-only
// final chunk is dropped, a content chunk's usage member cut out.
func (ex *exchange) inspect(st *streamState, ev []byte, plain bool) tapAction {
	data, has, scratch := sseData(ev, plain, st.scratch)
	st.scratch = scratch
	if !has || len(data) == 0 || data[0] != '{' {
		if has && bytes.Equal(data, doneData) {
			st.complete = true
		}
		return tapAction{} // [DONE], comments, keep-alives
	}
	if ex.ep.streamUsage && !bytes.Contains(data, usageKey) {
		// The hot path: a chat or completion chunk without usage is an
		// output chunk, and has nothing else the proxy needs.
		ex.sawOutput(st)
		return tapAction{}
	}
	ci := inspectJSON(data)
	if ci.choices == 1 || ci.delta {
		ex.sawOutput(st)
	}
	if !ci.hasUsage {
		return tapAction{}
	}
	st.last, st.haveUsage = ci.usage, true
	if ci.choices == 0 {
		st.complete = true
		return tapAction{drop: ex.hideFinal}
	}
	if ex.hideContinuous && ci.choices == 1 && plain && ci.cutEnd > ci.cutStart {
		// With one data line, data aliases ev after "data:" and a blank.
		off := len(ev) - 2 - len(data)
		return tapAction{cutStart: off + ci.cutStart, cutEnd: off + ci.cutEnd}
	}
	return tapAction{}
}

func (ex *exchange) sawOutput(st *streamState) {
	st.chunks++
	if ex.ttft == 0 {
		ex.ttft = max(time.Since(ex.began), time.Nanosecond)
	}
}
