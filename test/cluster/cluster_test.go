//go:build cluster

package cluster

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	llmv1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
)

// The names the journey uses. The images are the ones hack/cluster.sh up
// imports.
const (
	release    = "llmuo"
	system     = "llm-system"
	team       = "team-a"
	vllmNS     = "vllm"
	model      = "cluster-org/sim-chat-1b"
	proxyName  = "llm-user-proxy"
	operatorIM = "localhost/llm-user-operator"
	imageTag   = "dev"
	simImage   = "localhost/llm-d-inference-sim:dev"
	cliImage   = "localhost/cluster-client:dev"
	proxyLimit = "512Mi"
)

// report is what test/cluster/client prints as its last line.
type report struct {
	BaseURL          string   `json:"baseURL"`
	Requests         int      `json:"requests"`
	Failures         int      `json:"failures"`
	Errors           []string `json:"errors"`
	Tokens           int64    `json:"tokens"`
	Streamed         int64    `json:"streamed"`
	GetStatus        int      `json:"getStatus"`
	GetError         string   `json:"getError"`
	RefreshStatus    int      `json:"refreshStatus"`
	RefreshExpiresIn int64    `json:"refreshExpiresIn"`
}

type suite struct {
	c    client.Client
	repo string
	helm string
}

// TestCluster is the journey of issue 15 on a real node: the chart installed
// with helm, the operator and the proxy it reconciles Ready through their
// probes, a user's pod calling the proxy through its Service's DNS name with
// the key and base URL the token Secret gives it, usage in kubectl get
// llmusers, a rolling update and an operator restart under traffic, helm
// uninstall keeping the CRDs and the users. Run by make test-cluster, inside
// the node's network namespace (go test -exec 'hack/cluster.sh exec').
func TestCluster(t *testing.T) {
	kubeconfig := os.Getenv("KUBECONFIG")
	if kubeconfig == "" {
		t.Fatal("KUBECONFIG is not set: run this through make test-cluster (hack/cluster.sh)")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, llmv1.AddToScheme, apiextensionsv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	s := &suite{c: c, repo: repo, helm: os.Getenv("HELM")}
	if s.helm == "" {
		s.helm = filepath.Join(repo, "bin/helm")
	}
	t.Cleanup(func() {
		if t.Failed() {
			s.dump(t)
		}
	})
	// Left over by an earlier run on the same node.
	s.run(t, true, s.helm, "uninstall", release, "-n", system, "--wait", "--timeout", "2m")
	for _, ns := range []string{team, vllmNS, system} {
		s.kubectl(t, true, "delete", "namespace", ns, "--ignore-not-found", "--wait=true", "--timeout=3m")
	}

	if !t.Run("Install", s.testInstall) {
		t.FailNow()
	}
	if !t.Run("ProxyNotReadyWithoutModels", s.testNotReadyWithoutModels) {
		t.FailNow()
	}
	if !t.Run("ProxyReady", s.testProxyReady) {
		t.FailNow()
	}
	t.Run("PodsHoldTheirLimits", s.testPodsHoldTheirLimits)
	t.Run("MemoryLimitFromCgroup", s.testMemoryLimitFromCgroup)
	if !t.Run("ClientPod", s.testClientPod) {
		t.FailNow()
	}
	t.Run("NetworkPolicy", s.testNetworkPolicy)
	t.Run("RollingUpdate", s.testRollingUpdate)
	t.Run("OperatorRestart", s.testOperatorRestart)
	t.Run("Uninstall", s.testUninstall)
}

// testInstall: helm install the chart with the node's images, the proxy's
// upstream the simulator's Service (which does not exist yet).
func (s *suite) testInstall(t *testing.T) {
	s.run(t, false, s.helm, "install", release, filepath.Join(s.repo, "charts/llm-user-operator"),
		"-n", system, "--create-namespace",
		"--set", "image.repository="+operatorIM, "--set", "image.tag="+imageTag,
		"--set", "image.pullPolicy=Never", "--set", "proxy.imagePullPolicy=Never",
		"--set", "proxy.upstreams={http://vllm."+vllmNS+".svc:8000}",
		"--set", "proxy.flushInterval=2s",
		"--set", "proxy.resources.limits.memory="+proxyLimit)
	s.kubectl(t, false, "-n", system, "rollout", "status", "deploy/"+release+"-operator", "--timeout=3m")
	poll.Until(t, 2*time.Minute, func() error {
		var d appsv1.Deployment
		return s.c.Get(t.Context(), types.NamespacedName{Namespace: system, Name: proxyName}, &d)
	})
}

// testNotReadyWithoutModels: the proxy runs but is not Ready while no
// upstream answers with a model, so no Service sends it traffic.
func (s *suite) testNotReadyWithoutModels(t *testing.T) {
	var pod corev1.Pod
	poll.Until(t, 3*time.Minute, func() error {
		p, err := s.onePod(t, system, "app.kubernetes.io/name="+proxyName)
		if err != nil {
			return err
		}
		pod = p
		return poll.Check(running(p), "proxy pod "+p.Name+" not running yet")
	})
	// Its readiness probe runs every 5 s: after 15 s it has answered thrice.
	time.Sleep(15 * time.Second)
	if err := s.c.Get(t.Context(), client.ObjectKeyFromObject(&pod), &pod); err != nil {
		t.Fatal(err)
	}
	if ready(pod) || !running(pod) {
		t.Fatalf("proxy pod %s: running %v, ready %v: want running and not ready while no upstream has a model", pod.Name, running(pod), ready(pod))
	}
}

// testProxyReady: the simulator appears behind the upstream Service; the
// proxy learns its models and becomes Ready.
func (s *suite) testProxyReady(t *testing.T) {
	s.apply(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: vllmNS}})
	labels := map[string]string{"app": "vllm"}
	s.apply(t, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: vllmNS, Name: "vllm"},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					SecurityContext: &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true)},
					Containers: []corev1.Container{{
						Name: "vllm", Image: simImage, ImagePullPolicy: corev1.PullNever,
						Args:           []string{"--port", "8000", "--model", model, "--force-dummy-tokenizer", "--max-num-seqs", "1000"},
						Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: 8000}},
						ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/v1/models", Port: intstrName("http")}}, PeriodSeconds: 2},
					}},
				},
			},
		},
	})
	s.apply(t, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: vllmNS, Name: "vllm"},
		Spec:       corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Name: "http", Port: 8000, TargetPort: intstrName("http")}}},
	})
	s.kubectl(t, false, "-n", vllmNS, "rollout", "status", "deploy/vllm", "--timeout=3m")
	s.kubectl(t, false, "-n", system, "rollout", "status", "deploy/"+proxyName, "--timeout=3m")
	poll.Until(t, 2*time.Minute, func() error {
		p, err := s.onePod(t, system, "app.kubernetes.io/name="+proxyName)
		if err != nil {
			return err
		}
		return poll.Check(ready(p), "proxy pod "+p.Name+" not ready")
	})
}

