package proxy

import (
	"context"
	"errors"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/metrics"
	"github.com/llm-user-operator/llm-user-operator/internal/openaiapi"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
)

// exchange is one API request on its way through the chain.
type exchange struct {
	p     *Proxy
	ep    *endpoint
	r     *http.Request
	user  *User // nil with DisableAuth
	u     User
	start time.Time
	// model is the served model's ID once routed, else "".
	model string
	// bb is the request body while the handler holds it.
	bb   *bodyBuf
	est  quota.Amount
	res  *quota.Reservation
	done bool
	ttft time.Duration
}

func (p *Proxy) serveAPI(w http.ResponseWriter, r *http.Request, ep *endpoint) {
	ex := &exchange{p: p, ep: ep, r: r, start: p.now()}
	defer ex.release()

	// 1. Authenticate.
	if !p.disableAuth {
		u, ok := p.authenticate(w, r)
		if !ok {
			return
		}
		ex.u = u
		ex.user = &ex.u
		if !u.QuotaFound {
			ex.refuse(w, http.StatusForbidden, openaiapi.TypeInvalidRequest, openaiapi.CodeQuotaNotFound, "", metrics.ReasonQuotaMissing,
				"LLMUser "+u.Namespace+"/"+u.Name+" refers to LLMQuota '"+u.QuotaName+"', which does not exist; ask your administrator to create it.")
			return
		}
	}

	// Read and parse the body: the model is in it.
	if r.ContentLength > p.maxBody {
		ex.tooLarge(w)
		return
	}
	bb := getBodyBuf()
	ex.bb = bb
	defer ex.releaseBody()
	if err := bb.readFrom(r.Body, r.ContentLength, p.maxBody); err != nil {
		if errors.Is(err, errTooLarge) {
			ex.tooLarge(w)
		} else {
			ex.refuse(w, http.StatusBadRequest, openaiapi.TypeInvalidRequest, "", "", "", "Could not read the request body: "+err.Error())
		}
		return
	}
	var pr parsed
	if e := parseRequest(bb.b, ep, &pr); e != nil {
		ex.refuse(w, e.status, e.typ, e.code, e.param, "", e.message)
		return
	}

	// 2. Authorize the model; only then say whether it exists, so that
	// existence does not leak to those who may not use it.
	t := p.models.Load()
	if t == nil {
		ex.refuse(w, http.StatusServiceUnavailable, openaiapi.TypeServer, openaiapi.CodeUpstreamUnavailable, "", "", "No upstream has listed its models yet; retry shortly.")
		return
	}
	entry := t.byID[string(pr.model)]
	if ex.user != nil {
		var name string
		if entry != nil {
			name = entry.ID // no copy of the model name on the hot path
		} else {
			name = string(pr.model)
		}
		if !modelAllowed(ex.user, name) {
			ex.refuse(w, http.StatusForbidden, openaiapi.TypeInvalidRequest, openaiapi.CodeModelNotAllowed, "model", metrics.ReasonModelNotAllowed,
				"Model '"+name+"' is not allowed for LLMUser "+ex.user.Namespace+"/"+ex.user.Name+"; allowed: "+allowedList(ex.user)+".")
			return
		}
	}
	if entry == nil {
		ex.refuse(w, http.StatusNotFound, openaiapi.TypeInvalidRequest, openaiapi.CodeModelNotFound, "model", "",
			"The model '"+string(pr.model)+"' does not exist.")
		return
	}
	ex.model = entry.ID

	// 3. Admit: cap, estimate, reserve.
	var capTokens *int64
	if !p.disableQuota && ep.metered() && ex.user.MaxTokensPerRequest != nil {
		capTokens = ex.user.MaxTokensPerRequest
		for i, f := range ep.maxFields {
			if mf := pr.max[i]; mf.set && mf.v > *capTokens {
				ex.refuse(w, http.StatusBadRequest, openaiapi.TypeInvalidRequest, openaiapi.CodeMaxTokensExceeded, f, metrics.ReasonMaxTokens,
					f+" is "+strconv.FormatInt(mf.v, 10)+", above the limit of "+strconv.FormatInt(*capTokens, 10)+
						" tokens per request of LLMQuota '"+ex.user.QuotaName+"'. Lower it, or omit it to get the limit.")
				return
			}
		}
	}
	var sp [3]splice
	splices, forced := pr.edits(bb.b, ep, capTokens, sp[:0])
	body := bb.b
	if len(splices) > 0 {
		bb.edited = applySplices(bb.edited[:0], bb.b, splices)
		body = bb.edited
	}
	if ep.metered() {
		ex.est = p.estimate(ep, &pr, capTokens)
		if !p.disableQuota && len(ex.user.Budgets) > 0 && !ex.reserve(w) {
			return
		}
	}

	// 4. Forward, and 5. account.
	ex.forward(w, entry.pick(), bb, body, pr.stream, forced)
}

