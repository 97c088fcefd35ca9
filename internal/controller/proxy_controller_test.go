package controller_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/yaml"

	apischeme "github.com/llm-user-operator/llm-user-operator/api/scheme"
	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/controller"
	"github.com/llm-user-operator/llm-user-operator/internal/operatorconfig"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
)

const (
	proxyName = "llm-user-proxy"
	jwksName  = "llm-user-operator-jwks"
	// reconcileWait bounds a reconcile on a loaded two-core machine.
	reconcileWait = 30 * time.Second
)

// proxyConfig is a valid configuration for namespace ns: one replica, no
// ServiceMonitor (the CRD test turns it on), mutated by edit.
func proxyConfig(t *testing.T, ns string, edit func(p *operatorconfig.Proxy)) *operatorconfig.OperatorConfig {
	t.Helper()
	c := &operatorconfig.OperatorConfig{Proxy: operatorconfig.Proxy{
		Image:          "ghcr.io/llm-user-operator/llm-user-operator:test",
		Upstreams:      []string{"http://vllm.vllm.svc:8000"},
		ServiceMonitor: operatorconfig.SwitchOff,
	}}
	if edit != nil {
		edit(&c.Proxy)
	}
	c.Default(ns, "")
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	return c
}

// runProxyReconciler runs a manager holding only the proxy reconciler, as
// the operator does (same cache restrictions), until stop is called or the
// test ends. Restarting it with another configuration is what a config
// change does to the operator: the chart rolls it.
func runProxyReconciler(t *testing.T, ns string, cfg *operatorconfig.OperatorConfig) (stop func()) {
	t.Helper()
	env := apiServer(t)
	managed := labels.SelectorFromSet(labels.Set{llmv1alpha1.LabelManagedBy: llmv1alpha1.ManagedByValue})
	byObject := controller.ProxyCacheOptions(ns)
	byObject[&corev1.ConfigMap{}] = cache.ByObject{Label: managed, Namespaces: map[string]cache.Config{ns: {}}}
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme:                 apischeme.New(),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
		Cache:                  cache.Options{ByObject: byObject},
	})
	if err != nil {
		t.Fatal(err)
	}
	r := &controller.ProxyReconciler{Client: mgr.GetClient(), Namespace: ns, JWKSConfigMap: jwksName,
		Config: cfg, Recorder: mgr.GetEventRecorder("llm-user-operator")}
	if err := r.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("proxy reconciler: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

func getObject(t *testing.T, ns, name string, obj client.Object) error {
	t.Helper()
	env := apiServer(t)
	return env.Client.Get(t.Context(), types.NamespacedName{Namespace: ns, Name: name}, obj)
}

// waitDeployment waits until the proxy Deployment exists and ok accepts it.
func waitDeployment(t *testing.T, ns string, ok func(d *appsv1.Deployment) error) *appsv1.Deployment {
	t.Helper()
	d := &appsv1.Deployment{}
	poll.Until(t, reconcileWait, func() error {
		if err := getObject(t, ns, proxyName, d); err != nil {
			return err
		}
		return ok(d)
	})
	return d
}

// reconciled returns a check that the Reconciled condition has status and reason.
func reconciled(status corev1.ConditionStatus, reason string) func(d *appsv1.Deployment) error {
	return func(d *appsv1.Deployment) error {
		for _, c := range d.Status.Conditions {
			if c.Type == controller.ConditionReconciled {
				return poll.Check(c.Status == status && c.Reason == reason,
					fmt.Sprintf("Reconciled is %s/%s (%s), want %s/%s", c.Status, c.Reason, c.Message, status, reason))
			}
		}
		return errors.New("no Reconciled condition yet")
	}
}

func deploymentCondition(d *appsv1.Deployment, typ appsv1.DeploymentConditionType) appsv1.DeploymentCondition {
	for _, c := range d.Status.Conditions {
		if c.Type == typ {
			return c
		}
	}
	return appsv1.DeploymentCondition{}
}

func TestProxyWorkloadCreated(t *testing.T) {
	env := apiServer(t)
	ns := envtest.NewNamespace(t, env.Client, "proxy-create")
	runProxyReconciler(t, ns, proxyConfig(t, ns, nil))
	d := waitDeployment(t, ns, reconciled(corev1.ConditionTrue, controller.ReasonApplied))

	if msg := deploymentCondition(d, controller.ConditionReconciled).Message; !strings.Contains(msg, "http://llm-user-proxy."+ns+".svc:8000/v1") {
		t.Errorf("Reconciled message %q does not give the clients' URL", msg)
	}
	if *d.Spec.Replicas != 1 {
		t.Errorf("replicas %d, want 1", *d.Spec.Replicas)
	}
	pod := d.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	sc := c.SecurityContext
	if sc == nil || !ptr.Deref(sc.RunAsNonRoot, false) || !ptr.Deref(sc.ReadOnlyRootFilesystem, false) ||
		ptr.Deref(sc.AllowPrivilegeEscalation, true) || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("container securityContext %s, want non-root, read-only root, no privilege escalation, drop ALL", asYAML(sc))
	}
	if psc := pod.SecurityContext; psc == nil || !ptr.Deref(psc.RunAsNonRoot, false) || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod securityContext %s, want runAsNonRoot and seccomp RuntimeDefault", asYAML(psc))
	}
	if p := c.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.String() != "metrics" {
		t.Errorf("liveness probe %s, want GET /healthz on the metrics port", asYAML(p))
	}
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" || p.HTTPGet.Port.String() != "metrics" {
		t.Errorf("readiness probe %s, want GET /readyz on the metrics port", asYAML(p))
	}
	// 5s preStop + 30s shutdown grace + 15s for the final flush.
	if g := ptr.Deref(pod.TerminationGracePeriodSeconds, 0); g != 50 {
		t.Errorf("terminationGracePeriodSeconds %d, want 50", g)
	}
	if got := c.Resources.Requests.Cpu().String() + " " + c.Resources.Requests.Memory().String() + " " + c.Resources.Limits.Memory().String(); got != "250m 128Mi 512Mi" {
		t.Errorf("resources %s, want requests 250m/128Mi and a 512Mi memory limit", got)
	}
	var keys []string
	for _, s := range pod.TopologySpreadConstraints {
		keys = append(keys, s.TopologyKey+"/"+string(s.WhenUnsatisfiable))
	}
	if want := []string{"kubernetes.io/hostname/ScheduleAnyway", "topology.kubernetes.io/zone/ScheduleAnyway"}; !slices.Equal(keys, want) {
		t.Errorf("topology spread %v, want %v", keys, want)
	}
	if pod.ServiceAccountName != proxyName {
		t.Errorf("serviceAccountName %q, want %q", pod.ServiceAccountName, proxyName)
	}
	for _, want := range []string{"--upstreams-file=/etc/llm-user-proxy/upstreams/upstreams", "--jwks-configmap=" + jwksName,
		"--refresh-url=http://llm-user-operator." + ns + ".svc:8082/auth/refresh", "--counter=memory", "--listen-address=:8000"} {
		if !slices.Contains(c.Args, want) {
			t.Errorf("args %v lack %s", c.Args, want)
		}
	}
	for _, a := range c.Args {
		if strings.HasPrefix(a, "--upstreams=") {
			t.Errorf("upstreams given as an argument (%s): changing them would restart the pods", a)
		}
	}

	var cm corev1.ConfigMap
	if err := getObject(t, ns, proxyName+"-upstreams", &cm); err != nil {
		t.Fatal(err)
	}
	if cm.Data["upstreams"] != "http://vllm.vllm.svc:8000\n" {
		t.Errorf("upstreams ConfigMap %q", cm.Data["upstreams"])
	}

	var api, metrics corev1.Service
	if err := getObject(t, ns, proxyName, &api); err != nil {
		t.Fatal(err)
	}
	if err := getObject(t, ns, proxyName+"-metrics", &metrics); err != nil {
		t.Fatal(err)
	}
	if len(api.Spec.Ports) != 1 || api.Spec.Ports[0].Name != "http" || api.Spec.Ports[0].Port != 8000 {
		t.Errorf("API Service ports %s, want only http:8000", asYAML(api.Spec.Ports))
	}
	if len(metrics.Spec.Ports) != 1 || metrics.Spec.Ports[0].Name != "metrics" || metrics.Spec.Ports[0].Port != 9090 {
		t.Errorf("metrics Service ports %s, want only metrics:9090", asYAML(metrics.Spec.Ports))
	}

	var sa corev1.ServiceAccount
	if err := getObject(t, ns, proxyName, &sa); err != nil {
		t.Fatal(err)
	}
	var cr rbacv1.ClusterRole
	if err := getObject(t, "", ns+":"+proxyName, &cr); err != nil {
		t.Fatal(err)
	}
	if want := generatedProxyRules(t); asYAML(cr.Rules) != asYAML(want) {
		t.Errorf("ClusterRole rules\n%s\nwant exactly config/rbac/proxy/role.yaml's\n%s", asYAML(cr.Rules), asYAML(want))
	}
	var crb rbacv1.ClusterRoleBinding
	if err := getObject(t, "", ns+":"+proxyName, &crb); err != nil {
		t.Fatal(err)
	}
	if crb.RoleRef.Name != cr.Name || len(crb.Subjects) != 1 || crb.Subjects[0].Name != proxyName || crb.Subjects[0].Namespace != ns {
		t.Errorf("ClusterRoleBinding %s does not bind %s to the proxy's ServiceAccount", asYAML(crb), cr.Name)
	}
	var role rbacv1.Role
	if err := getObject(t, ns, proxyName, &role); err != nil {
		t.Fatal(err)
	}
	if len(role.Rules) != 1 || !slices.Equal(role.Rules[0].ResourceNames, []string{jwksName}) || !slices.Equal(role.Rules[0].Resources, []string{"configmaps"}) {
		t.Errorf("Role rules %s, want read access to the JWKS ConfigMap only", asYAML(role.Rules))
	}
	var rb rbacv1.RoleBinding
	if err := getObject(t, ns, proxyName, &rb); err != nil {
		t.Fatal(err)
	}

	var np networkingv1.NetworkPolicy
	if err := getObject(t, ns, proxyName, &np); err != nil {
		t.Fatal(err)
	}
	var ports []string
	for _, in := range np.Spec.Ingress {
		for _, p := range in.Ports {
			ports = append(ports, p.Port.String())
		}
	}
	if !slices.Equal(ports, []string{"http", "metrics"}) || !slices.Equal(np.Spec.PolicyTypes, []networkingv1.PolicyType{"Ingress"}) {
		t.Errorf("NetworkPolicy admits ports %v (%v), want http and metrics, ingress only", ports, np.Spec.PolicyTypes)
	}
	if pdb := (&policyv1.PodDisruptionBudget{}); !apierrors.IsNotFound(getObject(t, ns, proxyName, pdb)) {
		t.Errorf("a PodDisruptionBudget with one replica would block every node drain")
	}

	// One field manager, applying: what a hand edit would change is ours.
	for _, m := range d.ManagedFields {
		if m.Subresource == "" && m.Manager != controller.ProxyFieldManager {
			t.Errorf("Deployment fields managed by %q (%s), want only %q", m.Manager, m.Operation, controller.ProxyFieldManager)
		}
		if m.Manager == controller.ProxyFieldManager && m.Operation != metav1.ManagedFieldsOperationApply {
			t.Errorf("the operator %s the Deployment, want server-side apply", m.Operation)
		}
	}
}