// testPodsHoldTheirLimits: the operator and the proxy run as the image's
// non-root user on a read-only root filesystem, with no capability, and
// nothing in them failed for want of a writable path.
func (s *suite) testPodsHoldTheirLimits(t *testing.T) {
	for _, sel := range []string{"app.kubernetes.io/component=operator", "app.kubernetes.io/name=" + proxyName} {
		pod, err := s.onePod(t, system, sel)
		if err != nil {
			t.Fatal(err)
		}
		proc := containerProcess(t, pod)
		status := readFile(t, filepath.Join(proc, "status"))
		if !strings.Contains(status, "\nUid:\t65532\t65532\t65532\t65532\n") {
			t.Errorf("%s: not running as 65532: %s", pod.Name, grepLine(status, "Uid:"))
		}
		if !strings.Contains(status, "\nCapEff:\t0000000000000000\n") {
			t.Errorf("%s: effective capabilities %s, want none", pod.Name, grepLine(status, "CapEff:"))
		}
		if opts := rootMountOptions(t, proc); !strings.Contains(","+opts+",", ",ro,") {
			t.Errorf("%s: root filesystem mounted %q, want read-only", pod.Name, opts)
		}
		for _, cs := range pod.Status.ContainerStatuses {
			if cs.RestartCount != 0 {
				t.Errorf("%s: container %s restarted %d times", pod.Name, cs.Name, cs.RestartCount)
			}
		}
		logs := s.kubectl(t, false, "-n", system, "logs", pod.Name)
		for _, bad := range []string{"read-only file system", "permission denied", "forbidden"} {
			if strings.Contains(strings.ToLower(logs), bad) {
				t.Errorf("%s logs %q:\n%s", pod.Name, bad, logs)
			}
		}
	}
}

