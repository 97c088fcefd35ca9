package proxy

import "github.com/llm-user-operator/llm-user-operator/internal/quota"

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

// outcome is what the proxy saw of a forwarded request.
type outcome struct {
	ending ending
	// usage is the last usage the upstream reported, when haveUsage: the
	// final one, or with continuous usage stats the one of the last chunk.
	usage     usage
	haveUsage bool
	// seen is the output seen without usage: streamed chunks, or a
	// non-streamed body's bytes at four a token.
	seen int64
	// started: the upstream may have begun generating (a client that
	// leaves before the response headers may still cost its prompt).
	started bool
}

// settle is what a request used, given what its reservation est assumed
// and how it ended (its cost is priced from it in exchange.finish). Reported usage is charged as reported; without it, the
// prompt estimate and the output seen, never beyond the reservation's
// output. A request that may have cost something is never charged zero; one
// that generated nothing costs nothing.
func settle(ep *endpoint, est quota.Amount, o outcome) quota.Amount {
	switch {
	case o.ending == refused:
		return quota.Amount{}
	case ep.kind == utility:
		if o.ending == completed {
			return quota.Amount{Requests: 1}
		}
		return quota.Amount{}
	case o.ending == clientGone && !o.started && !o.haveUsage && o.seen == 0:
		// The upstream may already be reading the prompt.
		return quota.Amount{Requests: 1, InputTokens: max(est.InputTokens, 1)}
	}
	a := quota.Amount{Requests: 1, InputTokens: est.InputTokens, OutputTokens: min(o.seen, est.OutputTokens)}
	if o.haveUsage {
		a.InputTokens, a.OutputTokens = o.usage.Prompt, o.usage.Completion
		// No more of a prompt can be cached than the prompt.
		a.CachedInputTokens = min(o.usage.Cached, a.InputTokens)
	}
	if ep.kind == embedding {
		a.OutputTokens = 0
	}
	if a.InputTokens+a.OutputTokens == 0 && o.ending != completed {
		a.InputTokens = max(est.InputTokens, 1)
	}
	return a
}
