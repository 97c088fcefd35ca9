package chart_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/llm-user-operator/llm-user-operator/internal/operatorconfig"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
	"github.com/llm-user-operator/llm-user-operator/test/harness"
)

// The image the chart runs by default: the repository and the chart's
// appVersion.
const defaultImage = "ghcr.io/llm-user-operator/llm-user-operator:0.1.0"

func testLint(t *testing.T) {
	for _, values := range [][]string{nil, {"ha-redis.yaml"}} {
		args := []string{"lint", "--strict", chartDir()}
		for _, v := range values {
			args = append(args, "--values", filepath.Join("testdata", v))
		}
		if out, err := helm(t, args...); err != nil {
			t.Errorf("helm lint with %v: %v\n%s", values, err, out)
		}
	}
}

// testSchema checks that values.schema.json refuses wrong types, unknown
// keys and malformed durations, naming the field, and that the templates
// refuse combinations the schema cannot express.
func testSchema(t *testing.T) {
	for _, tc := range []struct {
		file string
		set  []string
		want []string // substrings of helm's error
	}{
		{file: "invalid-type.yaml", want: []string{"at '/proxy/replicas': got string, want integer"}},
		{file: "unknown-key.yaml", want: []string{"at '/proxy': additional properties 'replica' not allowed"}},
		{file: "unknown-top-level-key.yaml", want: []string{"additional properties 'replicas' not allowed"}},
		{file: "invalid-duration.yaml", want: []string{"at '/operator/keyRotationPeriod': 'thirty days' does not match pattern"}},
		{file: "invalid-enum.yaml", want: []string{"at '/proxy/counter/store': value must be one of 'memory', 'redis'"}},
		{set: []string{"proxy.fairQueue.maxInFlight=-1"}, want: []string{"at '/proxy/fairQueue/maxInFlight': minimum: got -1, want 0"}},
		{set: []string{"proxy.fairQueue.reservedSlots=-2"}, want: []string{"at '/proxy/fairQueue/reservedSlots': minimum: got -2, want 0"}},
		{set: []string{"proxy.replicas=2"}, want: []string{"proxy.replicas > 1 needs a shared counter store: set redis.enabled=true"}},
		{set: []string{"proxy.counter.store=redis"}, want: []string{"proxy.counter.store=redis needs proxy.counter.redis.address"}},
		{set: []string{"proxy.counter.redis.passwordSecret.name=auth"}, want: []string{"at '/proxy/counter/redis/passwordSecret': missing property 'key'"}},
		{set: []string{"proxy.counter.redis.caSecret.key=ca.crt"}, want: []string{"at '/proxy/counter/redis/caSecret': missing property 'name'"}},
		{set: []string{"proxy.counter.redis.mode=ring"}, want: []string{"at '/proxy/counter/redis/mode': value must be one of 'standalone', 'sentinel', 'cluster'"}},
		{set: []string{"proxy.counter.store=redis", "proxy.counter.redis.mode=cluster"}, want: []string{"proxy.counter.redis.mode=cluster needs proxy.counter.redis.addresses"}},
		{set: []string{"redis.enabled=true", "proxy.counter.redis.mode=cluster", "proxy.counter.redis.addresses={r:6379}"}, want: []string{"redis.enabled runs one standalone Redis, but proxy.counter.redis.mode is cluster"}},
	} {
		name := tc.file
		if name == "" {
			name = strings.Join(tc.set, ",")
		}
		t.Run(name, func(t *testing.T) {
			var files []string
			if tc.file != "" {
				files = []string{tc.file}
			}
			_, err := render(t, "llm", "llm", files, tc.set...)
			if err == nil {
				t.Fatal("helm template accepted the values, want a refusal")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

func testDefaults(t *testing.T, env *envtest.Env) {
	objs := mustRender(t, "llm", "llm", nil)

	// The operator reconciles the proxy: the chart ships no proxy workload.
	if n := count(objs, "Deployment"); n != 1 {
		t.Errorf("%d Deployments, want only the operator's: %s", n, names(objs))
	}
	for _, kind := range []string{"PrometheusRule", "ServiceMonitor", "PodDisruptionBudget", "NetworkPolicy"} {
		if n := count(objs, kind); n != 0 {
			t.Errorf("%d %s by default, want none", n, kind)
		}
	}
	svc := find(t, objs, "Service", "llm-operator")
	if n := count(objs, "Service"); n != 1 {
		t.Errorf("%d Services, want only llm-operator: %s", n, names(objs))
	}
	ports, _, _ := unstructured.NestedSlice(svc.Object, "spec", "ports")
	if len(ports) != 2 {
		t.Errorf("operator Service ports = %v, want refresh and metrics", ports)
	}

	// The dashboards, for the Grafana sidecar.
	for name, uid := range map[string]string{"llm-dashboard-admin": "llm-user-operator-admin", "llm-dashboard-my-usage": "llm-user-operator-my-usage"} {
		cm := find(t, objs, "ConfigMap", name)
		if got := cm.GetLabels()["grafana_dashboard"]; got != "1" {
			t.Errorf("%s label grafana_dashboard = %q, want \"1\"", name, got)
		}
		data, _, _ := unstructured.NestedStringMap(cm.Object, "data")
		var d struct {
			UID string `json:"uid"`
		}
		if len(data) != 1 {
			t.Fatalf("%s holds %d files, want one dashboard", name, len(data))
		}
		for _, v := range data {
			if err := json.Unmarshal([]byte(v), &d); err != nil || d.UID != uid {
				t.Errorf("%s: dashboard uid %q (%v), want %q", name, d.UID, err, uid)
			}
		}
	}

	dep := find(t, objs, "Deployment", "llm-operator")
	c := container(t, dep, "manager")
	if c.Image != defaultImage {
		t.Errorf("operator image = %q, want %q (the chart's appVersion)", c.Image, defaultImage)
	}
	if got := envValue(c, "OPERATOR_IMAGE"); got != defaultImage {
		t.Errorf("OPERATOR_IMAGE = %q, want %q", got, defaultImage)
	}
	if !slices.Contains(c.Args, "--config=/etc/llm-user-operator/config.yaml") {
		t.Errorf("operator args %v lack --config=/etc/llm-user-operator/config.yaml", c.Args)
	}
	if len(c.VolumeMounts) != 1 || c.VolumeMounts[0].MountPath != "/etc/llm-user-operator" {
		t.Errorf("operator mounts = %+v, want the config at /etc/llm-user-operator", c.VolumeMounts)
	}

	cfg, raw, oc := operatorConfig(t, find(t, objs, "ConfigMap", "llm-operator-config"))
	for path, want := range map[string]any{
		"apiVersion":                                  "config.llm.userops.dev/v1alpha1",
		"kind":                                        "OperatorConfig",
		"issuer":                                      "https://llm-operator.llm.svc",
		"audience":                                    "llm-user-proxy",
		"proxy.replicas":                              int64(1),
		"proxy.counter.store":                         "memory",
		"proxy.counter.redis.address":                 "",
		"proxy.limits.maxBodyMemory":                  int64(268435456),
		"proxy.serviceMonitor":                        "auto",
		"proxy.networkPolicy.enabled":                 true,
		"proxy.metrics.userLabel":                     true,
		"proxy.timeouts.upstreamHeader":               "10m",
		"proxy.fairQueue.maxInFlight":                 int64(0),
		"proxy.fairQueue.queueTimeout":                "30s",
		"proxy.fairQueue.reservedSlots":               int64(0),
		"proxy.resources.limits.memory":               "512Mi",
		"proxy.upstreams":                             []any{"http://vllm.vllm.svc:8000"},
		"proxy.networkPolicy.clientNamespaceSelector": map[string]any{},
	} {
		if got := lookup(cfg, path); !reflect.DeepEqual(got, want) {
			t.Errorf("config %s = %#v, want %#v", path, got, want)
		}
	}
	// The proxies reach /auth/refresh and the issuer through the Service the
	// chart creates.
	if want := "http://llm-operator.llm.svc:8082/auth/refresh"; oc.Proxy.RefreshURL != want {
		t.Errorf("the operator would send the proxy's refreshes to %q, want the chart's Service %q", oc.Proxy.RefreshURL, want)
	}
	// Large integers must stay integers for the operator's strict decoding.
	if !strings.Contains(raw, "maxBodyMemory: 268435456\n") {
		t.Errorf("config.yaml does not spell maxBodyMemory as an integer:\n%s", raw)
	}

	// The operator's ClusterRole is the generated one, rule for rule.
	role := find(t, objs, "ClusterRole", "llm-operator")
	if got, want := role.Object["rules"], generatedRules(t, filepath.Join("config", "rbac", "role.yaml")); !reflect.DeepEqual(got, want) {
		t.Errorf("the chart's operator ClusterRole differs from config/rbac/role.yaml (run make manifests):\n got %v\nwant %v", got, want)
	}

	// CRDs are the generated ones, installed from crds/ (which helm never
	// deletes on uninstall).
	for _, f := range []string{"llm.userops.dev_llmusers.yaml", "llm.userops.dev_llmquotas.yaml"} {
		gen, err := os.ReadFile(filepath.Join(envtest.RepoRoot(), "config", "crd", "bases", f))
		if err != nil {
			t.Fatal(err)
		}
		chart, err := os.ReadFile(filepath.Join(chartDir(), "crds", f))
		if err != nil || !bytes.Equal(gen, chart) {
			t.Errorf("charts/llm-user-operator/crds/%s differs from config/crd/bases (run make manifests): %v", f, err)
		}
	}
	if n := count(objs, "CustomResourceDefinition"); n != 2 {
		t.Errorf("%d CRDs rendered, want LLMUser and LLMQuota", n)
	}

	envtest.EnsureNamespace(t, env.Client, "llm")
	apply(t, env, objs)
	for _, u := range objs {
		mustExist(t, env, u)
	}
}

// testRedisCluster renders several replicas on a Redis Cluster: the
// operator gets the mode and the nodes, and would accept them.
func testRedisCluster(t *testing.T) {
	objs := mustRender(t, "llm-rc", "llm-rc", nil, "proxy.replicas=3", "proxy.counter.store=redis",
		"proxy.counter.redis.mode=cluster", "proxy.counter.redis.addresses={redis-0.redis:6379,redis-1.redis:6379}",
		"proxy.counter.redis.tls=true", "proxy.counter.redis.passwordSecret.name=redis-auth", "proxy.counter.redis.passwordSecret.key=password",
		"proxy.counter.redis.caSecret.name=redis-tls", "proxy.counter.redis.caSecret.key=ca.crt", "proxy.counter.redis.clientCertSecret=proxy-redis-client")
	cfg, _, oc := operatorConfig(t, find(t, objs, "ConfigMap", "llm-rc-operator-config"))
	for path, want := range map[string]any{
		"proxy.counter.store":           "redis",
		"proxy.counter.redis.mode":      "cluster",
		"proxy.counter.redis.addresses": []any{"redis-0.redis:6379", "redis-1.redis:6379"},
	} {
		if got := lookup(cfg, path); !reflect.DeepEqual(got, want) {
			t.Errorf("config %s = %#v, want %#v", path, got, want)
		}
	}
	if r := oc.Proxy.Counter.Redis; r.Mode != operatorconfig.RedisCluster || len(r.Addresses) != 2 || !r.TLS ||
		r.PasswordSecret == nil || r.PasswordSecret.Name != "redis-auth" || r.PasswordSecret.Key != "password" ||
		r.CASecret == nil || r.CASecret.Name != "redis-tls" || r.CASecret.Key != "ca.crt" || r.ClientCertSecret != "proxy-redis-client" {
		t.Errorf("the operator reads redis %+v", r)
	}
}

// testHighAvailability renders several replicas on the chart's Redis with
// every monitoring object enabled, and applies it beside the default release.
func testHighAvailability(t *testing.T, env *envtest.Env) {
	objs := mustRender(t, "llm-ha", "llm-ha", []string{"ha-redis.yaml"})
	cfg, _, _ := operatorConfig(t, find(t, objs, "ConfigMap", "llm-ha-operator-config"))
	for path, want := range map[string]any{
		"proxy.replicas":              int64(3),
		"proxy.counter.store":         "redis",
		"proxy.counter.redis.address": "llm-ha-redis.llm-ha.svc:6379",
		"proxy.upstreams":             []any{"http://vllm-a.vllm.svc:8000", "http://vllm-b.vllm.svc:8000"},
	} {
		if got := lookup(cfg, path); !reflect.DeepEqual(got, want) {
			t.Errorf("config %s = %#v, want %#v", path, got, want)
		}
	}
	redis := find(t, objs, "Deployment", "llm-ha-redis")
	if c := container(t, redis, "redis"); c.SecurityContext == nil || c.SecurityContext.ReadOnlyRootFilesystem == nil || !*c.SecurityContext.ReadOnlyRootFilesystem {
		t.Errorf("redis container securityContext = %+v, want a read-only root filesystem", c.SecurityContext)
	}
	find(t, objs, "Service", "llm-ha-redis")
	np := find(t, objs, "NetworkPolicy", "llm-ha-redis")
	from, _, _ := unstructured.NestedSlice(np.Object, "spec", "ingress")
	if want := "map[from:[map[podSelector:map[matchLabels:map[app.kubernetes.io/component:proxy app.kubernetes.io/instance:llm-user-proxy]]]] ports:[map[port:6379 protocol:TCP]]]"; len(from) != 1 || fmt.Sprint(normalize(from[0])) != want {
		t.Errorf("Redis NetworkPolicy ingress = %v, want only the proxy pods: %s", from, want)
	}
	pdb := find(t, objs, "PodDisruptionBudget", "llm-ha-operator")
	if v, _, _ := unstructured.NestedFieldNoCopy(pdb.Object, "spec", "maxUnavailable"); normalize(v) != int64(1) {
		t.Errorf("operator PDB maxUnavailable = %v, want 1", v)
	}
	sm := find(t, objs, "ServiceMonitor", "llm-ha-operator")
	if got := sm.GetLabels()["release"]; got != "kube-prometheus-stack" {
		t.Errorf("ServiceMonitor label release = %q, want the value's kube-prometheus-stack", got)
	}
	rule := find(t, objs, "PrometheusRule", "llm-ha")
	if groups, _, _ := unstructured.NestedSlice(rule.Object, "spec", "groups"); len(groups) == 0 {
		t.Errorf("PrometheusRule has no rule groups")
	}
	if got := envValue(container(t, find(t, objs, "Deployment", "llm-ha-operator"), "manager"), "OPERATOR_IMAGE"); got != "registry.example/llm-user-operator:v9.9.9" {
		t.Errorf("OPERATOR_IMAGE = %q, want the image the values set", got)
	}

	envtest.EnsureNamespace(t, env.Client, "llm-ha")
	apply(t, env, objs)
	for _, u := range objs {
		mustExist(t, env, u)
	}
}

// testNotes installs the chart with helm itself (server-side dry run, so
// against the API server's capabilities) and reads the notes an admin sees.
func testNotes(t *testing.T, env *envtest.Env) {
	envtest.EnsureNamespace(t, env.Client, "llm-notes")
	out, err := helm(t, "install", "llm-notes", chartDir(), "--namespace", "llm-notes", "--dry-run=server", "--kubeconfig", env.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	_, notes, ok := strings.Cut(out, "NOTES:\n")
	if !ok {
		t.Fatalf("helm install printed no NOTES:\n%s", out)
	}
	for _, want := range []string{
		"kind: LLMQuota", "kind: LLMUser", "quotaRef: {name: team-default}",
		"envFrom: [{secretRef: {name: alice-llm-token}}]",
		"kubectl -n my-team get secret alice-llm-token -o jsonpath='{.data.OPENAI_API_KEY}'",
		"kubectl -n llm-notes get deployment llm-user-proxy",
		"http://vllm.vllm.svc:8000",
	} {
		if !strings.Contains(notes, want) {
			t.Errorf("NOTES lack %q:\n%s", want, notes)
		}
	}
}

// testKustomize renders config/default and applies it: the install without
// Helm stays valid and ships the same RBAC.
func testKustomize(t *testing.T, env *envtest.Env) {
	kubectl := kubectlBinary(t)
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(t.Context(), kubectl, "kustomize", filepath.Join(envtest.RepoRoot(), "config", "default"))
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl kustomize config/default: %v\n%s", err, stderr.String())
	}
	objs := decodeAll(t, stdout.String())

	if n := count(objs, "Deployment"); n != 1 {
		t.Errorf("%d Deployments, want only the operator's: %s", n, names(objs))
	}
	dep := find(t, objs, "Deployment", "llm-user-operator-controller-manager")
	c := container(t, dep, "manager")
	if want := "ghcr.io/llm-user-operator/llm-user-operator:dev"; c.Image != want || envValue(c, "OPERATOR_IMAGE") != want {
		t.Errorf("image %q, OPERATOR_IMAGE %q, want both %q", c.Image, envValue(c, "OPERATOR_IMAGE"), want)
	}
	var cm *unstructured.Unstructured
	for _, u := range objs {
		if u.GetKind() == "ConfigMap" && strings.HasPrefix(u.GetName(), "llm-user-operator-operator-config-") {
			cm = u
		}
	}
	if cm == nil {
		t.Fatalf("no operator config ConfigMap: %s", names(objs))
	}
	cfg, _, _ := operatorConfig(t, cm)
	if got, want := lookup(cfg, "issuer"), "https://llm-user-operator-operator.llm-user-operator-system.svc"; got != want {
		t.Errorf("issuer = %v, want %v: the operator Service's name", got, want)
	}
	if got, want := lookup(cfg, "operatorService"), "llm-user-operator-operator"; got != want {
		t.Errorf("operatorService = %v, want %v", got, want)
	}
	find(t, objs, "Service", "llm-user-operator-operator")
	role := find(t, objs, "ClusterRole", "llm-user-operator-manager-role")
	if got, want := role.Object["rules"], generatedRules(t, filepath.Join("config", "rbac", "role.yaml")); !reflect.DeepEqual(got, want) {
		t.Errorf("config/default's operator ClusterRole differs from config/rbac/role.yaml")
	}
	for _, name := range []string{"llm-user-operator-tenant-editor-role", "llm-user-operator-tenant-viewer-role"} {
		find(t, objs, "ClusterRole", name)
	}

	apply(t, env, objs)
	for _, u := range objs {
		mustExist(t, env, u)
	}
}

// container decodes a Deployment's pod template and returns its container
// name.
func container(t *testing.T, dep *unstructured.Unstructured, name string) corev1.Container {
	t.Helper()
	tmpl, _, _ := unstructured.NestedMap(dep.Object, "spec", "template")
	var pod corev1.PodTemplateSpec
	data, _ := yaml.Marshal(tmpl)
	if err := yaml.UnmarshalStrict(data, &pod); err != nil {
		t.Fatalf("%s's pod template: %v", dep.GetName(), err)
	}
	for _, c := range pod.Spec.Containers {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("%s has no container %q", dep.GetName(), name)
	return corev1.Container{}
}

func envValue(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// operatorConfig parses the config.yaml of the operator's ConfigMap, first
// as the operator does (strictly: an unknown field is an error; then
// defaulted and validated), then as plain YAML for the tests to read.
func operatorConfig(t *testing.T, cm *unstructured.Unstructured) (map[string]any, string, *operatorconfig.OperatorConfig) {
	t.Helper()
	raw, ok, _ := unstructured.NestedString(cm.Object, "data", "config.yaml")
	if !ok {
		t.Fatalf("ConfigMap %s has no config.yaml", cm.GetName())
	}
	oc, err := operatorconfig.Parse([]byte(raw))
	if err != nil {
		t.Fatalf("the operator would refuse %s's config.yaml: %v\n%s", cm.GetName(), err, raw)
	}
	oc.Default(cm.GetNamespace(), defaultImage)
	if err := oc.Validate(); err != nil {
		t.Errorf("the operator would refuse %s's config.yaml: %v\n%s", cm.GetName(), err, raw)
	}
	if problem := oc.Proxy.SharedCounterProblem(); problem != "" {
		t.Errorf("%s: %s", cm.GetName(), problem)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(raw), &cfg); err != nil {
		t.Fatalf("config.yaml: %v\n%s", err, raw)
	}
	return normalize(cfg).(map[string]any), raw, oc
}

// normalize turns the float64 numbers of JSON-decoded YAML into int64 where
// they are whole, so expectations can be written as integers.
func normalize(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = normalize(e)
		}
	case []any:
		for i, e := range x {
			x[i] = normalize(e)
		}
	case float64:
		if x == float64(int64(x)) {
			return int64(x)
		}
	}
	return v
}

// lookup follows a dotted path through nested maps.
func lookup(m map[string]any, path string) any {
	var v any = m
	for p := range strings.SplitSeq(path, ".") {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = mm[p]
	}
	return v
}

// generatedRules reads the rules of the ClusterRoles in a generated file,
// as the API would return them.
func generatedRules(t *testing.T, rel string) any {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(envtest.RepoRoot(), rel))
	if err != nil {
		t.Fatal(err)
	}
	var rules []any
	for _, u := range decodeAll(t, string(data)) {
		if u.GetKind() == "ClusterRole" {
			r, _, _ := unstructured.NestedSlice(u.Object, "rules")
			rules = append(rules, r...)
		}
	}
	return rules
}

// testRelease runs the Makefile's release targets as the release workflow
// does and checks that the packaged chart and the install manifests all
// carry the release's version as the image tag.
func testRelease(t *testing.T, env *envtest.Env) {
	const version, repo = "9.9.9", "registry.example/llmuo"
	dir := t.TempDir()
	args := []string{"-C", envtest.RepoRoot(), "release-chart", "release-manifests",
		"VERSION=" + version, "IMG_REPO=" + repo, "RELEASE_DIR=" + dir, "HELM=" + helmBinary(t), "KUBECTL=" + kubectlBinary(t)}
	if out, err := exec.CommandContext(t.Context(), "make", args...).CombinedOutput(); err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}

	out, err := helm(t, "template", "rel", filepath.Join(dir, "llm-user-operator-"+version+".tgz"), "--namespace", "rel", "--kube-version", kubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	c := container(t, find(t, decodeAll(t, out), "Deployment", "rel-operator"), "manager")
	if want := repo + ":" + version; c.Image != want || envValue(c, "OPERATOR_IMAGE") != want {
		t.Errorf("packaged chart: image %q, OPERATOR_IMAGE %q, want both %q", c.Image, envValue(c, "OPERATOR_IMAGE"), want)
	}
	if out, err := helm(t, "show", "chart", filepath.Join(dir, "llm-user-operator-"+version+".tgz")); err != nil || !strings.Contains(out, "version: "+version+"\n") || !strings.Contains(out, "appVersion: "+version+"\n") {
		t.Errorf("packaged Chart.yaml lacks version and appVersion %s: %v\n%s", version, err, out)
	}

	crds := decodeAll(t, readFile(t, filepath.Join(dir, "crds.yaml")))
	if n := count(crds, "CustomResourceDefinition"); n != 2 || len(crds) != 2 {
		t.Errorf("crds.yaml: %s, want the two CRDs only", names(crds))
	}
	install := decodeAll(t, readFile(t, filepath.Join(dir, "install.yaml")))
	c = container(t, find(t, install, "Deployment", "llm-user-operator-controller-manager"), "manager")
	if want := repo + ":" + version; c.Image != want || envValue(c, "OPERATOR_IMAGE") != want {
		t.Errorf("install.yaml: image %q, OPERATOR_IMAGE %q, want both %q", c.Image, envValue(c, "OPERATOR_IMAGE"), want)
	}
	apply(t, env, install)
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// kubectlBinary is the pinned kubectl (hack/kube-tools.sh), never the
// system's: Debian's is 1.20 and its kustomize knows no replacements.
func kubectlBinary(t *testing.T) string {
	t.Helper()
	return filepath.Join(harness.KubeTools(t), "kubectl")
}

// testHelmInstallUninstall installs the chart with helm itself, as an admin
// would, and uninstalls it: the release's objects go, the CRDs (and so every
// LLMUser and LLMQuota) stay.
func testHelmInstallUninstall(t *testing.T, env *envtest.Env) {
	ns := envtest.NewNamespace(t, env.Client, "helm")
	kc := []string{"--namespace", ns, "--kubeconfig", env.Kubeconfig}
	if out, err := helm(t, append([]string{"install", "real", chartDir()}, kc...)...); err != nil {
		t.Fatalf("helm install: %v\n%s", err, out)
	}
	dep := &appsv1.Deployment{}
	if err := env.Client.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: "real-operator"}, dep); err != nil {
		t.Fatalf("after helm install: %v", err)
	}
	if out, err := helm(t, append([]string{"uninstall", "real"}, kc...)...); err != nil {
		t.Fatalf("helm uninstall: %v\n%s", err, out)
	}
	if err := env.Client.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: "real-operator"}, dep); !apierrors.IsNotFound(err) {
		t.Errorf("the operator Deployment after helm uninstall: %v, want NotFound", err)
	}
	for _, crd := range []string{"llmusers.llm.userops.dev", "llmquotas.llm.userops.dev"} {
		u := &unstructured.Unstructured{}
		u.SetAPIVersion("apiextensions.k8s.io/v1")
		u.SetKind("CustomResourceDefinition")
		if err := env.Client.Get(t.Context(), client.ObjectKey{Name: crd}, u); err != nil {
			t.Errorf("CRD %s after helm uninstall: %v, want it kept", crd, err)
		}
	}
}
