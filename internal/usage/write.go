package usage

import (
	"context"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
)

// write makes k's status show what the counters hold, retrying from a fresh
// read after a conflict. The merge patch carries the resourceVersion it was
// computed from and names only the fields the proxy owns (usage, lifetime,
// lastRequestAt), so a concurrent writer's conditions or token survive; the
// values are absolute, so a write applied twice is applied once. last is
// the latest charge's time, for lastRequestAt.
func (r *Recorder) write(ctx context.Context, k objKey, last time.Time) (outcome, error) {
	reader := r.reader
	for attempt := 1; ; attempt++ {
		obj := k.newObject()
		if err := reader.Get(ctx, k.namespacedName(), obj); err != nil {
			if apierrors.IsNotFound(err) {
				r.gone(k, resultDropped, "")
				return dropped, nil
			}
			r.metrics.write(k.kind, resultError)
			return failed, err
		}
		if k.uid != "" && string(obj.GetUID()) != k.uid {
			r.gone(k, resultOrphaned, string(obj.GetUID()))
			return dropped, nil
		}
		orig := obj.DeepCopyObject().(client.Object)
		st := statusOf(obj)
		next, err := r.desired(ctx, reader, obj, st.get(), last)
		if err != nil {
			r.metrics.write(k.kind, resultError)
			return failed, err
		}
		if equality.Semantic.DeepEqual(next, st.get()) {
			r.metrics.write(k.kind, resultUnchanged)
			return written, nil
		}
		st.set(next)
		err = r.client.Status().Patch(ctx, obj,
			client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{}),
			client.FieldOwner(r.fieldOwner))
		switch {
		case err == nil:
			r.metrics.write(k.kind, resultSuccess)
			return written, nil
		case apierrors.IsConflict(err):
			r.metrics.write(k.kind, resultConflict)
			if attempt == maxAttempts {
				return failed, err
			}
			reader = r.apiReader
		case apierrors.IsNotFound(err):
			r.gone(k, resultDropped, "")
			return dropped, nil
		default:
			r.metrics.write(k.kind, resultError)
			return failed, err
		}
	}
}

// gone records usage that no status will show: its object was deleted, or
// deleted and created again (newUID) since it was charged.
func (r *Recorder) gone(k objKey, result, newUID string) {
	r.metrics.write(k.kind, result)
	kv := []any{"kind", k.kind.String(), "namespace", k.namespace, "name", k.name, "uid", k.uid}
	if newUID != "" {
		kv = append(kv, "newUID", newUID)
		r.log.Info("Usage of a deleted object not written to the object that took its name", kv...)
		return
	}
	r.log.Info("Usage of a deleted object not written", kv...)
}

// desired is the status obj should have: the windows of its budget as the
// counter has them, what is left of them, the lifetime and the latest
// request. A value is never lowered within a window: the counters are
// seeded from status, and a counter that lost its counts (Redis restarted
// empty, not yet seeded) must not erase what status recorded.
func (r *Recorder) desired(ctx context.Context, reader client.Reader, obj client.Object, cur usageStatus, last time.Time) (usageStatus, error) {
	b, limits, remaining, ok, err := r.budgetOf(ctx, reader, obj)
	if err != nil {
		return usageStatus{}, err
	}
	out := usageStatus{Usage: cur.Usage, Lifetime: cur.Lifetime, LastRequestAt: cur.LastRequestAt}
	if ok {
		ws, err := r.counter.Status(ctx, b)
		if err != nil {
			return usageStatus{}, err
		}
		if r.observe != nil {
			r.observe(&b, quotaNameOf(obj), ws)
		}
		out.Usage = windows(cur.Usage, ws, limits, remaining, r.now())
		lt, err := r.counter.Lifetime(ctx, b.Key)
		if err != nil {
			return usageStatus{}, err
		}
		out.Lifetime = lifetime(cur.Lifetime, lt)
	}
	if !last.IsZero() {
		// Status keeps whole seconds; comparing at that precision keeps a
		// later charge within the same second from rewriting the same value.
		at := last.UTC().Truncate(time.Second)
		if cur.LastRequestAt == nil || at.After(cur.LastRequestAt.Time) {
			out.LastRequestAt = &metav1.Time{Time: at}
		}
	}
	return out, nil
}

func quotaNameOf(obj client.Object) string {
	if u, ok := obj.(*llmv1alpha1.LLMUser); ok {
		return u.Spec.QuotaRef.Name
	}
	return obj.GetName()
}

// budgetOf returns the budget whose counters obj's status shows, the limits
// to report in spec order, and whether the entries carry what is left; ok is
// false for a user whose quota is gone (its entries are kept as they are).
func (r *Recorder) budgetOf(ctx context.Context, reader client.Reader, obj client.Object) (b quota.Budget, limits []quota.Limit, remaining, ok bool, err error) {
	switch o := obj.(type) {
	case *llmv1alpha1.LLMQuota:
		bs := quota.BudgetsFor(&llmv1alpha1.LLMUser{}, o)
		return bs[len(bs)-1], quota.LimitsFromSpec(o.Spec.Limits), true, true, nil
	case *llmv1alpha1.LLMUser:
		var q llmv1alpha1.LLMQuota
		if err := reader.Get(ctx, client.ObjectKey{Namespace: o.Namespace, Name: o.Spec.QuotaRef.Name}, &q); err != nil {
			if apierrors.IsNotFound(err) {
				return quota.Budget{}, nil, false, false, nil
			}
			return quota.Budget{}, nil, false, false, err
		}
		// A user's share of a pool says nothing of what the pool has left.
		return quota.BudgetsFor(o, &q)[0], quota.LimitsFromSpec(q.Spec.Limits), q.Spec.Scope != llmv1alpha1.ScopeShared, true, nil
	default:
		panic("usage: unexpected object type")
	}
}

