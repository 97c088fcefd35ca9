package controller

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	networkingv1ac "k8s.io/client-go/applyconfigurations/networking/v1"
	policyv1ac "k8s.io/client-go/applyconfigurations/policy/v1"
	rbacv1ac "k8s.io/client-go/applyconfigurations/rbac/v1"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	proxyrbac "github.com/llm-user-operator/llm-user-operator/config/rbac/proxy"
	"github.com/llm-user-operator/llm-user-operator/internal/operatorconfig"
)

// The proxy pod's fixed layout. Ports and everything else configurable come
// from the operator's configuration.
const (
	proxyContainer = "proxy"
	// proxyCommand is the proxy binary in the operator's image.
	proxyCommand = "/proxy"
	// UpstreamsMountPath is where the upstreams ConfigMap is mounted; the
	// proxy re-reads UpstreamsFile at every model refresh.
	UpstreamsMountPath = "/etc/llm-user-proxy/upstreams"
	// redisCADir and redisClientTLSDir are where the proxy finds the CA
	// bundle and the client certificate of a Redis reached over TLS.
	redisCADir        = "/etc/llm-user-proxy/redis-ca"
	redisClientTLSDir = "/etc/llm-user-proxy/redis-client-tls"
	// UpstreamsKey is the upstreams ConfigMap's key, one URL per line.
	UpstreamsKey  = "upstreams"
	UpstreamsFile = UpstreamsMountPath + "/" + UpstreamsKey
	// preStopSleep keeps a terminating pod serving while the endpoints
	// controller and kube-proxy stop sending it new connections.
	preStopSleep = 5
	// finalFlushSeconds is left after the shutdown grace for the final
	// usage flush (at most 8 status patches at a time, each retried).
	finalFlushSeconds = 15
	// LabelProxyNamespace names the operator namespace of cluster-scoped
	// objects, which have none of their own, so that two installs in
	// different namespaces never prune each other's.
	LabelProxyNamespace = "llm.userops.dev/proxy-namespace"
	// ConditionReconciled is the condition the operator adds to the proxy
	// Deployment's status, beside the deployment controller's Available and
	// Progressing: whether the operator applied the configuration as given.
	ConditionReconciled appsv1.DeploymentConditionType = "Reconciled"
	// ReasonApplied: everything the configuration asks for is applied.
	ReasonApplied = "Applied"
	// ReasonReplicasNeedSharedCounter: replicas > 1 without a shared
	// counter store; one replica runs.
	ReasonReplicasNeedSharedCounter = "ReplicasNeedSharedCounter"
	// ReasonApplyFailed: the API server refused an object.
	ReasonApplyFailed = "ApplyFailed"
)

// proxyLabels are on every object of the workload; the prune step selects
// by them.
func proxyLabels(name string) map[string]string {
	return map[string]string{
		"app.kubernetes.io/name":      "llm-user-proxy",
		"app.kubernetes.io/instance":  name,
		"app.kubernetes.io/component": "proxy",
		"app.kubernetes.io/part-of":   "llm-user-operator",
		llmv1alpha1.LabelManagedBy:    llmv1alpha1.ManagedByValue,
	}
}

// proxySelector selects the proxy pods. It is immutable in a Deployment, so
// it holds only what never changes for a given proxy name.
func proxySelector(name string) map[string]string {
	return map[string]string{"app.kubernetes.io/instance": name, "app.kubernetes.io/component": "proxy"}
}

// proxyWorkload is every object of one proxy install, as apply
// configurations owned by the operator's field manager.
type proxyWorkload struct {
	serviceAccount      *corev1ac.ServiceAccountApplyConfiguration
	clusterRole         *rbacv1ac.ClusterRoleApplyConfiguration
	clusterRoleBinding  *rbacv1ac.ClusterRoleBindingApplyConfiguration
	role                *rbacv1ac.RoleApplyConfiguration
	roleBinding         *rbacv1ac.RoleBindingApplyConfiguration
	upstreams           *corev1ac.ConfigMapApplyConfiguration
	service             *corev1ac.ServiceApplyConfiguration
	metricsService      *corev1ac.ServiceApplyConfiguration
	deployment          *appsv1ac.DeploymentApplyConfiguration
	podDisruptionBudget *policyv1ac.PodDisruptionBudgetApplyConfiguration // nil with one replica
	networkPolicy       *networkingv1ac.NetworkPolicyApplyConfiguration   // nil when disabled
	serviceMonitor      *unstructured.Unstructured                        // nil when not wanted or not installed
}