// generatedProxyRules reads config/rbac/proxy/role.yaml, as controller-gen
// wrote it from the proxy's markers.
func generatedProxyRules(t *testing.T) []rbacv1.PolicyRule {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(envtest.RepoRoot(), "config", "rbac", "proxy", "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cr rbacv1.ClusterRole
	if err := yaml.Unmarshal(data, &cr); err != nil {
		t.Fatal(err)
	}
	if len(cr.Rules) == 0 {
		t.Fatal("config/rbac/proxy/role.yaml has no rules")
	}
	return cr.Rules
}

func TestProxyDriftCorrected(t *testing.T) {
	env := apiServer(t)
	ns := envtest.NewNamespace(t, env.Client, "proxy-drift")
	runProxyReconciler(t, ns, proxyConfig(t, ns, nil))
	waitDeployment(t, ns, reconciled(corev1.ConditionTrue, controller.ReasonApplied))

	t.Run("DeletedServiceComesBack", func(t *testing.T) {
		var svc corev1.Service
		if err := getObject(t, ns, proxyName, &svc); err != nil {
			t.Fatal(err)
		}
		if err := env.Client.Delete(t.Context(), &svc); err != nil {
			t.Fatal(err)
		}
		poll.Until(t, reconcileWait, func() error {
			var again corev1.Service
			if err := getObject(t, ns, proxyName, &again); err != nil {
				return err
			}
			return poll.Check(again.UID != svc.UID, "still the deleted Service")
		})
	})
	t.Run("ReplicasEditedByHandAreRestored", func(t *testing.T) {
		// What `kubectl scale --replicas 4` does.
		scale := &appsv1.Deployment{}
		if err := getObject(t, ns, proxyName, scale); err != nil {
			t.Fatal(err)
		}
		patch := client.MergeFrom(scale.DeepCopy())
		scale.Spec.Replicas = ptr.To[int32](4)
		if err := env.Client.Patch(t.Context(), scale, patch, client.FieldOwner("kubectl")); err != nil {
			t.Fatal(err)
		}
		waitDeployment(t, ns, func(d *appsv1.Deployment) error {
			return poll.Check(*d.Spec.Replicas == 1 && d.Generation > scale.Generation, fmt.Sprintf("replicas %d (generation %d)", *d.Spec.Replicas, d.Generation))
		})
	})
	t.Run("DeletedClusterRoleBindingComesBack", func(t *testing.T) {
		crb := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: ns + ":" + proxyName}}
		if err := env.Client.Delete(t.Context(), crb); err != nil {
			t.Fatal(err)
		}
		poll.Until(t, reconcileWait, func() error {
			var again rbacv1.ClusterRoleBinding
			if err := getObject(t, "", crb.Name, &again); err != nil {
				return err
			}
			return poll.Check(again.UID != "" && again.DeletionTimestamp == nil, "not recreated")
		})
	})
	t.Run("UpstreamsEditedByHandAreRestored", func(t *testing.T) {
		var cm corev1.ConfigMap
		if err := getObject(t, ns, proxyName+"-upstreams", &cm); err != nil {
			t.Fatal(err)
		}
		cm.Data["upstreams"] = "http://elsewhere:8000\n"
		if err := env.Client.Update(t.Context(), &cm); err != nil {
			t.Fatal(err)
		}
		poll.Until(t, reconcileWait, func() error {
			if err := getObject(t, ns, proxyName+"-upstreams", &cm); err != nil {
				return err
			}
			return poll.Check(cm.Data["upstreams"] == "http://vllm.vllm.svc:8000\n", "upstreams "+cm.Data["upstreams"])
		})
	})
}

