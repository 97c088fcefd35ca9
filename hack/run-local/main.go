// Command run-local starts everything on this machine for `make run`, the way
// a cluster would run it: a control plane (kube-apiserver and etcd, as
// envtest runs them, and kube-controller-manager for garbage collection and
// rollouts) with the CRDs, the vLLM simulator (or a real vLLM), the operator
// with the permissions config/rbac grants it and an operator configuration
// file, and the proxy started from the Deployment the operator reconciled.
// It applies the samples and prints how to call the proxy. Ctrl-C stops it
// all; etcd's data stays in the state directory, so users, keys and usage
// survive the next run (`make run-clean` removes it).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crenvtest "sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	apischeme "github.com/llm-user-operator/llm-user-operator/api/scheme"
	"github.com/llm-user-operator/llm-user-operator/internal/controller"
	"github.com/llm-user-operator/llm-user-operator/internal/operatorconfig"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
	"github.com/llm-user-operator/llm-user-operator/test/harness/podtemplate"
)

const (
	namespace = "llm-user-operator-system"
	issuer    = "https://llm-user-operator.local"
)

type options struct {
	bin, state, sim, kubeTools, model, vllm string
	port                                    int
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "bin", "directory holding manager and proxy")
	flag.StringVar(&o.state, "state", "bin/run", "state directory: etcd data, kubeconfigs, configuration, logs")
	flag.StringVar(&o.sim, "simulator", os.Getenv("LLM_SIM_BINARY"), "llm-d-inference-sim binary")
	flag.StringVar(&o.kubeTools, "kube-tools", os.Getenv("KUBE_TOOLS_DIR"), "directory of the pinned kube-controller-manager and kubectl")
	flag.StringVar(&o.model, "model", "Qwen/Qwen2.5-1.5B-Instruct", "model the simulator serves")
	flag.StringVar(&o.vllm, "vllm-url", os.Getenv("VLLM_URL"), "a real vLLM's base URL, instead of the simulator")
	flag.IntVar(&o.port, "port", 8000, "proxy port")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "run-local:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	state, err := filepath.Abs(o.state)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(state, 0o755); err != nil {
		return err
	}
	kubectlPath := filepath.Join(o.kubeTools, "kubectl")

	fmt.Printf("starting kube-apiserver and etcd (data in %s) ...\n", filepath.Join(state, "etcd"))
	assets, err := envtest.Assets()
	if err != nil {
		return err
	}
	env := &crenvtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(envtest.RepoRoot(), "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}
	env.ControlPlane.Etcd = &crenvtest.Etcd{DataDir: filepath.Join(state, "etcd")}
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("starting the control plane: %w", err)
	}
	defer func() { _ = env.Stop() }()
	c, err := client.New(cfg, client.Options{Scheme: apischeme.New()})
	if err != nil {
		return err
	}
	kubeconfig, err := writeKubeconfig(env, state, "kubeconfig", "admin", "system:masters")
	if err != nil {
		return err
	}
	managerKC, err := writeKubeconfig(env, state, "manager.kubeconfig", serviceAccount("controller-manager"), saGroups()...)
	if err != nil {
		return err
	}
	proxyKC, err := writeKubeconfig(env, state, "proxy.kubeconfig", serviceAccount("llm-user-proxy"), saGroups()...)
	if err != nil {
		return err
	}

	var procs []*exec.Cmd
	defer func() { // in reverse: the proxy flushes usage while the API server is still up
		for i := len(procs) - 1; i >= 0; i-- {
			_ = procs[i].Process.Signal(syscall.SIGTERM)
			_ = procs[i].Wait()
		}
	}()
	start := func(cmd *exec.Cmd) error {
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("%s: %w", cmd.Path, err)
		}
		procs = append(procs, cmd)
		return nil
	}
	kcmPort := free()
	if err := start(command(ctx, state, "kube-controller-manager", filepath.Join(o.kubeTools, "kube-controller-manager"),
		"--kubeconfig", kubeconfig, "--leader-elect=false",
		"--controllers", "garbage-collector-controller,deployment-controller,replicaset-controller",
		"--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(kcmPort), "--cert-dir", filepath.Join(state, "kcm-certs"))); err != nil {
		return err
	}

	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}); client.IgnoreAlreadyExists(err) != nil {
		return err
	}
	kubectl := func(args ...string) error {
		cmd := exec.CommandContext(ctx, kubectlPath, append([]string{"--kubeconfig", kubeconfig}, args...)...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		return cmd.Run()
	}
	// What config/rbac grants the operator, in the operator's namespace.
	rbac := filepath.Join(state, "rbac")
	if err := os.MkdirAll(rbac, 0o755); err != nil {
		return err
	}
	rel, err := filepath.Rel(rbac, filepath.Join(envtest.RepoRoot(), "config", "rbac"))
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(rbac, "kustomization.yaml"),
		[]byte("namespace: "+namespace+"\nresources:\n- "+rel+"\n"), 0o600); err != nil {
		return err
	}
	if err := kubectl("apply", "--server-side", "--force-conflicts", "-k", rbac); err != nil {
		return fmt.Errorf("granting the operator config/rbac: %w", err)
	}

	upstream := o.vllm
	if upstream == "" {
		simPort := free()
		if err := start(command(ctx, state, "simulator", o.sim, "--port", strconv.Itoa(simPort), "--model", o.model,
			"--force-dummy-tokenizer", "--max-num-seqs", "256", "--max-model-len", "32768", "--mode", "random",
			"--time-to-first-token", "50ms", "--inter-token-latency", "10ms")); err != nil {
			return err
		}
		upstream = fmt.Sprintf("http://127.0.0.1:%d", simPort)
	}

	probePort, refreshPort, metricsPort := free(), free(), free()
	proxyAddr := fmt.Sprintf("127.0.0.1:%d", o.port)
	opCfg := &operatorconfig.OperatorConfig{
		TypeMeta: metav1.TypeMeta{APIVersion: operatorconfig.APIVersion, Kind: operatorconfig.Kind},
		Issuer:   issuer,
		Proxy: operatorconfig.Proxy{
			Image:       "ghcr.io/llm-user-operator/llm-user-operator:dev",
			Upstreams:   []string{upstream},
			BaseURL:     "http://" + proxyAddr + "/v1",
			RefreshURL:  fmt.Sprintf("http://127.0.0.1:%d/auth/refresh", refreshPort),
			Port:        int32(o.port),
			MetricsPort: int32(metricsPort),
			// Usage shows in kubectl within seconds.
			FlushInterval:  metav1.Duration{Duration: 2 * time.Second},
			ServiceMonitor: operatorconfig.SwitchOff,
		},
	}
	configFile := filepath.Join(state, "config.yaml")
	data, err := yaml.Marshal(opCfg)
	if err != nil {
		return err
	}
	if err := os.WriteFile(configFile, data, 0o600); err != nil {
		return err
	}
	opCfg.Default(namespace, "") // the names the operator derives, for waitReconciled
	if err := start(command(ctx, state, "operator", filepath.Join(o.bin, "manager"), "--kubeconfig", managerKC,
		"--config", configFile, "--namespace", namespace, "--metrics-bind-address", "0",
		"--health-probe-bind-address", fmt.Sprintf("127.0.0.1:%d", probePort),
		"--refresh-bind-address", fmt.Sprintf("127.0.0.1:%d", refreshPort))); err != nil {
		return err
	}

	fmt.Println("waiting for the operator to reconcile the proxy Deployment ...")
	d, err := waitReconciled(ctx, c, state, opCfg)
	if err != nil {
		return err
	}
	root := filepath.Join(state, "proxy-root")
	popts := podtemplate.Options{
		Reader: c, Namespace: namespace, PodName: d.Name + "-local", Root: root,
		Binaries:   map[string]string{"/proxy": filepath.Join(o.bin, "proxy")},
		Kubeconfig: proxyKC,
	}
	pod, err := podtemplate.Prepare(ctx, &d.Spec.Template, popts)
	if err != nil {
		return fmt.Errorf("the proxy's pod template: %w", err)
	}
	proxy := command(ctx, state, "proxy", pod.Path, pod.Args...)
	proxy.Env = pod.Env
	if err := start(proxy); err != nil {
		return err
	}
	go syncVolumes(ctx, &d.Spec.Template, popts)

	if err := kubectl("apply", "-n", "default", "-k", filepath.Join(envtest.RepoRoot(), "config", "samples")); err != nil {
		return err
	}
	if err := waitHTTP(ctx, pod.ReadinessURL, 2*time.Minute); err != nil {
		return fmt.Errorf("proxy not ready (%w); logs in %s", err, state)
	}
	if err := markReady(ctx, c, d); err != nil {
		fmt.Fprintln(os.Stderr, "run-local: the proxy Deployment will not show as available:", err)
	}
	_ = kubectl("get", "llmusers,llmquotas", "-n", "default")
	fmt.Printf(`
Everything is up (logs in %[1]s; the proxy runs the reconciled Deployment's
pod template: kubectl get deploy -n %[6]s llm-user-proxy -o yaml). Try:

  export KUBECONFIG=%[2]s PATH=%[7]s:$PATH   # the pinned kubectl v1.37.2
  export OPENAI_API_KEY=$(kubectl get secret alice-llm-token -o jsonpath='{.data.OPENAI_API_KEY}' | base64 -d)
  curl -s http://%[3]s/v1/chat/completions -H "Authorization: Bearer $OPENAI_API_KEY" \
    -d '{"model":"%[4]s","messages":[{"role":"user","content":"hello"}]}'
  kubectl get llmusers
  curl -s %[5]s | grep llm_proxy

Ctrl-C stops everything; the next make run starts from the same state (make run-clean starts fresh).
`, state, kubeconfig, proxyAddr, o.model, "http://127.0.0.1:"+strconv.Itoa(metricsPort)+"/metrics", namespace, o.kubeTools)
	<-ctx.Done()
	fmt.Println("stopping ...")
	return nil
}