// applyConfig is an apply configuration of a named object.
type applyConfig interface {
	runtime.ApplyConfiguration
	GetKind() *string
	GetName() *string
}

// objects lists what to apply, in an order in which each object's
// dependencies come first (the ServiceAccount and its RBAC before the
// pods that use them, the ConfigMap before the pods that mount it).
func (w *proxyWorkload) objects() []applyConfig {
	out := []applyConfig{
		w.serviceAccount, w.clusterRole, w.clusterRoleBinding, w.role, w.roleBinding,
		w.upstreams, w.service, w.metricsService, w.deployment,
	}
	if w.podDisruptionBudget != nil {
		out = append(out, w.podDisruptionBudget)
	}
	if w.networkPolicy != nil {
		out = append(out, w.networkPolicy)
	}
	return out
}

// workloadInput is what the workload is rendered from.
type workloadInput struct {
	Namespace     string // the operator's, where the proxy runs
	JWKSConfigMap string
	Config        *operatorconfig.OperatorConfig // defaulted and valid
	// Replicas is what runs: the configured count, or 1 when it needs a
	// shared counter store that is not configured.
	Replicas int32
	// ServiceMonitor is true when one is wanted and its CRD is installed.
	ServiceMonitor bool
	Rules          proxyRules
}

// clusterScopedName names the proxy's ClusterRole and ClusterRoleBinding:
// unique per install, since a cluster has one of each name.
func clusterScopedName(namespace, name string) string {
	return namespace + ":" + name
}

// metricsServiceName names the Service for Prometheus. It is separate from
// the API Service so that clients allowed to reach the API cannot read
// every user's metrics through it.
func metricsServiceName(name string) string { return name + "-metrics" }

func upstreamsConfigMapName(name string) string { return name + "-upstreams" }

