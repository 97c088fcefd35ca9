package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/llm-user-operator/llm-user-operator/internal/metrics"
	"github.com/llm-user-operator/llm-user-operator/internal/openaiapi"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
)

// exchange is one API request on its way through the phases of apiHandler.
// A phase returns false when it has answered the client itself.
type exchange struct {
	p   *Proxy
	ep  *endpoint
	w   http.ResponseWriter
	r   *http.Request
	rc  *http.ResponseController
	id  string
	log func(err error, msg string, kv ...any)

	// start is when the request arrived by the injected clock (its windows);
	// began is the same on the monotonic clock (its durations).
	start, began time.Time
	user         *User // nil with DisableAuth
	u            User
	bb           *bodyBuf
	pr           parsed
	model        *modelEntry
	// up is the upstream the request goes to, picked at admission.
	up *upstream

	// body is what goes upstream: the client's body, edited if need be.
	body []byte
	// hideFinal and hideContinuous: the usage the proxy asked the upstream
	// for and the client did not, which the relay hides again.
	hideFinal, hideContinuous bool

	input int64
	bound outputBound
	// price is the model's price in the user's quota: the reservation holds
	// its worst case, the charge is priced at it.
	price quota.Price
	// est is what the request holds: the reservation, or the estimate when
	// nothing was reserved.
	est quota.Amount
	res *quota.Reservation
	// gate is the local in-flight slot held, "" if none.
	gate string
	// slot is the request's place at its upstream's fair queue, nil if none.
	slot *slot
	// charged is what record charged.
	charged quota.Amount
	// alert: the reservation crossed an alert threshold (quota.Crossed).
	alert bool
	// overflow: admitted past a soft limit (quota.Decision.Overflow).
	overflow bool
	done     bool
	ttft     time.Duration
}

// apiHandler serves one endpoint as a short sequence of named phases:
// authenticate (headers only: a body is never read for someone unknown) →
// enter (the user's in-flight limit, before the body takes memory) → read
// the body → parse it → authorize the model → admit (cap, reserve, rewrite)
// → dispatch (wait for a slot at the upstream, fairly) → forward, which
// relays the answer and settles.
func (p *Proxy) apiHandler(ep *endpoint) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !methodIs(w, r, http.MethodPost) {
			return
		}
		ex := p.newExchange(w, r, ep)
		defer ex.close()
		if ex.authenticate() && ex.enter() && ex.readBody() && ex.parse() && ex.authorizeModel() && ex.admit() && ex.dispatch() {
			ex.forward()
		}
	})
}

func (p *Proxy) newExchange(w http.ResponseWriter, r *http.Request, ep *endpoint) *exchange {
	ex := &exchange{p: p, ep: ep, w: w, r: r, rc: http.NewResponseController(w), id: p.ids.next(), start: p.now(), began: time.Now()}
	w.Header()[headerRequestID] = []string{ex.id}
	ex.log = func(err error, msg string, kv ...any) {
		p.log.Error(err, msg, append(kv, "requestID", ex.id, "model", ex.modelID())...)
	}
	return ex
}

func (ex *exchange) modelID() string {
	if ex.model == nil {
		return ""
	}
	return ex.model.ID
}

// authenticate resolves the caller (see Proxy.authenticate) and requires
// their quota to exist.
func (ex *exchange) authenticate() bool {
	if ex.p.disableAuth {
		return true
	}
	u, _, ok := ex.p.authenticate(ex.w, ex.r)
	if !ok {
		return false
	}
	ex.u, ex.user = u, &ex.u
	if !u.QuotaFound {
		return ex.refuse(http.StatusForbidden, openaiapi.TypeInvalidRequest, openaiapi.CodeQuotaNotFound, "", metrics.ReasonQuotaMissing,
			"LLMUser "+u.Namespace+"/"+u.Name+" refers to LLMQuota '"+u.QuotaName+"', which does not exist; ask your administrator to create it.")
	}
	return true
}

// enter takes one of the user's in-flight slots on this replica, so that a
// user at their limit cannot make the proxy hold more bodies. The shared
// count across replicas is checked again, exactly, when the request is
// admitted.
func (ex *exchange) enter() bool {
	u := ex.user
	if u == nil || u.MaxConcurrentRequests == nil || u.DryRun || ex.p.disableQuota {
		return true
	}
	key := u.concurrencyKey()
	if n, ok := ex.p.gates.enter(key, *u.MaxConcurrentRequests); !ok {
		return ex.refuseConcurrency(&quota.Exceeded{Budget: key, Resource: quota.ResourceConcurrency, Limit: *u.MaxConcurrentRequests, Used: n})
	}
	ex.gate = key
	return true
}

