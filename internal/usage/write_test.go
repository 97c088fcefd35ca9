package usage

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/utils/ptr"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
)

var t0 = time.Date(2030, time.January, 7, 10, 0, 0, 0, time.UTC) // a Monday

func mt(t time.Time) metav1.Time { return metav1.NewTime(t) }

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

// TestWindows is the status an object gets from what the counters hold:
// expected entries are written out by hand.
func TestWindows(t *testing.T) {
	now := t0.Add(90 * time.Second) // 10:01:30
	minute := quota.Limit{Window: llmv1alpha1.WindowMinute, Tokens: ptr.To[int64](1000), Requests: ptr.To[int64](10)}
	day := quota.Limit{Window: llmv1alpha1.WindowDay, OutputTokens: ptr.To[int64](500)}
	a := quota.Amount{Requests: 2, InputTokens: 100, OutputTokens: 50}
	b := quota.Amount{Requests: 1, InputTokens: 10, OutputTokens: 5}
	counted := func(l quota.Limit, used quota.Amount) quota.WindowStatus {
		return quota.WindowStatus{Limit: l, Used: used}
	}
	for _, tc := range []struct {
		name      string
		old       []llmv1alpha1.WindowUsage
		ws        []quota.WindowStatus
		limits    []quota.Limit
		remaining bool
		want      []llmv1alpha1.WindowUsage
	}{
		{
			name: "from nothing, with what is left", ws: []quota.WindowStatus{counted(minute, a), counted(day, a)},
			limits: []quota.Limit{minute, day}, remaining: true,
			want: []llmv1alpha1.WindowUsage{
				withRemaining(entry(llmv1alpha1.WindowMinute, now, a), ptr.To[int64](850), ptr.To[int64](8)),
				withRemaining(entry(llmv1alpha1.WindowDay, now, a), ptr.To[int64](450), nil),
			},
		},
		{
			name: "a share of a pool carries nothing left", ws: []quota.WindowStatus{counted(minute, a)},
			limits: []quota.Limit{minute},
			want:   []llmv1alpha1.WindowUsage{entry(llmv1alpha1.WindowMinute, now, a)},
		},
		{
			name: "the same window never goes down", old: []llmv1alpha1.WindowUsage{entry(llmv1alpha1.WindowDay, now, a)},
			ws: []quota.WindowStatus{counted(day, b)}, limits: []quota.Limit{day},
			want: []llmv1alpha1.WindowUsage{entry(llmv1alpha1.WindowDay, now, a)},
		},
		{
			name: "the same window goes up", old: []llmv1alpha1.WindowUsage{entry(llmv1alpha1.WindowDay, now, b)},
			ws: []quota.WindowStatus{counted(day, a.Add(b))}, limits: []quota.Limit{day},
			want: []llmv1alpha1.WindowUsage{entry(llmv1alpha1.WindowDay, now, a.Add(b))},
		},
		{
			name: "an ended window starts again from the counter's", old: []llmv1alpha1.WindowUsage{entry(llmv1alpha1.WindowMinute, t0, a)},
			ws: []quota.WindowStatus{counted(minute, b)}, limits: []quota.Limit{minute},
			want: []llmv1alpha1.WindowUsage{entry(llmv1alpha1.WindowMinute, now, b)},
		},
		{
			name: "a window ahead (another replica's clock) is kept", old: []llmv1alpha1.WindowUsage{entry(llmv1alpha1.WindowMinute, now.Add(time.Minute), a)},
			ws: []quota.WindowStatus{counted(minute, b)}, limits: []quota.Limit{minute},
			want: []llmv1alpha1.WindowUsage{entry(llmv1alpha1.WindowMinute, now.Add(time.Minute), a)},
		},
		{
			name: "a window no longer limited goes", old: []llmv1alpha1.WindowUsage{entry(llmv1alpha1.WindowMinute, now, a), entry(llmv1alpha1.WindowDay, now, a)},
			ws: []quota.WindowStatus{counted(day, a)}, limits: []quota.Limit{day},
			want: []llmv1alpha1.WindowUsage{entry(llmv1alpha1.WindowDay, now, a)},
		},
		{name: "no limits, no windows", old: []llmv1alpha1.WindowUsage{entry(llmv1alpha1.WindowDay, now, a)}},
	} {
		got := windows(tc.old, tc.ws, nil, tc.limits, nil, tc.remaining, now)
		if !equality.Semantic.DeepEqual(got, tc.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tc.name, got, tc.want)
		}
	}
}

