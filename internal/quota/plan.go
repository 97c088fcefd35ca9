package quota

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
)

// The admission rule, shared by every Counter so that replicas on different
// backends decide alike:
//
// A capped resource has room for an estimate est when
//
//	held < cap && held+est <= cap
//
// where held is used plus reserved in the window (total tokens for a tokens
// cap, requests for a requests cap, and so on). A request whose estimate
// bounds what it can use therefore never takes a window past its cap, and
// the first clause refuses even a request estimated at zero once the cap is
// used up, because a real request always consumes something. A zero cap
// admits nothing.
//
// A request may let the counter lower its output estimate (Request.OutputStep):
// it then gets the most output that every enforcing limit has room for,
// rounded down to a multiple of the step, and is refused only when that is
// below one step.
//
// A soft limit (overage: Demote) refuses nothing: a request it has no room
// for, as granted by the others, is admitted as overflow. Its hard ceiling,
// when it has one, is an enforcing limit of the same window. A dry-run
// budget's soft limits say nothing (dry-run tells refusals), its ceilings
// are dry-run too.
//
// A cost cap follows the same rule in pico-units, with the estimate priced
// at its worst case (Price.Bound): its room in output tokens is what is left
// after the prompt's bound, divided by the output price. A request whose
// bound is zero (a free model, /tokenize) is not held back by a cost cap:
// unlike a token, it consumes nothing the cap counts.

// resources lists what a Limit caps, in the order refusals report them.
var resources = [5]Resource{ResourceTokens, ResourceInputTokens, ResourceOutputTokens, ResourceRequests, ResourceCost}

// estimate is a request's estimate as the rule needs it: the amount (its
// Cost the worst case), the part of that cost its input accounts for, and
// what each output token adds.
type estimate struct {
	Amount
	inCost, outPrice int64
}

func newEstimate(a Amount, p Price) estimate {
	a = nonNegative(a)
	a.CachedInputTokens = 0
	a.Cost = p.Bound(a)
	return estimate{Amount: a, inCost: p.inputBound(a), outPrice: p.Output}
}

// withOutput is the estimate with out output tokens, priced.
func (e estimate) withOutput(out int64) Amount {
	a := e.Amount
	if out != a.OutputTokens {
		a.OutputTokens = out
		a.Cost = addSat(e.inCost, mulSat(out, e.outPrice))
	}
	return a
}

// rooms returns, per resource of l in the order of resources, how many
// output tokens it has room for next to est's requests, input tokens and
// input cost, given held: MaxInt64 when uncapped (or when the resource does
// not count output but has room), -1 when it has no room whatever the output.
func rooms(l Limit, held Amount, est estimate) (r [5]int64) {
	fits := func(c *int64, held, est int64) int64 {
		if c == nil || (held < *c && held+est <= *c) {
			return math.MaxInt64
		}
		return -1
	}
	r[0], r[2], r[4] = math.MaxInt64, math.MaxInt64, math.MaxInt64
	if c := l.Tokens; c != nil {
		r[0] = -1
		if held.Total() < *c {
			r[0] = *c - held.Total() - est.InputTokens
		}
	}
	r[1] = fits(l.InputTokens, held.InputTokens, est.InputTokens)
	if c := l.OutputTokens; c != nil {
		r[2] = -1
		if held.OutputTokens < *c {
			r[2] = *c - held.OutputTokens
		}
	}
	r[3] = fits(l.Requests, held.Requests, est.Requests)
	if c := l.Cost; c != nil && est.Cost > 0 {
		r[4] = -1
		// Both terms are non-negative, so the difference cannot overflow.
		if rem := *c - held.Cost; rem > 0 && rem >= est.inCost {
			rem -= est.inCost
			if r[4] = math.MaxInt64; est.outPrice > 0 {
				r[4] = rem / est.outPrice
			}
		}
	}
	return r
}

// below returns the first resource whose room is under need, if any.
func below(r [5]int64, need int64) (Resource, bool) {
	for i, v := range r {
		if v < need {
			return resources[i], true
		}
	}
	return "", false
}

// usedOf is what limit resource r counts of held.
func usedOf(r Resource, held Amount) int64 {
	switch r {
	case ResourceTokens:
		return held.Total()
	case ResourceInputTokens:
		return held.InputTokens
	case ResourceOutputTokens:
		return held.OutputTokens
	case ResourceCost:
		return held.Cost
	default:
		return held.Requests
	}
}

func capOf(r Resource, l Limit) int64 { return *l.Cap(r) }

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
	// soft checks never refuse: they tell overflow (Limit.Soft).
	soft bool
	// ceiling checks are a soft limit's hard caps: enforced, but not a
	// window of their own in what Status and a Decision report.
	ceiling bool
}

// checkMode selects the checks that fit applies.
type checkMode uint8

const (
	// enforcing: the checks that refuse (neither dry-run nor soft).
	enforcing checkMode = iota
	// withDryRun: the enforcing ones and the dry-run ones.
	withDryRun
	// softOnly: the soft checks of budgets that enforce.
	softOnly
)

func (m checkMode) applies(c check) bool {
	switch m {
	case enforcing:
		return !c.dryRun && !c.soft
	case withDryRun:
		return !c.soft
	}
	return c.soft && !c.dryRun
}