// testMemoryLimitFromCgroup: the proxy's container has its limit in its real
// memory cgroup, and a proxy started from the same pod template without the
// --memory-limit flag the operator adds finds that limit in its cgroup and
// sets the Go runtime's soft limit to 85 % of it.
func (s *suite) testMemoryLimitFromCgroup(t *testing.T) {
	pod, err := s.onePod(t, system, "app.kubernetes.io/name="+proxyName)
	if err != nil {
		t.Fatal(err)
	}
	want := resource.MustParse(proxyLimit)
	if got := cgroupMemoryLimit(t, containerProcess(t, pod)); got != want.Value() {
		t.Errorf("proxy %s: memory cgroup limit %d, want %d", pod.Name, got, want.Value())
	}

	var d appsv1.Deployment
	if err := s.c.Get(t.Context(), types.NamespacedName{Namespace: system, Name: proxyName}, &d); err != nil {
		t.Fatal(err)
	}
	spec := d.Spec.Template.Spec.DeepCopy()
	ct := &spec.Containers[0]
	var args []string
	for _, a := range ct.Args {
		if !strings.HasPrefix(a, "--memory-limit") {
			args = append(args, a)
		}
	}
	ct.Args = args
	ct.ReadinessProbe, ct.LivenessProbe, ct.Lifecycle = nil, nil, nil
	ct.Resources.Limits = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("300Mi")}
	ct.Resources.Requests = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")}
	spec.RestartPolicy = corev1.RestartPolicyNever
	probe := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: system, Name: "proxy-cgroup-probe"}, Spec: *spec}
	if err := s.c.Create(t.Context(), probe); err != nil {
		t.Fatal(err)
	}
	defer s.c.Delete(t.Context(), probe, client.GracePeriodSeconds(0))
	limit := resource.MustParse("300Mi")
	soft := int64(float64(limit.Value()) * 0.85)
	poll.Until(t, 2*time.Minute, func() error {
		out, _ := s.kubectlOut(t, "-n", system, "logs", probe.Name)
		return poll.Check(strings.Contains(out, "Go memory limit set below the container's") && strings.Contains(out, `"bytes":`+strconv.FormatInt(soft, 10)),
			fmt.Sprintf("no soft limit of %d bytes in the log yet:\n%s", soft, out))
	})
}

