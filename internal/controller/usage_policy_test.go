package controller

import (
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
)

func i64(v int64) *int64 { return &v }

// TestQuotaExceededDecision: a window counts as exhausted as soon as what is
// left admits not even the smallest request (fewer than 9 tokens under a
// tokens or inputTokens cap, no output token, no request), and the
// condition says how much is left, in which window, until when.
func TestQuotaExceededDecision(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 30, 10, 0, time.UTC)
	day := func(tokens, input, output, requests int64) llmv1alpha1.WindowUsage {
		return llmv1alpha1.WindowUsage{
			Window: llmv1alpha1.WindowDay, WindowStart: metav1.NewTime(time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)),
			ResetAt:  metav1.NewTime(time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)),
			Requests: requests, InputTokens: input, OutputTokens: output, TotalTokens: tokens,
		}
	}
	minute := func(tokens, requests int64) llmv1alpha1.WindowUsage {
		return llmv1alpha1.WindowUsage{
			Window: llmv1alpha1.WindowMinute, WindowStart: metav1.NewTime(time.Date(2026, 11, 25, 12, 30, 0, 0, time.UTC)),
			ResetAt:  metav1.NewTime(time.Date(2026, 11, 25, 12, 31, 0, 0, time.UTC)),
			Requests: requests, TotalTokens: tokens,
		}
	}
	priced := func(w llmv1alpha1.WindowUsage, cost string) llmv1alpha1.WindowUsage {
		w.Cost, w.Currency = cost, "USD"
		return w
	}
	dec := func(s string) *llmv1alpha1.Decimal { d := llmv1alpha1.Decimal(s); return &d }
	dayLimit := func(l llmv1alpha1.QuotaLimit) []llmv1alpha1.QuotaLimit {
		l.Window = llmv1alpha1.WindowDay
		return []llmv1alpha1.QuotaLimit{l}
	}
	const within = "no window is exhausted"
	tests := []struct {
		name    string
		usage   []llmv1alpha1.WindowUsage
		limits  []llmv1alpha1.QuotaLimit
		want    metav1.ConditionStatus
		message string
	}{
		{"27 tokens left: a short request still fits", []llmv1alpha1.WindowUsage{day(373, 300, 73, 9)},
			dayLimit(llmv1alpha1.QuotaLimit{Tokens: i64(400)}), metav1.ConditionFalse, within},
		{"9 tokens left: the smallest request fits", []llmv1alpha1.WindowUsage{day(391, 300, 91, 9)},
			dayLimit(llmv1alpha1.QuotaLimit{Tokens: i64(400)}), metav1.ConditionFalse, within},
		{"8 tokens left", []llmv1alpha1.WindowUsage{day(392, 300, 92, 9)},
			dayLimit(llmv1alpha1.QuotaLimit{Tokens: i64(400)}), metav1.ConditionTrue,
			"Day window exhausted: 8 of 400 tokens left, fewer than the 9 the smallest request needs; requests are refused until it resets at 2026-11-26T00:00:00Z"},
		{"over the cap", []llmv1alpha1.WindowUsage{day(410, 300, 110, 9)},
			dayLimit(llmv1alpha1.QuotaLimit{Tokens: i64(400)}), metav1.ConditionTrue,
			"Day window exhausted: 410 of 400 tokens used, none left; requests are refused until it resets at 2026-11-26T00:00:00Z"},
		{"9 input tokens left", []llmv1alpha1.WindowUsage{day(500, 91, 409, 9)},
			dayLimit(llmv1alpha1.QuotaLimit{InputTokens: i64(100)}), metav1.ConditionFalse, within},
		{"8 input tokens left", []llmv1alpha1.WindowUsage{day(500, 92, 408, 9)},
			dayLimit(llmv1alpha1.QuotaLimit{InputTokens: i64(100)}), metav1.ConditionTrue,
			"Day window exhausted: 8 of 100 input tokens left, fewer than the 9 the smallest request needs; requests are refused until it resets at 2026-11-26T00:00:00Z"},
		{"1 output token left", []llmv1alpha1.WindowUsage{day(500, 401, 99, 9)},
			dayLimit(llmv1alpha1.QuotaLimit{OutputTokens: i64(100)}), metav1.ConditionFalse, within},
		{"no output token left", []llmv1alpha1.WindowUsage{day(500, 400, 100, 9)},
			dayLimit(llmv1alpha1.QuotaLimit{OutputTokens: i64(100)}), metav1.ConditionTrue,
			"Day window exhausted: 100 of 100 output tokens used, none left; requests are refused until it resets at 2026-11-26T00:00:00Z"},
		{"1 request left", []llmv1alpha1.WindowUsage{minute(500, 59)},
			[]llmv1alpha1.QuotaLimit{{Window: llmv1alpha1.WindowMinute, Requests: i64(60)}}, metav1.ConditionFalse, within},
		{"no request left", []llmv1alpha1.WindowUsage{minute(500, 60)},
			[]llmv1alpha1.QuotaLimit{{Window: llmv1alpha1.WindowMinute, Requests: i64(60)}}, metav1.ConditionTrue,
			"Minute window exhausted: 60 of 60 requests used, none left; requests are refused until it resets at 2026-11-25T12:31:00Z"},
		{"a zero cap admits nothing", []llmv1alpha1.WindowUsage{day(0, 0, 0, 0)},
			dayLimit(llmv1alpha1.QuotaLimit{Tokens: i64(0)}), metav1.ConditionTrue,
			"Day window exhausted: 0 of 0 tokens used, none left; requests are refused until it resets at 2026-11-26T00:00:00Z"},
		{"the exhausted cap is not the most used one", []llmv1alpha1.WindowUsage{day(2, 1, 1, 50)},
			dayLimit(llmv1alpha1.QuotaLimit{Tokens: i64(10), Requests: i64(100)}), metav1.ConditionTrue,
			"Day window exhausted: 8 of 10 tokens left, fewer than the 9 the smallest request needs; requests are refused until it resets at 2026-11-26T00:00:00Z"},
		{"two windows exhausted: the later reset is when requests resume", []llmv1alpha1.WindowUsage{minute(100, 1), day(996, 500, 496, 9)},
			[]llmv1alpha1.QuotaLimit{{Window: llmv1alpha1.WindowMinute, Tokens: i64(100)}, {Window: llmv1alpha1.WindowDay, Tokens: i64(1000)}}, metav1.ConditionTrue,
			"Day window exhausted: 4 of 1000 tokens left, fewer than the 9 the smallest request needs; requests are refused until it resets at 2026-11-26T00:00:00Z"},
		{"an ended window counts nothing", []llmv1alpha1.WindowUsage{{
			Window: llmv1alpha1.WindowHour, WindowStart: metav1.NewTime(time.Date(2026, 11, 25, 11, 0, 0, 0, time.UTC)),
			ResetAt: metav1.NewTime(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)), TotalTokens: 1000,
		}}, []llmv1alpha1.QuotaLimit{{Window: llmv1alpha1.WindowHour, Tokens: i64(1000)}}, metav1.ConditionFalse, within},
		{"a cost budget with a millionth left", []llmv1alpha1.WindowUsage{priced(day(900, 600, 300, 9), "2.499999")},
			dayLimit(llmv1alpha1.QuotaLimit{Cost: dec("2.5")}), metav1.ConditionFalse, within},
		{"a cost budget spent", []llmv1alpha1.WindowUsage{priced(day(900, 600, 300, 9), "2.5")},
			dayLimit(llmv1alpha1.QuotaLimit{Cost: dec("2.5")}), metav1.ConditionTrue,
			"Day window exhausted: 2.5 of 2.5 USD used, none left; requests are refused until it resets at 2026-11-26T00:00:00Z"},
		{"a cost budget the worst case overshot", []llmv1alpha1.WindowUsage{priced(day(900, 600, 300, 9), "3.000000000001")},
			dayLimit(llmv1alpha1.QuotaLimit{Tokens: i64(100000), Cost: dec("2.5")}), metav1.ConditionTrue,
			"Day window exhausted: 3.000000000001 of 2.5 USD used, none left; requests are refused until it resets at 2026-11-26T00:00:00Z"},
		{"the largest cost budget, spent, does not overflow", []llmv1alpha1.WindowUsage{priced(day(900, 600, 300, 9), "9000000")},
			dayLimit(llmv1alpha1.QuotaLimit{Cost: dec("9000000")}), metav1.ConditionTrue,
			"Day window exhausted: 9000000 of 9000000 USD used, none left; requests are refused until it resets at 2026-11-26T00:00:00Z"},
		{"a window without a limit counts nothing", []llmv1alpha1.WindowUsage{minute(5000, 60)},
			dayLimit(llmv1alpha1.QuotaLimit{Tokens: i64(100000)}), metav1.ConditionFalse, within},
		{"past a soft limit without a ceiling: overflow, not exhausted", []llmv1alpha1.WindowUsage{day(900, 600, 300, 9)},
			dayLimit(llmv1alpha1.QuotaLimit{Tokens: i64(400), Overage: llmv1alpha1.OverageDemote}), metav1.ConditionFalse, within},
		{"past a soft limit, under its ceiling", []llmv1alpha1.WindowUsage{day(900, 600, 300, 9)},
			dayLimit(llmv1alpha1.QuotaLimit{Tokens: i64(400), Overage: llmv1alpha1.OverageDemote, HardLimit: &llmv1alpha1.LimitCaps{Tokens: i64(1000)}}),
			metav1.ConditionFalse, within},
		{"a soft limit's ceiling reached", []llmv1alpha1.WindowUsage{day(995, 600, 395, 9)},
			dayLimit(llmv1alpha1.QuotaLimit{Tokens: i64(400), Overage: llmv1alpha1.OverageDemote, HardLimit: &llmv1alpha1.LimitCaps{Tokens: i64(1000)}}),
			metav1.ConditionTrue,
			"Day window exhausted: 5 of 1000 tokens left, fewer than the 9 the smallest request needs; requests are refused until it resets at 2026-11-26T00:00:00Z"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := exceededCondition(judge(tc.usage, tc.limits, now), 3, now)
			if c.Status != tc.want || c.Message != tc.message {
				t.Errorf("got %s %q\nwant %s %q", c.Status, c.Message, tc.want, tc.message)
			}
			wantReason := llmv1alpha1.ReasonWithinLimits
			if tc.want == metav1.ConditionTrue {
				wantReason = llmv1alpha1.ReasonLimitReached
			}
			if c.Reason != wantReason || c.ObservedGeneration != 3 {
				t.Errorf("reason %s, observedGeneration %d", c.Reason, c.ObservedGeneration)
			}
		})
	}
}

