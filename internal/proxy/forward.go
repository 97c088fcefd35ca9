package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/llm-user-operator/llm-user-operator/internal/openaiapi"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
)

// codeClientClosed is recorded (never sent) when the client went away first,
// as nginx does.
const codeClientClosed = 499

var errStreamIdle = errors.New("upstream stream idle for too long")

// forward sends the request upstream and relays the answer.
func (ex *exchange) forward(w http.ResponseWriter, up *upstream, bb *bodyBuf, body []byte, stream, forced bool) {
	p, r := ex.p, ex.r
	ctx := r.Context()
	var cancel context.CancelCauseFunc
	if stream {
		// Canceled by the idle timer, which starts with the response.
		ctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
	}
	out := r.WithContext(ctx)
	out.URL = &url.URL{Scheme: up.scheme, Host: up.host, Path: up.basePath + r.URL.Path, RawQuery: r.URL.RawQuery}
	out.Host = ""
	out.RequestURI = ""
	out.Header = outboundHeader(r.Header)
	out.Body = bb.reader(body)
	out.GetBody = func() (io.ReadCloser, error) { return bb.reader(body), nil }
	out.ContentLength = int64(len(body))
	out.TransferEncoding = nil
	out.Trailer = nil
	out.Close = false

	resp, err := p.transport.RoundTrip(out)
	ex.releaseBody() // the transport keeps its own hold while it still writes
	if err != nil {
		ex.roundTripError(w, err)
		return
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode >= 400 {
		ex.upstreamError(w, resp)
		return
	}
	h := w.Header()
	copyResponseHeader(h, resp.Header)
	if ct := resp.Header["Content-Type"]; stream && len(ct) > 0 && strings.HasPrefix(ct[0], "text/event-stream") {
		if forced {
			delete(h, "Content-Length")
		}
		ex.relayStream(ctx, w, resp, forced, cancel)
		return
	}
	ex.relayBody(w, resp)
}

// hopHeaders are meaningful for one connection only (RFC 9110 7.6.1).
var hopHeaders = map[string]bool{
	"Connection": true, "Proxy-Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
}

// outboundHeader copies the client's headers minus hop-by-hop ones, the
// user's token (never sent upstream), Content-Length (the body may have
// changed) and Accept-Encoding (a compressed answer would hide its usage).
func outboundHeader(in http.Header) http.Header {
	h := make(http.Header, len(in))
	for k, v := range in {
		if hopHeaders[k] || k == "Authorization" || k == "Content-Length" || k == "Accept-Encoding" {
			continue
		}
		h[k] = v
	}
	removeConnectionListed(h, in)
	return h
}

func copyResponseHeader(dst, src http.Header) {
	for k, v := range src {
		if hopHeaders[k] {
			continue
		}
		if _, ours := dst[k]; ours {
			continue // the proxy's own headers (rate limits) win
		}
		dst[k] = v
	}
	removeConnectionListed(dst, src)
}

func removeConnectionListed(h, src http.Header) {
	for _, v := range src["Connection"] {
		for f := range strings.SplitSeq(v, ",") {
			if f = textproto.TrimString(f); f != "" {
				delete(h, textproto.CanonicalMIMEHeaderKey(f))
			}
		}
	}
}

// roundTripError answers a request that got no response. Nothing was
// generated, so nothing is charged, unless the client left first: then the
// upstream may well have started, and the prompt estimate is charged.
func (ex *exchange) roundTripError(w http.ResponseWriter, err error) {
	if ex.r.Context().Err() != nil {
		ex.finish(codeClientClosed, ex.interruptedCharge(usage{}, false, 0), "client_closed")
		return
	}
	ex.p.log.Error(err, "Upstream request failed", "model", ex.model)
	var op *net.OpError
	var ne net.Error
	switch {
	case errors.As(err, &op) && op.Op == "dial":
		openaiapi.WriteError(w, http.StatusBadGateway, openaiapi.TypeServer, openaiapi.CodeUpstreamUnavailable, "",
			"Could not connect to the upstream serving model '"+ex.model+"'.")
		ex.finish(http.StatusBadGateway, quota.Amount{}, "502")
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
		openaiapi.WriteError(w, http.StatusGatewayTimeout, openaiapi.TypeServer, openaiapi.CodeUpstreamTimeout, "",
			"The upstream serving model '"+ex.model+"' did not answer in time.")
		ex.finish(http.StatusGatewayTimeout, quota.Amount{}, "504")
	default:
		openaiapi.WriteError(w, http.StatusBadGateway, openaiapi.TypeServer, openaiapi.CodeUpstreamUnavailable, "",
			"The upstream serving model '"+ex.model+"' failed: "+err.Error())
		ex.finish(http.StatusBadGateway, quota.Amount{}, "502")
	}
}

// upstreamError relays a 4xx/5xx. OpenAI-shaped bodies (and vLLM's older
// {"object":"error",...}) pass through; anything else (a load balancer's HTML,
// FastAPI's {"detail":"Not Found"}) is wrapped in OpenAI's shape with the
// same status. An error carries no usage, so nothing is charged.
func (ex *exchange) upstreamError(w http.ResponseWriter, resp *http.Response) {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	code := resp.StatusCode
	errType := strconv.Itoa(code)
	if isOpenAIError(b) {
		h := w.Header()
		h["Content-Type"] = []string{"application/json"}
		h["Content-Length"] = []string{strconv.Itoa(len(b))}
		w.WriteHeader(code)
		_, _ = w.Write(b)
		ex.finish(code, quota.Amount{}, errType)
		return
	}
	typ := openaiapi.TypeInvalidRequest
	if code >= 500 {
		typ = openaiapi.TypeServer
	}
	snippet := strings.TrimSpace(string(b))
	if len(snippet) > 512 {
		snippet = snippet[:512] + "..."
	}
	msg := "The upstream serving model '" + ex.model + "' answered " + resp.Status
	if code == http.StatusNotFound {
		msg += " for " + ex.r.URL.Path + "; it may not implement this API"
	}
	if snippet != "" {
		msg += ": " + snippet
	}
	openaiapi.WriteError(w, code, typ, openaiapi.CodeUpstreamError, "", msg+".")
	ex.finish(code, quota.Amount{}, errType)
}

func isOpenAIError(b []byte) bool {
	it := newObjIter(b, 0)
	for m, ok := it.next(); ok; m, ok = it.next() {
		key, val := m.key, b[m.valStart:m.valEnd]
		if string(key) == "error" && len(val) > 0 && val[0] == '{' {
			return true
		}
		if string(key) == "object" && string(val) == `"error"` {
			return true
		}
	}
	return false
}

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
var tailPool = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// relayBody streams a non-streamed answer to the client while keeping a
// bounded copy to read the usage from once it is complete.
func (ex *exchange) relayBody(w http.ResponseWriter, resp *http.Response) {
	w.WriteHeader(resp.StatusCode)
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
	for {
		var n int
		n, rerr = resp.Body.Read(buf)
		if n > 0 {
			if metered {
				tail.write(buf[:n])
			}
			if _, werr = w.Write(buf[:n]); werr != nil {
				break
			}
		}
		if rerr != nil {
			break
		}
	}
	if !metered {
		ex.finish(resp.StatusCode, quota.Amount{}, "")
		if !errors.Is(rerr, io.EOF) && werr == nil {
			panic(http.ErrAbortHandler)
		}
		return
	}
	u, ok := tail.usage()
	switch {
	case werr != nil || ex.r.Context().Err() != nil:
		ex.finish(codeClientClosed, ex.interruptedCharge(u, ok, tail.total/4), "client_closed")
	case !errors.Is(rerr, io.EOF):
		ex.p.log.Error(rerr, "Upstream response broke off", "model", ex.model)
		ex.finish(http.StatusBadGateway, ex.interruptedCharge(u, ok, tail.total/4), "upstream_broken")
		panic(http.ErrAbortHandler) // tell the client the body is incomplete
	case ok:
		ex.finish(resp.StatusCode, ex.usageCharge(u), "")
	default:
		// A success without usage (not vLLM): charge the estimated prompt
		// and about a token per four bytes of answer, within the reservation.
		ex.finish(resp.StatusCode, ex.completeCharge(ex.est.InputTokens, min(tail.total/4, ex.est.OutputTokens)), "")
	}
}

// usageCharge is the charge for reported usage.
func (ex *exchange) usageCharge(u usage) quota.Amount {
	a := quota.Amount{Requests: 1, InputTokens: u.Prompt, OutputTokens: u.Completion}
	if ex.ep.embeddings {
		a.OutputTokens = 0
	}
	return a
}

func (ex *exchange) completeCharge(in, out int64) quota.Amount {
	if ex.ep.embeddings {
		out = 0
	}
	return quota.Amount{Requests: 1, InputTokens: in, OutputTokens: out}
}

// interruptedCharge is what a request cut short costs: the prompt (reported,
// else estimated) plus the output seen so far (reported, else counted). It
// is never zero, and never the whole reservation unless that much was seen.
func (ex *exchange) interruptedCharge(u usage, ok bool, seen int64) quota.Amount {
	in, out := ex.est.InputTokens, seen
	if ok {
		// Usage on a chunk with choices comes from continuous usage stats and
		// is current as of that chunk; counting chunks would add the role
		// and finish chunks, which carry no tokens.
		in, out = u.Prompt, u.Completion
	}
	a := ex.completeCharge(in, out)
	if a.InputTokens+a.OutputTokens == 0 {
		a.InputTokens = max(ex.est.InputTokens, 1)
	}
	return a
}

// stream is the state of one relayed SSE stream.
type stream struct {
	forced    bool
	chunks    int64 // events carrying generated output
	last      usage
	haveUsage bool
	// complete is set once the upstream said generation is over: the
	// usage-only final chunk or data: [DONE] arrived.
	complete bool
	scratch  []byte
}

const (
	streamBufSize  = 4 << 10
	maxStreamEvent = 4 << 20
)

var streamBufPool = sync.Pool{New: func() any { b := make([]byte, 0, streamBufSize); return &b }}

// relayStream relays an SSE stream event by event: each complete event is
// written as soon as it has arrived and the batch read together is flushed
// at once, so nothing waits in the proxy and nothing is flushed mid-event.
// Events pass byte for byte, except the usage-only chunk the proxy forced
// when the client did not ask for it.
func (ex *exchange) relayStream(ctx context.Context, w http.ResponseWriter, resp *http.Response, forced bool, cancel context.CancelCauseFunc) {
	p := ex.p
	rc := http.NewResponseController(w)
	flush := func() error {
		if err := rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return err
		}
		return nil
	}
	w.WriteHeader(resp.StatusCode)
	werr := flush()

	idle := time.AfterFunc(p.streamIdle, func() { cancel(errStreamIdle) })
	defer idle.Stop()

	st := stream{forced: forced}
	bp := streamBufPool.Get().(*[]byte)
	buf := (*bp)[:0]
	defer func() {
		if cap(buf) == streamBufSize {
			*bp = buf[:0]
			streamBufPool.Put(bp)
		}
	}()
	passthrough := false // an event outgrew maxStreamEvent: stop parsing
	var rerr error
	for werr == nil {
		if len(buf) == cap(buf) {
			if cap(buf) >= maxStreamEvent {
				passthrough = true
				_, werr = w.Write(buf)
				buf = buf[:0]
				continue
			}
			buf = append(buf, 0)[:len(buf)]
		}
		var n int
		n, rerr = resp.Body.Read(buf[len(buf):cap(buf)])
		idle.Reset(p.streamIdle)
		buf = buf[:len(buf)+n]
		atEOF := rerr != nil
		off, run := 0, 0
		if passthrough {
			off = len(buf)
		}
		for off < len(buf) {
			m, plain := sseEvent(buf[off:], atEOF)
			if m == 0 {
				if !atEOF {
					break
				}
				m, plain = len(buf)-off, false // an unterminated last event
			}
			if ex.onEvent(&st, buf[off:off+m], plain) {
				if run < off {
					if _, werr = w.Write(buf[run:off]); werr != nil {
						break
					}
				}
				run = off + m
			}
			off += m
		}
		if werr == nil && run < off {
			_, werr = w.Write(buf[run:off])
		}
		if werr == nil && off > 0 {
			werr = flush()
		}
		buf = buf[:copy(buf, buf[off:])]
		if rerr != nil {
			break
		}
	}

	switch {
	case st.complete && st.haveUsage:
		// Generation finished upstream; a client that hangs up after the
		// last event it needs (SDKs close on [DONE]) interrupted nothing.
		ex.finish(resp.StatusCode, ex.usageCharge(st.last), "")
	case werr != nil || ex.r.Context().Err() != nil:
		ex.finish(codeClientClosed, ex.interruptedCharge(st.last, st.haveUsage, st.chunks), "client_closed")
	case !errors.Is(rerr, io.EOF):
		if cause := context.Cause(ctx); cause != nil {
			rerr = cause
		}
		ex.p.log.Error(rerr, "Upstream stream broke off", "model", ex.model)
		ex.finish(http.StatusBadGateway, ex.interruptedCharge(st.last, st.haveUsage, st.chunks), "upstream_broken")
		panic(http.ErrAbortHandler) // the client must see the stream did not end well
	case st.haveUsage:
		ex.finish(resp.StatusCode, ex.usageCharge(st.last), "")
	default:
		ex.finish(resp.StatusCode, ex.completeCharge(ex.est.InputTokens, st.chunks), "")
	}
}

