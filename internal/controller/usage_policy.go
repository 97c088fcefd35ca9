package controller

import (
	"fmt"
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
)

// windowState is one usage window judged against its limit.
type windowState struct {
	Window   llmv1alpha1.Window
	Start    time.Time
	ResetAt  time.Time
	Percent  int64 // of the most used cap, floor
	Resource string
	Used     int64
	Limit    int64
}

// Exhausted reports whether a cap is fully used.
func (w windowState) Exhausted() bool { return w.Limit >= 0 && w.Used >= w.Limit && w.Resource != "" }

// rollOver replaces entries whose window has ended and that still count
// something by a zeroed entry for the current window, so status never shows
// an old window's usage as current. Entries already zero are left alone: an
// idle user costs no writes.
func rollOver(entries []llmv1alpha1.WindowUsage, limits []llmv1alpha1.QuotaLimit, now time.Time) []llmv1alpha1.WindowUsage {
	out := slices.Clone(entries)
	for i, e := range out {
		if now.Before(e.ResetAt.Time) || (e.Requests == 0 && e.TotalTokens == 0) || !quota.ValidWindow(e.Window) {
			continue
		}
		fresh := llmv1alpha1.WindowUsage{
			Window:      e.Window,
			WindowStart: metav1.NewTime(quota.WindowStart(e.Window, now)),
			ResetAt:     metav1.NewTime(quota.WindowEnd(e.Window, now)),
		}
		for _, l := range limits {
			if l.Window == e.Window {
				st := quota.WindowStatus{Limit: quota.LimitsFromSpec([]llmv1alpha1.QuotaLimit{l})[0]}
				fresh.Remaining, fresh.RemainingRequests = st.Remaining()
			}
		}
		out[i] = fresh
	}
	return out
}

// judge compares each current usage entry with its window's limit.
func judge(entries []llmv1alpha1.WindowUsage, limits []llmv1alpha1.QuotaLimit, now time.Time) []windowState {
	var out []windowState
	for _, e := range entries {
		if !now.Before(e.ResetAt.Time) {
			continue // ended: its usage no longer counts
		}
		ws := windowState{Window: e.Window, Start: e.WindowStart.Time, ResetAt: e.ResetAt.Time, Limit: -1}
		for _, l := range limits {
			if l.Window != e.Window {
				continue
			}
			consider := func(res string, capv *int64, used int64) {
				if capv == nil {
					return
				}
				var pct int64 = 100
				if *capv > 0 {
					pct = used * 100 / *capv
				}
				if ws.Resource == "" || pct > ws.Percent {
					ws.Percent, ws.Resource, ws.Used, ws.Limit = pct, res, used, *capv
				}
			}
			consider("tokens", l.Tokens, e.TotalTokens)
			consider("input tokens", l.InputTokens, e.InputTokens)
			consider("output tokens", l.OutputTokens, e.OutputTokens)
			consider("requests", l.Requests, e.Requests)
		}
		if ws.Resource != "" {
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
			if int64(t) <= s.Percent && t > already {
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

// exceededCondition summarises the exhausted windows.
func exceededCondition(states []windowState, generation int64, now time.Time) (metav1.Condition, time.Time) {
	c := metav1.Condition{
		Type: llmv1alpha1.ConditionQuotaExceeded, Status: metav1.ConditionFalse,
		Reason: llmv1alpha1.ReasonWithinLimits, Message: "no window is exhausted",
		ObservedGeneration: generation, LastTransitionTime: metav1.NewTime(now),
	}
	var until time.Time
	for _, s := range states {
		if !s.Exhausted() {
			continue
		}
		if until.IsZero() || s.ResetAt.After(until) {
			until = s.ResetAt
			c.Status, c.Reason = metav1.ConditionTrue, llmv1alpha1.ReasonLimitReached
			c.Message = fmt.Sprintf("%s window exhausted: %d of %d %s used; resets at %s",
				s.Window, s.Used, s.Limit, s.Resource, s.ResetAt.UTC().Format(time.RFC3339))
		}
	}
	return c, until
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