// windows returns one entry per window of limits, in their order, with the
// counter's usage of the window current now: an entry of the same window
// keeps whatever of its counts is higher, an entry of an ended window starts
// again from the counter's. With remaining, entries carry what is left.
func windows(old []llmv1alpha1.WindowUsage, ws []quota.WindowStatus, limits []quota.Limit, remaining bool, now time.Time) []llmv1alpha1.WindowUsage {
	if len(limits) == 0 {
		return nil
	}
	out := make([]llmv1alpha1.WindowUsage, 0, len(limits))
	for i, l := range limits {
		if !quota.ValidWindow(l.Window) || find(out, l.Window) != nil || i >= len(ws) {
			continue
		}
		start := quota.WindowStart(l.Window, now)
		used := ws[i].Used
		if e := find(old, l.Window); e != nil {
			switch s := e.WindowStart.Time; {
			case s.Equal(start):
				used = quota.Amount{
					Requests:     max(used.Requests, e.Requests),
					InputTokens:  max(used.InputTokens, e.InputTokens),
					OutputTokens: max(used.OutputTokens, e.OutputTokens),
				}
			case s.After(start):
				// A replica whose clock runs ahead has already begun the next
				// window: going back would lose its counts.
				out = append(out, *e.DeepCopy())
				continue
			}
		}
		w := llmv1alpha1.WindowUsage{
			Window:       l.Window,
			WindowStart:  metav1.NewTime(start),
			ResetAt:      metav1.NewTime(quota.WindowEnd(l.Window, now)),
			Requests:     used.Requests,
			InputTokens:  used.InputTokens,
			OutputTokens: used.OutputTokens,
			TotalTokens:  used.Total(),
		}
		if remaining {
			// The same arithmetic as the proxy's rate-limit headers and
			// budget gauges: the tightest token cap, and the requests cap.
			w.Remaining, w.RemainingRequests = quota.WindowStatus{Limit: l, Used: used}.Remaining()
		}
		out = append(out, w)
	}
	return out
}

// lifetime is the counter's lifetime, never below what status recorded.
func lifetime(cur *llmv1alpha1.UsageTotals, c quota.Amount) *llmv1alpha1.UsageTotals {
	lt := llmv1alpha1.UsageTotals{Requests: c.Requests, InputTokens: c.InputTokens, OutputTokens: c.OutputTokens}
	if cur != nil {
		lt.Requests = max(lt.Requests, cur.Requests)
		lt.InputTokens = max(lt.InputTokens, cur.InputTokens)
		lt.OutputTokens = max(lt.OutputTokens, cur.OutputTokens)
	}
	lt.TotalTokens = lt.InputTokens + lt.OutputTokens
	return &lt
}

func find(entries []llmv1alpha1.WindowUsage, w llmv1alpha1.Window) *llmv1alpha1.WindowUsage {
	for i := range entries {
		if entries[i].Window == w {
			return &entries[i]
		}
	}
	return nil
}

// usageStatus is the part of an LLMUser's or LLMQuota's status the proxy owns.
type usageStatus struct {
	Usage         []llmv1alpha1.WindowUsage
	Lifetime      *llmv1alpha1.UsageTotals
	LastRequestAt *metav1.Time
}

// statusFields points into one object's status.
type statusFields struct {
	usage    *[]llmv1alpha1.WindowUsage
	lifetime **llmv1alpha1.UsageTotals
	last     **metav1.Time
}

func statusOf(obj client.Object) statusFields {
	switch o := obj.(type) {
	case *llmv1alpha1.LLMUser:
		return statusFields{&o.Status.Usage, &o.Status.Lifetime, &o.Status.LastRequestAt}
	case *llmv1alpha1.LLMQuota:
		return statusFields{&o.Status.Usage, &o.Status.Lifetime, &o.Status.LastRequestAt}
	default:
		panic("usage: unexpected object type")
	}
}

func (f statusFields) get() usageStatus {
	return usageStatus{Usage: *f.usage, Lifetime: *f.lifetime, LastRequestAt: *f.last}
}

func (f statusFields) set(s usageStatus) {
	*f.usage, *f.lifetime, *f.last = s.Usage, s.Lifetime, s.LastRequestAt
}

// stale returns the objects whose status shows a window that has ended with
// usage in it: their entries must start again from zero.
func (r *Recorder) stale(ctx context.Context, now time.Time) []objKey {
	var out []objKey
	var users llmv1alpha1.LLMUserList
	if err := r.reader.List(ctx, &users, client.UnsafeDisableDeepCopy); err == nil {
		for i := range users.Items {
			u := &users.Items[i]
			if ended(u.Status.Usage, now) {
				out = append(out, objKey{kindUser, u.Namespace, u.Name, string(u.UID)})
			}
		}
	}
	var quotas llmv1alpha1.LLMQuotaList
	if err := r.reader.List(ctx, &quotas, client.UnsafeDisableDeepCopy); err == nil {
		for i := range quotas.Items {
			q := &quotas.Items[i]
			if q.Spec.Scope == llmv1alpha1.ScopeShared && ended(q.Status.Usage, now) {
				out = append(out, objKey{kindQuota, q.Namespace, q.Name, string(q.UID)})
			}
		}
	}
	return out
}

// ended reports whether an entry shows usage in a window that has ended.
func ended(entries []llmv1alpha1.WindowUsage, now time.Time) bool {
	for _, e := range entries {
		if !now.Before(e.ResetAt.Time) && (e.Requests > 0 || e.TotalTokens > 0) {
			return true
		}
	}
	return false
}