// readBody reads the whole body, bounded in size, in time (a client that
// trickles its body is cut off) and in the memory all bodies share.
func (ex *exchange) readBody() bool {
	p := ex.p
	if ex.r.ContentLength > p.maxBody {
		return ex.tooLarge()
	}
	key := ""
	if ex.user != nil {
		key = ex.user.concurrencyKey()
	}
	bb, ok := getBodyBuf(p.bodyMem.lease(key))
	if !ok {
		return ex.busy()
	}
	ex.bb = bb
	if p.bodyTimeout > 0 {
		_ = ex.rc.SetReadDeadline(time.Now().Add(p.bodyTimeout))
	}
	err := bb.readFrom(ex.r.Body, p.maxBody)
	if p.bodyTimeout > 0 {
		_ = ex.rc.SetReadDeadline(time.Time{})
	}
	var ne net.Error
	switch {
	case err == nil:
		return true
	case errors.Is(err, errTooLarge):
		return ex.tooLarge()
	case errors.Is(err, errBusy):
		return ex.busy()
	case errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
		return ex.refuse(http.StatusRequestTimeout, openaiapi.TypeInvalidRequest, openaiapi.CodeRequestTimeout, "", "",
			"The request body did not arrive within "+p.bodyTimeout.String()+".")
	default:
		return ex.refuse(http.StatusBadRequest, openaiapi.TypeInvalidRequest, "", "", "", "Could not read the request body: "+err.Error())
	}
}

// parse reads what the proxy needs from the body, and refuses what it could
// not meter.
func (ex *exchange) parse() bool {
	if e := parseRequest(ex.bb.b, ex.ep, &ex.pr); e != nil {
		return ex.refuse(e.status, e.typ, e.code, e.param, "", e.message)
	}
	if ex.user == nil || ex.p.disableQuota {
		return true
	}
	switch {
	case ex.pr.background:
		return ex.refuse(http.StatusBadRequest, openaiapi.TypeInvalidRequest, openaiapi.CodeUnsupported, "background", metrics.ReasonUnmeterable,
			"background is not supported: a background response goes on generating after this request returns, where the proxy cannot meter it. Send the request without background (stream it for long answers).")
	case ex.pr.storedContext:
		return ex.refuse(http.StatusBadRequest, openaiapi.TypeInvalidRequest, openaiapi.CodeUnsupported, "previous_response_id", metrics.ReasonUnmeterable,
			"previous_response_id is not supported: the stored response it names is prepended upstream, where the proxy can neither bound its size nor keep it to its owner. Send the earlier turn yourself (previous_response, or the conversation in input).")
	case ex.pr.builtinTools:
		return ex.refuse(http.StatusBadRequest, openaiapi.TypeInvalidRequest, openaiapi.CodeUnsupported, "tools", metrics.ReasonUnmeterable,
			"Only tools of type 'function' are supported: a tool the server runs itself makes it generate several turns, which max_output_tokens does not bound. Run the tool in your client instead.")
	}
	return true
}

// authorizeModel checks the allowlist before saying whether the model
// exists, so that existence does not leak to those who may not use it.
func (ex *exchange) authorizeModel() bool {
	t := ex.p.models.Load()
	if t == nil {
		return ex.refuse(http.StatusServiceUnavailable, openaiapi.TypeServer, openaiapi.CodeUpstreamUnavailable, "", "", "No upstream has listed its models yet; retry shortly.")
	}
	entry := t.byID[string(ex.pr.model)]
	if u := ex.user; u != nil {
		name := string(ex.pr.model)
		if entry != nil {
			name = entry.ID // no copy of the model name on the hot path
		}
		if !modelAllowed(u, name) {
			return ex.refuse(http.StatusForbidden, openaiapi.TypeInvalidRequest, openaiapi.CodeModelNotAllowed, "model", metrics.ReasonModelNotAllowed,
				"Model '"+name+"' is not allowed for LLMUser "+u.Namespace+"/"+u.Name+"; allowed: "+allowedList(u)+".")
		}
	}
	if entry == nil {
		return ex.refuse(http.StatusNotFound, openaiapi.TypeInvalidRequest, openaiapi.CodeModelNotFound, "model", "",
			"The model '"+string(ex.pr.model)+"' does not exist.")
	}
	ex.model = entry
	return true
}

