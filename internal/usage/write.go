package usage

import (
	"context"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
)

// write folds d into the status of the object k names, retrying from a fresh
// read after a conflict. The merge patch carries the resourceVersion it was
// computed from, so d lands exactly once or not at all; and it names only the
// fields the proxy owns (usage, lifetime, lastRequestAt), so a concurrent
// writer's conditions or token survive.
func (r *Recorder) write(ctx context.Context, k objKey, d *delta, lookup *quotaLookup) (outcome, error) {
	var reader client.Reader = r.client
	for attempt := 1; ; attempt++ {
		obj := k.newObject()
		if err := reader.Get(ctx, k.namespacedName(), obj); err != nil {
			if apierrors.IsNotFound(err) {
				r.metrics.write(k.kind, resultDropped)
				r.log.Info("Usage of a deleted object not written", "kind", k.kind.String(), "namespace", k.namespace, "name", k.name, "uid", k.uid, "amount", d.total())
				return dropped, nil
			}
			r.metrics.write(k.kind, resultError)
			return failed, err
		}
		if k.uid != "" && string(obj.GetUID()) != k.uid {
			r.metrics.write(k.kind, resultOrphaned)
			r.log.Info("Usage of a deleted object not written to the object that took its name", "kind", k.kind.String(),
				"namespace", k.namespace, "name", k.name, "uid", k.uid, "newUID", string(obj.GetUID()), "amount", d.total())
			return dropped, nil
		}
		limits, known, remaining, err := r.limitsFor(ctx, obj, d, lookup)
		if err != nil {
			r.metrics.write(k.kind, resultError)
			return failed, err
		}
		orig := obj.DeepCopyObject().(client.Object)
		s := statusOf(obj)
		s.set(fold(s.get(), d, limits, known, remaining, r.now()))

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
			reader = r.reader
		case apierrors.IsNotFound(err):
			r.metrics.write(k.kind, resultDropped)
			r.log.Info("Usage of a deleted object not written", "kind", k.kind.String(), "namespace", k.namespace, "name", k.name, "uid", k.uid, "amount", d.total())
			return dropped, nil
		default:
			r.metrics.write(k.kind, resultError)
			return failed, err
		}
	}
}

// limitsFor returns the windows to report for obj, whether they are known at
// all (a user whose quota is gone keeps the entries it has), and whether the
// entries carry the remaining budget.
func (r *Recorder) limitsFor(ctx context.Context, obj client.Object, d *delta, lookup *quotaLookup) (limits []quota.Limit, known, remaining bool, err error) {
	switch o := obj.(type) {
	case *llmv1alpha1.LLMQuota:
		return quota.LimitsFromSpec(o.Spec.Limits), true, true, nil
	case *llmv1alpha1.LLMUser:
		name := o.Spec.QuotaRef.Name
		// A user's share of a pool says nothing of what the pool has left.
		remaining = !d.shared
		if r.limits != nil {
			if l, ok := r.limits(o.Namespace, name); ok {
				return l, true, remaining, nil
			}
		}
		l, known, err := lookup.get(ctx, types.NamespacedName{Namespace: o.Namespace, Name: name})
		return l, known, remaining, err
	default:
		panic("usage: unexpected object type")
	}
}

// quotaLookup reads each quota a flush needs once, however many of its users
// are written.
type quotaLookup struct {
	reader client.Reader

	mu      sync.Mutex
	entries map[types.NamespacedName]*quotaEntry
}

type quotaEntry struct {
	once   sync.Once
	limits []quota.Limit
	found  bool
	err    error
}

func (l *quotaLookup) get(ctx context.Context, key types.NamespacedName) ([]quota.Limit, bool, error) {
	l.mu.Lock()
	e := l.entries[key]
	if e == nil {
		e = &quotaEntry{}
		l.entries[key] = e
	}
	l.mu.Unlock()
	e.once.Do(func() {
		var q llmv1alpha1.LLMQuota
		switch err := l.reader.Get(ctx, key, &q); {
		case err == nil:
			e.limits, e.found = quota.LimitsFromSpec(q.Spec.Limits), true
		case !apierrors.IsNotFound(err):
			e.err = err
		}
	})
	return e.limits, e.found, e.err
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

// fold returns s with d added as of now. Lifetime grows by all of d and
// lastRequestAt moves to d's latest charge if that is later. When known, the
// entries become one per window of limits, in their order: an entry of the
// window current now keeps its counts and adds the part of d charged in that
// window; an entry of an ended window starts again from that part alone;
// entries of windows no longer limited go. When not known, the entries are
// kept as they are. With remaining, entries carry what is left of the limits.
func fold(s usageStatus, d *delta, limits []quota.Limit, known, remaining bool, now time.Time) usageStatus {
	out := usageStatus{Usage: s.Usage, LastRequestAt: s.LastRequestAt}
	if known {
		out.Usage = windows(s.Usage, d, limits, remaining, now)
	}
	var lt llmv1alpha1.UsageTotals
	if s.Lifetime != nil {
		lt = *s.Lifetime
	}
	t := d.total()
	lt.Requests += t.Requests
	lt.InputTokens += t.InputTokens
	lt.OutputTokens += t.OutputTokens
	lt.TotalTokens = lt.InputTokens + lt.OutputTokens
	out.Lifetime = &lt
	if !d.last.IsZero() {
		// Status keeps whole seconds; comparing at that precision keeps a
		// later charge within the same second from rewriting the same value.
		last := d.last.UTC().Truncate(time.Second)
		if s.LastRequestAt == nil || last.After(s.LastRequestAt.Time) {
			out.LastRequestAt = &metav1.Time{Time: last}
		}
	}
	return out
}

func windows(old []llmv1alpha1.WindowUsage, d *delta, limits []quota.Limit, remaining bool, now time.Time) []llmv1alpha1.WindowUsage {
	if len(limits) == 0 {
		return nil
	}
	out := make([]llmv1alpha1.WindowUsage, 0, len(limits))
	for _, l := range limits {
		if !quota.ValidWindow(l.Window) || find(out, l.Window) != nil {
			continue
		}
		start := quota.WindowStart(l.Window, now)
		var used quota.Amount
		if e := find(old, l.Window); e != nil {
			switch s := e.WindowStart.Time; {
			case s.Equal(start):
				used = quota.Amount{Requests: e.Requests, InputTokens: e.InputTokens, OutputTokens: e.OutputTokens}
			case s.After(start):
				// A replica whose clock runs ahead has already begun the next
				// window: going back would lose its counts. What this replica
				// charged to the window it still sees counts in lifetime only.
				out = append(out, *e.DeepCopy())
				continue
			}
		}
		used = used.Add(d.in(l.Window, start))
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

func find(entries []llmv1alpha1.WindowUsage, w llmv1alpha1.Window) *llmv1alpha1.WindowUsage {
	for i := range entries {
		if entries[i].Window == w {
			return &entries[i]
		}
	}
	return nil
}
