package controller

import (
	"fmt"
	"slices"
	"strconv"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
)

// capUse is one capped resource of a window: its limit and what was used.
type capUse struct {
	// Resource is as an admin reads it: tokens, input tokens, output
	// tokens, requests, or the currency of a cost budget.
	Resource string
	Used     int64
	Limit    int64
	// Money says Used and Limit are a cost in pico-units of the currency
	// (quota.ParseCost), shown as decimals.
	Money bool
}

// show writes an amount of the cap's resource as the admin wrote it.
func (c capUse) show(v int64) string {
	if c.Money {
		return quota.FormatCost(v)
	}
	return strconv.FormatInt(v, 10)
}

// Remaining is what is left of the cap, never negative.
func (c capUse) Remaining() int64 { return max(c.Limit-c.Used, 0) }

// smallestRequest is the least of a resource that any admitted request
// takes: a prompt estimate plus one output token under a cap that counts
// input ([quota.MinRequestTokens]), one output token, one request.
func smallestRequest(c capUse) int64 {
	if c.Money {
		// It depends on the model's price; any request costs something
		// once priced, so only a spent budget is known to admit nothing.
		return 1
	}
	if resource := c.Resource; resource == "tokens" || resource == "input tokens" {
		return quota.MinRequestTokens
	}
	return 1
}

// Exhausted reports whether what is left admits not even the smallest
// request: the proxy refuses everything until the window resets, however
// small, so the admin and the user must see it although the cap is not
// literally used up.
func (c capUse) Exhausted() bool { return c.Remaining() < smallestRequest(c) }

// windowState is one usage window judged against its limit.
type windowState struct {
	Window  llmv1alpha1.Window
	Start   time.Time
	ResetAt time.Time
	// Top is the most used cap, by percentage; Percent its share, floored.
	Top     capUse
	Percent int64
	// Exhausted is the first cap (tokens, input tokens, output tokens,
	// requests) with no room for the smallest request; nil while one fits.
	Exhausted *capUse
}

// level is the alert level the window has reached: its percentage, or 100
// once exhausted (exhaustion always alerts, also at 98%).
func (w windowState) level() int64 {
	if w.Exhausted != nil {
		return max(w.Percent, 100)
	}
	return w.Percent
}

// judge compares each current usage entry with its window's limit.
func judge(entries []llmv1alpha1.WindowUsage, limits []llmv1alpha1.QuotaLimit, now time.Time) []windowState {
	var out []windowState
	for _, e := range entries {
		if !now.Before(e.ResetAt.Time) {
			continue // ended: its usage no longer counts
		}
		ws := windowState{Window: e.Window, Start: e.WindowStart.Time, ResetAt: e.ResetAt.Time}
		seen := false
		var caps []quota.Limit
		for _, l := range quota.LimitsFromSpec(limits) {
			if l.Window != e.Window {
				continue
			}
			caps = append(caps, l)
			if c := l.Ceiling; c != nil {
				caps = append(caps, *c)
			}
		}
		for _, l := range caps {
			currency := e.Currency
			if currency == "" {
				currency = "cost"
			}
			// A cost the proxy wrote is always well-formed; anything else
			// counts as nothing spent rather than blocking the window.
			cost, _ := quota.ParseCost(e.Cost)
			for _, c := range []struct {
				res   string
				capv  *int64
				used  int64
				money bool
			}{
				{"tokens", l.Tokens, e.TotalTokens, false},
				{"input tokens", l.InputTokens, e.InputTokens, false},
				{"output tokens", l.OutputTokens, e.OutputTokens, false},
				{"requests", l.Requests, e.Requests, false},
				{currency, l.Cost, cost, true},
			} {
				if c.capv == nil {
					continue
				}
				cu := capUse{Resource: c.res, Used: c.used, Limit: *c.capv, Money: c.money}
				var pct int64 = 100
				if cu.Limit > 0 {
					// Costs are pico-units up to 9e18: PercentOf does not
					// overflow where used*100 would.
					pct = quota.PercentOf(cu.Used, cu.Limit)
				}
				if !seen || pct > ws.Percent {
					ws.Top, ws.Percent = cu, pct
				}
				seen = true
				// A soft limit refuses nothing: past it requests are
				// overflow, and only its ceiling exhausts the window.
				if ws.Exhausted == nil && !l.Soft && cu.Exhausted() {
					ws.Exhausted = &cu
				}
			}
		}
		if seen {
			out = append(out, ws)
		}
	}
	return out
}