// estimate is what a request may cost: its prompt at about four bytes a
// token (counting the JSON around the text too, so a slight overestimate)
// plus every output token it may generate.
func (p *Proxy) estimate(ep *endpoint, pr *parsed, capTokens *int64) quota.Amount {
	a := quota.Amount{Requests: 1, InputTokens: int64(pr.promptBytes/4) + 8}
	if ep.embeddings {
		return a
	}
	mt, ok := pr.maxTokens(ep)
	switch {
	case ok:
	case capTokens != nil:
		mt = *capTokens
	default:
		mt = p.defaultMax
	}
	a.OutputTokens = min(max(mt, 0), 1<<40) * min(pr.n, 1<<16)
	return a
}

// reserve holds the estimate in every budget, setting the rate-limit
// headers; it answers 429 and returns false when a budget has no room.
func (ex *exchange) reserve(w http.ResponseWriter) bool {
	p, u := ex.p, ex.user
	res, dec, err := p.counter.Reserve(ex.r.Context(), quota.Request{Budgets: u.Budgets, Estimate: ex.est})
	if err != nil {
		p.log.Error(err, "Reserving quota failed", "namespace", u.Namespace, "user", u.Name)
		ex.refuse(w, http.StatusServiceUnavailable, openaiapi.TypeServer, openaiapi.CodeQuotaUnavailable, "", "",
			"The quota store is unavailable; retry shortly.")
		return false
	}
	now := p.now()
	setRateLimitHeaders(w.Header(), dec.Windows, now)
	e := dec.Exceeded
	if dec.Allowed {
		ex.res = res
		if e != nil && e.DryRun {
			_, _, reason := exceededKind(e.Window)
			p.metrics.Reject(u.Namespace, u.Name, metrics.DryRunPrefix+reason)
			w.Header()["X-Llm-Quota-Dryrun-Exceeded"] = []string{string(e.Window)}
		}
		return true
	}
	if e == nil { // a Counter that refuses without saying why
		ex.refuse(w, http.StatusTooManyRequests, openaiapi.TypeRateLimit, openaiapi.CodeRateLimitExceeded, "", metrics.ReasonRateLimit, "Rate limit reached.")
		return false
	}
	typ, code, reason := exceededKind(e.Window)
	wait := e.ResetAt.Sub(now)
	w.Header()["Retry-After"] = []string{strconv.FormatInt(max(int64(math.Ceil(wait.Seconds())), 1), 10)}
	need := ex.est.Total()
	switch e.Resource {
	case quota.ResourceRequests:
		need = 1
	case quota.ResourceInputTokens:
		need = ex.est.InputTokens
	case quota.ResourceOutputTokens:
		need = ex.est.OutputTokens
	}
	var msg strings.Builder
	if typ == openaiapi.TypeRateLimit {
		msg.WriteString("Rate limit reached for ")
		msg.WriteString(string(e.Resource))
		msg.WriteString(" per ")
		msg.WriteString(string(e.Window))
	} else {
		msg.WriteString("You exceeded your ")
		msg.WriteString(string(e.Window))
		msg.WriteString(" quota of ")
		msg.WriteString(string(e.Resource))
	}
	msg.WriteString(" of " + describeBudget(e.Budget) + ": limit " + strconv.FormatInt(e.Limit, 10) +
		", used " + strconv.FormatInt(e.Used, 10) + " (including requests in flight), this request needs up to " +
		strconv.FormatInt(need, 10) + ". The window resets at " + e.ResetAt.UTC().Format(time.RFC3339) +
		" (in " + formatReset(wait) + ").")
	ex.refuse(w, http.StatusTooManyRequests, typ, code, "", reason, msg.String())
	return false
}

// exceededKind maps a window to OpenAI's two flavours of 429: a short
// window is a rate limit (retry soon), a long one an exhausted quota.
func exceededKind(win llmv1alpha1.Window) (typ, code, reason string) {
	switch win {
	case llmv1alpha1.WindowMinute, llmv1alpha1.WindowHour:
		return openaiapi.TypeRateLimit, openaiapi.CodeRateLimitExceeded, metrics.ReasonRateLimit
	}
	return openaiapi.TypeInsufficientQuota, openaiapi.CodeInsufficientQuota, metrics.ReasonInsufficientQuota
}

