package controller

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/operatorconfig"
)

// ProxyFieldManager owns every field the operator applies to the proxy
// workload.
const ProxyFieldManager = "llm-user-operator"

var (
	serviceMonitorGVK = schema.GroupVersionKind{Group: "monitoring.coreos.com", Version: "v1", Kind: "ServiceMonitor"}
	crdGVK            = schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"}
)

// serviceMonitorCRD is the CRD whose presence turns serviceMonitor auto on.
const serviceMonitorCRD = "servicemonitors.monitoring.coreos.com"

// ProxyReconciler runs the proxy workload in the operator's namespace from
// the operator's configuration: it server-side applies every object with one
// field manager, so a hand edit of a field it sets is reverted and a deleted
// object comes back; it deletes what the configuration no longer asks for;
// and it reports on the Deployment, beside Available and Progressing, a
// Reconciled condition saying whether the configuration is applied as given.
//
// There is one workload and one work item: every watched event maps to it.
//
// The objects carry labels instead of owner references: the ClusterRole and
// ClusterRoleBinding cannot be owned by a namespaced object, the set of
// objects changes with the configuration (a PodDisruptionBudget only with
// several replicas, a ServiceMonitor only with its CRD, nothing with
// proxy.enabled false, other names after a rename), and no object of the
// cluster stands for the configuration itself. So the labels are the
// inventory, and pruning by them is the one way anything is removed.
type ProxyReconciler struct {
	Client client.Client
	// Namespace is the operator's, where the proxy runs and reads the JWKS.
	Namespace     string
	JWKSConfigMap string
	// Config is the defaulted, validated operator configuration.
	Config   *operatorconfig.OperatorConfig
	Recorder events.EventRecorder
	Clock    clock.Clock

	rules      proxyRules
	controller controller.Controller
	cache      cache.Cache
	// watchingMonitors is set once ServiceMonitors are watched: the watch
	// starts when their CRD first shows up, since it cannot start before.
	watchMonitors sync.Once
	// monitorsWatched is set when the ServiceMonitor watch has just started:
	// a ServiceMonitor deleted after this reconcile applied it but before
	// the new informer listed would never produce an event, so the
	// reconcile that started the watch asks for one more.
	monitorsWatched atomic.Bool
}

// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=apps,resources=deployments/status,verbs=get;patch
// +kubebuilder:rbac:groups="",resources=services;serviceaccounts;configmaps,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=policy,resources=poddisruptionbudgets,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=networking.k8s.io,resources=networkpolicies,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=roles;rolebindings;clusterroles;clusterrolebindings,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=monitoring.coreos.com,resources=servicemonitors,verbs=get;list;watch;create;patch;delete
// +kubebuilder:rbac:groups=apiextensions.k8s.io,resources=customresourcedefinitions,verbs=get;list;watch

// Reconcile converges the workload with the configuration.
func (r *ProxyReconciler) Reconcile(ctx context.Context, _ reconcile.Request) (reconcile.Result, error) {
	log := logf.FromContext(ctx)
	p := &r.Config.Proxy
	if !*p.Enabled {
		return reconcile.Result{}, r.prune(ctx, nil)
	}
	replicas := *p.Replicas
	problem := p.SharedCounterProblem()
	if problem != "" {
		replicas = 1
		log.Info("running 1 proxy replica instead of the configured count: "+problem, "replicas", *p.Replicas)
	}
	monitor, err := r.serviceMonitorWanted(ctx)
	if err != nil {
		return reconcile.Result{}, err
	}
	w := renderProxy(workloadInput{
		Namespace: r.Namespace, JWKSConfigMap: r.JWKSConfigMap, Config: r.Config,
		Replicas: replicas, ServiceMonitor: monitor, Rules: r.rules,
	})
	applyErr := r.apply(ctx, w)
	if applyErr == nil {
		applyErr = r.prune(ctx, w)
	}

	cond := appsv1.DeploymentCondition{Type: ConditionReconciled, Status: corev1.ConditionTrue, Reason: ReasonApplied,
		Message: fmt.Sprintf("%d replica(s), upstreams %v, clients use %s", replicas, p.Upstreams, p.BaseURL)}
	switch {
	case applyErr != nil:
		cond.Status, cond.Reason, cond.Message = corev1.ConditionFalse, ReasonApplyFailed, applyErr.Error()
	case problem != "":
		cond.Status, cond.Reason, cond.Message = corev1.ConditionFalse, ReasonReplicasNeedSharedCounter, problem
	}
	if err := r.report(ctx, cond); err != nil {
		return reconcile.Result{}, errors.Join(applyErr, err)
	}
	if r.monitorsWatched.Swap(false) && applyErr == nil {
		return reconcile.Result{RequeueAfter: time.Second}, nil
	}
	if applyErr == nil && !monitor && p.ServiceMonitor == operatorconfig.SwitchAuto && r.serviceMonitorCRDExists(ctx) {
		// The CRD is there but discovery does not serve its kind yet (it is
		// not established): look again shortly rather than at the next event.
		return reconcile.Result{RequeueAfter: 2 * time.Second}, nil
	}
	return reconcile.Result{}, applyErr
}