// admit bounds the request's output, reserves it in every budget, and
// writes into the body the cap it reserved for (see admit.go).
func (ex *exchange) admit() bool {
	p, u := ex.p, ex.user
	quotaOn := u != nil && !p.disableQuota
	var maxPer *int64
	quotaName := ""
	if quotaOn {
		maxPer, quotaName = u.MaxTokensPerRequest, u.QuotaName
	}
	ex.up = ex.model.pick()
	mediaBound := p.mediaItem
	if mediaBound <= 0 {
		mediaBound = ex.model.MaxModelLen
	}
	if mediaBound <= 0 {
		mediaBound = p.defaultMax
	}
	ex.input = inputEstimate(&ex.pr, ex.model.MaxModelLen, mediaBound)
	if u != nil {
		ex.price = u.Pricing.Price(ex.model.ID)
	}
	var viol *capViolation
	ex.bound, viol = bound(ex.ep, &ex.pr, maxPer, ex.model.MaxModelLen, p.defaultMax, quotaName)
	ex.est = ex.bound.estimate(ex.ep, ex.input)
	if viol != nil && ex.ep.kind == generation {
		if !u.DryRun {
			return ex.refuse(http.StatusBadRequest, openaiapi.TypeInvalidRequest, openaiapi.CodeMaxTokensExceeded, viol.param, metrics.ReasonMaxTokens, viol.message)
		}
		p.dryRun(u, metrics.ReasonMaxTokens, viol.message)
	}
	if quotaOn && !ex.reserve() {
		return false
	}
	var sp [3]splice
	edits := sp[:0]
	if quotaOn && !u.DryRun && ex.ep.kind == generation {
		if v, ok := ex.bound.capToWrite(ex.est.OutputTokens, ex.input, ex.model.MaxModelLen); ok {
			edits = ex.pr.setCap(ex.ep, v, edits)
		}
	}
	own := ownedValues{requestID: ex.id, keepKV: p.kvAllowed[ex.up.raw]}
	if u != nil {
		own.priority, own.cacheSalt = u.Priority, u.CacheSalt
		if ex.overflow && u.Priority != nil {
			// A quota with a priority tells that vLLM schedules by it:
			// overflow goes after every quota's requests.
			own.priority = &overflowPriority
		}
	}
	edits = ex.pr.ownedEdits(ex.bb.b, ex.ep, own, edits)
	if ex.ep.streamUsage && ex.pr.stream {
		edits, ex.hideFinal, ex.hideContinuous = ex.pr.meterStream(ex.bb.b, edits, !p.disableContinuousUsage)
	}
	ex.body = ex.bb.b
	if len(edits) > 0 {
		body, err := ex.bb.edit(edits)
		if err != nil {
			return ex.busy()
		}
		ex.body = body
	}
	return true
}

// dispatch waits for a slot at the request's upstream when it has a fair
// queue (see fairq.go), holding the reservation meanwhile. A request that
// waited too long, or found the queue full, gets 429; one whose client left
// is released with nothing charged.
func (ex *exchange) dispatch() bool {
	g := ex.p.fair.gate(ex.up.raw)
	if g == nil {
		return true
	}
	key, weight, tier := "", 1.0, int32(0)
	if u := ex.user; u != nil {
		if len(u.FairnessID) > 0 {
			key = u.FairnessID[0]
		}
		if u.FairShareWeight > 0 {
			weight = float64(u.FairShareWeight)
		}
		if u.Priority != nil {
			tier = *u.Priority
		}
	}
	tierLabel := strconv.Itoa(int(tier))
	if ex.overflow {
		// Overflow is a flow of its own in the last tier: it waits while
		// any request within its quota waits, the user's own included.
		key, tier, tierLabel = key+overflowFlow, overflowTier, metrics.TierOverflow
	}
	s, err := g.acquire(ex.r.Context(), key, tier, weight, ex.est.InputTokens+outputWeight*ex.est.OutputTokens)
	switch {
	case err == nil:
		ex.slot = s
		ex.p.metrics.ObserveDispatch(tierLabel, s.waited)
		return true
	case errors.Is(err, errQueueTimeout):
		ex.p.metrics.QueueRefused(tierLabel, "timeout")
		ex.w.Header()["Retry-After"] = []string{"5"}
		return ex.refuse(http.StatusTooManyRequests, openaiapi.TypeRateLimit, openaiapi.CodeQueueTimeout, "", metrics.ReasonQueue,
			"The model's upstream is busy: this request waited "+g.timeout.String()+" for its turn. Retry later, or send fewer requests at once.")
	case errors.Is(err, errQueueFull), errors.Is(err, errFlowFull):
		ex.p.metrics.QueueRefused(tierLabel, "full")
		ex.w.Header()["Retry-After"] = []string{"5"}
		msg := "The model's upstream is busy and its queue is full; retry later."
		if errors.Is(err, errFlowFull) {
			msg = "Your requests waiting for this model's upstream are at the limit (" + strconv.Itoa(g.maxPerFlow) + "); wait for them to be served before sending more."
		}
		return ex.refuse(http.StatusTooManyRequests, openaiapi.TypeRateLimit, openaiapi.CodeQueueFull, "", metrics.ReasonQueue, msg)
	default:
		// The client left while waiting: nothing to answer, nothing charged.
		ex.p.metrics.QueueRefused(tierLabel, "left")
		ex.record(499, quota.Amount{}, basisNone, "client_left")
		return false
	}
}