func serviceAccount(name string) string { return "system:serviceaccount:" + namespace + ":" + name }

func saGroups() []string {
	return []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"}
}

// writeKubeconfig writes a kubeconfig for a user of env into the state
// directory: the ServiceAccounts' stand in for the tokens a kubelet mounts.
func writeKubeconfig(env *crenvtest.Environment, state, file, user string, groups ...string) (string, error) {
	u, err := env.AddUser(crenvtest.User{Name: user, Groups: groups}, nil)
	if err != nil {
		return "", err
	}
	kc, err := u.KubeConfig()
	if err != nil {
		return "", err
	}
	path := filepath.Join(state, file)
	return path, os.WriteFile(path, kc, 0o600)
}

// waitReconciled waits for the operator's proxy Deployment to be reconciled
// from this run's configuration: the last run's is in etcd too.
func waitReconciled(ctx context.Context, c client.Client, state string, cfg *operatorconfig.OperatorConfig) (*appsv1.Deployment, error) {
	d := &appsv1.Deployment{}
	var last string
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		err := c.Get(ctx, types.NamespacedName{Namespace: namespace, Name: "llm-user-proxy"}, d)
		if apierrors.IsNotFound(err) {
			last = "no Deployment yet"
			continue
		} else if err != nil {
			return nil, err
		}
		if why := staleness(ctx, c, d, cfg); why != "" {
			last = why
			continue
		}
		for _, cond := range d.Status.Conditions {
			if cond.Type == controller.ConditionReconciled {
				if cond.Status == corev1.ConditionTrue {
					return d, nil
				}
				last = cond.Reason + ": " + cond.Message
			}
		}
	}
	return nil, fmt.Errorf("the operator did not reconcile the proxy Deployment (%s); logs in %s", last, state)
}