// serviceMonitorCRDExists reads the ServiceMonitor CRD's metadata from the
// cache.
func (r *ProxyReconciler) serviceMonitorCRDExists(ctx context.Context) bool {
	crd := &metav1.PartialObjectMetadata{}
	crd.SetGroupVersionKind(crdGVK)
	return r.Client.Get(ctx, client.ObjectKey{Name: serviceMonitorCRD}, crd) == nil
}

// apply server-side applies every desired object, forcing ownership so that
// a field someone else changed returns to the configured value.
func (r *ProxyReconciler) apply(ctx context.Context, w *proxyWorkload) error {
	for _, ac := range w.objects() {
		if err := r.Client.Apply(ctx, ac, client.FieldOwner(ProxyFieldManager), client.ForceOwnership); err != nil {
			return fmt.Errorf("applying %s %s: %w", *ac.GetKind(), *ac.GetName(), err)
		}
	}
	if w.serviceMonitor != nil {
		ac := client.ApplyConfigurationFromUnstructured(w.serviceMonitor.DeepCopy())
		if err := r.Client.Apply(ctx, ac, client.FieldOwner(ProxyFieldManager), client.ForceOwnership); err != nil {
			return fmt.Errorf("applying ServiceMonitor %s: %w", w.serviceMonitor.GetName(), err)
		}
	}
	return nil
}

// prunable lists every kind the reconciler creates, namespaced or not.
var prunable = []struct {
	list      client.ObjectList
	clustered bool
}{
	{&appsv1.DeploymentList{}, false},
	{&corev1.ServiceList{}, false},
	{&corev1.ServiceAccountList{}, false},
	{&corev1.ConfigMapList{}, false},
	{&policyv1.PodDisruptionBudgetList{}, false},
	{&networkingv1.NetworkPolicyList{}, false},
	{&rbacv1.RoleList{}, false},
	{&rbacv1.RoleBindingList{}, false},
	{&rbacv1.ClusterRoleList{}, true},
	{&rbacv1.ClusterRoleBindingList{}, true},
}

