package quota

import (
	"errors"
	"fmt"
	"slices"
	"time"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
)

// The admission rule, shared by every Counter so that replicas on different
// backends decide alike:
//
// A capped resource has room for an estimate est when
//
//	held == 0 && cap > 0,  or
//	held < cap && held+est <= cap
//
// where held is used plus reserved in the window (total tokens for a tokens
// cap, requests for a requests cap, and so on). The first clause lets one
// request of any size into a window that holds nothing: estimates are upper
// bounds (max_tokens), and refusing a request whose estimate alone exceeds the
// cap would lock it out of every window forever. Because every later request
// sees held > 0, that single oversized reservation is the most a window can
// overshoot by while actual usage stays within estimates. A zero cap admits
// nothing. The second clause refuses a request estimated at zero once the cap
// is used up, because a real request always consumes something.
func room(limit *int64, held, est int64) bool {
	if limit == nil {
		return true
	}
	c := *limit
	if held == 0 && c > 0 {
		return true
	}
	return held < c && held+est <= c
}

// slot is one counter that a request touches: one budget's current window.
type slot struct {
	key    string
	window llmv1alpha1.Window
	start  time.Time
	end    time.Time
}

// check is one limit of one budget, tested against its slot's counter.
type check struct {
	slot   int
	budget string
	limit  Limit
	dryRun bool
}

// counts is a counter's state in its current window.
type counts struct {
	used     Amount
	reserved Amount
}

// plan resolves budgets to the distinct counters they touch as of now. A
// budget that lists a window twice, or a request that names a budget twice,
// still holds its estimate once per counter, while every limit is checked.
type plan struct {
	slots  []slot
	checks []check
}

// newPlan fails on an unknown window rather than letting WindowStart panic
// inside a request: limits come from user-written objects.
func newPlan(budgets []Budget, now time.Time) (plan, error) {
	n := 0
	for _, b := range budgets {
		n += len(b.Limits)
	}
	p := plan{slots: make([]slot, 0, n), checks: make([]check, 0, n)}
	for _, b := range budgets {
		for _, l := range b.Limits {
			if !ValidWindow(l.Window) {
				return plan{}, fmt.Errorf("quota: budget %q has unknown window %q", b.Key, l.Window)
			}
			// A request has a handful of slots: a scan beats a map.
			i := slices.IndexFunc(p.slots, func(s slot) bool { return s.key == b.Key && s.window == l.Window })
			if i < 0 {
				i = len(p.slots)
				p.slots = append(p.slots, slot{
					key:    b.Key,
					window: l.Window,
					start:  WindowStart(l.Window, now),
					end:    WindowEnd(l.Window, now),
				})
			}
			p.checks = append(p.checks, check{slot: i, budget: b.Key, limit: l, dryRun: b.DryRun})
		}
	}
	return p, nil
}

// exceeded returns the first capped resource of c's limit without room for
// est, in the order tokens, input tokens, output tokens, requests.
func (p plan) exceeded(c check, st counts, est Amount) *Exceeded {
	held := st.used.Add(st.reserved)
	l := c.limit
	for _, r := range []struct {
		res       Resource
		cap       *int64
		held, est int64
	}{
		{ResourceTokens, l.Tokens, held.Total(), est.Total()},
		{ResourceInputTokens, l.InputTokens, held.InputTokens, est.InputTokens},
		{ResourceOutputTokens, l.OutputTokens, held.OutputTokens, est.OutputTokens},
		{ResourceRequests, l.Requests, held.Requests, est.Requests},
	} {
		if room(r.cap, r.held, r.est) {
			continue
		}
		return &Exceeded{
			Budget:   c.budget,
			Window:   l.Window,
			Resource: r.res,
			Limit:    *r.cap,
			Used:     r.held,
			ResetAt:  p.slots[c.slot].end,
			DryRun:   c.dryRun,
		}
	}
	return nil
}

// decide applies the admission rule to every check given each slot's state
// before the reservation. An enforcing refusal wins over an earlier dry-run
// one, because it is the one the caller must report.
func (p plan) decide(state []counts, est Amount) (allowed bool, ex *Exceeded) {
	var dry *Exceeded
	for _, c := range p.checks {
		e := p.exceeded(c, state[c.slot], est)
		switch {
		case e == nil:
		case !c.dryRun:
			return false, e
		case dry == nil:
			dry = e
		}
	}
	return true, dry
}

// windows reports every check's window, in request order.
func (p plan) windows(state []counts) []WindowStatus {
	out := make([]WindowStatus, 0, len(p.checks))
	for _, c := range p.checks {
		s := p.slots[c.slot]
		out = append(out, WindowStatus{
			Budget:   c.budget,
			Limit:    c.limit,
			Start:    s.start,
			ResetAt:  s.end,
			Used:     state[c.slot].used,
			Reserved: state[c.slot].reserved,
		})
	}
	return out
}

// nonNegative clamps every field at zero: a negative estimate or actual
// would hand budget back and let a caller's bug lift a limit.
func nonNegative(a Amount) Amount {
	return Amount{max(a.Requests, 0), max(a.InputTokens, 0), max(a.OutputTokens, 0)}
}

// subFloor returns a-b per field, never below zero: a reservation released
// after a reset, or twice, must not leave a negative count behind.
func subFloor(a, b Amount) Amount {
	return nonNegative(a.Sub(b))
}

// current reports whether s is still the window that a reservation made at
// at was held in; only then is there anything of it to release.
func (s slot) current(at time.Time) bool {
	return WindowStart(s.window, at).Equal(s.start)
}

var errNilReservation = errors.New("quota: settle of a nil reservation")

// seedSlot returns the counter Seed would raise, and false when start is not
// in the window current at now: an ended window no longer limits anything.
func seedSlot(budget string, w llmv1alpha1.Window, start, now time.Time) (slot, bool, error) {
	if !ValidWindow(w) {
		return slot{}, false, fmt.Errorf("quota: seed of budget %q with unknown window %q", budget, w)
	}
	s := slot{key: budget, window: w, start: WindowStart(w, now), end: WindowEnd(w, now)}
	return s, WindowStart(w, start).Equal(s.start), nil
}
