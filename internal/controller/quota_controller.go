package controller

import (
	"context"
	"fmt"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
)

// quotaRefIndex indexes LLMUsers by spec.quotaRef.name.
const quotaRefIndex = "spec.quotaRef.name"

// QuotaReconciler keeps an LLMQuota's Ready condition, observedGeneration and
// the number of users bound to it. Pooled usage of Shared quotas is written by
// the proxy; alerts and QuotaExceeded by the [UsageReconciler].
type QuotaReconciler struct {
	Client client.Client
	Clock  clock.Clock
}

// Reconcile counts the users of one quota.
func (r *QuotaReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	q := &llmv1alpha1.LLMQuota{}
	if err := r.Client.Get(ctx, req.NamespacedName, q); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	orig := q.DeepCopy()
	var users llmv1alpha1.LLMUserList
	if err := r.Client.List(ctx, &users, client.InNamespace(q.Namespace), client.MatchingFields{quotaRefIndex: q.Name}, client.UnsafeDisableDeepCopy); err != nil {
		return reconcile.Result{}, err
	}
	q.Status.Users = int32(len(users.Items))
	q.Status.ObservedGeneration = q.Generation
	meta.SetStatusCondition(&q.Status.Conditions, metav1.Condition{
		Type: llmv1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: llmv1alpha1.ReasonValid,
		Message: "quota accepted", ObservedGeneration: q.Generation, LastTransitionTime: metav1.NewTime(r.Clock.Now()),
	})
	if equality.Semantic.DeepEqual(orig.Status, q.Status) {
		return reconcile.Result{}, nil
	}
	if err := r.Client.Status().Patch(ctx, q, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		if apierrors.IsConflict(err) {
			return reconcile.Result{Requeue: true}, nil //nolint:staticcheck // immediate, rate-limited retry on conflict
		}
		return reconcile.Result{}, err
	}
	return reconcile.Result{}, nil
}

// +kubebuilder:rbac:groups=llm.userops.dev,resources=llmquotas,verbs=get;list;watch
// +kubebuilder:rbac:groups=llm.userops.dev,resources=llmquotas/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=llm.userops.dev,resources=llmusers,verbs=get;list;watch

// SetupWithManager watches quotas (spec changes only) and users (creation,
// deletion and a changed quotaRef move the count of both quotas involved),
// and indexes users by quota to count them.
func (r *QuotaReconciler) SetupWithManager(mgr ctrl.Manager) error {
	const name = "llmquota"
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &llmv1alpha1.LLMUser{}, quotaRefIndex, func(o client.Object) []string {
		return []string{o.(*llmv1alpha1.LLMUser).Spec.QuotaRef.Name}
	}); err != nil {
		return fmt.Errorf("setting up the %s controller: indexing users by quota: %w", name, err)
	}
	quotaOf := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
		u := o.(*llmv1alpha1.LLMUser)
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: u.Namespace, Name: u.Spec.QuotaRef.Name}}}
	})
	refChanged := predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		return e.ObjectOld.(*llmv1alpha1.LLMUser).Spec.QuotaRef != e.ObjectNew.(*llmv1alpha1.LLMUser).Spec.QuotaRef
	}}
	oldQuotaOf := handler.Funcs{UpdateFunc: func(_ context.Context, e event.UpdateEvent, q workqueueRL) {
		u := e.ObjectOld.(*llmv1alpha1.LLMUser)
		q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Namespace: u.Namespace, Name: u.Spec.QuotaRef.Name}})
	}}
	err := ctrl.NewControllerManagedBy(mgr).
		Named(name).
		For(&llmv1alpha1.LLMQuota{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&llmv1alpha1.LLMUser{}, quotaOf, builder.WithPredicates(refChanged)).
		Watches(&llmv1alpha1.LLMUser{}, oldQuotaOf, builder.WithPredicates(refChanged)).
		Complete(r)
	if err != nil {
		return fmt.Errorf("setting up the %s controller: %w", name, err)
	}
	return nil
}
