package quota

import (
	"cmp"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
)

// DefaultAlertThresholds are the alert thresholds of a quota that sets none
// (the API's default).
var DefaultAlertThresholds = []int32{80, 95}

// BudgetsFor returns the budgets a user's requests draw on, given the quota
// it refers to. The first is always the user's own: with the quota's limits
// for a PerUser quota; for a Shared quota, a tally of the same windows with
// no caps, which refuses nothing and counts the user's share of the pool for
// status; and without limits, a lifetime alone. A Shared quota's pool comes
// second, and the user's tally carries its Tag.
func BudgetsFor(u *llmv1alpha1.LLMUser, q *llmv1alpha1.LLMQuota) []Budget {
	dry := q.Spec.Enforcement == llmv1alpha1.EnforcementDryRun
	limits := LimitsFromSpec(q.Spec.Limits)
	thresholds := q.Spec.AlertThresholds
	if thresholds == nil {
		thresholds = DefaultAlertThresholds
	}
	if q.Spec.Scope != llmv1alpha1.ScopeShared {
		b := UserBudget(u.Namespace, u.Name, string(u.UID), limits, dry)
		b.Thresholds = thresholds
		return []Budget{b}
	}
	tally := make([]Limit, 0, len(limits))
	for _, l := range limits {
		tally = append(tally, Limit{Window: l.Window, Soft: l.Soft})
	}
	pool := PoolBudget(q.Namespace, q.Name, string(q.UID), limits, dry)
	pool.Thresholds = thresholds
	// The tally shares the pool's tag: one script charges both.
	user := UserBudget(u.Namespace, u.Name, string(u.UID), tally, dry)
	user.Tag = pool.Tag
	return []Budget{user, pool}
}

// TagOf is the tag of b's counters: its Tag, else its key. A budget
// derived from b, to be charged in the same request (a tally of it), must
// carry Tag: TagOf(b).
func TagOf(b Budget) string { return cmp.Or(b.Tag, b.Key) }

// Crossed reports whether a reservation of granted, after which the windows
// stand as ws, took one of them across one of its budget's alert thresholds
// or to its limit: a change in status worth writing before others.
func Crossed(ws []WindowStatus, budgets []Budget, granted Amount) bool {
	for _, w := range ws {
		var thresholds []int32
		for _, b := range budgets {
			if b.Key == w.Budget {
				thresholds = b.Thresholds
				break
			}
		}
		after := w.Used.Add(w.Reserved)
		before := nonNegative(after.Sub(granted))
		for _, r := range resources {
			c := w.Limit.Cap(r)
			if c == nil || *c <= 0 {
				continue
			}
			was, is := PercentOf(usedOf(r, before), *c), PercentOf(usedOf(r, after), *c)
			if is >= 100 && was < 100 {
				return true
			}
			for _, t := range thresholds {
				if was < int64(t) && is >= int64(t) {
					return true
				}
			}
		}
	}
	return false
}

// Alerting reports whether a window stands at or past its budget's lowest
// alert threshold (or its limit, with no thresholds) in any resource it caps.
func Alerting(w WindowStatus, thresholds []int32) bool {
	lowest := int64(100)
	for _, t := range thresholds {
		lowest = min(lowest, int64(t))
	}
	held := w.Used.Add(w.Reserved)
	for _, r := range resources {
		c := w.Limit.Cap(r)
		if c == nil {
			continue
		}
		if *c <= 0 || PercentOf(usedOf(r, held), *c) >= lowest {
			return true
		}
	}
	return false
}