func TestProxyReplicasRefusedWithoutSharedCounter(t *testing.T) {
	env := apiServer(t)
	ns := envtest.NewNamespace(t, env.Client, "proxy-refuse")
	runProxyReconciler(t, ns, proxyConfig(t, ns, func(p *operatorconfig.Proxy) { p.Replicas = ptr.To[int32](3) }))
	d := waitDeployment(t, ns, reconciled(corev1.ConditionFalse, controller.ReasonReplicasNeedSharedCounter))

	if *d.Spec.Replicas != 1 {
		t.Errorf("replicas %d, want 1 until a shared counter store is configured", *d.Spec.Replicas)
	}
	msg := deploymentCondition(d, controller.ConditionReconciled).Message
	for _, want := range []string{"proxy.replicas is 3", `proxy.counter.store is "memory"`, "Set proxy.counter.store: redis and proxy.counter.redis.address"} {
		if !strings.Contains(msg, want) {
			t.Errorf("condition message %q does not say %q", msg, want)
		}
	}
	poll.Until(t, reconcileWait, func() error {
		var evs eventsv1.EventList
		if err := env.Client.List(t.Context(), &evs, client.InNamespace(ns)); err != nil {
			return err
		}
		for _, e := range evs.Items {
			if e.Reason == controller.ReasonReplicasNeedSharedCounter && e.Regarding.Kind == "Deployment" &&
				e.Regarding.Name == proxyName && e.Type == corev1.EventTypeWarning && strings.Contains(e.Note, "proxy.counter.redis.address") {
				return nil
			}
		}
		return fmt.Errorf("no Warning Event %s on the Deployment among %d", controller.ReasonReplicasNeedSharedCounter, len(evs.Items))
	})
	if pdb := (&policyv1.PodDisruptionBudget{}); !apierrors.IsNotFound(getObject(t, ns, proxyName, pdb)) {
		t.Errorf("PodDisruptionBudget for a single replica")
	}
}