func describeBudget(key string) string {
	if rest, ok := strings.CutPrefix(key, "user/"); ok {
		return "LLMUser " + rest
	}
	if rest, ok := strings.CutPrefix(key, "quota/"); ok {
		return "the shared LLMQuota " + rest
	}
	return key
}

func allowedList(u *User) string {
	s := "models matching "
	if len(u.Models) == 0 {
		s += "*"
	} else {
		s += strings.Join(u.Models, ", ")
	}
	if len(u.UserModels) > 0 {
		s += " and, for this user, " + strings.Join(u.UserModels, ", ")
	}
	return s
}

// setRateLimitHeaders sets OpenAI's x-ratelimit-* headers from the tightest
// requests window and the tightest token window among all budgets; a header
// set is omitted when nothing caps it.
func setRateLimitHeaders(h http.Header, ws []quota.WindowStatus, now time.Time) {
	var (
		reqW, tokW     *quota.WindowStatus
		reqRem, reqLim int64
		tokRem, tokLim int64
	)
	tighter := func(cur *quota.WindowStatus, curRem int64, s *quota.WindowStatus, rem int64) bool {
		return cur == nil || rem < curRem || (rem == curRem && s.ResetAt.After(cur.ResetAt))
	}
	for i := range ws {
		s := &ws[i]
		held := s.Used.Add(s.Reserved)
		if l := s.Limit.Requests; l != nil {
			rem := max(*l-held.Requests, 0)
			if tighter(reqW, reqRem, s, rem) {
				reqW, reqRem, reqLim = s, rem, *l
			}
		}
		for _, c := range [...]struct {
			lim  *int64
			used int64
		}{{s.Limit.Tokens, held.Total()}, {s.Limit.InputTokens, held.InputTokens}, {s.Limit.OutputTokens, held.OutputTokens}} {
			if c.lim == nil {
				continue
			}
			rem := max(*c.lim-c.used, 0)
			if tighter(tokW, tokRem, s, rem) {
				tokW, tokRem, tokLim = s, rem, *c.lim
			}
		}
	}
	if reqW == nil && tokW == nil {
		return
	}
	// One backing array for all six values.
	v := make([]string, 6)
	set := func(i int, k, s string) {
		v[i] = s
		h[k] = v[i : i+1 : i+1]
	}
	if reqW != nil {
		set(0, "X-Ratelimit-Limit-Requests", strconv.FormatInt(reqLim, 10))
		set(1, "X-Ratelimit-Remaining-Requests", strconv.FormatInt(reqRem, 10))
		set(2, "X-Ratelimit-Reset-Requests", formatReset(reqW.ResetAt.Sub(now)))
	}
	if tokW != nil {
		set(3, "X-Ratelimit-Limit-Tokens", strconv.FormatInt(tokLim, 10))
		set(4, "X-Ratelimit-Remaining-Tokens", strconv.FormatInt(tokRem, 10))
		set(5, "X-Ratelimit-Reset-Tokens", formatReset(tokW.ResetAt.Sub(now)))
	}
}

// formatReset spells a wait the way OpenAI's headers do: a Go duration,
// to the millisecond under a second ("12ms") and to the second above ("6m0s").
func formatReset(d time.Duration) string {
	switch {
	case d <= 0:
		return "0s"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	default:
		return d.Round(time.Second).String()
	}
}

// refuse answers an error before anything went upstream. reason, when set,
// is counted as a policy rejection.
func (ex *exchange) refuse(w http.ResponseWriter, status int, typ, code, param, reason, msg string) {
	var ns, name string
	if ex.user != nil {
		ns, name = ex.user.Namespace, ex.user.Name
	}
	if reason != "" {
		ex.p.metrics.Reject(ns, name, reason)
	}
	openaiapi.WriteError(w, status, typ, code, param, msg)
	ex.finish(status, quota.Amount{}, strconv.Itoa(status))
}

func (ex *exchange) tooLarge(w http.ResponseWriter) {
	ex.refuse(w, http.StatusRequestEntityTooLarge, openaiapi.TypeInvalidRequest, openaiapi.CodeRequestTooLarge, "", "",
		"The request body is larger than the limit of "+strconv.FormatInt(ex.p.maxBody, 10)+" bytes.")
}