// TestExhaustionAlerts: a window exhausted below 100% still raises the
// exhaustion alert, after the thresholds it crossed, once.
func TestExhaustionAlerts(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	start := metav1.NewTime(time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC))
	usage := []llmv1alpha1.WindowUsage{{
		Window: llmv1alpha1.WindowDay, WindowStart: start, ResetAt: metav1.NewTime(time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)),
		TotalTokens: 392,
	}}
	states := judge(usage, []llmv1alpha1.QuotaLimit{{Window: llmv1alpha1.WindowDay, Tokens: i64(400)}}, now)
	fired, keep := newAlerts(states, []int32{80, 95}, nil)
	var got []int32
	for _, a := range fired {
		got = append(got, a.Threshold)
	}
	if len(got) != 3 || got[0] != 80 || got[1] != 95 || got[2] != 100 {
		t.Errorf("fired %v, want [80 95 100]", got)
	}
	if len(keep) != 1 || keep[0].Threshold != 100 {
		t.Fatalf("kept %+v", keep)
	}
	if again, _ := newAlerts(states, []int32{80, 95}, keep); len(again) != 0 {
		t.Errorf("fired again: %+v", again)
	}
}

// TestAlertFollowsMostUsedLimit: a window's alerts follow its most used cap,
// whichever of the window's caps it is, so that a requests cap at 96 % alerts
// although the tokens cap checked before it is at 10 %.
func TestAlertFollowsMostUsedLimit(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	day := func(input, output, requests int64) []llmv1alpha1.WindowUsage {
		return []llmv1alpha1.WindowUsage{{
			Window: llmv1alpha1.WindowDay, WindowStart: metav1.NewTime(time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)),
			ResetAt:  metav1.NewTime(time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)),
			Requests: requests, InputTokens: input, OutputTokens: output, TotalTokens: input + output,
		}}
	}
	tests := []struct {
		name     string
		usage    []llmv1alpha1.WindowUsage
		limit    llmv1alpha1.QuotaLimit
		resource string
		percent  int64
		fired    []int32
	}{
		{"tokens at 10 %, requests at 96 %", day(60, 40, 96),
			llmv1alpha1.QuotaLimit{Tokens: i64(1000), Requests: i64(100)}, "requests", 96, []int32{80, 95}},
		{"tokens at 96 %, requests at 10 %", day(600, 360, 10),
			llmv1alpha1.QuotaLimit{Tokens: i64(1000), Requests: i64(100)}, "tokens", 96, []int32{80, 95}},
		{"output tokens at 85 % between tokens at 50 % and requests at 20 %", day(330, 170, 20),
			llmv1alpha1.QuotaLimit{Tokens: i64(1000), InputTokens: i64(5000), OutputTokens: i64(200), Requests: i64(100)}, "output tokens", 85, []int32{80}},
		{"every cap under the first threshold", day(300, 100, 70),
			llmv1alpha1.QuotaLimit{Tokens: i64(1000), Requests: i64(100)}, "requests", 70, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.limit.Window = llmv1alpha1.WindowDay
			states := judge(tc.usage, []llmv1alpha1.QuotaLimit{tc.limit}, now)
			if len(states) != 1 {
				t.Fatalf("judged %d windows, want 1", len(states))
			}
			if s := states[0]; s.Top.Resource != tc.resource || s.Percent != tc.percent {
				t.Errorf("top cap %s at %d%%, want %s at %d%%", s.Top.Resource, s.Percent, tc.resource, tc.percent)
			}
			fired, _ := newAlerts(states, []int32{80, 95}, nil)
			var got []int32
			for _, a := range fired {
				got = append(got, a.Threshold)
				if a.State.Top.Resource != tc.resource {
					t.Errorf("the %d%% alert is for %s, want %s", a.Threshold, a.State.Top.Resource, tc.resource)
				}
			}
			if !slices.Equal(got, tc.fired) {
				t.Errorf("fired %v, want %v", got, tc.fired)
			}
		})
	}
}