// TestWindowsPriced is a priced window split by model, as status shows it:
// cost and what is left of the cost budget in currency units, cached input
// tokens, and each model's share never below what status recorded.
func TestWindowsPriced(t *testing.T) {
	now := t0.Add(90 * time.Second)
	pricing := &quota.Pricing{Currency: "EUR"}
	// 3.5 EUR budget; 1.25 EUR used.
	day := quota.Limit{Window: llmv1alpha1.WindowDay, Cost: ptr.To[int64](3_500_000_000_000)}
	used := quota.Amount{Requests: 3, InputTokens: 300, CachedInputTokens: 100, OutputTokens: 30, Cost: 1_250_000_000_000}
	ws := []quota.WindowStatus{{Limit: day, Used: used, Models: []quota.ModelAmount{
		{Model: "org/a", Amount: quota.Amount{Requests: 2, InputTokens: 200, CachedInputTokens: 100, OutputTokens: 20, Cost: 1_000_000_000_000}},
		{Model: "org/b", Amount: quota.Amount{Requests: 1, InputTokens: 100, OutputTokens: 10, Cost: 250_000_000_000}},
	}}}
	old := entry(llmv1alpha1.WindowDay, now, quota.Amount{Requests: 1, InputTokens: 50, OutputTokens: 5})
	// A model that a counter which lost its split no longer has, and one
	// whose recorded count is higher than the counter's.
	old.Models = []llmv1alpha1.ModelUsage{
		{Model: "org/b", Requests: 1, InputTokens: 120, OutputTokens: 10, Cost: "0.3"},
		{Model: "org/c", Requests: 1, InputTokens: 7, OutputTokens: 1, Cost: "0.000005"},
	}
	got := windows([]llmv1alpha1.WindowUsage{old}, ws, nil, []quota.Limit{day}, pricing, true, now)
	want := []llmv1alpha1.WindowUsage{{
		Window: llmv1alpha1.WindowDay, WindowStart: mt(t0.Truncate(24 * time.Hour)), ResetAt: mt(t0.Truncate(24 * time.Hour).Add(24 * time.Hour)),
		Requests: 3, InputTokens: 300, CachedInputTokens: 100, OutputTokens: 30, TotalTokens: 330,
		Cost: "1.25", Currency: "EUR", RemainingCost: "2.25",
		Models: []llmv1alpha1.ModelUsage{
			{Model: "org/a", Requests: 2, InputTokens: 200, CachedInputTokens: 100, OutputTokens: 20, Cost: "1"},
			{Model: "org/b", Requests: 1, InputTokens: 120, OutputTokens: 10, Cost: "0.3"},
			{Model: "org/c", Requests: 1, InputTokens: 7, OutputTokens: 1, Cost: "0.000005"},
		},
	}}
	if !equality.Semantic.DeepEqual(got, want) {
		t.Errorf("\n got %+v\nwant %+v", got, want)
	}
	// Without pricing, no cost, currency or model costs.
	got = windows(nil, ws, nil, []quota.Limit{day}, nil, true, now)
	if got[0].Cost != "" || got[0].Currency != "" || got[0].RemainingCost != "" || got[0].Models[0].Cost != "" {
		t.Errorf("unpriced window shows cost: %+v", got[0])
	}
}

// TestWindowsOverflow: the overflow tally shows apart in each entry of a
// window with any, never below what status recorded for the same window,
// and not at all in a window without overflow.
func TestWindowsOverflow(t *testing.T) {
	now := t0.Add(90 * time.Second)
	day := quota.Limit{Window: llmv1alpha1.WindowDay, Tokens: ptr.To[int64](1000), Soft: true}
	hour := quota.Limit{Window: llmv1alpha1.WindowHour, Requests: ptr.To[int64](50)}
	ws := []quota.WindowStatus{
		{Limit: day, Used: quota.Amount{Requests: 9, InputTokens: 900, OutputTokens: 300}},
		{Limit: hour, Used: quota.Amount{Requests: 4, InputTokens: 400, OutputTokens: 100}},
	}
	ows := []quota.WindowStatus{
		{Limit: quota.Limit{Window: llmv1alpha1.WindowDay}, Used: quota.Amount{Requests: 2, InputTokens: 150, OutputTokens: 40}},
		{Limit: quota.Limit{Window: llmv1alpha1.WindowHour}},
	}
	old := entry(llmv1alpha1.WindowDay, now, quota.Amount{Requests: 8, InputTokens: 800, OutputTokens: 250})
	// Another replica recorded more output overflow than this counter has.
	old.Overflow = &llmv1alpha1.UsageTotals{Requests: 1, InputTokens: 100, OutputTokens: 70, TotalTokens: 170}
	got := windows([]llmv1alpha1.WindowUsage{old}, ws, ows, []quota.Limit{day, hour}, nil, false, now)
	if len(got) != 2 {
		t.Fatalf("%d entries, want 2", len(got))
	}
	want := llmv1alpha1.UsageTotals{Requests: 2, InputTokens: 150, OutputTokens: 70, TotalTokens: 220}
	if got[0].Overflow == nil || *got[0].Overflow != want {
		t.Errorf("day overflow = %+v, want %+v", got[0].Overflow, want)
	}
	if got[0].TotalTokens != 1200 {
		t.Errorf("day total = %d, want 1200 (overflow is counted in the totals too)", got[0].TotalTokens)
	}
	if got[1].Overflow != nil {
		t.Errorf("hour overflow = %+v, want none", got[1].Overflow)
	}
}

