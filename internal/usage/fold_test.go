package usage

import (
	"encoding/json"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
)

var t0 = time.Date(2030, time.January, 7, 10, 0, 0, 0, time.UTC) // a Monday

func mt(t time.Time) metav1.Time { return metav1.NewTime(t) }

// deltaOf builds a delta from charges.
func deltaOf(charges ...bucket) *delta {
	d := &delta{}
	for _, c := range charges {
		d.add(c.minute.Truncate(time.Minute), c.amount)
		if c.minute.After(d.last) {
			d.last = c.minute
		}
	}
	return d
}

func entry(w llmv1alpha1.Window, start time.Time, a quota.Amount) llmv1alpha1.WindowUsage {
	return llmv1alpha1.WindowUsage{
		Window: w, WindowStart: mt(quota.WindowStart(w, start)), ResetAt: mt(quota.WindowEnd(w, start)),
		Requests: a.Requests, InputTokens: a.InputTokens, OutputTokens: a.OutputTokens, TotalTokens: a.Total(),
	}
}

func withRemaining(e llmv1alpha1.WindowUsage, tokens, requests *int64) llmv1alpha1.WindowUsage {
	e.Remaining, e.RemainingRequests = tokens, requests
	return e
}

func TestFold(t *testing.T) {
	minute := quota.Limit{Window: llmv1alpha1.WindowMinute, Tokens: ptr.To[int64](1000), Requests: ptr.To[int64](10)}
	hour := quota.Limit{Window: llmv1alpha1.WindowHour, InputTokens: ptr.To[int64](5000), OutputTokens: ptr.To[int64](300)}
	day := quota.Limit{Window: llmv1alpha1.WindowDay, Requests: ptr.To[int64](100)}
	a := quota.Amount{Requests: 1, InputTokens: 100, OutputTokens: 50}
	b := quota.Amount{Requests: 2, InputTokens: 10, OutputTokens: 5}
	now := t0.Add(90 * time.Second) // 10:01:30

	for _, tc := range []struct {
		name      string
		in        usageStatus
		d         *delta
		limits    []quota.Limit
		known     bool
		remaining bool
		want      usageStatus
	}{{
		name:      "first charge creates every window in spec order",
		d:         deltaOf(bucket{t0.Add(80 * time.Second), a}),
		limits:    []quota.Limit{hour, minute},
		known:     true,
		remaining: true,
		want: usageStatus{
			Usage: []llmv1alpha1.WindowUsage{
				withRemaining(entry(llmv1alpha1.WindowHour, now, a), ptr.To[int64](250), nil),
				withRemaining(entry(llmv1alpha1.WindowMinute, now, a), ptr.To[int64](850), ptr.To[int64](9)),
			},
			Lifetime:      &llmv1alpha1.UsageTotals{Requests: 1, InputTokens: 100, OutputTokens: 50, TotalTokens: 150},
			LastRequestAt: ptr.To(mt(t0.Add(80 * time.Second))),
		},
	}, {
		name: "same window adds, ended window restarts, stale charges only in lifetime",
		in: usageStatus{
			Usage: []llmv1alpha1.WindowUsage{
				entry(llmv1alpha1.WindowMinute, t0, a), // 10:00, ended
				entry(llmv1alpha1.WindowDay, t0, a),    // today
			},
			Lifetime:      &llmv1alpha1.UsageTotals{Requests: 1, InputTokens: 100, OutputTokens: 50, TotalTokens: 150},
			LastRequestAt: ptr.To(mt(t0.Add(10 * time.Second))),
		},
		// b at 10:00:50 (previous minute) and b at 10:01:20 (this minute).
		d:         deltaOf(bucket{t0.Add(50 * time.Second), b}, bucket{t0.Add(80 * time.Second), b}),
		limits:    []quota.Limit{minute, day},
		known:     true,
		remaining: true,
		want: usageStatus{
			Usage: []llmv1alpha1.WindowUsage{
				withRemaining(entry(llmv1alpha1.WindowMinute, now, b), ptr.To[int64](985), ptr.To[int64](8)),
				withRemaining(entry(llmv1alpha1.WindowDay, now, a.Add(b).Add(b)), nil, ptr.To[int64](95)),
			},
			Lifetime:      &llmv1alpha1.UsageTotals{Requests: 5, InputTokens: 120, OutputTokens: 60, TotalTokens: 180},
			LastRequestAt: ptr.To(mt(t0.Add(80 * time.Second))),
		},
	}, {
		name: "entries of windows no longer limited go; no remaining for a pool member",
		in: usageStatus{
			Usage: []llmv1alpha1.WindowUsage{entry(llmv1alpha1.WindowHour, now, a), entry(llmv1alpha1.WindowMinute, now, a)},
		},
		d:      deltaOf(bucket{now, b}),
		limits: []quota.Limit{minute},
		known:  true,
		want: usageStatus{
			Usage:         []llmv1alpha1.WindowUsage{entry(llmv1alpha1.WindowMinute, now, a.Add(b))},
			Lifetime:      &llmv1alpha1.UsageTotals{Requests: 2, InputTokens: 10, OutputTokens: 5, TotalTokens: 15},
			LastRequestAt: ptr.To(mt(now)),
		},
	}, {
		name: "unknown quota keeps the entries, counts lifetime",
		in: usageStatus{
			Usage: []llmv1alpha1.WindowUsage{entry(llmv1alpha1.WindowHour, t0, a)},
		},
		d: deltaOf(bucket{now, b}),
		want: usageStatus{
			Usage:         []llmv1alpha1.WindowUsage{entry(llmv1alpha1.WindowHour, t0, a)},
			Lifetime:      &llmv1alpha1.UsageTotals{Requests: 2, InputTokens: 10, OutputTokens: 5, TotalTokens: 15},
			LastRequestAt: ptr.To(mt(now)),
		},
	}, {
		name:  "no limits, no entries",
		in:    usageStatus{Usage: []llmv1alpha1.WindowUsage{entry(llmv1alpha1.WindowHour, t0, a)}},
		d:     deltaOf(bucket{now, b}),
		known: true,
		want: usageStatus{
			Lifetime:      &llmv1alpha1.UsageTotals{Requests: 2, InputTokens: 10, OutputTokens: 5, TotalTokens: 15},
			LastRequestAt: ptr.To(mt(now)),
		},
	}, {
		name: "an entry of a later window (a replica ahead) is kept; lastRequestAt never goes back",
		in: usageStatus{
			Usage:         []llmv1alpha1.WindowUsage{entry(llmv1alpha1.WindowMinute, now.Add(time.Minute), a)},
			LastRequestAt: ptr.To(mt(now.Add(time.Minute))),
		},
		d:         deltaOf(bucket{now, b}),
		limits:    []quota.Limit{minute},
		known:     true,
		remaining: true,
		want: usageStatus{
			Usage:         []llmv1alpha1.WindowUsage{entry(llmv1alpha1.WindowMinute, now.Add(time.Minute), a)},
			Lifetime:      &llmv1alpha1.UsageTotals{Requests: 2, InputTokens: 10, OutputTokens: 5, TotalTokens: 15},
			LastRequestAt: ptr.To(mt(now.Add(time.Minute))),
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got := fold(tc.in, tc.d, tc.limits, tc.known, tc.remaining, now)
			if !equality.Semantic.DeepEqual(got, tc.want) {
				g, _ := json.Marshal(got)
				w, _ := json.Marshal(tc.want)
				t.Errorf("fold:\n got  %s\n want %s", g, w)
			}
		})
	}
}

