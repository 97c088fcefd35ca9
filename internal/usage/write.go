package usage

import (
	"context"
	"errors"
	"slices"
	"strings"
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
		next, budget, err := r.desired(ctx, reader, obj, st.get(), last)
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
		if budget != "" && r.replica != nil && mayHaveApplied(err) {
			// Assumed applied when the answer is unknown: if it was not,
			// the next Merge finds status below what it saw and adds
			// nothing, and this counter's own totals are written again.
			r.replica.Wrote(budget, recorded(next))
			if rec := recordedOverflow(next); len(rec.Windows) > 0 {
				r.replica.Wrote(quota.OverflowKey(budget), rec)
			}
		}
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
//
// With a replica-local counter (see [quota.Replica]) it first merges what
// status records beyond what the counter has seen: another replica's usage.
// budget is the key of the counter shown, or "" when none is.
func (r *Recorder) desired(ctx context.Context, reader client.Reader, obj client.Object, cur usageStatus, last time.Time) (_ usageStatus, budget string, _ error) {
	b, limits, pricing, remaining, ok, err := r.budgetOf(ctx, reader, obj)
	if err != nil {
		return usageStatus{}, "", err
	}
	out := usageStatus{Usage: cur.Usage, Lifetime: cur.Lifetime, LastRequestAt: cur.LastRequestAt}
	if ok {
		budget = b.Key
		if r.replica != nil {
			r.replica.Merge(b.Key, recorded(cur))
		}
		ws, err := r.counter.Status(ctx, b)
		if err != nil {
			return usageStatus{}, "", err
		}
		if r.observe != nil {
			r.observe(&b, quotaNameOf(obj), ws)
		}
		// The overflow tally is read only where there can be overflow: a
		// soft limit, or overflow status already shows.
		var ows []quota.WindowStatus
		if rec := recordedOverflow(cur); b.HasSoft() || len(rec.Windows) > 0 {
			ob := quota.OverflowBudget(b)
			if r.replica != nil {
				r.replica.Merge(ob.Key, rec)
			}
			if ows, err = r.counter.Status(ctx, ob); err != nil {
				return usageStatus{}, "", err
			}
		}
		out.Usage = windows(cur.Usage, ws, ows, limits, pricing, remaining, r.now())
		lt, err := r.counter.Lifetime(ctx, b)
		if err != nil {
			return usageStatus{}, "", err
		}
		out.Lifetime = lifetime(cur.Lifetime, lt, pricing != nil)
	}
	if !last.IsZero() {
		// Status keeps whole seconds; comparing at that precision keeps a
		// later charge within the same second from rewriting the same value.
		at := last.UTC().Truncate(time.Second)
		if cur.LastRequestAt == nil || at.After(cur.LastRequestAt.Time) {
			out.LastRequestAt = &metav1.Time{Time: at}
		}
	}
	return out, budget, nil
}

// recordedOverflow is what st records of overflow, as the overflow tally
// ([quota.OverflowBudget]) counts it: the entries that show any.
func recordedOverflow(st usageStatus) quota.Recorded {
	var rec quota.Recorded
	for i := range st.Usage {
		if e := &st.Usage[i]; e.Overflow != nil {
			rec.Windows = append(rec.Windows, quota.RecordedWindow{Window: e.Window, Start: e.WindowStart.Time, Used: totalsAmount(e.Overflow)})
		}
	}
	return rec
}

// recorded is what st records, as a counter counts it.
func recorded(st usageStatus) quota.Recorded {
	var rec quota.Recorded
	for i := range st.Usage {
		e := &st.Usage[i]
		w := quota.RecordedWindow{Window: e.Window, Start: e.WindowStart.Time, Used: entryAmount(e)}
		for _, m := range e.Models {
			w.Models = append(w.Models, quota.ModelAmount{Model: m.Model, Amount: modelAmount(m)})
		}
		rec.Windows = append(rec.Windows, w)
	}
	if st.Lifetime != nil {
		lt := totalsAmount(st.Lifetime)
		rec.Lifetime = &lt
	}
	return rec
}

// mayHaveApplied reports whether a status patch that returned err may have
// been applied: it succeeded, or its answer was lost (a timeout, a broken
// connection, a server error). An answer of 4xx says it was not.
func mayHaveApplied(err error) bool {
	var st apierrors.APIStatus
	if err == nil {
		return true
	}
	if errors.As(err, &st) {
		code := st.Status().Code
		return code < 400 || code >= 500
	}
	return true
}

func quotaNameOf(obj client.Object) string {
	if u, ok := obj.(*llmv1alpha1.LLMUser); ok {
		return u.Spec.QuotaRef.Name
	}
	return obj.GetName()
}

// budgetOf returns the budget whose counters obj's status shows, the limits
// to report in spec order, the quota's pricing (nil: costs are not shown),
// and whether the entries carry what is left; ok is false for a user whose
// quota is gone (its entries are kept as they are).
func (r *Recorder) budgetOf(ctx context.Context, reader client.Reader, obj client.Object) (b quota.Budget, limits []quota.Limit, pricing *quota.Pricing, remaining, ok bool, err error) {
	switch o := obj.(type) {
	case *llmv1alpha1.LLMQuota:
		bs := quota.BudgetsFor(&llmv1alpha1.LLMUser{}, o)
		return bs[len(bs)-1], quota.LimitsFromSpec(o.Spec.Limits), quota.PricingFromSpec(o.Spec.Pricing), true, true, nil
	case *llmv1alpha1.LLMUser:
		var q llmv1alpha1.LLMQuota
		if err := reader.Get(ctx, client.ObjectKey{Namespace: o.Namespace, Name: o.Spec.QuotaRef.Name}, &q); err != nil {
			if apierrors.IsNotFound(err) {
				return quota.Budget{}, nil, nil, false, false, nil
			}
			return quota.Budget{}, nil, nil, false, false, err
		}
		// A user's share of a pool says nothing of what the pool has left.
		return quota.BudgetsFor(o, &q)[0], quota.LimitsFromSpec(q.Spec.Limits), quota.PricingFromSpec(q.Spec.Pricing),
			q.Spec.Scope != llmv1alpha1.ScopeShared, true, nil
	default:
		panic("usage: unexpected object type")
	}
}

// windows returns one entry per window of limits, in their order, with the
// counter's usage of the window current now, split by model: an entry of the
// same window keeps whatever of its counts (and of each model's) is higher,
// an entry of an ended window starts again from the counter's. ows, when
// read, are the overflow tally's windows, in the same order: entries show
// their overflow likewise. With remaining, entries carry what is left. With
// pricing, they carry the cost in its currency.
func windows(old []llmv1alpha1.WindowUsage, ws, ows []quota.WindowStatus, limits []quota.Limit, pricing *quota.Pricing, remaining bool, now time.Time) []llmv1alpha1.WindowUsage {
	if len(limits) == 0 {
		return nil
	}
	out := make([]llmv1alpha1.WindowUsage, 0, len(limits))
	for i, l := range limits {
		if !quota.ValidWindow(l.Window) || find(out, l.Window) != nil || i >= len(ws) {
			continue
		}
		start := quota.WindowStart(l.Window, now)
		used, models := ws[i].Used, ws[i].Models
		var overflow quota.Amount
		if i < len(ows) {
			overflow = ows[i].Used
		}
		if e := find(old, l.Window); e != nil {
			switch s := e.WindowStart.Time; {
			case s.Equal(start):
				used = raise(used, entryAmount(e))
				models = raiseModels(models, e.Models)
				if e.Overflow != nil {
					overflow = raise(overflow, totalsAmount(e.Overflow))
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

			CachedInputTokens: used.CachedInputTokens,
			Models:            modelUsage(models, pricing != nil),
		}
		if pricing != nil {
			w.Cost, w.Currency = quota.FormatCost(used.Cost), pricing.Currency
		}
		if !overflow.IsZero() {
			w.Overflow = &llmv1alpha1.UsageTotals{Requests: overflow.Requests, InputTokens: overflow.InputTokens,
				OutputTokens: overflow.OutputTokens, TotalTokens: overflow.Total(), CachedInputTokens: overflow.CachedInputTokens}
			if pricing != nil {
				w.Overflow.Cost = quota.FormatCost(overflow.Cost)
			}
		}
		if remaining {
			// The same arithmetic as the proxy's rate-limit headers and
			// budget gauges: the tightest token cap, and the requests cap.
			ws := quota.WindowStatus{Limit: l, Used: used}
			w.Remaining, w.RemainingRequests = ws.Remaining()
			if left, ok := ws.Left(quota.ResourceCost); ok && pricing != nil {
				w.RemainingCost = quota.FormatCost(left)
			}
		}
		out = append(out, w)
	}
	return out
}

// lifetime is the counter's lifetime, never below what status recorded. Its
// cost is shown while the quota has pricing, or once anything cost.
func lifetime(cur *llmv1alpha1.UsageTotals, c quota.Amount, priced bool) *llmv1alpha1.UsageTotals {
	if cur != nil {
		c = raise(c, totalsAmount(cur))
	}
	lt := llmv1alpha1.UsageTotals{Requests: c.Requests, InputTokens: c.InputTokens, OutputTokens: c.OutputTokens,
		TotalTokens: c.Total(), CachedInputTokens: c.CachedInputTokens}
	if priced || c.Cost > 0 {
		lt.Cost = quota.FormatCost(c.Cost)
	}
	return &lt
}

// entryAmount is what a status entry recorded. A cost that does not parse
// (status is the proxy's own, so none should) counts as zero: the counter's
// is kept.
func entryAmount(e *llmv1alpha1.WindowUsage) quota.Amount {
	cost, _ := quota.ParseCost(e.Cost)
	return quota.Amount{Requests: e.Requests, InputTokens: e.InputTokens, CachedInputTokens: e.CachedInputTokens,
		OutputTokens: e.OutputTokens, Cost: cost}
}

func totalsAmount(t *llmv1alpha1.UsageTotals) quota.Amount {
	cost, _ := quota.ParseCost(t.Cost)
	return quota.Amount{Requests: t.Requests, InputTokens: t.InputTokens, CachedInputTokens: t.CachedInputTokens,
		OutputTokens: t.OutputTokens, Cost: cost}
}

func modelAmount(m llmv1alpha1.ModelUsage) quota.Amount {
	cost, _ := quota.ParseCost(m.Cost)
	return quota.Amount{Requests: m.Requests, InputTokens: m.InputTokens, CachedInputTokens: m.CachedInputTokens,
		OutputTokens: m.OutputTokens, Cost: cost}
}

// raise returns a with each field raised to at least b's.
func raise(a, b quota.Amount) quota.Amount {
	return quota.Amount{Requests: max(a.Requests, b.Requests), InputTokens: max(a.InputTokens, b.InputTokens),
		CachedInputTokens: max(a.CachedInputTokens, b.CachedInputTokens), OutputTokens: max(a.OutputTokens, b.OutputTokens),
		Cost: max(a.Cost, b.Cost)}
}

// raiseModels raises each model's counts to at least what status recorded,
// keeping the models status has and the counter lacks (a counter that lost
// its split) while there is room for them.
func raiseModels(ms []quota.ModelAmount, recorded []llmv1alpha1.ModelUsage) []quota.ModelAmount {
	out := slices.Clone(ms)
	for _, r := range recorded {
		i := slices.IndexFunc(out, func(m quota.ModelAmount) bool { return m.Model == r.Model })
		if i >= 0 {
			out[i].Amount = raise(out[i].Amount, modelAmount(r))
			continue
		}
		named := len(out)
		if slices.ContainsFunc(out, func(m quota.ModelAmount) bool { return m.Model == quota.OtherModels }) {
			named--
		}
		if r.Model == quota.OtherModels || named < quota.MaxModels {
			out = append(out, quota.ModelAmount{Model: r.Model, Amount: modelAmount(r)})
		}
	}
	slices.SortFunc(out, func(a, b quota.ModelAmount) int {
		switch {
		case a.Model == b.Model:
			return 0
		case a.Model == quota.OtherModels:
			return 1
		case b.Model == quota.OtherModels:
			return -1
		}
		return strings.Compare(a.Model, b.Model)
	})
	return out
}

// modelUsage is the split of a window as status shows it.
func modelUsage(ms []quota.ModelAmount, priced bool) []llmv1alpha1.ModelUsage {
	if len(ms) == 0 {
		return nil
	}
	out := make([]llmv1alpha1.ModelUsage, 0, len(ms))
	for _, m := range ms {
		u := llmv1alpha1.ModelUsage{Model: m.Model, Requests: m.Requests, InputTokens: m.InputTokens,
			CachedInputTokens: m.CachedInputTokens, OutputTokens: m.OutputTokens}
		if priced {
			u.Cost = quota.FormatCost(m.Cost)
		}
		out = append(out, u)
	}
	return out
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