// prune deletes every object carrying the workload's labels that w does not
// contain (w nil: all of them).
func (r *ProxyReconciler) prune(ctx context.Context, w *proxyWorkload) error {
	keep := map[string]bool{}
	if w != nil {
		for _, ac := range w.objects() {
			keep[*ac.GetKind()+"/"+*ac.GetName()] = true
		}
		if w.serviceMonitor != nil {
			keep["ServiceMonitor/"+w.serviceMonitor.GetName()] = true
		}
	}
	sel := labels.SelectorFromSet(workloadSelector())
	clusterSel := labels.SelectorFromSet(r.clusterSelector())
	lists := make([]client.ObjectList, 0, len(prunable)+1)
	opts := make([][]client.ListOption, 0, len(prunable)+1)
	for _, k := range prunable {
		lists = append(lists, k.list.DeepCopyObject().(client.ObjectList))
		if k.clustered {
			opts = append(opts, []client.ListOption{client.MatchingLabelsSelector{Selector: clusterSel}})
		} else {
			opts = append(opts, []client.ListOption{client.InNamespace(r.Namespace), client.MatchingLabelsSelector{Selector: sel}})
		}
	}
	if installed, err := r.serviceMonitorsInstalled(); err != nil {
		return err
	} else if installed {
		monitors := &metav1.PartialObjectMetadataList{}
		monitors.SetGroupVersionKind(serviceMonitorGVK.GroupVersion().WithKind("ServiceMonitorList"))
		lists = append(lists, monitors)
		opts = append(opts, []client.ListOption{client.InNamespace(r.Namespace), client.MatchingLabelsSelector{Selector: sel}})
		r.watchServiceMonitors()
	}
	var errs []error
	for i, list := range lists {
		if err := r.Client.List(ctx, list, opts[i]...); err != nil {
			errs = append(errs, err)
			continue
		}
		kind := ""
		if gvk, err := apiutil.GVKForObject(list, r.Client.Scheme()); err == nil {
			kind = gvk.Kind[:len(gvk.Kind)-len("List")]
		}
		err := meta.EachListItem(list, func(o runtime.Object) error {
			obj := o.(client.Object)
			if keep[kind+"/"+obj.GetName()] {
				return nil
			}
			logf.FromContext(ctx).Info("deleting what the configuration no longer asks for", "kind", kind, "name", obj.GetName())
			return client.IgnoreNotFound(r.Client.Delete(ctx, obj, client.PropagationPolicy(metav1.DeletePropagationBackground)))
		})
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// workloadSelector selects, within the operator's namespace, everything
// the reconciler created.
func workloadSelector() map[string]string {
	return map[string]string{
		llmv1alpha1.LabelManagedBy:    llmv1alpha1.ManagedByValue,
		"app.kubernetes.io/component": "proxy",
	}
}

// clusterSelector selects the cluster-scoped objects of this install.
func (r *ProxyReconciler) clusterSelector() map[string]string {
	s := workloadSelector()
	s[LabelProxyNamespace] = r.Namespace
	return s
}

// serviceMonitorWanted decides whether to create a ServiceMonitor:
// always with true (failing visibly if the CRD is missing), never with
// false, and with auto when the Prometheus Operator's CRD is installed.
func (r *ProxyReconciler) serviceMonitorWanted(_ context.Context) (bool, error) {
	switch r.Config.Proxy.ServiceMonitor {
	case operatorconfig.SwitchOn:
		return true, nil
	case operatorconfig.SwitchOff:
		return false, nil
	}
	return r.serviceMonitorsInstalled()
}

// serviceMonitorsInstalled asks the REST mapper, which re-reads discovery
// for a kind it does not know, so a CRD installed later is found.
func (r *ProxyReconciler) serviceMonitorsInstalled() (bool, error) {
	_, err := r.Client.RESTMapper().RESTMapping(serviceMonitorGVK.GroupKind(), serviceMonitorGVK.Version)
	var discovery *apiutil.ErrResourceDiscoveryFailed
	switch {
	case err == nil:
		return true, nil
	case meta.IsNoMatchError(err), errors.As(err, &discovery):
		return false, nil
	}
	return false, err
}

// watchServiceMonitors starts watching ServiceMonitors, once their CRD exists.
func (r *ProxyReconciler) watchServiceMonitors() {
	r.watchMonitors.Do(func() {
		m := &metav1.PartialObjectMetadata{}
		m.SetGroupVersionKind(serviceMonitorGVK)
		err := r.controller.Watch(source.Kind(r.cache, client.Object(m), r.enqueue(), r.mine()))
		if err != nil {
			ctrl.Log.WithName("proxy").Error(err, "cannot watch ServiceMonitors: a deleted one is recreated only at the next reconcile")
			return
		}
		r.monitorsWatched.Store(true)
	})
}

// report writes the Reconciled condition into the Deployment's status when
// it changed, and records an Event when it is not True. Status writes are
// bounded by the number of changes of the outcome, not by reconciles.
func (r *ProxyReconciler) report(ctx context.Context, cond appsv1.DeploymentCondition) error {
	var d appsv1.Deployment
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: r.Namespace, Name: r.Config.Proxy.Name}, &d)
	if apierrors.IsNotFound(err) {
		// The cache has not seen the Deployment yet; its creation event
		// brings the reconciler back here.
		return nil
	} else if err != nil {
		return err
	}
	if cond.Status != corev1.ConditionTrue {
		logf.FromContext(ctx).Error(nil, "proxy workload not reconciled as configured", "reason", cond.Reason, "message", cond.Message)
		r.Recorder.Eventf(&d, nil, corev1.EventTypeWarning, cond.Reason, "Reconcile", "%s", cond.Message)
	}
	now := metav1.NewTime(r.Clock.Now())
	cond.LastUpdateTime, cond.LastTransitionTime = now, now
	for _, c := range d.Status.Conditions {
		if c.Type != cond.Type {
			continue
		}
		if c.Status == cond.Status && c.Reason == cond.Reason && c.Message == cond.Message {
			return nil
		}
		if c.Status == cond.Status {
			cond.LastTransitionTime = c.LastTransitionTime
		}
	}
	ac := appsv1ac.Deployment(d.Name, d.Namespace).WithStatus(appsv1ac.DeploymentStatus().WithConditions(
		appsv1ac.DeploymentCondition().WithType(cond.Type).WithStatus(cond.Status).WithReason(cond.Reason).
			WithMessage(cond.Message).WithLastUpdateTime(cond.LastUpdateTime).WithLastTransitionTime(cond.LastTransitionTime)))
	return r.Client.Status().Apply(ctx, ac, client.FieldOwner(ProxyFieldManager), client.ForceOwnership)
}