// testNetworkPolicy: the operator's NetworkPolicy selects the proxy's pods
// and is enforced (kube-router's network policy controller runs on the
// node): any pod reaches the API port, only a Prometheus pod the metrics
// port, whose per-user series are not for every tenant.
func (s *suite) testNetworkPolicy(t *testing.T) {
	var np networkingv1.NetworkPolicy
	if err := s.c.Get(t.Context(), types.NamespacedName{Namespace: system, Name: proxyName}, &np); err != nil {
		t.Fatal(err)
	}
	pod, err := s.onePod(t, system, "app.kubernetes.io/name="+proxyName)
	if err != nil {
		t.Fatal(err)
	}
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		t.Fatal(err)
	}
	if !sel.Matches(labelsSet(pod.Labels)) {
		t.Errorf("NetworkPolicy %s selects %s, not the proxy pod's labels %v", np.Name, sel, pod.Labels)
	}

	api := "http://" + proxyName + "." + system + ".svc:8000/v1/models"
	metrics := "http://" + proxyName + "-metrics." + system + ".svc:9090/metrics"
	prometheus := map[string]string{"app.kubernetes.io/name": "prometheus"}
	if rep := s.runClient(t, "np-api", nil, "get", "-url", api); rep.GetStatus == 0 {
		t.Errorf("a tenant's pod cannot reach the proxy's API port: %s", rep.GetError)
	}
	if rep := s.runClient(t, "np-prometheus", prometheus, "get", "-url", metrics); rep.GetStatus != 200 {
		t.Errorf("a Prometheus pod cannot scrape the proxy: status %d, %s", rep.GetStatus, rep.GetError)
	}
	if rep := s.runClient(t, "np-metrics", nil, "get", "-url", metrics); rep.GetStatus != 0 || rep.GetError == "" {
		t.Errorf("a tenant's pod reaches the proxy's metrics port: status %d", rep.GetStatus)
	}
}

// testClientPod: a user's pod with envFrom the token Secret calls the proxy
// by its Service's DNS name with the openai-go SDK, streamed and not,
// refreshes its token through the proxy, and sees its usage in kubectl get
// llmusers.
func (s *suite) testClientPod(t *testing.T) {
	s.apply(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: team}})
	s.apply(t, &llmv1.LLMQuota{
		ObjectMeta: metav1.ObjectMeta{Namespace: team, Name: "team-default"},
		Spec: llmv1.LLMQuotaSpec{
			Limits: []llmv1.QuotaLimit{{Window: llmv1.WindowDay, Tokens: ptr.To[int64](10_000_000)}},
			Models: []string{"*"},
		},
	})
	s.apply(t, &llmv1.LLMUser{
		ObjectMeta: metav1.ObjectMeta{Namespace: team, Name: "alice"},
		Spec:       llmv1.LLMUserSpec{QuotaRef: llmv1.QuotaReference{Name: "team-default"}},
	})
	var secret corev1.Secret
	poll.Until(t, 2*time.Minute, func() error {
		return s.c.Get(t.Context(), types.NamespacedName{Namespace: team, Name: "alice-llm-token"}, &secret)
	})
	wantBase := "http://" + proxyName + "." + system + ".svc:8000/v1"
	if got := string(secret.Data["OPENAI_BASE_URL"]); got != wantBase {
		t.Errorf("OPENAI_BASE_URL %q, want %q", got, wantBase)
	}

	rep := s.runClient(t, "journey", nil, "journey")
	if rep.BaseURL != wantBase {
		t.Errorf("the pod's OPENAI_BASE_URL is %q, want %q", rep.BaseURL, wantBase)
	}
	if rep.Failures != 0 || rep.Requests != 3 || rep.Streamed == 0 || rep.RefreshStatus != 200 || rep.RefreshExpiresIn <= 0 {
		t.Fatalf("client: %+v", rep)
	}
	s.waitUsage(t, rep.Tokens, int64(rep.Requests))

	// kubectl get llmusers shows it, in its Used column.
	out := s.kubectl(t, false, "-n", team, "get", "llmusers")
	var u llmv1.LLMUser
	if err := s.c.Get(t.Context(), types.NamespacedName{Namespace: team, Name: "alice"}, &u); err != nil {
		t.Fatal(err)
	}
	if len(u.Status.Usage) == 0 || u.Status.Usage[0].TotalTokens != rep.Tokens {
		t.Fatalf("alice's window usage %+v, want %d tokens", u.Status.Usage, rep.Tokens)
	}
	if col := column(out, "alice", "USED"); col != strconv.FormatInt(rep.Tokens, 10) {
		t.Errorf("kubectl get llmusers shows USED %q, want %d:\n%s", col, rep.Tokens, out)
	}
}

