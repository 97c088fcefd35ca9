package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/llm-user-operator/llm-user-operator/internal/metrics"
	"github.com/llm-user-operator/llm-user-operator/internal/openaiapi"
)

// codeClientClosed is recorded (never sent) when the client went away first,
// as nginx does.
const codeClientClosed = 499

var errStreamIdle = errors.New("upstream stream idle for too long")

// forward sends the request to the upstream serving the model, relays the
// answer and settles what it cost.
func (ex *exchange) forward() {
	p, r := ex.p, ex.r
	up := ex.up
	ctx := r.Context()
	var cancel context.CancelCauseFunc
	switch {
	case ex.pr.stream:
		// Canceled by the idle timer, which starts with the response.
		ctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
	case ex.ep.metered():
		// A client that leaves does not stop a non-streamed answer: the
		// upstream finishes what it was admitted for (the transport's
		// response header timeout bounds the wait) and relayBody reads its
		// usage, so hanging up before the answer does not make GPU time
		// free. A shutdown past its grace cuts it (CutRequests).
		ctx = detached{Context: ctx, stop: p.stop}
	}
	out := r.WithContext(ctx)
	out.URL = &url.URL{Scheme: up.scheme, Host: up.host, Path: up.basePath + r.URL.Path, RawQuery: r.URL.RawQuery}
	out.Host = ""
	out.RequestURI = ""
	var fairness []string
	if ex.user != nil {
		fairness = ex.user.FairnessID
	}
	out.Header = outboundHeader(r.Header, ex.id, fairness)
	if o := ex.objective(); o != "" {
		out.Header[headerObjective] = []string{o}
	}
	bb, body := ex.bb, ex.body
	out.Body = bb.reader(body)
	out.GetBody = func() (io.ReadCloser, error) { return bb.reader(body), nil }
	out.ContentLength = int64(len(body))
	out.TransferEncoding = nil
	out.Trailer = nil
	out.Close = false

	resp, err := p.transport.RoundTrip(out)
	ex.releaseBody() // the transport keeps its own hold while it still writes
	if err != nil {
		ex.roundTripError(err)
		return
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode >= 400 {
		ex.upstreamError(resp)
		return
	}
	copyResponseHeader(ex.w.Header(), resp.Header)
	if ct := resp.Header["Content-Type"]; len(ct) > 0 && strings.HasPrefix(ct[0], "text/event-stream") {
		if ex.hideFinal || ex.hideContinuous {
			delete(ex.w.Header(), "Content-Length")
		}
		ex.relayStream(ctx, resp, cancel)
		return
	}
	ex.relayBody(resp)
}

// objective is the InferenceObjective the request's tier names, "" when
// the proxy names none.
func (ex *exchange) objective() string {
	p, u := ex.p, ex.user
	if p.objectivePrefix == "" || u == nil {
		return ""
	}
	switch {
	case ex.overflow:
		return p.objectivePrefix + metrics.TierOverflow
	case u.Priority != nil:
		return p.objectivePrefix + strconv.Itoa(int(*u.Priority))
	}
	return p.objectivePrefix + "0"
}

// forwardedHeaders are the client headers that reach the upstream: content
// negotiation and tracing. Everything else stays at the proxy: the user's
// token, hop-by-hop headers, Content-Length (the body may have changed),
// Accept-Encoding (a compressed answer would hide its usage), and headers
// an upstream acts on that a user must not choose, such as X-Request-Id
// (vLLM's own request id) or X-data-parallel-rank (vLLM's routing).
var forwardedHeaders = []string{"Accept", "Content-Type", "User-Agent", "Traceparent", "Tracestate", "Baggage", "Openai-Beta"}

// outboundHeader builds the upstream request's headers. The proxy's request
// id goes as X-Request-Id; the client's, if any, travels for correlation as
// X-Client-Request-Id only. fairness, when set, is the verified flow of the
// request for a scheduler's fair queuing (a client's own is never
// forwarded: it is not in forwardedHeaders).
func outboundHeader(in http.Header, id string, fairness []string) http.Header {
	h := make(http.Header, len(forwardedHeaders)+3)
	if fairness != nil {
		h[headerFairnessID] = fairness
	}
	for _, k := range forwardedHeaders {
		if v, ok := in[k]; ok {
			h[k] = v
		}
	}
	h[headerRequestID] = []string{id}
	if v := in[headerRequestID]; len(v) > 0 {
		h[headerClientRequestID] = v[:1]
	}
	return h
}

// hopHeaders are meaningful for one connection only (RFC 9110 7.6.1).
var hopHeaders = map[string]bool{
	"Connection": true, "Proxy-Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true,
	"Proxy-Authorization": true, "Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
}

func copyResponseHeader(dst, src http.Header) {
	for k, v := range src {
		if hopHeaders[k] {
			continue
		}
		if _, ours := dst[k]; ours {
			continue // the proxy's own headers (request id, rate limits) win
		}
		dst[k] = v
	}
	for _, v := range src["Connection"] {
		for f := range strings.SplitSeq(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				delete(dst, http.CanonicalHeaderKey(f))
			}
		}
	}
}