func TestProxyPodDisruptionBudgetFollowsReplicas(t *testing.T) {
	env := apiServer(t)
	ns := envtest.NewNamespace(t, env.Client, "proxy-pdb")
	redis := func(p *operatorconfig.Proxy) {
		p.Replicas = ptr.To[int32](3)
		p.Counter = operatorconfig.Counter{Store: operatorconfig.CounterRedis, Redis: operatorconfig.Redis{Address: "redis.test:6379"}}
	}
	stop := runProxyReconciler(t, ns, proxyConfig(t, ns, redis))
	d := waitDeployment(t, ns, reconciled(corev1.ConditionTrue, controller.ReasonApplied))
	if *d.Spec.Replicas != 3 {
		t.Errorf("replicas %d, want 3", *d.Spec.Replicas)
	}
	if args := d.Spec.Template.Spec.Containers[0].Args; !slices.Contains(args, "--counter=redis") || !slices.Contains(args, "--redis-addr=redis.test:6379") {
		t.Errorf("args %v, want the redis counter at redis.test:6379", args)
	}
	var pdb policyv1.PodDisruptionBudget
	poll.Until(t, reconcileWait, func() error { return getObject(t, ns, proxyName, &pdb) })
	if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 {
		t.Errorf("PodDisruptionBudget maxUnavailable %v, want 1", pdb.Spec.MaxUnavailable)
	}
	stop()

	runProxyReconciler(t, ns, proxyConfig(t, ns, nil))
	waitDeployment(t, ns, func(d *appsv1.Deployment) error {
		return poll.Check(*d.Spec.Replicas == 1, fmt.Sprintf("replicas %d", *d.Spec.Replicas))
	})
	poll.Until(t, reconcileWait, func() error {
		err := getObject(t, ns, proxyName, &policyv1.PodDisruptionBudget{})
		return poll.Check(apierrors.IsNotFound(err), fmt.Sprintf("PodDisruptionBudget still there with one replica (%v)", err))
	})
}