// staleness says how d differs from what cfg renders, or "" if it does not:
// the ports (in the pod template) and the upstreams (in their ConfigMap).
func staleness(ctx context.Context, c client.Client, d *appsv1.Deployment, cfg *operatorconfig.OperatorConfig) string {
	want := map[string]int32{"http": cfg.Proxy.Port, "metrics": cfg.Proxy.MetricsPort}
	for _, p := range d.Spec.Template.Spec.Containers[0].Ports {
		if want[p.Name] != p.ContainerPort {
			return fmt.Sprintf("port %s is %d, not yet %d", p.Name, p.ContainerPort, want[p.Name])
		}
	}
	var cm corev1.ConfigMap
	if err := c.Get(ctx, types.NamespacedName{Namespace: namespace, Name: cfg.Proxy.Name + "-upstreams"}, &cm); err != nil {
		return err.Error()
	}
	if got := cm.Data[controller.UpstreamsKey]; got != strings.Join(cfg.Proxy.Upstreams, "\n")+"\n" {
		return "upstreams are not yet " + strings.Join(cfg.Proxy.Upstreams, ", ")
	}
	return ""
}

// markReady reports a pod of the proxy's ReplicaSet ready, as the kubelet
// would for the process running in its place.
func markReady(ctx context.Context, c client.Client, d *appsv1.Deployment) error {
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		name, err := podtemplate.MarkReady(ctx, c, d, time.Now())
		if err != nil || name != "" {
			return err
		}
	}
	return errors.New("kube-controller-manager made no pod for the current ReplicaSet")
}

// syncVolumes re-reads the proxy's ConfigMap volumes every few seconds, as
// the kubelet does, so that an edited upstream list reaches the proxy.
func syncVolumes(ctx context.Context, tmpl *corev1.PodTemplateSpec, o podtemplate.Options) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := podtemplate.SyncVolumes(ctx, tmpl, o); err != nil && !errors.Is(err, context.Canceled) {
				fmt.Fprintln(os.Stderr, "run-local: syncing the proxy's volumes:", err)
			}
		}
	}
}

func waitHTTP(ctx context.Context, url string, timeout time.Duration) error {
	hc := &http.Client{Timeout: 2 * time.Second}
	var last error
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r, err := hc.Get(url)
		if err == nil {
			_ = r.Body.Close()
			if r.StatusCode == http.StatusOK {
				return nil
			}
			err = errors.New(r.Status)
		}
		last = err
	}
	return last
}

func command(ctx context.Context, dir, name, path string, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, path, args...)
	log, err := os.Create(filepath.Join(dir, name+".log"))
	if err == nil {
		c.Stdout, c.Stderr = log, log
	}
	c.Cancel = func() error { return c.Process.Signal(syscall.SIGTERM) }
	c.WaitDelay = 60 * time.Second
	return c
}

func free() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}