// finish settles the reservation (exactly once), reports the charge and
// records the request. A zero charge releases the reservation.
func (ex *exchange) finish(code int, charge quota.Amount, errType string) {
	if ex.done {
		return
	}
	ex.done = true
	p := ex.p
	if !ex.ep.metered() {
		charge = quota.Amount{}
	}
	if ex.res != nil {
		if err := p.counter.Settle(context.WithoutCancel(ex.r.Context()), ex.res, charge); err != nil {
			p.log.Error(err, "Settling quota failed", "namespace", ex.user.Namespace, "user", ex.user.Name)
		}
	}
	var ns, name string
	if u := ex.user; u != nil {
		ns, name = u.Namespace, u.Name
		if p.sink != nil && !charge.IsZero() {
			shared := false
			for _, b := range u.Budgets {
				shared = shared || strings.HasPrefix(b.Key, "quota/")
			}
			p.sink.Charge(Charge{Namespace: ns, User: name, Quota: u.QuotaName, Shared: shared,
				Model: ex.model, Amount: charge, At: p.now()})
		}
	}
	p.metrics.ObserveRequest(metrics.Request{
		Namespace: ns, User: name, Model: ex.model, Operation: ex.ep.operation, Code: code,
		InputTokens: charge.InputTokens, OutputTokens: charge.OutputTokens,
		Duration: p.now().Sub(ex.start), TTFT: ex.ttft, ErrorType: errType,
	})
}

// releaseBody gives the handler's hold on the request body back, once: the
// body is not needed after the upstream answered, and a stream may last
// minutes, so it is released then rather than when the handler returns.
func (ex *exchange) releaseBody() {
	if ex.bb != nil {
		ex.bb.release()
		ex.bb = nil
	}
}

// release is the safety net: a request that ends by panicking (a broken
// stream aborts the handler) still gives its reservation back.
func (ex *exchange) release() {
	if !ex.done && ex.res != nil {
		ex.done = true
		_ = ex.p.counter.Settle(context.WithoutCancel(ex.r.Context()), ex.res, quota.Amount{})
	}
}

var (
	errTooLarge   = errors.New("request body too large")
	errBodyClosed = errors.New("read of a closed request body")
)

// bodyBuf holds a request body. The transport may still be writing the body
// after RoundTrip returns, so the buffer goes back to the pool only when
// both the handler and every reader the transport got are done with it.
type bodyBuf struct {
	b, edited []byte
	refs      atomic.Int32
}

var bodyPool = sync.Pool{New: func() any { return &bodyBuf{b: make([]byte, 0, 8<<10)} }}

func getBodyBuf() *bodyBuf {
	bb := bodyPool.Get().(*bodyBuf)
	bb.refs.Store(1)
	return bb
}

func (bb *bodyBuf) release() {
	if bb.refs.Add(-1) != 0 {
		return
	}
	if cap(bb.b) > 1<<20 || cap(bb.edited) > 1<<20 {
		return // let an outsized buffer go
	}
	bb.b, bb.edited = bb.b[:0], bb.edited[:0]
	bodyPool.Put(bb)
}

// readFrom reads the whole body, failing with errTooLarge past limit.
func (bb *bodyBuf) readFrom(r io.Reader, contentLength, limit int64) error {
	if contentLength > 0 && int64(cap(bb.b)) < contentLength+1 {
		bb.b = make([]byte, 0, contentLength+1)
	}
	for {
		if len(bb.b) == cap(bb.b) {
			bb.b = append(bb.b, 0)[:len(bb.b)]
		}
		n, err := r.Read(bb.b[len(bb.b):cap(bb.b)])
		bb.b = bb.b[:len(bb.b)+n]
		if int64(len(bb.b)) > limit {
			return errTooLarge
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// bodyReader is one reading of a bodyBuf handed to the transport.
type bodyReader struct {
	data   []byte
	off    int
	bb     *bodyBuf
	closed atomic.Bool
}

func (bb *bodyBuf) reader(data []byte) *bodyReader {
	bb.refs.Add(1)
	return &bodyReader{data: data, bb: bb}
}

func (br *bodyReader) Read(p []byte) (int, error) {
	if br.closed.Load() {
		return 0, errBodyClosed
	}
	if br.off >= len(br.data) {
		return 0, io.EOF
	}
	n := copy(p, br.data[br.off:])
	br.off += n
	return n, nil
}

func (br *bodyReader) Close() error {
	if br.closed.CompareAndSwap(false, true) {
		br.bb.release()
	}
	return nil
}