func TestProxyConfigChangeRollsOnlyWhenNeeded(t *testing.T) {
	env := apiServer(t)
	ns := envtest.NewNamespace(t, env.Client, "proxy-roll")
	stop := runProxyReconciler(t, ns, proxyConfig(t, ns, nil))
	before := waitDeployment(t, ns, reconciled(corev1.ConditionTrue, controller.ReasonApplied))
	stop()

	t.Run("UpstreamsChangeTheFileNotThePods", func(t *testing.T) {
		stop := runProxyReconciler(t, ns, proxyConfig(t, ns, func(p *operatorconfig.Proxy) {
			p.Upstreams = []string{"http://vllm-a:8000", "http://vllm-b:8000"}
		}))
		defer stop()
		poll.Until(t, reconcileWait, func() error {
			var cm corev1.ConfigMap
			if err := getObject(t, ns, proxyName+"-upstreams", &cm); err != nil {
				return err
			}
			return poll.Check(cm.Data["upstreams"] == "http://vllm-a:8000\nhttp://vllm-b:8000\n", "upstreams "+cm.Data["upstreams"])
		})
		after := waitDeployment(t, ns, reconciled(corev1.ConditionTrue, controller.ReasonApplied))
		if after.Generation != before.Generation || asYAML(after.Spec.Template) != asYAML(before.Spec.Template) {
			t.Errorf("the pod template changed (generation %d -> %d): the proxy re-reads the upstreams file, no rollout is needed",
				before.Generation, after.Generation)
		}
	})
	t.Run("FlushIntervalRollsThePods", func(t *testing.T) {
		stop := runProxyReconciler(t, ns, proxyConfig(t, ns, func(p *operatorconfig.Proxy) {
			p.FlushInterval = metav1.Duration{Duration: 5 * time.Second}
		}))
		defer stop()
		after := waitDeployment(t, ns, func(d *appsv1.Deployment) error {
			return poll.Check(slices.Contains(d.Spec.Template.Spec.Containers[0].Args, "--flush-interval=5s"),
				fmt.Sprintf("args %v", d.Spec.Template.Spec.Containers[0].Args))
		})
		if after.Generation <= before.Generation {
			t.Errorf("generation %d, want above %d: a new pod template", after.Generation, before.Generation)
		}
	})
}

