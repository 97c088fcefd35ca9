package quota

import (
	"fmt"
	"time"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
)

// WindowStart returns the start of the calendar window w that contains t, in
// UTC. Every replica computes the same boundaries from the clock alone.
func WindowStart(w llmv1alpha1.Window, t time.Time) time.Time {
	t = t.UTC()
	switch w {
	case llmv1alpha1.WindowMinute:
		return t.Truncate(time.Minute)
	case llmv1alpha1.WindowHour:
		return t.Truncate(time.Hour)
	case llmv1alpha1.WindowDay:
		return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	case llmv1alpha1.WindowWeek:
		// ISO 8601: weeks start on Monday.
		back := (int(t.Weekday()) + 6) % 7
		return time.Date(t.Year(), t.Month(), t.Day()-back, 0, 0, 0, 0, time.UTC)
	case llmv1alpha1.WindowMonth:
		return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
	default:
		panic(fmt.Sprintf("quota: unknown window %q", w))
	}
}

// WindowEnd returns the end of the window w that contains t: the start of the
// next window and the moment usage resets.
func WindowEnd(w llmv1alpha1.Window, t time.Time) time.Time {
	s := WindowStart(w, t)
	switch w {
	case llmv1alpha1.WindowMinute:
		return s.Add(time.Minute)
	case llmv1alpha1.WindowHour:
		return s.Add(time.Hour)
	case llmv1alpha1.WindowDay:
		return s.AddDate(0, 0, 1)
	case llmv1alpha1.WindowWeek:
		return s.AddDate(0, 0, 7)
	default: // WindowMonth; WindowStart has rejected anything else.
		return s.AddDate(0, 1, 0)
	}
}

// ValidWindow reports whether w is a known window.
func ValidWindow(w llmv1alpha1.Window) bool {
	for _, k := range llmv1alpha1.Windows {
		if k == w {
			return true
		}
	}
	return false
}