// renderProxy builds the desired workload. It is pure: the same input gives
// the same objects, so an unchanged configuration applies no change.
func renderProxy(in workloadInput) *proxyWorkload {
	p := in.Config.Proxy
	ns, name := in.Namespace, p.Name
	labels := proxyLabels(name)
	clusterLabels := proxyLabels(name)
	clusterLabels[LabelProxyNamespace] = in.Namespace
	w := &proxyWorkload{}

	w.serviceAccount = corev1ac.ServiceAccount(name, ns).WithLabels(labels)
	subject := rbacv1ac.Subject().WithKind(rbacv1.ServiceAccountKind).WithName(name).WithNamespace(ns)
	w.clusterRole = rbacv1ac.ClusterRole(clusterScopedName(ns, name)).WithLabels(clusterLabels).WithRules(in.Rules.cluster...)
	w.clusterRoleBinding = rbacv1ac.ClusterRoleBinding(clusterScopedName(ns, name)).WithLabels(clusterLabels).
		WithRoleRef(rbacv1ac.RoleRef().WithAPIGroup(rbacv1.GroupName).WithKind("ClusterRole").WithName(clusterScopedName(ns, name))).
		WithSubjects(subject)
	// The published public keys, and nothing else in the namespace that
	// holds the signing keys.
	jwks := rbacv1ac.PolicyRule().WithAPIGroups("").WithResources("configmaps").
		WithResourceNames(in.JWKSConfigMap).WithVerbs("get", "list", "watch")
	w.role = rbacv1ac.Role(name, ns).WithLabels(labels).WithRules(append([]*rbacv1ac.PolicyRuleApplyConfiguration{jwks}, in.Rules.namespaced...)...)
	w.roleBinding = rbacv1ac.RoleBinding(name, ns).WithLabels(labels).
		WithRoleRef(rbacv1ac.RoleRef().WithAPIGroup(rbacv1.GroupName).WithKind("Role").WithName(name)).
		WithSubjects(subject)

	w.upstreams = corev1ac.ConfigMap(upstreamsConfigMapName(name), ns).WithLabels(labels).
		WithData(map[string]string{UpstreamsKey: strings.Join(p.Upstreams, "\n") + "\n"})

	w.service = corev1ac.Service(name, ns).WithLabels(labels).WithSpec(corev1ac.ServiceSpec().
		WithSelector(proxySelector(name)).
		WithPorts(corev1ac.ServicePort().WithName("http").WithProtocol(corev1.ProtocolTCP).
			WithPort(p.Port).WithTargetPort(intstr.FromString("http"))))
	w.metricsService = corev1ac.Service(metricsServiceName(name), ns).WithLabels(labels).WithSpec(corev1ac.ServiceSpec().
		WithSelector(proxySelector(name)).
		WithPorts(corev1ac.ServicePort().WithName("metrics").WithProtocol(corev1.ProtocolTCP).
			WithPort(p.MetricsPort).WithTargetPort(intstr.FromString("metrics"))))

	w.deployment = renderDeployment(in, labels)

	if in.Replicas > 1 {
		w.podDisruptionBudget = policyv1ac.PodDisruptionBudget(name, ns).WithLabels(labels).
			WithSpec(policyv1ac.PodDisruptionBudgetSpec().
				WithSelector(metav1ac.LabelSelector().WithMatchLabels(proxySelector(name))).
				WithMaxUnavailable(intstr.FromInt32(1)).
				// A pod that is not ready anyway must not block a node drain.
				WithUnhealthyPodEvictionPolicy("AlwaysAllow"))
	}
	if *p.NetworkPolicy.Enabled {
		w.networkPolicy = renderNetworkPolicy(ns, name, labels, p.NetworkPolicy)
	}
	if in.ServiceMonitor {
		w.serviceMonitor = renderServiceMonitor(ns, name, labels, p.ServiceMonitorLabels)
	}
	return w
}