func TestProxyDisabledRemovesEverything(t *testing.T) {
	env := apiServer(t)
	ns := envtest.NewNamespace(t, env.Client, "proxy-off")
	stop := runProxyReconciler(t, ns, proxyConfig(t, ns, nil))
	waitDeployment(t, ns, reconciled(corev1.ConditionTrue, controller.ReasonApplied))
	stop()

	runProxyReconciler(t, ns, proxyConfig(t, ns, func(p *operatorconfig.Proxy) { p.Enabled = ptr.To(false) }))
	gone := []struct {
		name string
		obj  client.Object
		ns   string
	}{
		{proxyName, &appsv1.Deployment{}, ns},
		{proxyName, &corev1.Service{}, ns},
		{proxyName + "-metrics", &corev1.Service{}, ns},
		{proxyName, &corev1.ServiceAccount{}, ns},
		{proxyName + "-upstreams", &corev1.ConfigMap{}, ns},
		{proxyName, &networkingv1.NetworkPolicy{}, ns},
		{proxyName, &rbacv1.Role{}, ns},
		{proxyName, &rbacv1.RoleBinding{}, ns},
		{ns + ":" + proxyName, &rbacv1.ClusterRole{}, ""},
		{ns + ":" + proxyName, &rbacv1.ClusterRoleBinding{}, ""},
	}
	for _, g := range gone {
		poll.Until(t, reconcileWait, func() error {
			err := getObject(t, g.ns, g.name, g.obj)
			if apierrors.IsNotFound(err) {
				return nil
			} else if err != nil {
				return err
			}
			return fmt.Errorf("%T %s still there", g.obj, g.name)
		})
	}
}