// alert is a threshold newly crossed in a window.
type alert struct {
	State     windowState
	Threshold int32
}

// newAlerts returns the thresholds crossed since the last report in each
// current window, and the alert records to keep. A new window starts over.
func newAlerts(states []windowState, thresholds []int32, prev []llmv1alpha1.AlertStatus) ([]alert, []llmv1alpha1.AlertStatus) {
	levels := slices.Clone(thresholds)
	levels = append(levels, 100) // exhaustion always alerts
	slices.Sort(levels)
	levels = slices.Compact(levels)

	var fired []alert
	var keep []llmv1alpha1.AlertStatus
	for _, s := range states {
		var already int32
		for _, p := range prev {
			if p.Window == s.Window && p.WindowStart.Time.Equal(s.Start) {
				already = p.Threshold
			}
		}
		top := already
		for _, t := range levels {
			if int64(t) <= s.level() && t > already {
				fired = append(fired, alert{State: s, Threshold: t})
				top = max(top, t)
			}
		}
		if top > 0 {
			keep = append(keep, llmv1alpha1.AlertStatus{Window: s.Window, WindowStart: metav1.NewTime(s.Start), Threshold: top})
		}
	}
	return fired, keep
}

// exceededCondition is True while a window is exhausted (see
// [capUse.Exhausted]), naming the one that resets last: only then are
// requests admitted again.
func exceededCondition(states []windowState, generation int64, now time.Time) (metav1.Condition, time.Time) {
	c := metav1.Condition{
		Type: llmv1alpha1.ConditionQuotaExceeded, Status: metav1.ConditionFalse,
		Reason: llmv1alpha1.ReasonWithinLimits, Message: "no window is exhausted",
		ObservedGeneration: generation, LastTransitionTime: metav1.NewTime(now),
	}
	var until time.Time
	for _, s := range states {
		if s.Exhausted == nil {
			continue
		}
		if until.IsZero() || s.ResetAt.After(until) {
			until = s.ResetAt
			c.Status, c.Reason = metav1.ConditionTrue, llmv1alpha1.ReasonLimitReached
			c.Message = exhaustedMessage(s)
		}
	}
	return c, until
}

// exhaustedMessage says how much of which window is left, why that admits
// nothing, and when it resets.
func exhaustedMessage(s windowState) string {
	x := s.Exhausted
	reset := s.ResetAt.UTC().Format(time.RFC3339)
	if x.Remaining() == 0 {
		return fmt.Sprintf("%s window exhausted: %s of %s %s used, none left; requests are refused until it resets at %s",
			s.Window, x.show(x.Used), x.show(x.Limit), x.Resource, reset)
	}
	return fmt.Sprintf("%s window exhausted: %s of %s %s left, fewer than the %s the smallest request needs; requests are refused until it resets at %s",
		s.Window, x.show(x.Remaining()), x.show(x.Limit), x.Resource, x.show(smallestRequest(*x)), reset)
}

// nextDeadline is the earliest reset of a window that still counts something.
func nextDeadline(entries []llmv1alpha1.WindowUsage, now time.Time) time.Time {
	var next time.Time
	for _, e := range entries {
		if (e.Requests == 0 && e.TotalTokens == 0) || !e.ResetAt.After(now) {
			continue
		}
		if next.IsZero() || e.ResetAt.Time.Before(next) {
			next = e.ResetAt.Time
		}
	}
	return next
}