func TestLifetime(t *testing.T) {
	for _, tc := range []struct {
		cur     *llmv1alpha1.UsageTotals
		counter quota.Amount
		want    llmv1alpha1.UsageTotals
	}{
		{nil, quota.Amount{Requests: 2, InputTokens: 10, OutputTokens: 5}, llmv1alpha1.UsageTotals{Requests: 2, InputTokens: 10, OutputTokens: 5, TotalTokens: 15}},
		{&llmv1alpha1.UsageTotals{Requests: 3, InputTokens: 4, OutputTokens: 9, TotalTokens: 13}, quota.Amount{Requests: 2, InputTokens: 10, OutputTokens: 5},
			llmv1alpha1.UsageTotals{Requests: 3, InputTokens: 10, OutputTokens: 9, TotalTokens: 19}},
	} {
		if got := lifetime(tc.cur, tc.counter, false); *got != tc.want {
			t.Errorf("lifetime(%+v, %+v) = %+v, want %+v", tc.cur, tc.counter, *got, tc.want)
		}
	}
}

func TestEnded(t *testing.T) {
	now := t0.Add(90 * time.Second)
	a := quota.Amount{Requests: 1, InputTokens: 1}
	for _, tc := range []struct {
		name    string
		entries []llmv1alpha1.WindowUsage
		want    bool
	}{
		{"current", []llmv1alpha1.WindowUsage{entry(llmv1alpha1.WindowMinute, now, a)}, false},
		{"ended with usage", []llmv1alpha1.WindowUsage{entry(llmv1alpha1.WindowMinute, t0, a)}, true},
		{"ended empty", []llmv1alpha1.WindowUsage{entry(llmv1alpha1.WindowMinute, t0, quota.Amount{})}, false},
		{"none", nil, false},
	} {
		if got := ended(tc.entries, now); got != tc.want {
			t.Errorf("%s: ended = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestLifetimeCost(t *testing.T) {
	got := lifetime(&llmv1alpha1.UsageTotals{Requests: 9, Cost: "12.5", CachedInputTokens: 40},
		quota.Amount{Requests: 10, InputTokens: 100, CachedInputTokens: 30, OutputTokens: 1, Cost: 12_000_000_000_000}, true)
	want := llmv1alpha1.UsageTotals{Requests: 10, InputTokens: 100, CachedInputTokens: 40, OutputTokens: 1, TotalTokens: 101, Cost: "12.5"}
	if *got != want {
		t.Errorf("lifetime = %+v, want %+v", *got, want)
	}
	if got := lifetime(nil, quota.Amount{Requests: 1}, true); got.Cost != "0" {
		t.Errorf("a priced lifetime that cost nothing shows cost %q, want 0", got.Cost)
	}
	if got := lifetime(nil, quota.Amount{Requests: 1}, false); got.Cost != "" {
		t.Errorf("an unpriced lifetime shows cost %q", got.Cost)
	}
}

// TestRaiseModelsKeepsTheBound: models status recorded and the counter
// lacks are kept only while fewer than 10 are named; "other" always is.
func TestRaiseModelsKeepsTheBound(t *testing.T) {
	var counted []quota.ModelAmount
	for i := range quota.MaxModels {
		counted = append(counted, quota.ModelAmount{Model: fmt.Sprintf("m%02d", i), Amount: quota.Amount{Requests: 1}})
	}
	got := raiseModels(counted, []llmv1alpha1.ModelUsage{{Model: "a-late", Requests: 4}, {Model: quota.OtherModels, Requests: 2}})
	if len(got) != 11 || got[10].Model != quota.OtherModels || got[10].Requests != 2 || slices.ContainsFunc(got, func(m quota.ModelAmount) bool { return m.Model == "a-late" }) {
		t.Errorf("raiseModels = %+v, want the 10 counted models and other, without a-late", got)
	}
}

// TestMayHaveApplied: a patch whose answer was lost or failed on the
// server may have been applied; one refused with a 4xx was not.
func TestMayHaveApplied(t *testing.T) {
	gr := schema.GroupResource{Group: "llm.userops.dev", Resource: "llmusers"}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"success", nil, true},
		{"conflict", apierrors.NewConflict(gr, "u", errors.New("changed")), false},
		{"invalid", apierrors.NewBadRequest("bad"), false},
		{"not found", apierrors.NewNotFound(gr, "u"), false},
		{"server timeout", apierrors.NewTimeoutError("slow", 1), true},
		{"internal error", apierrors.NewInternalError(errors.New("etcd")), true},
		{"connection reset", fmt.Errorf("patch: %w", io.ErrUnexpectedEOF), true},
	} {
		if got := mayHaveApplied(tc.err); got != tc.want {
			t.Errorf("%s: mayHaveApplied = %v, want %v", tc.name, got, tc.want)
		}
	}
}
