package harness

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/llm-user-operator/llm-user-operator/internal/controller"
	"github.com/llm-user-operator/llm-user-operator/internal/operatorconfig"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
)

// Simulator is a running llm-d-inference-sim.
type Simulator struct {
	*Process
	// URL is its base URL, without /v1.
	URL string
}

// StartSimulator starts llm-d-inference-sim serving e's model until t ends,
// with extra flags (modes, latencies) after the common ones, and waits until
// it lists its models.
func (e *Env) StartSimulator(t testing.TB, name string, extra ...string) Simulator {
	t.Helper()
	addr := FreeAddr(t)
	args := append([]string{
		"--port", Port(addr), "--model", e.Model, "--force-dummy-tokenizer",
		"--max-num-seqs", "1000",
	}, extra...)
	p := StartProcess(t, name, SimulatorBinary(t), args...)
	base := "http://" + addr
	p.WaitHTTP(t, base+"/v1/models")
	e.podsMu.Lock()
	e.simulators = append(e.simulators, base)
	e.podsMu.Unlock()
	return Simulator{Process: p, URL: base}
}

// ManagerConfig is what varies between the operators of the suites.
type ManagerConfig struct {
	// ProxyBaseURL, if set, is written into every token Secret as
	// OPENAI_BASE_URL, for suites that run their own proxies.
	ProxyBaseURL string
	// Proxy edits the proxy workload the operator reconciles (for
	// [Env.StartReconciledProxy], and the RBAC every proxy of the tests
	// runs with). The harness's settings: the simulators started so far as
	// upstreams, free ports (the pods share this machine's network), the
	// refresh URL of this manager, and the base URL of the proxy on
	// loopback (unless ProxyBaseURL is set). With no upstream at all the
	// workload is off.
	Proxy func(p *operatorconfig.Proxy)
}

// Manager is a running operator.
type Manager struct {
	*Process
	// RefreshURL is its /auth/refresh.
	RefreshURL string
	// Config is the configuration file it was given.
	Config *operatorconfig.OperatorConfig
}

// StartManager runs the operator against e's API server until t ends, so
// that every LLMUser gets its token Secret, and waits until it is ready.
// It runs with its own identity, authorized by what config/rbac grants
// its ServiceAccount, and reads an operator configuration file.
func (e *Env) StartManager(t testing.TB, c ManagerConfig) Manager {
	t.Helper()
	probe, refresh := FreeAddr(t), FreeAddr(t)
	port, metrics := FreeAddr(t), FreeAddr(t)
	e.podsMu.Lock()
	upstreams := slices.Clone(e.simulators)
	e.podsMu.Unlock()
	cfg := &operatorconfig.OperatorConfig{
		TypeMeta: metav1.TypeMeta{APIVersion: operatorconfig.APIVersion, Kind: operatorconfig.Kind},
		Issuer:   e.Issuer,
		Audience: Audience,
		Proxy: operatorconfig.Proxy{
			Image:          "ghcr.io/llm-user-operator/llm-user-operator:test",
			Upstreams:      upstreams,
			Port:           int32(mustAtoi(t, Port(port))),
			MetricsPort:    int32(mustAtoi(t, Port(metrics))),
			RefreshURL:     "http://" + refresh + "/auth/refresh",
			BaseURL:        "http://" + port + "/v1",
			ServiceMonitor: operatorconfig.SwitchOff,
		},
	}
	if c.ProxyBaseURL != "" {
		cfg.Proxy.BaseURL = c.ProxyBaseURL
	}
	if c.Proxy != nil {
		c.Proxy(&cfg.Proxy)
	}
	if len(cfg.Proxy.Upstreams) == 0 {
		cfg.Proxy.Enabled = ptr.To(false)
	}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{
		"--kubeconfig", e.managerKubeconfig(t),
		"--config", file,
		"--namespace", OperatorNamespace,
		"--metrics-bind-address", "0",
		"--health-probe-bind-address", probe,
		"--refresh-bind-address", refresh,
	}
	p := StartProcess(t, "manager", e.ManagerBin, args...)
	p.WaitHTTP(t, "http://"+probe+"/readyz")
	m := Manager{Process: p, RefreshURL: "http://" + refresh + "/auth/refresh", Config: cfg}
	if cfg.Proxy.Enabled == nil || *cfg.Proxy.Enabled {
		// The proxies of the tests run with the RBAC it reconciles.
		e.ProxyDeployment(t, m)
		e.podsMu.Lock()
		e.proxyRBAC = true
		e.podsMu.Unlock()
	}
	return m
}