// onEvent inspects one event and reports whether to drop it: only the
// usage-only chunk the proxy itself asked for.
func (ex *exchange) onEvent(st *stream, ev []byte, plain bool) (drop bool) {
	data, has, scratch := sseData(ev, plain, st.scratch)
	st.scratch = scratch
	if !has || len(data) == 0 || data[0] != '{' {
		if has && bytes.Equal(data, doneData) {
			st.complete = true
		}
		return false // [DONE], comments, keep-alives
	}
	if ex.ep.streamUsage && !bytes.Contains(data, usageKey) {
		// The hot path: a chat or completion chunk without usage is an
		// output chunk, and has nothing else the proxy needs.
		ex.sawOutput(st)
		return false
	}
	ci := inspectJSON(data)
	if ci.choices == 1 || ci.delta {
		ex.sawOutput(st)
	}
	if ci.hasUsage {
		st.last, st.haveUsage = ci.usage, true
		st.complete = st.complete || ci.choices == 0
	}
	return st.forced && ci.hasUsage && ci.choices == 0
}

var (
	usageKey = []byte(`"usage"`)
	doneData = []byte("[DONE]")
)

func (ex *exchange) sawOutput(st *stream) {
	st.chunks++
	if ex.ttft == 0 {
		ex.ttft = max(ex.p.now().Sub(ex.start), time.Nanosecond)
	}
}