// counts is a counter's state in its current window.
type counts struct {
	used     Amount
	reserved Amount
	// models is read by Status only.
	models []ModelAmount
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
			p.checks = append(p.checks, check{slot: i, budget: b.Key, limit: l, dryRun: b.DryRun, soft: l.Soft})
			if l.Soft && l.Ceiling != nil {
				c := *l.Ceiling
				c.Window, c.Soft, c.Ceiling = l.Window, false, nil
				p.checks = append(p.checks, check{slot: i, budget: b.Key, limit: c, dryRun: b.DryRun, ceiling: true})
			}
		}
	}
	return p, nil
}

// verdict is what the admission rule makes of one request.
type verdict struct {
	allowed bool
	// grant is what to reserve when allowed.
	grant Amount
	// wouldGrant is what the dry-run limits would have granted as well.
	wouldGrant Amount
	exceeded   *Exceeded
	// overage is the soft limit the grant went past, nil when none did.
	overage *Exceeded
}

// decide applies the admission rule to every check, given each slot's state
// before the reservation, and the concurrency limit given the requests in
// flight. An enforcing refusal wins over a dry-run one, because it is the
// one the caller must report.
func (p plan) decide(state []counts, req Request, inflight int64) verdict {
	est := newEstimate(req.Estimate, req.Price)
	enforced, enfEx := p.fit(state, est, req.OutputStep, enforcing)
	v := verdict{grant: enforced, wouldGrant: enforced}
	if c := req.Concurrency; c != nil && inflight >= c.Limit && enfEx == nil {
		ex := &Exceeded{Budget: c.Key, Resource: ResourceConcurrency, Limit: c.Limit, Used: inflight, DryRun: c.DryRun}
		if c.DryRun {
			v.exceeded = ex
		} else {
			enfEx = ex
		}
	}
	if enfEx != nil {
		return verdict{exceeded: enfEx}
	}
	v.allowed = true
	// What the dry-run limits make of the grant: reported, never applied.
	granted := est
	granted.Amount = enforced
	all, dryEx := p.fit(state, granted, req.OutputStep, withDryRun)
	v.wouldGrant = all
	if v.exceeded == nil {
		v.exceeded = dryEx
	}
	// A soft limit that has no room for the whole grant makes the request
	// overflow; it never shortens it.
	_, v.overage = p.fit(state, granted, 0, softOnly)
	return v
}

// fit returns what the checks mode selects admit of est: est itself, or
// with step > 0 as much output as fits in multiples of step; and the limit
// that refused it, if any (a dry-run check's refusal with DryRun set).
func (p plan) fit(state []counts, est estimate, step int64, mode checkMode) (Amount, *Exceeded) {
	bind, bindRoom := -1, int64(math.MaxInt64)
	var bindRooms [5]int64
	for i, c := range p.checks {
		if !mode.applies(c) {
			continue
		}
		held := state[c.slot].used.Add(state[c.slot].reserved)
		r := rooms(c.limit, held, est)
		res, short := below(r, est.OutputTokens)
		if !short {
			continue
		}
		if step <= 0 {
			// Refused: the first limit without room, in request order.
			return Amount{}, p.exceeded(c, held, res)
		}
		if m := min(r[0], r[1], r[2], r[3], r[4]); m < bindRoom {
			bind, bindRoom, bindRooms = i, m, r
		}
	}
	if bind < 0 {
		return est.Amount, nil
	}
	if granted := bindRoom / step * step; bindRoom >= 0 && granted >= step {
		return est.withOutput(granted), nil
	}
	c := p.checks[bind]
	res, _ := below(bindRooms, step)
	return Amount{}, p.exceeded(c, state[c.slot].used.Add(state[c.slot].reserved), res)
}

func (p plan) exceeded(c check, held Amount, r Resource) *Exceeded {
	return &Exceeded{
		Budget:   c.budget,
		Window:   c.limit.Window,
		Resource: r,
		Limit:    capOf(r, c.limit),
		Used:     usedOf(r, held),
		ResetAt:  p.slots[c.slot].end,
		DryRun:   c.dryRun,
	}
}

// windows reports every limit's window, in request order: one per limit,
// its ceiling (if any) reported with it.
func (p plan) windows(state []counts) []WindowStatus {
	out := make([]WindowStatus, 0, len(p.checks))
	for _, c := range p.checks {
		if c.ceiling {
			continue
		}
		s := p.slots[c.slot]
		out = append(out, WindowStatus{
			Budget:   c.budget,
			Limit:    c.limit,
			Start:    s.start,
			ResetAt:  s.end,
			Used:     state[c.slot].used,
			Reserved: state[c.slot].reserved,
			Models:   state[c.slot].models,
		})
	}
	return out
}

// nonNegative clamps every field at zero: a negative estimate or actual
// would hand budget back and let a caller's bug lift a limit.
func nonNegative(a Amount) Amount {
	return Amount{max(a.Requests, 0), max(a.InputTokens, 0), max(a.OutputTokens, 0), max(a.CachedInputTokens, 0), max(a.Cost, 0)}
}

// subFloor returns a-b per field, never below zero: a reservation released
// twice, or after its counter was lost, must not leave a negative count.
func subFloor(a, b Amount) Amount {
	return nonNegative(a.Sub(b))
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