// testRollingUpdate: helm upgrade changes a proxy value, the operator rolls
// the proxy's Deployment, and a client sending requests all along sees none
// fail; every token it was served is counted.
func (s *suite) testRollingUpdate(t *testing.T) {
	before := s.lifetime(t)
	old, err := s.onePod(t, system, "app.kubernetes.io/name="+proxyName)
	if err != nil {
		t.Fatal(err)
	}
	done := s.startClient(t, "rolling", nil, "loop", "-duration", "75s")
	time.Sleep(10 * time.Second)
	s.run(t, false, s.helm, "upgrade", release, filepath.Join(s.repo, "charts/llm-user-operator"),
		"-n", system, "--reuse-values", "--set", "proxy.flushInterval=3s")
	poll.Until(t, 3*time.Minute, func() error {
		var p corev1.Pod
		err := s.c.Get(t.Context(), client.ObjectKeyFromObject(&old), &p)
		return poll.Check(err != nil, "the old proxy pod "+old.Name+" is still there")
	})
	s.kubectl(t, false, "-n", system, "rollout", "status", "deploy/"+proxyName, "--timeout=2m")
	rep := done()
	if rep.Failures != 0 || rep.Requests < 20 {
		t.Errorf("through the rolling update: %+v", rep)
	}
	// With the in-process counter the old and the new proxy count apart
	// while both run; each merges what the other wrote to status before it
	// writes (internal/usage), so status holds every token of the rollout.
	want := llmv1.UsageTotals{TotalTokens: before.TotalTokens + rep.Tokens, Requests: before.Requests + int64(rep.Requests)}
	got := s.settledUsage(t, want)
	if !same(got, want) {
		t.Fatalf("through the rolling update clients were served %d tokens in %d requests; status kept %d in %d (lost %d tokens, %d requests)",
			rep.Tokens, rep.Requests, got.TotalTokens-before.TotalTokens, got.Requests-before.Requests, want.TotalTokens-got.TotalTokens, want.Requests-got.Requests)
	}
	t.Logf("through the rolling update: %d tokens in %d requests, exact in status", rep.Tokens, rep.Requests)
	after := s.runClient(t, "after-rollout", nil, "journey")
	if after.Failures != 0 {
		t.Fatalf("after the rollout: %+v", after)
	}
	s.waitUsage(t, got.TotalTokens+after.Tokens, got.Requests+int64(after.Requests))
}

// same compares the totals the test follows: tokens and requests.
func same(a, b llmv1.UsageTotals) bool {
	return a.TotalTokens == b.TotalTokens && a.Requests == b.Requests
}

// settledUsage waits until alice's lifetime usage is want, or has not
// changed for three flush intervals, and returns it.
func (s *suite) settledUsage(t *testing.T, want llmv1.UsageTotals) llmv1.UsageTotals {
	t.Helper()
	last, since := s.lifetime(t), time.Now()
	for time.Since(since) < 10*time.Second {
		if same(last, want) {
			return last
		}
		time.Sleep(time.Second)
		if now := s.lifetime(t); !same(now, last) {
			last, since = now, time.Now()
		}
	}
	return last
}

