package proxy

import "strconv"

// setPriority makes the body carry the quota's scheduling priority and no
// other: every priority member the client sent is removed (a user must not
// promote themselves), and, when the quota sets one and the endpoint takes
// it, the quota's is added. vLLM run with --scheduling-policy priority
// serves lower values first.
func (pr *parsed) setPriority(ep *endpoint, priority *int32, sp []splice) []splice {
	for _, s := range pr.priority.done() {
		sp = append(sp, splice{start: s.start, end: s.end})
	}
	if priority == nil || !ep.priority {
		return sp
	}
	member := strconv.AppendInt([]byte(`,"priority":`), int64(*priority), 10)
	return append(sp, splice{start: pr.closeBrace, end: pr.closeBrace, text: member})
}