// request is the one work item.
func (r *ProxyReconciler) request() reconcile.Request {
	return reconcile.Request{NamespacedName: types.NamespacedName{Namespace: r.Namespace, Name: r.Config.Proxy.Name}}
}

func (r *ProxyReconciler) enqueue() handler.EventHandler {
	return handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{r.request()}
	})
}

// mine passes events on objects of this install only.
func (r *ProxyReconciler) mine() predicate.Predicate {
	sel := labels.SelectorFromSet(workloadSelector())
	return predicate.NewPredicateFuncs(func(o client.Object) bool {
		if !sel.Matches(labels.Set(o.GetLabels())) {
			return false
		}
		return o.GetNamespace() == r.Namespace || o.GetLabels()[LabelProxyNamespace] == r.Namespace
	})
}

// ProxyCacheOptions restricts the manager's cache to the objects of the
// proxy workload: without it, watching Deployments or ClusterRoles would
// cache every one in the cluster. ConfigMaps are restricted by the manager
// (managed-by label, operator namespace), which covers the upstreams one.
func ProxyCacheOptions(namespace string) map[client.Object]cache.ByObject {
	sel := labels.SelectorFromSet(workloadSelector())
	clusterSel := labels.SelectorFromSet(map[string]string{
		llmv1alpha1.LabelManagedBy:    llmv1alpha1.ManagedByValue,
		"app.kubernetes.io/component": "proxy",
		LabelProxyNamespace:           namespace,
	})
	inNS := map[string]cache.Config{namespace: {}}
	out := map[client.Object]cache.ByObject{
		&rbacv1.ClusterRole{}:        {Label: clusterSel},
		&rbacv1.ClusterRoleBinding{}: {Label: clusterSel},
	}
	for _, o := range []client.Object{
		&appsv1.Deployment{}, &corev1.Service{}, &corev1.ServiceAccount{}, &policyv1.PodDisruptionBudget{},
		&networkingv1.NetworkPolicy{}, &rbacv1.Role{}, &rbacv1.RoleBinding{},
	} {
		out[o] = cache.ByObject{Label: sel, Namespaces: inNS}
	}
	return out
}

// SetupWithManager watches every kind the reconciler creates (label
// filtered: only this install's objects), the ServiceMonitor CRD (so that
// serviceMonitor auto notices it), and starts with one reconcile.
func (r *ProxyReconciler) SetupWithManager(mgr ctrl.Manager) error {
	rules, err := loadProxyRules()
	if err != nil {
		return fmt.Errorf("proxy controller: %w", err)
	}
	r.rules = rules
	r.cache = mgr.GetCache()
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	mine := builder.WithPredicates(r.mine())
	crd := &metav1.PartialObjectMetadata{}
	crd.SetGroupVersionKind(crdGVK)
	start := source.Func(func(_ context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
		q.Add(r.request())
		return nil
	})
	b := ctrl.NewControllerManagedBy(mgr).
		Named("proxy").
		WatchesRawSource(start).
		// Deployment status changes (pods coming and going, our own
		// condition) change nothing the reconciler applies.
		Watches(&appsv1.Deployment{}, r.enqueue(), mine, builder.WithPredicates(
			predicate.Or(predicate.GenerationChangedPredicate{}, predicate.LabelChangedPredicate{}))).
		Watches(crd, r.enqueue(), builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool {
			return o.GetName() == serviceMonitorCRD
		})))
	for _, o := range []client.Object{
		&corev1.Service{}, &corev1.ServiceAccount{}, &corev1.ConfigMap{}, &policyv1.PodDisruptionBudget{},
		&networkingv1.NetworkPolicy{}, &rbacv1.Role{}, &rbacv1.RoleBinding{}, &rbacv1.ClusterRole{}, &rbacv1.ClusterRoleBinding{},
	} {
		b = b.Watches(o, r.enqueue(), mine)
	}
	c, err := b.Build(r)
	if err != nil {
		return fmt.Errorf("proxy controller: %w", err)
	}
	r.controller = c
	return nil
}