// reserve holds the estimate (or, for a request without its own cap, as
// much output as the budgets have left) and sets the rate-limit headers;
// it answers 429 when a budget has no room.
func (ex *exchange) reserve() bool {
	p, u := ex.p, ex.user
	req := quota.Request{Budgets: u.Budgets, Estimate: ex.est, Model: ex.modelID(), Price: ex.price}
	if ex.bound.chosen && ex.ep.kind == generation {
		req.OutputStep = ex.bound.seqs
	}
	if u.MaxConcurrentRequests != nil {
		req.Concurrency = &quota.Concurrency{Key: u.concurrencyKey(), Limit: *u.MaxConcurrentRequests, DryRun: u.DryRun}
	}
	res, dec, err := p.counter.Reserve(ex.r.Context(), req)
	if err != nil {
		ex.log(err, "Reserving quota failed", "namespace", u.Namespace, "user", u.Name)
		return ex.refuse(http.StatusServiceUnavailable, openaiapi.TypeServer, openaiapi.CodeQuotaUnavailable, "", "",
			"The quota store is unavailable; retry shortly.")
	}
	now := p.now()
	setRateLimitHeaders(ex.w.Header(), dec.Windows, now)
	p.observeBudgets(u, dec.Windows)
	if !dec.Allowed {
		if e := dec.Exceeded; e != nil && e.Resource == quota.ResourceConcurrency {
			return ex.refuseConcurrency(e)
		}
		return ex.refuseQuota(dec.Exceeded, now)
	}
	ex.res, ex.est = res, dec.Granted
	ex.alert = quota.Crossed(dec.Windows, u.Budgets, dec.Granted)
	if dec.Overflow {
		ex.overflow = true
		ex.w.Header()[headerOverage] = []string{"true"}
	}
	if dec.Granted.OutputTokens < req.Estimate.OutputTokens {
		p.metrics.Reject(u.Namespace, u.Name, metrics.ReasonShortened)
	}
	if e := dec.Exceeded; e != nil && e.DryRun {
		reason := dryRunReason(e)
		ex.w.Header()[headerDryRunExceeded] = []string{reason}
		p.dryRun(u, reason, ex.quotaMessage(e, now))
	} else if dec.WouldGrant.OutputTokens < dec.Granted.OutputTokens && ex.bound.chosen {
		ex.w.Header()[headerDryRunExceeded] = []string{metrics.ReasonShortened}
		p.dryRun(u, metrics.ReasonShortened, "This request would have been shortened to "+
			strconv.FormatInt(dec.WouldGrant.OutputTokens/ex.bound.seqs, 10)+" output tokens per sequence by the budget left.")
	}
	return true
}

// refuse answers an error before anything went upstream. reason, when set,
// is counted as a policy rejection. It returns false, for the phases.
func (ex *exchange) refuse(status int, typ, code, param, reason, msg string) bool {
	var ns, name string
	if ex.user != nil {
		ns, name = ex.user.Namespace, ex.user.Name
	}
	if reason != "" {
		ex.p.metrics.Reject(ns, name, reason)
	}
	openaiapi.WriteError(ex.w, status, typ, code, param, msg)
	ex.record(status, quota.Amount{}, basisNone, strconv.Itoa(status))
	return false
}