// testOperatorRestart: the operator's pod is deleted under traffic; no
// request fails, no usage is lost, and its successor takes the lease.
func (s *suite) testOperatorRestart(t *testing.T) {
	before := s.lifetime(t)
	op, err := s.onePod(t, system, "app.kubernetes.io/component=operator")
	if err != nil {
		t.Fatal(err)
	}
	done := s.startClient(t, "operator-restart", nil, "loop", "-duration", "40s")
	time.Sleep(5 * time.Second)
	s.kubectl(t, false, "-n", system, "delete", "pod", op.Name, "--wait=false")
	poll.Until(t, 3*time.Minute, func() error {
		p, err := s.onePod(t, system, "app.kubernetes.io/component=operator")
		if err != nil {
			return err
		}
		return poll.Check(p.Name != op.Name && ready(p), "no new ready operator pod yet")
	})
	rep := done()
	if rep.Failures != 0 || rep.Requests < 20 {
		t.Errorf("through the operator's restart: %+v", rep)
	}
	s.waitUsage(t, before.TotalTokens+rep.Tokens, before.Requests+int64(rep.Requests))
}

// testUninstall: helm uninstall keeps the CRDs and the users' objects.
func (s *suite) testUninstall(t *testing.T) {
	s.run(t, false, s.helm, "uninstall", release, "-n", system, "--wait", "--timeout", "2m")
	for _, crd := range []string{"llmusers.llm.userops.dev", "llmquotas.llm.userops.dev"} {
		var o apiextensionsv1.CustomResourceDefinition
		if err := s.c.Get(t.Context(), types.NamespacedName{Name: crd}, &o); err != nil {
			t.Errorf("CRD %s after helm uninstall: %v", crd, err)
		}
	}
	var u llmv1.LLMUser
	if err := s.c.Get(t.Context(), types.NamespacedName{Namespace: team, Name: "alice"}, &u); err != nil {
		t.Errorf("LLMUser alice after helm uninstall: %v", err)
	}
	var q llmv1.LLMQuota
	if err := s.c.Get(t.Context(), types.NamespacedName{Namespace: team, Name: "team-default"}, &q); err != nil {
		t.Errorf("LLMQuota team-default after helm uninstall: %v", err)
	}
}

// ---------------------------------------------------------------- helpers

// lifetime is alice's lifetime usage as written to her status.
func (s *suite) lifetime(t *testing.T) llmv1.UsageTotals {
	t.Helper()
	var u llmv1.LLMUser
	if err := s.c.Get(t.Context(), types.NamespacedName{Namespace: team, Name: "alice"}, &u); err != nil {
		t.Fatal(err)
	}
	if u.Status.Lifetime == nil {
		return llmv1.UsageTotals{}
	}
	return *u.Status.Lifetime
}

// waitUsage waits until alice's lifetime usage is exactly tokens and
// requests, as the proxies flush it.
func (s *suite) waitUsage(t *testing.T, tokens, requests int64) {
	t.Helper()
	poll.Until(t, time.Minute, func() error {
		l := s.lifetime(t)
		return poll.Check(l.TotalTokens == tokens && l.Requests == requests,
			fmt.Sprintf("alice's lifetime usage is %d tokens in %d requests, want %d in %d", l.TotalTokens, l.Requests, tokens, requests))
	})
}

// runClient runs the client image in team-a with alice's Secret as its
// environment and the given labels until it ends, and returns its report.
func (s *suite) runClient(t *testing.T, name string, labels map[string]string, args ...string) report {
	t.Helper()
	return s.startClient(t, name, labels, args...)()
}