// TestProxyServiceMonitorWithItsCRD installs a minimal ServiceMonitor CRD
// while the reconciler runs: with serviceMonitor auto, the ServiceMonitor
// appears only then. The CRD is cluster-wide, so the other tests turn
// ServiceMonitors off.
func TestProxyServiceMonitorWithItsCRD(t *testing.T) {
	env := apiServer(t)
	ns := envtest.NewNamespace(t, env.Client, "proxy-monitor")
	runProxyReconciler(t, ns, proxyConfig(t, ns, func(p *operatorconfig.Proxy) {
		p.ServiceMonitor = operatorconfig.SwitchAuto
		p.ServiceMonitorLabels = map[string]string{"release": "kube-prometheus-stack"}
	}))
	waitDeployment(t, ns, reconciled(corev1.ConditionTrue, controller.ReasonApplied))
	scheme := apischeme.New()
	if err := apiextensionsv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	crds, err := client.New(env.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	if err := crds.Get(t.Context(), types.NamespacedName{Name: "servicemonitors.monitoring.coreos.com"}, &apiextensionsv1.CustomResourceDefinition{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the ServiceMonitor CRD is already installed (%v): the test cannot show auto without it", err)
	}

	crd := serviceMonitorCRD()
	if err := crds.Create(t.Context(), crd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = crds.Delete(context.Background(), crd) })

	sm := &unstructured.Unstructured{}
	sm.SetAPIVersion("monitoring.coreos.com/v1")
	sm.SetKind("ServiceMonitor")
	poll.Until(t, reconcileWait, func() error { return getObject(t, ns, proxyName, sm) })
	if sm.GetLabels()["release"] != "kube-prometheus-stack" {
		t.Errorf("ServiceMonitor labels %v, want the configured release label", sm.GetLabels())
	}
	endpoints, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
	if len(endpoints) != 1 || endpoints[0].(map[string]any)["port"] != "metrics" || endpoints[0].(map[string]any)["honorLabels"] != true {
		t.Errorf("ServiceMonitor endpoints %v, want the metrics port with honorLabels (the user's namespace label kept)", endpoints)
	}
	match, _, _ := unstructured.NestedStringMap(sm.Object, "spec", "selector", "matchLabels")
	var metrics corev1.Service
	if err := getObject(t, ns, proxyName+"-metrics", &metrics); err != nil {
		t.Fatal(err)
	}
	if !labels.SelectorFromSet(match).Matches(labels.Set(metrics.Labels)) {
		t.Errorf("ServiceMonitor selector %v does not select the metrics Service %v", match, metrics.Labels)
	}

	// Watched from the moment its CRD appeared: a deleted one comes back.
	uid := sm.GetUID()
	if err := env.Client.Delete(t.Context(), sm); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, reconcileWait, func() error {
		again := sm.DeepCopy()
		if err := getObject(t, ns, proxyName, again); err != nil {
			return err
		}
		return poll.Check(again.GetUID() != uid, "still the deleted ServiceMonitor")
	})
}

// serviceMonitorCRD is the smallest CRD serving monitoring.coreos.com/v1
// ServiceMonitor: any spec is preserved.
func serviceMonitorCRD() *apiextensionsv1.CustomResourceDefinition {
	return &apiextensionsv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: "servicemonitors.monitoring.coreos.com"},
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{
			Group: "monitoring.coreos.com",
			Names: apiextensionsv1.CustomResourceDefinitionNames{Plural: "servicemonitors", Singular: "servicemonitor", Kind: "ServiceMonitor", ListKind: "ServiceMonitorList"},
			Scope: apiextensionsv1.NamespaceScoped,
			Versions: []apiextensionsv1.CustomResourceDefinitionVersion{{
				Name: "v1", Served: true, Storage: true,
				Schema: &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{
					Type: "object",
					Properties: map[string]apiextensionsv1.JSONSchemaProps{
						"spec": {Type: "object", XPreserveUnknownFields: ptr.To(true)},
					},
				}},
			}},
		},
	}
}

func asYAML(v any) string {
	b, err := yaml.Marshal(v)
	if err != nil {
		return err.Error()
	}
	return string(b)
}