func TestChargeBuckets(t *testing.T) {
	clock := newClock(t0.Add(30 * time.Second))
	r := New(nil, Options{Now: clock.Now})
	a := quota.Amount{Requests: 1, InputTokens: 7, OutputTokens: 3}

	r.Charge(quota.Charge{Namespace: "ns", User: "u", Quota: "q", Amount: quota.Amount{}})
	if n := r.Pending(); n != 0 {
		t.Fatalf("a zero charge left %d pending objects", n)
	}
	r.Charge(quota.Charge{Namespace: "ns", User: "u", Quota: "q", Amount: a}) // At zero: the clock
	r.Charge(quota.Charge{Namespace: "ns", User: "u", Quota: "q", Amount: a, At: t0.Add(50 * time.Second)})
	r.Charge(quota.Charge{Namespace: "ns", User: "u", Quota: "q", Amount: a, At: t0.Add(61 * time.Second)})
	r.Charge(quota.Charge{Namespace: "ns", User: "u", Quota: "q", Amount: a, At: t0.Add(5 * time.Second)}) // out of order
	r.Charge(quota.Charge{Namespace: "ns", User: "v", Quota: "q", Pool: true, Amount: a, At: t0})
	if n := r.Pending(); n != 3 {
		t.Errorf("Pending() = %d, want 3 (u, v and the pool q)", n)
	}
	d := r.pending[objKey{kindUser, "ns", "u", ""}]
	if len(d.buckets) != 2 {
		t.Fatalf("u has %d buckets, want 2 (10:00 and 10:01): %+v", len(d.buckets), d.buckets)
	}
	if got, want := d.in(llmv1alpha1.WindowMinute, t0), (quota.Amount{Requests: 3, InputTokens: 21, OutputTokens: 9}); got != want {
		t.Errorf("u in minute 10:00 = %+v, want %+v", got, want)
	}
	if got, want := d.in(llmv1alpha1.WindowHour, t0), (quota.Amount{Requests: 4, InputTokens: 28, OutputTokens: 12}); got != want {
		t.Errorf("u in hour 10:00 = %+v, want %+v", got, want)
	}
	if !d.last.Equal(t0.Add(61 * time.Second)) {
		t.Errorf("u last = %v, want 10:01:01", d.last)
	}
	if d := r.pending[objKey{kindQuota, "ns", "q", ""}]; d == nil || d.total() != a {
		t.Errorf("pool q delta = %+v, want %+v", d, a)
	}
}