func mustAtoi(t testing.TB, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// ProxyDeployment waits until m has reconciled its proxy Deployment as
// configured (its Reconciled condition is True) and returns it.
func (e *Env) ProxyDeployment(t testing.TB, m Manager) *appsv1.Deployment {
	t.Helper()
	d := &appsv1.Deployment{}
	poll.Until(t, StartTimeout, func() error {
		key := types.NamespacedName{Namespace: OperatorNamespace, Name: m.Config.Proxy.Name}
		if m.Config.Proxy.Name == "" {
			key.Name = "llm-user-proxy"
		}
		if err := e.Client.Get(t.Context(), key, d); err != nil {
			return err
		}
		for _, c := range d.Status.Conditions {
			if c.Type == controller.ConditionReconciled {
				return poll.Check(c.Status == corev1.ConditionTrue, "Reconciled: "+c.Reason+": "+c.Message)
			}
		}
		return errors.New("the operator has not reported on the proxy Deployment yet")
	})
	return d
}

// StartReconciledProxy runs the proxy exactly as the operator's proxy
// Deployment would (see [Pod] for what the harness does in the kubelet's
// place), until t ends, and waits until it is ready.
func (e *Env) StartReconciledProxy(t testing.TB, name string, m Manager) Proxy {
	t.Helper()
	pod := e.StartPod(t, name, e.ProxyDeployment(t, m))
	return Proxy{Process: pod.Process, Pod: pod, Listen: pod.Ports["http"], BaseURL: "http://" + pod.Ports["http"] + "/v1",
		MetricsURL: "http://" + pod.Ports["metrics"] + "/metrics"}
}

// Proxy is a running proxy.
type Proxy struct {
	*Process
	// Pod is set when the proxy runs from the reconciled pod template.
	Pod *Pod
	// Listen is the address of its OpenAI API.
	Listen string
	// BaseURL is the OpenAI base URL, ending in /v1.
	BaseURL string
	// MetricsURL is its /metrics.
	MetricsURL string
}

// ProxyConfig is what varies between the proxies of the tests.
type ProxyConfig struct {
	// Listen is the API address; empty picks a free one.
	Listen string
	// Kubeconfig defaults to the identity of the proxy's ServiceAccount,
	// with the RBAC the operator reconciled for it, once a manager has
	// reconciled the proxy workload; before that, to e's admin one.
	Kubeconfig string
	// Upstream is the simulator's base URL.
	Upstream string
	// Flags are added after the common ones: the counter, the flush
	// interval, the shutdown grace, the refresh URL.
	Flags []string
}

// StartProxy runs a proxy until t ends and waits until /readyz says it
// knows the users, the keys and the models.
func (e *Env) StartProxy(t testing.TB, name string, c ProxyConfig) Proxy {
	t.Helper()
	if c.Listen == "" {
		c.Listen = FreeAddr(t)
	}
	if c.Kubeconfig == "" {
		e.podsMu.Lock()
		rbac := e.proxyRBAC
		e.podsMu.Unlock()
		c.Kubeconfig = e.Kubeconfig
		if rbac {
			c.Kubeconfig = e.ServiceAccountKubeconfig(t, OperatorNamespace, ProxyServiceAccount)
		}
	}
	metricsAddr := FreeAddr(t)
	args := append([]string{
		"--kubeconfig", c.Kubeconfig,
		"--namespace", OperatorNamespace,
		"--listen-address", c.Listen,
		"--metrics-bind-address", metricsAddr,
		"--upstreams", c.Upstream,
		"--issuer", e.Issuer,
		"--audience", Audience,
	}, c.Flags...)
	p := StartProcess(t, name, e.ProxyBin, args...)
	p.WaitHTTP(t, "http://"+metricsAddr+"/readyz")
	return Proxy{Process: p, Listen: c.Listen, BaseURL: "http://" + c.Listen + "/v1", MetricsURL: "http://" + metricsAddr + "/metrics"}
}
