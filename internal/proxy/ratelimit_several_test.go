package proxy

import (
	"net/http"
	"testing"
	"time"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
)

// TestRateLimitHeadersSeveralWindows checks that with several windows, and
// several budgets, the x-ratelimit-* headers describe the window with the
// least left of each kind (requests; any token cap), whichever order the
// windows come in, and on a tie the one that resets last: the headers must
// never promise a client more than admission will give it.
func TestRateLimitHeadersSeveralWindows(t *testing.T) {
	now := time.Date(2026, 3, 10, 12, 0, 30, 0, time.UTC)
	minute := now.Add(30 * time.Second)
	hour := now.Add(59*time.Minute + 30*time.Second)
	day := now.Add(12*time.Hour - 30*time.Second)
	win := func(w llmv1alpha1.Window, reset time.Time, lim quota.Limit, used, reserved quota.Amount) quota.WindowStatus {
		lim.Window = w
		return quota.WindowStatus{Budget: "user", Limit: lim, ResetAt: reset, Used: used, Reserved: reserved}
	}
	cases := []struct {
		name string
		ws   []quota.WindowStatus
		want map[string]string
	}{{
		name: "the tightest requests window is in the middle",
		ws: []quota.WindowStatus{
			win(llmv1alpha1.WindowDay, day, quota.Limit{Requests: ptr[int64](1000)}, quota.Amount{Requests: 10}, quota.Amount{}),
			win(llmv1alpha1.WindowMinute, minute, quota.Limit{Requests: ptr[int64](10)}, quota.Amount{Requests: 7}, quota.Amount{Requests: 2}),
			win(llmv1alpha1.WindowHour, hour, quota.Limit{Requests: ptr[int64](100)}, quota.Amount{Requests: 50}, quota.Amount{}),
		},
		want: map[string]string{
			"X-Ratelimit-Limit-Requests": "10", "X-Ratelimit-Remaining-Requests": "1", "X-Ratelimit-Reset-Requests": "30s",
		},
	}, {
		name: "a long window can be the tightest",
		ws: []quota.WindowStatus{
			win(llmv1alpha1.WindowMinute, minute, quota.Limit{Requests: ptr[int64](60)}, quota.Amount{Requests: 5}, quota.Amount{}),
			win(llmv1alpha1.WindowHour, hour, quota.Limit{Requests: ptr[int64](500)}, quota.Amount{Requests: 100}, quota.Amount{}),
			win(llmv1alpha1.WindowDay, day, quota.Limit{Requests: ptr[int64](1000)}, quota.Amount{Requests: 997}, quota.Amount{}),
		},
		want: map[string]string{
			"X-Ratelimit-Limit-Requests": "1000", "X-Ratelimit-Remaining-Requests": "3", "X-Ratelimit-Reset-Requests": "11h59m30s",
		},
	}, {
		name: "the tightest token cap of any kind, across windows",
		ws: []quota.WindowStatus{
			// minute: 1000 total, 100 held → 900 left
			win(llmv1alpha1.WindowMinute, minute, quota.Limit{Tokens: ptr[int64](1000)},
				quota.Amount{InputTokens: 60, OutputTokens: 40}, quota.Amount{}),
			// hour: 2000 output, 1900 held → 100 left; 10000 input, 600 held → 9400 left
			win(llmv1alpha1.WindowHour, hour, quota.Limit{OutputTokens: ptr[int64](2000), InputTokens: ptr[int64](10000)},
				quota.Amount{InputTokens: 500, OutputTokens: 1700}, quota.Amount{InputTokens: 100, OutputTokens: 200}),
			// day: 500 total, none used → 500 left
			win(llmv1alpha1.WindowDay, day, quota.Limit{Tokens: ptr[int64](500)}, quota.Amount{}, quota.Amount{}),
		},
		want: map[string]string{
			"X-Ratelimit-Limit-Tokens": "2000", "X-Ratelimit-Remaining-Tokens": "100", "X-Ratelimit-Reset-Tokens": "59m30s",
		},
	}, {
		name: "requests and tokens each from their own tightest window",
		ws: []quota.WindowStatus{
			win(llmv1alpha1.WindowMinute, minute, quota.Limit{Requests: ptr[int64](20), Tokens: ptr[int64](100000)},
				quota.Amount{Requests: 18, InputTokens: 1000}, quota.Amount{}),
			win(llmv1alpha1.WindowDay, day, quota.Limit{Requests: ptr[int64](5000), Tokens: ptr[int64](3000)},
				quota.Amount{Requests: 40, InputTokens: 2000, OutputTokens: 750}, quota.Amount{}),
		},
		want: map[string]string{
			"X-Ratelimit-Limit-Requests": "20", "X-Ratelimit-Remaining-Requests": "2", "X-Ratelimit-Reset-Requests": "30s",
			"X-Ratelimit-Limit-Tokens": "3000", "X-Ratelimit-Remaining-Tokens": "250", "X-Ratelimit-Reset-Tokens": "11h59m30s",
		},
	}, {
		name: "a spent window counts as zero left, not negative, and still wins",
		ws: []quota.WindowStatus{
			win(llmv1alpha1.WindowHour, hour, quota.Limit{Tokens: ptr[int64](800)}, quota.Amount{InputTokens: 300}, quota.Amount{}),
			win(llmv1alpha1.WindowMinute, minute, quota.Limit{Tokens: ptr[int64](100)}, quota.Amount{InputTokens: 90, OutputTokens: 30}, quota.Amount{}),
		},
		want: map[string]string{
			"X-Ratelimit-Limit-Tokens": "100", "X-Ratelimit-Remaining-Tokens": "0", "X-Ratelimit-Reset-Tokens": "30s",
		},
	}, {
		name: "on a tie the window that resets last",
		ws: []quota.WindowStatus{
			win(llmv1alpha1.WindowMinute, minute, quota.Limit{Requests: ptr[int64](10)}, quota.Amount{Requests: 6}, quota.Amount{}),
			win(llmv1alpha1.WindowDay, day, quota.Limit{Requests: ptr[int64](104)}, quota.Amount{Requests: 100}, quota.Amount{}),
			win(llmv1alpha1.WindowHour, hour, quota.Limit{Requests: ptr[int64](54)}, quota.Amount{Requests: 50}, quota.Amount{}),
		},
		want: map[string]string{
			"X-Ratelimit-Limit-Requests": "104", "X-Ratelimit-Remaining-Requests": "4", "X-Ratelimit-Reset-Requests": "11h59m30s",
		},
	}, {
		name: "a shared pool's window tighter than the user's own",
		ws: []quota.WindowStatus{
			win(llmv1alpha1.WindowHour, hour, quota.Limit{Tokens: ptr[int64](5000)}, quota.Amount{InputTokens: 100}, quota.Amount{}),
			func() quota.WindowStatus {
				s := win(llmv1alpha1.WindowHour, hour, quota.Limit{Tokens: ptr[int64](50000)}, quota.Amount{InputTokens: 49000}, quota.Amount{OutputTokens: 600})
				s.Budget = "pool"
				return s
			}(),
		},
		want: map[string]string{
			"X-Ratelimit-Limit-Tokens": "50000", "X-Ratelimit-Remaining-Tokens": "400", "X-Ratelimit-Reset-Tokens": "59m30s",
		},
	}}
	all := []string{
		"X-Ratelimit-Limit-Requests", "X-Ratelimit-Remaining-Requests", "X-Ratelimit-Reset-Requests",
		"X-Ratelimit-Limit-Tokens", "X-Ratelimit-Remaining-Tokens", "X-Ratelimit-Reset-Tokens",
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			setRateLimitHeaders(h, tc.ws, now)
			for _, k := range all {
				if got, want := h.Get(k), tc.want[k]; got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
		})
	}
}