// roundTripError answers a request that got no response. Nothing was
// generated, so nothing is charged, unless the client left first: then the
// upstream may well have started, and the prompt estimate is charged.
func (ex *exchange) roundTripError(err error) {
	if ex.r.Context().Err() != nil {
		ex.finish(codeClientClosed, outcome{ending: clientGone}, "client_closed")
		return
	}
	ex.log(err, "Upstream request failed")
	var op *net.OpError
	var ne net.Error
	model := ex.modelID()
	switch {
	case errors.As(err, &op) && op.Op == "dial":
		openaiapi.WriteError(ex.w, http.StatusBadGateway, openaiapi.TypeServer, openaiapi.CodeUpstreamUnavailable, "",
			"Could not connect to the upstream serving model '"+model+"'.")
		ex.finish(http.StatusBadGateway, outcome{ending: refused}, "502")
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
		// The upstream read the prompt and may have generated all along
		// (it stops when the proxy hangs up): charge the prompt.
		openaiapi.WriteError(ex.w, http.StatusGatewayTimeout, openaiapi.TypeServer, openaiapi.CodeUpstreamTimeout, "",
			"The upstream serving model '"+model+"' did not answer in time.")
		ex.finish(http.StatusGatewayTimeout, outcome{ending: broken}, "504")
	default:
		openaiapi.WriteError(ex.w, http.StatusBadGateway, openaiapi.TypeServer, openaiapi.CodeUpstreamUnavailable, "",
			"The upstream serving model '"+model+"' failed: "+err.Error())
		ex.finish(http.StatusBadGateway, outcome{ending: refused}, "502")
	}
}

// upstreamError relays a 4xx/5xx. OpenAI-shaped bodies (and vLLM's older
// {"object":"error",...}) pass through; anything else (a load balancer's HTML,
// FastAPI's {"detail":"Not Found"}) is wrapped in OpenAI's shape with the
// same status. An error carries no usage, so nothing is charged.
func (ex *exchange) upstreamError(resp *http.Response) {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	code := resp.StatusCode
	errType := strconv.Itoa(code)
	if isOpenAIError(b) {
		h := ex.w.Header()
		h["Content-Type"] = []string{"application/json"}
		h["Content-Length"] = []string{strconv.Itoa(len(b))}
		ex.w.WriteHeader(code)
		_, _ = ex.w.Write(b)
		ex.finish(code, outcome{ending: refused}, errType)
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
	msg := "The upstream serving model '" + ex.modelID() + "' answered " + resp.Status
	if code == http.StatusNotFound {
		msg += " for " + ex.r.URL.Path + "; it may not implement this API"
	}
	if snippet != "" {
		msg += ": " + snippet
	}
	openaiapi.WriteError(ex.w, code, typ, openaiapi.CodeUpstreamError, "", msg+".")
	ex.finish(code, outcome{ending: refused}, errType)
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

// clientWriter is how the relays write to the client: every write and flush
// runs under a deadline, so a client that stops reading is cut off after
// the write timeout instead of holding the handler, its reservation and
// its upstream connection for as long as it likes. It keeps the first
// error.
type clientWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
	// armed is when the deadline was last moved: moving it costs a timer
	// update, so it moves at most every timeout/4, which leaves each write
	// at least three quarters of the timeout.
	armed time.Time
	err   error
}

func (c *clientWriter) arm() {
	if c.timeout <= 0 {
		return
	}
	if now := time.Now(); now.Sub(c.armed) >= c.timeout/4 {
		c.armed = now
		_ = c.rc.SetWriteDeadline(now.Add(c.timeout))
	}
}

func (c *clientWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	c.arm()
	var n int
	n, c.err = c.w.Write(p)
	return n, c.err
}

// flush sends what was written; the flush policy of the stream relay is to
// flush after every read from the upstream that produced output.
func (c *clientWriter) flush() error {
	if c.err != nil {
		return c.err
	}
	c.arm()
	if err := c.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		c.err = err
	}
	return c.err
}
