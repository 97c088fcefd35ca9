package proxy

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/metrics"
	"github.com/llm-user-operator/llm-user-operator/internal/openaiapi"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
)

// Headers the proxy sets.
const (
	headerRequestID       = "X-Request-Id"
	headerClientRequestID = "X-Client-Request-Id"
	// headerFairnessID groups requests into flows for the fair queuing of a
	// Gateway API Inference Extension (llm-d) scheduler behind the proxy.
	headerFairnessID = "X-Gateway-Inference-Fairness-Id"
	// headerObjective names the InferenceObjective of the request's tier
	// for the same scheduler (Options.InferenceObjectivePrefix).
	headerObjective = "X-Gateway-Inference-Objective"
	// headerDryRunExceeded names what a dry-run quota would have refused
	// (or shortened) in a request it let through.
	headerDryRunExceeded = "X-Llm-Quota-Dryrun-Exceeded"
	// headerOverage says a request was admitted past a soft limit
	// (overage: Demote), as overflow.
	headerOverage = "X-Llm-Overage"
)

// refuseQuota answers 429 for a budget without room, saying which window
// and resource ran out, how much is left, what to lower and when it resets.
func (ex *exchange) refuseQuota(e *quota.Exceeded, now time.Time) bool {
	if e == nil { // a Counter that refuses without saying why
		return ex.refuse(http.StatusTooManyRequests, openaiapi.TypeRateLimit, openaiapi.CodeRateLimitExceeded, "", metrics.ReasonRateLimit, "Rate limit reached.")
	}
	typ, code, reason := exceededKind(e)
	ex.w.Header()["Retry-After"] = []string{strconv.FormatInt(max(int64(math.Ceil(e.ResetAt.Sub(now).Seconds())), 1), 10)}
	return ex.refuse(http.StatusTooManyRequests, typ, code, "", reason, ex.quotaMessage(e, now))
}

// refuseConcurrency answers 429 for a user with as many requests in flight
// as the quota allows.
func (ex *exchange) refuseConcurrency(e *quota.Exceeded) bool {
	h := ex.w.Header()
	h["Retry-After"] = []string{"1"}
	h["X-Ratelimit-Limit-Concurrency"] = []string{strconv.FormatInt(e.Limit, 10)}
	h["X-Ratelimit-Remaining-Concurrency"] = []string{"0"}
	u := ex.user
	return ex.refuse(http.StatusTooManyRequests, openaiapi.TypeRateLimit, openaiapi.CodeConcurrencyLimit, "", metrics.ReasonConcurrency,
		"LLMUser "+u.Namespace+"/"+u.Name+" already has "+strconv.FormatInt(e.Used, 10)+" requests in flight, the limit of LLMQuota '"+
			u.QuotaName+"' (spec.maxConcurrentRequests); retry when one of them has finished.")
}

// quotaMessage explains a refusal by a budget.
func (ex *exchange) quotaMessage(e *quota.Exceeded, now time.Time) string {
	if e.Resource == quota.ResourceCost {
		return ex.costMessage(e, now)
	}
	var msg strings.Builder
	typ, _, _ := exceededKind(e)
	if typ == openaiapi.TypeRateLimit {
		msg.WriteString("Rate limit reached for " + string(e.Resource) + " per " + string(e.Window))
	} else {
		msg.WriteString("You exceeded your " + string(e.Window) + " quota of " + string(e.Resource))
	}
	left := max(e.Limit-e.Used, 0)
	msg.WriteString(" of " + ex.describe(e.Budget) + ": limit " + strconv.FormatInt(e.Limit, 10) +
		", used " + strconv.FormatInt(e.Used, 10) + " (including requests in flight), " + strconv.FormatInt(left, 10) + " left. ")
	msg.WriteString(ex.lowerHint(e.Resource, left))
	wait := e.ResetAt.Sub(now)
	msg.WriteString(" The window resets at " + e.ResetAt.UTC().Format(time.RFC3339) + " (in " + formatReset(wait) + ").")
	return msg.String()
}

