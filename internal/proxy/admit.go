package proxy

import (
	"math"
	"math/bits"
	"strconv"

	"github.com/llm-user-operator/llm-user-operator/internal/metrics"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
)

// The admission invariant (README, "Accounting model"): a request is
// admitted only with a reservation that bounds everything it can generate,
// so the sum charged in a window never exceeds the limit by more than the
// error of the input-token estimates of the requests in flight. bound works
// out that reservation; the proxy writes the cap it reserved for into the
// request whenever the upstream could otherwise generate more.

// promptOverhead is added to every input estimate: a chat template's tokens.
const promptOverhead = 8

// inputEstimate is what a request's prompt may cost: text at about four
// bytes a token (the JSON around it counted too, so a slight overestimate
// for English), token ids exactly, each media part at mediaBound, and
// prompts given as embeddings at their base64 size over four (a token is
// a row of hidden_size values of two bytes or more, so that bounds it for
// any hidden size of 2 or more). A prompt longer than the context is
// refused by vLLM, so no prompt costs more than contextLen (0: unknown).
func inputEstimate(pr *parsed, contextLen, mediaBound int64) int64 {
	est := int64(pr.promptBytes/4) + pr.promptTokens + promptOverhead
	est = addSat(est, mulSat(pr.media, mediaBound))
	est = addSat(est, int64(pr.embedBytes/4))
	if contextLen > 0 {
		est = min(est, mulSat(contextLen, pr.allPrompts()))
	}
	return est
}