func renderDeployment(in workloadInput, labels map[string]string) *appsv1ac.DeploymentApplyConfiguration {
	p := in.Config.Proxy
	name := p.Name
	podLabels := proxyLabels(name)
	selector := metav1ac.LabelSelector().WithMatchLabels(proxySelector(name))

	container := corev1ac.Container().
		WithName(proxyContainer).
		WithImage(p.Image).
		WithImagePullPolicy(p.ImagePullPolicy).
		WithCommand(proxyCommand).
		WithArgs(proxyArgs(in)...).
		WithEnv(corev1ac.EnvVar().WithName("POD_NAMESPACE").
			WithValueFrom(corev1ac.EnvVarSource().WithFieldRef(corev1ac.ObjectFieldSelector().WithFieldPath("metadata.namespace")))).
		WithPorts(
			corev1ac.ContainerPort().WithName("http").WithContainerPort(p.Port).WithProtocol(corev1.ProtocolTCP),
			corev1ac.ContainerPort().WithName("metrics").WithContainerPort(p.MetricsPort).WithProtocol(corev1.ProtocolTCP)).
		WithLivenessProbe(corev1ac.Probe().
			WithHTTPGet(corev1ac.HTTPGetAction().WithPath("/healthz").WithPort(intstr.FromString("metrics"))).
			WithPeriodSeconds(10).WithFailureThreshold(3)).
		WithReadinessProbe(corev1ac.Probe().
			WithHTTPGet(corev1ac.HTTPGetAction().WithPath("/readyz").WithPort(intstr.FromString("metrics"))).
			WithPeriodSeconds(5).WithFailureThreshold(2)).
		WithLifecycle(corev1ac.Lifecycle().WithPreStop(corev1ac.LifecycleHandler().
			WithSleep(corev1ac.SleepAction().WithSeconds(preStopSleep)))).
		WithResources(corev1ac.ResourceRequirements().
			WithRequests(p.Resources.Requests).WithLimits(p.Resources.Limits)).
		WithSecurityContext(corev1ac.SecurityContext().
			WithAllowPrivilegeEscalation(false).
			WithReadOnlyRootFilesystem(true).
			WithRunAsNonRoot(true).
			WithCapabilities(corev1ac.Capabilities().WithDrop("ALL"))).
		WithVolumeMounts(corev1ac.VolumeMount().WithName("upstreams").WithMountPath(UpstreamsMountPath).WithReadOnly(true))
	var volumes []*corev1ac.VolumeApplyConfiguration
	if r := p.Counter.Redis; p.Counter.Store == operatorconfig.CounterRedis {
		// The proxy reads the passwords from the environment, not from
		// flags, which would show in ps.
		// In a fixed order: the template must render the same every time.
		for _, e := range []struct {
			env string
			s   *corev1.SecretKeySelector
		}{{"REDIS_PASSWORD", r.PasswordSecret}, {"REDIS_SENTINEL_PASSWORD", r.SentinelPasswordSecret}} {
			if s := e.s; s != nil {
				container.WithEnv(corev1ac.EnvVar().WithName(e.env).
					WithValueFrom(corev1ac.EnvVarSource().WithSecretKeyRef(corev1ac.SecretKeySelector().WithName(s.Name).WithKey(s.Key))))
			}
		}
		if s := r.CASecret; s != nil && r.TLS {
			container.WithVolumeMounts(corev1ac.VolumeMount().WithName("redis-ca").WithMountPath(redisCADir).WithReadOnly(true))
			volumes = append(volumes, corev1ac.Volume().WithName("redis-ca").WithSecret(corev1ac.SecretVolumeSource().
				WithSecretName(s.Name).WithItems(corev1ac.KeyToPath().WithKey(s.Key).WithPath("ca.crt"))))
		}
		if r.ClientCertSecret != "" && r.TLS {
			container.WithVolumeMounts(corev1ac.VolumeMount().WithName("redis-client-tls").WithMountPath(redisClientTLSDir).WithReadOnly(true))
			volumes = append(volumes, corev1ac.Volume().WithName("redis-client-tls").WithSecret(corev1ac.SecretVolumeSource().
				WithSecretName(r.ClientCertSecret).WithItems(
				corev1ac.KeyToPath().WithKey(corev1.TLSCertKey).WithPath(corev1.TLSCertKey),
				corev1ac.KeyToPath().WithKey(corev1.TLSPrivateKeyKey).WithPath(corev1.TLSPrivateKeyKey))))
		}
	}

	spec := corev1ac.PodSpec().
		WithServiceAccountName(name).
		WithAutomountServiceAccountToken(true).
		WithEnableServiceLinks(false).
		WithTerminationGracePeriodSeconds(terminationGracePeriod(p.ShutdownGrace.Seconds())).
		WithSecurityContext(corev1ac.PodSecurityContext().
			WithRunAsNonRoot(true).
			WithSeccompProfile(corev1ac.SeccompProfile().WithType(corev1.SeccompProfileTypeRuntimeDefault))).
		WithContainers(container).
		WithVolumes(corev1ac.Volume().WithName("upstreams").
			WithConfigMap(corev1ac.ConfigMapVolumeSource().WithName(upstreamsConfigMapName(name)))).
		WithVolumes(volumes...)
	if len(p.NodeSelector) > 0 {
		spec.WithNodeSelector(p.NodeSelector)
	}
	for i := range p.Tolerations {
		spec.WithTolerations(toleration(p.Tolerations[i]))
	}
	for _, c := range topologySpread(p.TopologySpreadConstraints, name) {
		spec.WithTopologySpreadConstraints(c)
	}
	tmpl := corev1ac.PodTemplateSpec().WithLabels(podLabels).WithSpec(spec)
	if len(p.PodAnnotations) > 0 {
		tmpl.WithAnnotations(p.PodAnnotations)
	}
	return appsv1ac.Deployment(name, in.Namespace).WithLabels(labels).WithSpec(appsv1ac.DeploymentSpec().
		WithReplicas(in.Replicas).
		WithSelector(selector).
		// Never below the wanted count during a rollout: with one replica
		// there is always a ready proxy.
		WithStrategy(appsv1ac.DeploymentStrategy().WithType(appsv1.RollingUpdateDeploymentStrategyType).
			WithRollingUpdate(appsv1ac.RollingUpdateDeployment().
				WithMaxUnavailable(intstr.FromInt32(0)).WithMaxSurge(intstr.FromInt32(1)))).
		WithTemplate(tmpl))
}

