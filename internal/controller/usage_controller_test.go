package controller_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/controller"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
)

// TestUsageThresholdsAndReset plays the proxy (writing usage into status)
// against the usage reconciler on a fake clock: each threshold fires one
// Event per window, QuotaExceeded flips on exhaustion and back at the exact
// reset, and status.usage is never written by the operator.
func TestUsageThresholdsAndReset(t *testing.T) {
	env := apiServer(t)
	ctx := context.Background()
	ns := envtest.NewNamespace(t, env.Client, "ctrl")
	start := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakeClock(start.Add(10 * time.Second))
	rec := events.NewFakeRecorder(100)
	r := &controller.UsageReconciler{Client: env.Client, Clock: clk, Recorder: rec}

	q := newQuota(ns, "q")
	q.Spec.Limits = []llmv1alpha1.QuotaLimit{{Window: llmv1alpha1.WindowMinute, Tokens: int64p(1000)}}
	if err := env.Client.Create(ctx, q); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(ctx, newUser(ns, "u", "q")); err != nil {
		t.Fatal(err)
	}
	req := reconcile.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "u"}}
	writeUsage := func(total int64, windowStart time.Time) {
		t.Helper()
		u := getUser(t, ns, "u")
		orig := u.DeepCopy()
		u.Status.Usage = []llmv1alpha1.WindowUsage{{
			Window: llmv1alpha1.WindowMinute, WindowStart: metav1.NewTime(windowStart), ResetAt: metav1.NewTime(windowStart.Add(time.Minute)),
			Requests: 1, InputTokens: total / 2, OutputTokens: total - total/2, TotalTokens: total,
		}}
		if err := env.Client.Status().Patch(ctx, u, client.MergeFrom(orig)); err != nil {
			t.Fatal(err)
		}
	}
	pass := func() reconcile.Result {
		t.Helper()
		res, err := r.Reconcile(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	drain := func() []string {
		var out []string
		for {
			select {
			case e := <-rec.Events:
				out = append(out, e)
			default:
				return out
			}
		}
	}

	// No usage yet: nothing to judge, nothing written.
	rv := getUser(t, ns, "u").ResourceVersion
	if res := pass(); res.RequeueAfter != 0 || getUser(t, ns, "u").ResourceVersion != rv || condition(getUser(t, ns, "u"), llmv1alpha1.ConditionQuotaExceeded) != nil {
		t.Fatalf("a user without usage: requeue %v, status written %v", res.RequeueAfter, getUser(t, ns, "u").ResourceVersion != rv)
	}

	writeUsage(500, start)
	rv = getUser(t, ns, "u").ResourceVersion
	pass()
	// Within limits and below every threshold: still nothing to say, and
	// nothing written for it.
	if c := condition(getUser(t, ns, "u"), llmv1alpha1.ConditionQuotaExceeded); c != nil || getUser(t, ns, "u").ResourceVersion != rv {
		t.Fatalf("a user within limits: QuotaExceeded %+v, status written %v", c, getUser(t, ns, "u").ResourceVersion != rv)
	}
	if ev := drain(); len(ev) != 0 {
		t.Fatalf("events below every threshold: %v", ev)
	}
	writeUsage(850, start)
	pass()
	pass() // a second pass over the same usage fires nothing more
	if ev := drain(); len(ev) != 1 || !strings.Contains(ev[0], "threshold 80%") {
		t.Fatalf("events at 85%%: %v", ev)
	}
	// 5 tokens left: not even the smallest request fits, the window is exhausted.
	writeUsage(995, start)
	res := pass()
	ev := drain()
	if len(ev) != 2 || !strings.Contains(ev[0], "threshold 95%") ||
		ev[1] != "Warning LimitReached user u: Minute window exhausted: 5 of 1000 tokens left, fewer than the 9 the smallest request needs; requests are refused until it resets at 2026-11-25T10:01:00Z" {
		t.Fatalf("events at 99.5%%: %q", ev)
	}
	u := getUser(t, ns, "u")
	if err := wantCondition(u, llmv1alpha1.ConditionQuotaExceeded, metav1.ConditionTrue, llmv1alpha1.ReasonLimitReached); err != nil {
		t.Fatal(err)
	}
	if c := condition(u, llmv1alpha1.ConditionQuotaExceeded); c.Message != "Minute window exhausted: 5 of 1000 tokens left, fewer than the 9 the smallest request needs; requests are refused until it resets at 2026-11-25T10:01:00Z" {
		t.Errorf("message %q", c.Message)
	}
	if res.RequeueAfter != 50*time.Second {
		t.Errorf("requeue after %v, want the 50s left until the reset", res.RequeueAfter)
	}

	// At the reset the condition clears, with no event. The usage stays as
	// the proxy wrote it: the proxy alone writes usage (and starts the new
	// window at zero when it next writes).
	written := u.Status.Usage
	clk.Step(res.RequeueAfter)
	res = pass()
	u = getUser(t, ns, "u")
	if err := wantCondition(u, llmv1alpha1.ConditionQuotaExceeded, metav1.ConditionFalse, llmv1alpha1.ReasonWithinLimits); err != nil {
		t.Fatal(err)
	}
	if !equality.Semantic.DeepEqual(u.Status.Usage, written) || u.Status.Usage[0].TotalTokens != 995 {
		t.Errorf("the operator rewrote status.usage: %+v", u.Status.Usage)
	}
	if res.RequeueAfter != 0 {
		t.Errorf("an idle user must not be requeued, got %v", res.RequeueAfter)
	}
	if ev := drain(); len(ev) != 0 {
		t.Fatalf("events at reset: %v", ev)
	}

	// In the new window the thresholds fire again, once.
	writeUsage(900, start.Add(time.Minute))
	pass()
	pass()
	if ev := drain(); len(ev) != 1 || !strings.Contains(ev[0], "threshold 80%") {
		t.Fatalf("events in the new window: %v", ev)
	}
}
