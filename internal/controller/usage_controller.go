package controller

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
)

// UsageReconciler turns the usage the proxy writes into what an admin acts
// on: an Event the first time each alert threshold is crossed in a window,
// and the QuotaExceeded condition (true with what is left, the window and
// its reset time, false again after the reset, scheduled for that exact
// moment). It handles LLMUsers and, for Shared quotas, the pooled usage in
// LLMQuota status.
//
// It reads status.usage, status.lifetime and status.lastRequestAt and never
// writes them: the proxy is their one writer (it also starts a new window at
// zero), so no two writers race on a counter. It writes status.alerts and
// the QuotaExceeded condition.
type UsageReconciler struct {
	Client   client.Client
	Clock    clock.Clock
	Recorder events.EventRecorder
}

// usageView is the part of a status this reconciler reads (usage) and writes
// (alerts, conditions).
type usageView struct {
	usage      []llmv1alpha1.WindowUsage
	alerts     *[]llmv1alpha1.AlertStatus
	conditions *[]metav1.Condition
}

// judgeUsage updates the view and returns when to look again (zero: no deadline).
func (r *UsageReconciler) judgeUsage(obj client.Object, v usageView, spec *llmv1alpha1.LLMQuotaSpec, what string) time.Time {
	now := r.Clock.Now()
	states := judge(v.usage, spec.Limits, now)
	thresholds := spec.AlertThresholds
	if thresholds == nil {
		thresholds = []int32{80, 95}
	}
	fired, keep := newAlerts(states, thresholds, *v.alerts)
	*v.alerts = keep
	for _, a := range fired {
		if a.Threshold >= 100 && a.State.Exhausted != nil {
			r.Recorder.Eventf(obj, nil, corev1.EventTypeWarning, llmv1alpha1.ReasonLimitReached, "Alert", "%s: %s", what, exhaustedMessage(a.State))
			continue
		}
		r.Recorder.Eventf(obj, nil, corev1.EventTypeNormal, llmv1alpha1.ReasonThresholdCrossed, "Alert", "%s used %d%% of its %s %s limit (%s of %s; threshold %d%%); resets at %s",
			what, a.State.Percent, a.State.Window, a.State.Top.Resource, a.State.Top.show(a.State.Top.Used), a.State.Top.show(a.State.Top.Limit), a.Threshold,
			a.State.ResetAt.UTC().Format(time.RFC3339))
	}
	cond, _ := exceededCondition(states, obj.GetGeneration(), now)
	prev := meta.FindStatusCondition(*v.conditions, cond.Type)
	// The condition appears the first time a window is exhausted: until
	// then there is nothing to say, and saying it would cost a status write
	// for every user who starts using the proxy (10,000 writes competing
	// with the proxy's own for 10,000 new users).
	if prev == nil && cond.Status == metav1.ConditionFalse {
		return nextDeadline(v.usage, now)
	}
	if prev == nil || prev.Status != cond.Status || prev.Message != cond.Message {
		meta.SetStatusCondition(v.conditions, cond)
	}
	return nextDeadline(v.usage, now)
}

// Reconcile handles one LLMUser; requests for Shared quotas are told apart by the quota prefix.
func (r *UsageReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	user := &llmv1alpha1.LLMUser{}
	if err := r.Client.Get(ctx, req.NamespacedName, user); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	q := &llmv1alpha1.LLMQuota{}
	if err := r.Client.Get(ctx, types.NamespacedName{Namespace: user.Namespace, Name: user.Spec.QuotaRef.Name}, q); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	orig := user.DeepCopy()
	next := r.judgeUsage(user, usageView{user.Status.Usage, &user.Status.Alerts, &user.Status.Conditions}, &q.Spec, "user "+user.Name)
	return r.finish(ctx, orig, user, next, equality.Semantic.DeepEqual(orig.Status, user.Status))
}

func (r *UsageReconciler) finish(ctx context.Context, orig, obj client.Object, next time.Time, unchanged bool) (reconcile.Result, error) {
	var res reconcile.Result
	if !next.IsZero() {
		res.RequeueAfter = max(next.Sub(r.Clock.Now()), time.Millisecond)
	}
	if unchanged {
		return res, nil
	}
	if err := r.Client.Status().Patch(ctx, obj, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		if apierrors.IsConflict(err) {
			return reconcile.Result{Requeue: true}, nil //nolint:staticcheck // immediate, rate-limited retry on conflict
		}
		return reconcile.Result{}, err
	}
	return res, nil
}

// usageChanged passes updates whose status.usage changed (the proxy's
// writes) and, at start, objects that have usage to judge (a window may have
// reset meanwhile).
func usageChanged[T client.Object](get func(T) []llmv1alpha1.WindowUsage) predicate.Predicate {
	return predicate.Funcs{
		CreateFunc: func(e event.CreateEvent) bool {
			o, ok := e.Object.(T)
			return ok && len(get(o)) > 0
		},
		UpdateFunc: func(e event.UpdateEvent) bool {
			o, ok1 := e.ObjectOld.(T)
			n, ok2 := e.ObjectNew.(T)
			return ok1 && ok2 && !equality.Semantic.DeepEqual(get(o), get(n))
		},
	}
}

// +kubebuilder:rbac:groups=llm.userops.dev,resources=llmusers;llmquotas,verbs=get;list;watch
// +kubebuilder:rbac:groups=llm.userops.dev,resources=llmusers/status;llmquotas/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// SetupWithManager watches usage written by the proxy.
func (r *UsageReconciler) SetupWithManager(mgr ctrl.Manager) error {
	err := ctrl.NewControllerManagedBy(mgr).
		Named("llmuser-usage").
		For(&llmv1alpha1.LLMUser{}, builder.WithPredicates(usageChanged(func(u *llmv1alpha1.LLMUser) []llmv1alpha1.WindowUsage { return u.Status.Usage }))).
		Complete(r)
	if err != nil {
		return fmt.Errorf("setting up the llmuser-usage controller: %w", err)
	}
	err = ctrl.NewControllerManagedBy(mgr).
		Named("llmquota-usage").
		For(&llmv1alpha1.LLMQuota{}, builder.WithPredicates(predicate.Or[client.Object](
			predicate.GenerationChangedPredicate{},
			usageChanged(func(q *llmv1alpha1.LLMQuota) []llmv1alpha1.WindowUsage { return q.Status.Usage })))).
		Complete(reconcile.Func(r.reconcilePool))
	if err != nil {
		return fmt.Errorf("setting up the llmquota-usage controller: %w", err)
	}
	return nil
}

// reconcilePool handles the pooled usage of a Shared quota.
func (r *UsageReconciler) reconcilePool(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	q := &llmv1alpha1.LLMQuota{}
	if err := r.Client.Get(ctx, req.NamespacedName, q); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if q.Spec.Scope != llmv1alpha1.ScopeShared {
		return reconcile.Result{}, nil
	}
	orig := q.DeepCopy()
	next := r.judgeUsage(q, usageView{q.Status.Usage, &q.Status.Alerts, &q.Status.Conditions}, &q.Spec, "shared quota "+q.Name)
	return r.finish(ctx, orig, q, next, equality.Semantic.DeepEqual(orig.Status, q.Status))
}