// terminationGracePeriod leaves the pod the preStop sleep, the shutdown
// grace and the final flush before the kubelet kills it.
func terminationGracePeriod(graceSeconds float64) int64 {
	return preStopSleep + int64(math.Ceil(graceSeconds)) + finalFlushSeconds
}

// proxyArgs are every setting but the upstreams: changing one changes the
// pod template, which rolls the Deployment. The order is fixed so that an
// unchanged configuration renders the same template.
func proxyArgs(in workloadInput) []string {
	c := in.Config
	p := c.Proxy
	dur := func(flag string, d interface{ String() string }) string { return "--" + flag + "=" + d.String() }
	args := []string{
		"--listen-address=:" + strconv.Itoa(int(p.Port)),
		"--metrics-bind-address=:" + strconv.Itoa(int(p.MetricsPort)),
		"--upstreams-file=" + UpstreamsFile,
		"--jwks-configmap=" + in.JWKSConfigMap,
		"--issuer=" + c.Issuer,
		"--audience=" + c.Audience,
		"--refresh-url=" + p.RefreshURL,
		"--counter=" + string(p.Counter.Store),
	}
	if r := p.Counter.Redis; p.Counter.Store == operatorconfig.CounterRedis {
		switch r.Mode {
		case operatorconfig.RedisSentinel, operatorconfig.RedisCluster:
			args = append(args, "--redis-mode="+string(r.Mode), "--redis-addrs="+strings.Join(r.Addresses, ","))
			if r.MasterName != "" {
				args = append(args, "--redis-master-name="+r.MasterName)
			}
		default:
			args = append(args, "--redis-addr="+r.Address)
		}
		if r.TLS {
			args = append(args, "--redis-tls=true")
			if r.CASecret != nil {
				args = append(args, "--redis-tls-ca-file="+redisCADir+"/ca.crt")
			}
			if r.ClientCertSecret != "" {
				args = append(args, "--redis-tls-cert-file="+redisClientTLSDir+"/"+corev1.TLSCertKey,
					"--redis-tls-key-file="+redisClientTLSDir+"/"+corev1.TLSPrivateKeyKey)
			}
		}
		args = append(args,
			"--redis-fail-open="+strconv.FormatBool(r.FailOpen),
			dur("redis-lease", r.Lease.Duration))
	}
	args = append(args,
		dur("flush-interval", p.FlushInterval.Duration),
		"--status-write-rate="+strconv.Itoa(int(p.StatusWriteRate)),
		dur("shutdown-grace", p.ShutdownGrace.Duration),
		"--metrics-user-label="+strconv.FormatBool(*p.Metrics.UserLabel),
		"--metrics-user-budgets="+p.Metrics.UserBudgets,
		"--max-request-body="+strconv.FormatInt(p.Limits.MaxRequestBody, 10),
		"--max-body-memory="+strconv.FormatInt(p.Limits.MaxBodyMemory, 10),
		"--default-max-tokens="+strconv.FormatInt(p.Limits.DefaultMaxTokens, 10),
		dur("body-read-timeout", p.Timeouts.BodyRead.Duration),
		dur("idle-timeout", p.Timeouts.Idle.Duration),
		dur("write-timeout", p.Timeouts.Write.Duration),
		dur("upstream-header-timeout", p.Timeouts.UpstreamHeader.Duration),
		dur("stream-idle-timeout", p.Timeouts.StreamIdle.Duration),
	)
	if p.Limits.MediaItemTokens > 0 {
		args = append(args, "--media-item-tokens="+strconv.FormatInt(p.Limits.MediaItemTokens, 10))
	}
	if fq := p.FairQueue; fq.MaxInFlight > 0 || len(fq.PerUpstream) > 0 {
		args = append(args, "--max-in-flight-per-upstream="+strconv.Itoa(int(fq.MaxInFlight)))
		if len(fq.PerUpstream) > 0 {
			var per []string
			for _, u := range slices.Sorted(maps.Keys(fq.PerUpstream)) {
				per = append(per, u+"="+strconv.Itoa(int(fq.PerUpstream[u])))
			}
			args = append(args, "--upstream-max-in-flight="+strings.Join(per, ","))
		}
		if fq.ReservedSlots > 0 {
			args = append(args, "--reserved-slots="+strconv.Itoa(int(fq.ReservedSlots)))
		}
		args = append(args, dur("queue-timeout", fq.QueueTimeout.Duration),
			"--max-queued="+strconv.Itoa(int(fq.MaxQueued)),
			"--max-queued-per-user="+strconv.Itoa(int(fq.MaxQueuedPerUser)))
	}
	if p.InferenceObjectivePrefix != "" {
		args = append(args, "--inference-objective-prefix="+p.InferenceObjectivePrefix)
	}
	if len(p.KVTransferUpstreams) > 0 {
		args = append(args, "--kv-transfer-upstreams="+strings.Join(p.KVTransferUpstreams, ","))
	}
	// The proxy reads its limit from the cgroup too; saying it keeps the Go
	// runtime's soft limit right where the cgroup is not mounted as usual.
	if m, ok := p.Resources.Limits[corev1.ResourceMemory]; ok {
		args = append(args, "--memory-limit="+m.String())
	}
	return append(args, p.ExtraArgs...)
}