// startClient starts the client pod; the function it returns waits for the
// pod to end and returns its report.
func (s *suite) startClient(t *testing.T, name string, labels map[string]string, args ...string) func() report {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: team, Name: "client-" + name, Labels: labels},
		Spec: corev1.PodSpec{
			RestartPolicy:         corev1.RestartPolicyNever,
			ActiveDeadlineSeconds: ptr.To[int64](300),
			SecurityContext:       &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
			Containers: []corev1.Container{{
				Name: "client", Image: cliImage, ImagePullPolicy: corev1.PullNever,
				Args:    append(args, "-model", model),
				EnvFrom: []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "alice-llm-token"}}}},
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: ptr.To(false), ReadOnlyRootFilesystem: ptr.To(true),
					Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
		},
	}
	_ = s.c.Delete(t.Context(), pod, client.GracePeriodSeconds(0))
	poll.Until(t, time.Minute, func() error {
		var p corev1.Pod
		return poll.Check(s.c.Get(t.Context(), client.ObjectKeyFromObject(pod), &p) != nil, "the previous "+pod.Name+" is still there")
	})
	if err := s.c.Create(t.Context(), pod); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 2*time.Minute, func() error {
		var p corev1.Pod
		if err := s.c.Get(t.Context(), client.ObjectKeyFromObject(pod), &p); err != nil {
			return err
		}
		return poll.Check(p.Status.Phase != corev1.PodPending, pod.Name+" still pending")
	})
	return func() report {
		t.Helper()
		var p corev1.Pod
		poll.Until(t, 5*time.Minute, func() error {
			if err := s.c.Get(t.Context(), client.ObjectKeyFromObject(pod), &p); err != nil {
				return err
			}
			return poll.Check(p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed, pod.Name+" still "+string(p.Status.Phase))
		})
		logs := s.kubectl(t, false, "-n", team, "logs", pod.Name)
		lines := strings.Split(strings.TrimSpace(logs), "\n")
		var rep report
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &rep); err != nil {
			t.Fatalf("%s's report: %v\n%s", pod.Name, err, logs)
		}
		if p.Status.Phase != corev1.PodSucceeded {
			t.Errorf("%s %s:\n%s", pod.Name, p.Status.Phase, logs)
		}
		return rep
	}
}

// onePod is the only running or pending pod matching selector (not one
// being deleted).
func (s *suite) onePod(t *testing.T, ns, selector string) (corev1.Pod, error) {
	t.Helper()
	var list corev1.PodList
	sel, err := labelsParse(selector)
	if err != nil {
		return corev1.Pod{}, err
	}
	if err := s.c.List(t.Context(), &list, client.InNamespace(ns), client.MatchingLabelsSelector{Selector: sel}); err != nil {
		return corev1.Pod{}, err
	}
	var live []corev1.Pod
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil && (p.Status.Phase == corev1.PodRunning || p.Status.Phase == corev1.PodPending) {
			live = append(live, p)
		}
	}
	if len(live) != 1 {
		return corev1.Pod{}, fmt.Errorf("%d live pods match %s in %s", len(live), selector, ns)
	}
	return live[0], nil
}

func (s *suite) apply(t *testing.T, obj client.Object) {
	t.Helper()
	if err := s.c.Create(t.Context(), obj); err != nil {
		t.Fatalf("create %T %s: %v", obj, obj.GetName(), err)
	}
}

// run runs a command, failing t on error unless mayFail.
func (s *suite) run(t *testing.T, mayFail bool, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = s.repo
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil && !mayFail {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

func (s *suite) kubectl(t *testing.T, mayFail bool, args ...string) string {
	t.Helper()
	return s.run(t, mayFail, "kubectl", args...)
}

func (s *suite) kubectlOut(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("kubectl", args...).CombinedOutput()
	return string(out), err
}

// dump logs what a failed run needs to be understood.
func (s *suite) dump(t *testing.T) {
	out, _ := s.kubectlOut(t, "get", "pods,deploy,svc,endpointslices,llmusers,llmquotas", "-A", "-o", "wide")
	t.Logf("cluster state:\n%s", out)
	for _, sel := range []string{"app.kubernetes.io/component=operator", "app.kubernetes.io/name=" + proxyName} {
		out, _ := s.kubectlOut(t, "-n", system, "logs", "-l", sel, "--tail=40", "--all-containers", "--prefix")
		t.Logf("logs of %s:\n%s", sel, out)
	}
	out, _ = s.kubectlOut(t, "get", "events", "-A", "--sort-by=.lastTimestamp")
	t.Logf("events:\n%s", tail(out, 40))
}