func TestCompactKeepsTotals(t *testing.T) {
	now := time.Date(2030, time.March, 2, 12, 0, 0, 0, time.UTC) // a Saturday; the week began in February
	a := quota.Amount{Requests: 1, InputTokens: 2, OutputTokens: 3}
	d := deltaOf(
		bucket{time.Date(2030, time.January, 31, 23, 0, 0, 0, time.UTC), a}, // before the week and the month
		bucket{time.Date(2030, time.February, 1, 0, 0, 0, 0, time.UTC), a},  // likewise
		bucket{time.Date(2030, time.February, 25, 0, 0, 0, 0, time.UTC), a}, // this week (Monday)
		bucket{time.Date(2030, time.March, 2, 11, 59, 0, 0, time.UTC), a},   // this minute's hour
	)
	total := d.total()
	d.compact(now)
	if len(d.buckets) != 3 {
		t.Fatalf("%d buckets after compact, want 3: %+v", len(d.buckets), d.buckets)
	}
	if d.total() != total {
		t.Errorf("total %+v after compact, want %+v", d.total(), total)
	}
	for _, w := range llmv1alpha1.Windows {
		if got, want := d.in(w, quota.WindowStart(w, now)), deltaOf(
			bucket{time.Date(2030, time.February, 25, 0, 0, 0, 0, time.UTC), a},
			bucket{time.Date(2030, time.March, 2, 11, 59, 0, 0, time.UTC), a},
		).in(w, quota.WindowStart(w, now)); got != want {
			t.Errorf("%s after compact = %+v, want %+v", w, got, want)
		}
	}
}