// topologySpread spreads the proxy pods over nodes and zones as a
// preference, unless the configuration says otherwise. matchLabelKeys keeps
// a rollout's new pods from counting the old ones.
func topologySpread(configured []corev1.TopologySpreadConstraint, name string) []*corev1ac.TopologySpreadConstraintApplyConfiguration {
	var out []*corev1ac.TopologySpreadConstraintApplyConfiguration
	if len(configured) == 0 {
		for _, key := range []string{corev1.LabelHostname, corev1.LabelTopologyZone} {
			out = append(out, corev1ac.TopologySpreadConstraint().
				WithMaxSkew(1).WithTopologyKey(key).WithWhenUnsatisfiable(corev1.ScheduleAnyway).
				WithLabelSelector(metav1ac.LabelSelector().WithMatchLabels(proxySelector(name))).
				WithMatchLabelKeys(appsv1.DefaultDeploymentUniqueLabelKey))
		}
		return out
	}
	for _, c := range configured {
		ac := corev1ac.TopologySpreadConstraint().
			WithMaxSkew(c.MaxSkew).WithTopologyKey(c.TopologyKey).WithWhenUnsatisfiable(c.WhenUnsatisfiable).
			WithMatchLabelKeys(c.MatchLabelKeys...)
		if c.LabelSelector != nil {
			ac.WithLabelSelector(labelSelector(c.LabelSelector.MatchLabels, c.LabelSelector.MatchExpressions))
		} else {
			ac.WithLabelSelector(metav1ac.LabelSelector().WithMatchLabels(proxySelector(name)))
		}
		if c.MinDomains != nil {
			ac.WithMinDomains(*c.MinDomains)
		}
		out = append(out, ac)
	}
	return out
}

func labelSelector(matchLabels map[string]string, exprs []metav1.LabelSelectorRequirement) *metav1ac.LabelSelectorApplyConfiguration {
	ac := metav1ac.LabelSelector()
	if len(matchLabels) > 0 {
		ac.WithMatchLabels(matchLabels)
	}
	for _, e := range exprs {
		ac.WithMatchExpressions(metav1ac.LabelSelectorRequirement().WithKey(e.Key).WithOperator(e.Operator).WithValues(e.Values...))
	}
	return ac
}

func toleration(t corev1.Toleration) *corev1ac.TolerationApplyConfiguration {
	ac := corev1ac.Toleration().WithKey(t.Key).WithOperator(t.Operator).WithValue(t.Value).WithEffect(t.Effect)
	if t.TolerationSeconds != nil {
		ac.WithTolerationSeconds(*t.TolerationSeconds)
	}
	return ac
}