// addSat adds non-negative numbers, saturating at MaxInt64.
func addSat(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// outputBound is how much a request may generate, as reserved.
type outputBound struct {
	// perSeq is the output tokens reserved per sequence; seqs the sequences.
	perSeq, seqs int64
	// requested is the request's own cap per sequence, when it set one.
	requested int64
	// chosen: the request set no cap, so the proxy picks one: perSeq is an
	// upper bound the counter may lower to what the budget has left.
	chosen bool
	// natural is the cap per sequence the upstream applies if the proxy
	// writes none: the endpoint's default, else the model's context
	// length; 0 when unknown.
	natural int64
	// field is the index of the cap field the request set (when !chosen).
	field int
	// rewrite: the request's cap must be written again in plain form
	// (a value vLLM versions read differently, or a secondary field that
	// a present-but-unset primary field would shadow).
	rewrite bool
}

// capViolation is a request whose own cap breaks maxTokensPerRequest.
type capViolation struct {
	param, message string
}

// bound works out a request's reservation. maxPerRequest is the quota's
// maxTokensPerRequest (nil: none), contextLen the model's context length (0:
// unknown), fallback the cap used when nothing else bounds the output.
func bound(ep *endpoint, pr *parsed, maxPerRequest *int64, contextLen, fallback int64, quotaName string) (outputBound, *capViolation) {
	b := outputBound{seqs: pr.sequences(), natural: contextLen, field: -1}
	if ep.defaultCap > 0 && !pr.anyCapPresent() {
		b.natural = ep.defaultCap
	}
	if v, i, ok := pr.requestedCap(); ok {
		b.requested, b.perSeq, b.field = v, v, i
		if contextLen > 0 {
			b.perSeq = min(v, contextLen)
		}
		b.rewrite = !pr.caps[i].canonical || (i > 0 && pr.caps[0].present)
		if maxPerRequest != nil && mulSat(v, b.seqs) > *maxPerRequest {
			field := ep.capFields[i]
			msg := field + " is " + strconv.FormatInt(v, 10)
			if b.seqs > 1 {
				msg += " for each of " + strconv.FormatInt(b.seqs, 10) + " sequences (n × prompts), " + strconv.FormatInt(mulSat(v, b.seqs), 10) + " in all"
			}
			msg += ", above the limit of " + strconv.FormatInt(*maxPerRequest, 10) + " tokens per request of LLMQuota '" + quotaName + "'. Lower " + field
			if b.seqs > 1 {
				msg += " to at most " + strconv.FormatInt(*maxPerRequest/b.seqs, 10) + " (or generate fewer sequences)"
			}
			return b, &capViolation{param: field, message: msg + ", or omit it to get the limit."}
		}
		return b, nil
	}
	b.chosen = true
	b.perSeq = b.natural
	if b.perSeq <= 0 {
		b.perSeq = fallback
	}
	if maxPerRequest != nil {
		per := *maxPerRequest / b.seqs
		if per < 1 {
			param := "n"
			switch {
			case pr.embedPrompts > 1:
				param = "prompt_embeds"
			case pr.prompts > 1:
				param = ep.promptField
			}
			return b, &capViolation{param: param, message: "This request generates " + strconv.FormatInt(b.seqs, 10) +
				" sequences (n × prompts), more than the limit of " + strconv.FormatInt(*maxPerRequest, 10) +
				" tokens per request of LLMQuota '" + quotaName + "' allows at one token each. Generate fewer sequences."}
		}
		b.perSeq = min(b.perSeq, per)
	}
	return b, nil
}

// estimate is the reservation: one request, the prompt estimate, and every
// output token the bound allows.
func (b outputBound) estimate(ep *endpoint, input int64) quota.Amount {
	switch ep.kind {
	case utility:
		return quota.Amount{Requests: 1}
	case embedding:
		return quota.Amount{Requests: 1, InputTokens: input}
	}
	return quota.Amount{Requests: 1, InputTokens: input, OutputTokens: mulSat(b.perSeq, b.seqs)}
}

// capToWrite returns the cap per sequence to write into the request once
// granted output tokens were reserved, or ok=false when the request can go
// as it is: the upstream would generate no more than was reserved anyway.
func (b outputBound) capToWrite(granted, input, contextLen int64) (int64, bool) {
	if !b.chosen {
		return b.requested, b.rewrite
	}
	per := granted / b.seqs
	if b.natural > 0 && per >= b.natural {
		return 0, false
	}
	if contextLen > 0 {
		// The upstream refuses a cap that, with the prompt, overflows the
		// context; the prompt estimate is (nearly always) above the real
		// prompt, so this cap fits and still bounds the output.
		per = min(per, max(contextLen-input, 1))
	}
	return per, true
}

// mulSat multiplies non-negative numbers, saturating at MaxInt64.
func mulSat(a, b int64) int64 {
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	if hi != 0 || lo > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(lo)
}

// observeBudgets hands the windows an admission found to the budget gauges.
func (p *Proxy) observeBudgets(u *User, ws []quota.WindowStatus) {
	if p.metrics == nil {
		return
	}
	for _, w := range ws {
		for i := range u.Budgets {
			if b := &u.Budgets[i]; b.Key == w.Budget {
				ObserveWindow(p.metrics, b, u.QuotaName, w)
				break
			}
		}
	}
}

// ObserveWindow hands one window of budget b, of the quota named quotaName,
// to the budget gauges: at each admission, and whenever the usage recorder
// reads the counters to write status, so that the gauges also show what
// settled after a user's last request.
func ObserveWindow(m *metrics.Metrics, b *quota.Budget, quotaName string, w quota.WindowStatus) {
	s := metrics.BudgetSample{Namespace: b.Namespace, Quota: quotaName, Window: string(w.Limit.Window), ResetAt: w.ResetAt,
		LimitTokens: w.Limit.TightestTokens(), LimitRequests: w.Limit.Requests}
	if b.Kind == quota.BudgetUser {
		s.User = b.Name
	}
	if s.LimitTokens == nil && s.LimitRequests == nil {
		return // a Shared quota's tally of the user: no caps to show
	}
	s.RemainingTokens, s.RemainingRequests = w.Remaining()
	m.ObserveBudget(s, quota.Alerting(w, b.Thresholds))
}