// costMessage explains a refusal by a cost budget, in its currency.
func (ex *exchange) costMessage(e *quota.Exceeded, now time.Time) string {
	currency := ""
	if u := ex.user; u != nil && u.Pricing != nil {
		currency = " " + u.Pricing.Currency
	}
	money := func(v int64) string { return quota.FormatCost(v) + currency }
	left := max(e.Limit-e.Used, 0)
	var msg strings.Builder
	msg.WriteString("You exceeded your " + string(e.Window) + " cost budget (spec.limits[].cost) of " + ex.describe(e.Budget) +
		": budget " + money(e.Limit) + ", used " + money(e.Used) + " (including requests in flight), " + money(left) + " left. ")
	est := ex.est
	msg.WriteString("This request may cost up to " + money(ex.price.Bound(est)) + " (a prompt of about " + strconv.FormatInt(est.InputTokens, 10) +
		" tokens at the model's input price")
	if ex.ep.kind == generation && est.OutputTokens > 0 {
		msg.WriteString(" and up to " + strconv.FormatInt(est.OutputTokens, 10) + " output tokens at its output price")
	}
	msg.WriteString(").")
	if ex.ep.kind == generation && ex.price.Output > 0 {
		inCost := ex.price.Bound(quota.Amount{InputTokens: est.InputTokens})
		if per := (left - inCost) / ex.price.Output / max(ex.bound.seqs, 1); left > inCost && per >= 1 {
			field := ex.ep.capFields[max(ex.bound.field, 0)]
			msg.WriteString(" Set " + field + " to at most " + strconv.FormatInt(per, 10) + ".")
		}
	}
	msg.WriteString(" The budget resets at " + e.ResetAt.UTC().Format(time.RFC3339) + " (in " + formatReset(e.ResetAt.Sub(now)) + ").")
	return msg.String()
}

// lowerHint says what the request needs of a resource with left remaining,
// and what to change so that a request fits.
func (ex *exchange) lowerHint(r quota.Resource, left int64) string {
	est, b := ex.est, ex.bound
	field := ""
	if ex.ep.kind == generation {
		field = ex.ep.capFields[max(b.field, 0)]
	}
	var room int64
	switch r {
	case quota.ResourceRequests:
		return "No more requests fit."
	case quota.ResourceInputTokens:
		return "This request's prompt needs about " + strconv.FormatInt(est.InputTokens, 10) + "; shorten it."
	case quota.ResourceOutputTokens:
		room = left
	default:
		room = left - est.InputTokens
	}
	need := "This request needs up to " + strconv.FormatInt(est.Total(), 10) + " (a prompt of about " + strconv.FormatInt(est.InputTokens, 10)
	if field == "" {
		return need + "); shorten the prompt."
	}
	need += " and up to " + strconv.FormatInt(est.OutputTokens, 10) + " output). "
	per := room / max(b.seqs, 1)
	switch {
	case per < 1 && b.chosen:
		return need + "Not even one output token per sequence is left after the prompt: shorten the prompt or wait for the reset."
	case per < 1:
		return need + "Shorten the prompt or wait for the reset."
	case b.chosen:
		return need + "Set " + field + " to at most " + strconv.FormatInt(per, 10) + "."
	default:
		return need + "Lower " + field + " to at most " + strconv.FormatInt(per, 10) + ", or omit it to get what is left."
	}
}

// describe names a budget for a message.
func (ex *exchange) describe(key string) string {
	if u := ex.user; u != nil {
		for _, b := range u.Budgets {
			if b.Key != key {
				continue
			}
			if b.Kind == quota.BudgetPool {
				return "the shared LLMQuota " + b.Namespace + "/" + b.Name
			}
			return "LLMUser " + b.Namespace + "/" + b.Name
		}
	}
	return "your budget"
}

// exceededKind maps a refusal to OpenAI's two flavours of 429: a short
// window is a rate limit (retry soon), a long one an exhausted quota. A
// spent cost budget is always an exhausted quota: money, not a rate.
func exceededKind(e *quota.Exceeded) (typ, code, reason string) {
	switch e.Window {
	case llmv1alpha1.WindowMinute, llmv1alpha1.WindowHour:
		if e.Resource != quota.ResourceCost {
			return openaiapi.TypeRateLimit, openaiapi.CodeRateLimitExceeded, metrics.ReasonRateLimit
		}
	}
	return openaiapi.TypeInsufficientQuota, openaiapi.CodeInsufficientQuota, metrics.ReasonInsufficientQuota
}

// dryRunReason is the rejection reason a dry-run limit would have given.
func dryRunReason(e *quota.Exceeded) string {
	if e.Resource == quota.ResourceConcurrency {
		return metrics.ReasonConcurrency
	}
	_, _, reason := exceededKind(e)
	return reason
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