func renderNetworkPolicy(ns, name string, labels map[string]string, np operatorconfig.NetworkPolicy) *networkingv1ac.NetworkPolicyApplyConfiguration {
	sel := func(s *metav1.LabelSelector) *metav1ac.LabelSelectorApplyConfiguration {
		return labelSelector(s.MatchLabels, s.MatchExpressions)
	}
	tcp := corev1.ProtocolTCP
	return networkingv1ac.NetworkPolicy(name, ns).WithLabels(labels).WithSpec(networkingv1ac.NetworkPolicySpec().
		WithPodSelector(metav1ac.LabelSelector().WithMatchLabels(proxySelector(name))).
		WithPolicyTypes("Ingress").
		WithIngress(
			networkingv1ac.NetworkPolicyIngressRule().
				WithFrom(networkingv1ac.NetworkPolicyPeer().WithNamespaceSelector(sel(np.ClientNamespaceSelector))).
				WithPorts(networkingv1ac.NetworkPolicyPort().WithProtocol(tcp).WithPort(intstr.FromString("http"))),
			networkingv1ac.NetworkPolicyIngressRule().
				WithFrom(networkingv1ac.NetworkPolicyPeer().
					WithNamespaceSelector(sel(np.PrometheusNamespaceSelector)).
					WithPodSelector(sel(np.PrometheusPodSelector))).
				WithPorts(networkingv1ac.NetworkPolicyPort().WithProtocol(tcp).WithPort(intstr.FromString("metrics")))))
}

// renderServiceMonitor is unstructured: the Prometheus Operator's types are
// not a dependency worth taking for one object.
func renderServiceMonitor(ns, name string, labels, extra map[string]string) *unstructured.Unstructured {
	all := map[string]any{}
	for k, v := range labels {
		all[k] = v
	}
	for k, v := range extra {
		all[k] = v
	}
	match := map[string]any{}
	for k, v := range proxySelector(name) {
		match[k] = v
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "monitoring.coreos.com/v1",
		"kind":       "ServiceMonitor",
		"metadata":   map[string]any{"name": name, "namespace": ns, "labels": all},
		"spec": map[string]any{
			"selector": map[string]any{"matchLabels": match},
			// honorLabels keeps the proxy's namespace and user labels (the
			// user's namespace), which Prometheus would otherwise rename to
			// exported_namespace in favour of the proxy pod's namespace.
			"endpoints": []any{map[string]any{"port": "metrics", "path": "/metrics", "honorLabels": true}},
		},
	}}
}

// proxyRules are the proxy's RBAC rules as generated from its markers.
type proxyRules struct {
	cluster    []*rbacv1ac.PolicyRuleApplyConfiguration // from the generated ClusterRole
	namespaced []*rbacv1ac.PolicyRuleApplyConfiguration // from generated Roles, granted in the operator's namespace
}

// loadProxyRules reads the embedded config/rbac/proxy/role.yaml.
func loadProxyRules() (proxyRules, error) {
	return parseProxyRules(proxyrbac.RoleYAML)
}

func parseProxyRules(data []byte) (proxyRules, error) {
	var out proxyRules
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var doc struct {
			Kind  string              `json:"kind"`
			Rules []rbacv1.PolicyRule `json:"rules"`
		}
		if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return out, fmt.Errorf("config/rbac/proxy/role.yaml: %w", err)
		}
		var into *[]*rbacv1ac.PolicyRuleApplyConfiguration
		switch doc.Kind {
		case "ClusterRole":
			into = &out.cluster
		case "Role":
			into = &out.namespaced
		case "":
			continue
		default:
			return out, fmt.Errorf("config/rbac/proxy/role.yaml: unexpected kind %q", doc.Kind)
		}
		for _, r := range doc.Rules {
			*into = append(*into, rbacv1ac.PolicyRule().WithAPIGroups(r.APIGroups...).WithResources(r.Resources...).
				WithResourceNames(r.ResourceNames...).WithVerbs(r.Verbs...).WithNonResourceURLs(r.NonResourceURLs...))
		}
	}
	if len(out.cluster) == 0 {
		return out, errors.New("config/rbac/proxy/role.yaml has no ClusterRole rules: run make manifests")
	}
	return out, nil
}
