package proxy

import (
	"github.com/llm-user-operator/llm-user-operator/internal/metrics"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
)

// ending is how a forwarded request ended.
type ending uint8

const (
	// completed: the upstream finished the answer (for a stream: sent its
	// usage or [DONE]), whether or not the client stayed for the last byte.
	completed ending = iota
	// refused: nothing was generated (an upstream error status, or no
	// connection).
	refused
	// clientGone: the client left before the answer was complete.
	clientGone
	// broken: the upstream cut the answer short.
	broken
)

// basis is what a charge was worked out from: the llm_proxy_charges_total
// label that shows an admin how often each is used.
type basis uint8

const (
	// basisNone: nothing was charged (refused, or nothing generated).
	basisNone basis = iota
	// basisUsage: the usage the upstream reported for the whole request.
	basisUsage
	// basisContinuous: continuous usage summed over every sequence and
	// prompt, the output events after the last report added.
	basisContinuous
	// basisDelivered: the output events delivered, each one token, and the
	// prompt estimate.
	basisDelivered
	// basisReservation: nothing told what was used: the reservation, the
	// bound the request was admitted with.
	basisReservation
)

func (b basis) String() string {
	switch b {
	case basisUsage:
		return metrics.BasisUsage
	case basisContinuous:
		return metrics.BasisContinuous
	case basisDelivered:
		return metrics.BasisDelivered
	case basisReservation:
		return metrics.BasisReservation
	}
	return "none"
}

// outcome is what the proxy saw of a forwarded request.
type outcome struct {
	ending ending
	// m is what the answer said: the final usage, continuous usage and
	// output events of a stream, the usage of a body.
	m *meter
	// streamed: the answer was a stream, its output counted event by event.
	streamed bool
	// answered: the upstream sent response headers; without them it may
	// have read the prompt, and nothing was delivered.
	answered bool
}

// settle is what a request used, given what its reservation est held and
// how it ended (its cost is priced from it in exchange.finish). The rule
// (README, "Accounting model"): a charge is never below what was delivered.
// It is the usage the upstream reported for the whole request; otherwise
// the continuous usage summed over every sequence and prompt; otherwise what
// was delivered, event by event; and when none of these can be known (a body
// without usage, an event too large to read and without usage), the
// reservation itself. A request that may have cost something is never
// charged zero; one that generated nothing costs nothing.
func settle(ep *endpoint, est quota.Amount, o outcome) (quota.Amount, basis) {
	m := o.m
	if m == nil {
		m = &meter{}
	}
	switch {
	case o.ending == refused:
		return quota.Amount{}, basisNone
	case ep.kind == utility:
		if o.ending == completed {
			return quota.Amount{Requests: 1}, basisUsage
		}
		return quota.Amount{}, basisNone
	}
	var a quota.Amount
	var b basis
	switch {
	case m.haveFinal:
		a = quota.Amount{Requests: 1, InputTokens: m.final.Prompt, OutputTokens: m.final.Completion}
		// No more of a prompt can be cached than the prompt.
		a.CachedInputTokens = min(m.final.Cached, a.InputTokens)
		b = basisUsage
	case !o.answered:
		// No answer came: the upstream may have read the prompt; nothing
		// was delivered.
		a, b = quota.Amount{Requests: 1, InputTokens: est.InputTokens}, basisDelivered
	case m.unknown || !o.streamed:
		a, b = est, basisReservation
		a.CachedInputTokens, a.Cost = 0, 0
	case m.haveCont:
		u := m.continuous()
		a, b = quota.Amount{Requests: 1, InputTokens: u.Prompt, OutputTokens: u.Completion}, basisContinuous
	default:
		a, b = quota.Amount{Requests: 1, InputTokens: est.InputTokens, OutputTokens: min(m.delivered(), est.OutputTokens)}, basisDelivered
	}
	a.Requests = 1
	if ep.kind == embedding {
		a.OutputTokens = 0
	}
	if a.InputTokens+a.OutputTokens == 0 && o.ending != completed {
		a.InputTokens = max(est.InputTokens, 1)
	}
	return a, b
}
