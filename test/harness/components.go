package harness

import "testing"

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
	return Simulator{Process: p, URL: base}
}

// ManagerConfig is what varies between the operators of the suites.
type ManagerConfig struct {
	// ProxyBaseURL, if set, is written into every token Secret as
	// OPENAI_BASE_URL.
	ProxyBaseURL string
}

// Manager is a running operator.
type Manager struct {
	*Process
	// RefreshURL is its /auth/refresh.
	RefreshURL string
}

// StartManager runs the operator against e's API server until t ends, so
// that every LLMUser gets its token Secret, and waits until it is ready.
func (e *Env) StartManager(t testing.TB, c ManagerConfig) Manager {
	t.Helper()
	probe, refresh := FreeAddr(t), FreeAddr(t)
	args := []string{
		"--kubeconfig", e.Kubeconfig,
		"--namespace", OperatorNamespace,
		"--metrics-bind-address", "0",
		"--health-probe-bind-address", probe,
		"--refresh-bind-address", refresh,
	}
	if c.ProxyBaseURL != "" {
		args = append(args, "--proxy-base-url", c.ProxyBaseURL)
	}
	args = append(args,
		"--issuer", e.Issuer,
		"--audience", Audience,
	)
	p := StartProcess(t, "manager", e.ManagerBin, args...)
	p.WaitHTTP(t, "http://"+probe+"/readyz")
	return Manager{Process: p, RefreshURL: "http://" + refresh + "/auth/refresh"}
}

// Proxy is a running proxy.
type Proxy struct {
	*Process
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
	// Kubeconfig defaults to e's, straight to the API server.
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
		c.Kubeconfig = e.Kubeconfig
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