func (ex *exchange) tooLarge() bool {
	return ex.refuse(http.StatusRequestEntityTooLarge, openaiapi.TypeInvalidRequest, openaiapi.CodeRequestTooLarge, "", "",
		"The request body is larger than the limit of "+strconv.FormatInt(ex.p.maxBody, 10)+" bytes.")
}

func (ex *exchange) busy() bool {
	ex.w.Header()["Retry-After"] = []string{"1"}
	return ex.refuse(http.StatusServiceUnavailable, openaiapi.TypeServer, openaiapi.CodeServerBusy, "", "",
		"The proxy is holding as many request bodies (yours, or everyone's) as its memory allows; retry shortly.")
}

// finish charges a forwarded request by the settle rule and records it.
// A charge the rule could only take from the reservation is logged: it
// means the upstream told too little (README, "Accounting model").
func (ex *exchange) finish(code int, o outcome, errType string) {
	if ex.done {
		return
	}
	charge, b := settle(ex.ep, ex.est, o)
	if b != basisNone {
		ex.p.metrics.CountCharge(b.String())
	}
	if b == basisReservation {
		ex.p.log.Info("Charged the reservation: the upstream did not say what the request used",
			"requestID", ex.id, "model", ex.modelID(), "path", ex.ep.path, "input", charge.InputTokens, "output", charge.OutputTokens)
	}
	ex.record(code, charge, b, errType)
}

// record settles the reservation (exactly once), reports the charge and
// records the request. A zero charge releases the reservation.
func (ex *exchange) record(code int, charge quota.Amount, _ basis, errType string) {
	if ex.done {
		return
	}
	ex.done = true
	p := ex.p
	if !charge.IsZero() {
		charge.Cost = ex.price.Cost(charge)
	}
	ex.charged = charge
	at := ex.start
	if ex.res != nil {
		at = ex.res.At
	}
	var ns, name, currency string
	var c quota.Charge
	if u := ex.user; u != nil {
		ns, name = u.Namespace, u.Name
		if u.Pricing != nil {
			currency = u.Pricing.Currency
		}
		c = quota.Charge{Namespace: ns, User: name, UserUID: u.UID, Quota: u.QuotaName, QuotaUID: u.QuotaUID,
			Pool: u.pool(), Model: ex.modelID(), Amount: charge, At: at, Alert: ex.alert}
	}
	if ex.res != nil {
		// Recorded with the charge (by a shared counter), so that the
		// objects' writer hears of it even if this replica dies first.
		ex.res.Marks = c.Objects()
		p.settle(context.WithoutCancel(ex.r.Context()), settlement{res: ex.res, actual: charge, charge: c})
	} else {
		p.charged(c)
	}
	if ex.overflow && !charge.IsZero() {
		p.metrics.Overflow(ns, ex.user.QuotaName, charge.InputTokens, charge.OutputTokens)
	}
	p.metrics.ObserveRequest(metrics.Request{
		Namespace: ns, User: name, Model: ex.modelID(), Operation: ex.ep.operation, Code: code,
		InputTokens: charge.InputTokens, OutputTokens: charge.OutputTokens, Currency: currency, Cost: charge.Cost,
		Duration: time.Since(ex.began), TTFT: ex.ttft, ErrorType: errType,
	})
}

// close runs when the handler returns, however it returns (a broken stream
// aborts it by panicking): the reservation, the in-flight slot and the body
// are given back.
func (ex *exchange) close() {
	if !ex.done && ex.res != nil {
		ex.done = true
		ex.p.settle(context.WithoutCancel(ex.r.Context()), settlement{res: ex.res})
	}
	if ex.gate != "" {
		ex.p.gates.leave(ex.gate)
	}
	if ex.slot != nil {
		ex.slot.end(float64(ex.charged.InputTokens + outputWeight*ex.charged.OutputTokens))
	}
	ex.releaseBody()
}

// releaseBody gives the handler's hold on the request body back, once: the
// body is not needed after the upstream answered, and a stream may last
// minutes, so it is released then rather than when the handler returns.
func (ex *exchange) releaseBody() {
	if ex.bb != nil {
		ex.bb.release()
		ex.bb, ex.body = nil, nil
	}
}
