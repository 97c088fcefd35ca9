// Package e2e_test runs the product as shipped: the manager and proxy
// binaries built from ./cmd, a real kube-apiserver and etcd with
// kube-controller-manager beside them (so owner references are really
// garbage-collected and Deployments really roll out ReplicaSets),
// llm-d-inference-sim standing in for vLLM, and the official OpenAI Go SDK
// configured from the token Secret exactly as a pod using envFrom would be.
//
// The operator runs with the permissions config/rbac grants it, reads an
// operator configuration file, and reconciles the proxy workload; the proxy
// is started from that Deployment's pod template (command, arguments,
// environment, mounted ConfigMaps) with its ServiceAccount's identity and
// the RBAC the operator reconciled for it. Everything is started by the test
// and stopped when it ends.
package e2e_test

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/llm-user-operator/llm-user-operator/internal/operatorconfig"
	"github.com/llm-user-operator/llm-user-operator/test/harness"
)

const (
	// modelID is what the simulator serves. The slash makes the allowlist
	// globs match across it, as with real Hugging Face names.
	modelID = "e2e-org/sim-chat-1b"
	// flushWait bounds how long usage takes to reach status: the proxy
	// flushes every second, so this is that plus API-server latency and
	// slack for a loaded machine.
	flushWait = 10 * time.Second
	// proxyFlushInterval is the proxy's flush interval in the operator
	// configuration of the suite.
	proxyFlushInterval = time.Second
)

// suite is the running system shared by the subtests. Each subtest works in
// a namespace of its own, so they can run in parallel without seeing each
// other's users, usage or metric series.
type suite struct {
	*harness.Env
	simURL     string
	refreshURL string
	manager    harness.Manager
	proxy      harness.Proxy
}

func TestE2E(t *testing.T) {
	env := harness.Start(t, harness.Options{Issuer: "https://e2e", Model: modelID, NamespacePrefix: "e2e",
		FlushWait: flushWait, ControllerManager: true})
	simURL := env.StartSimulator(t, "llm-d-inference-sim", "--mode", "random").URL
	mgr := env.StartManager(t, harness.ManagerConfig{Proxy: proxySettings(simURL, proxyFlushInterval)})
	s := &suite{Env: env, simURL: simURL, refreshURL: mgr.RefreshURL, manager: mgr}
	s.proxy = env.StartReconciledProxy(t, "proxy", mgr)

	// In parallel, each in its own namespace.
	t.Run("Proxy", func(t *testing.T) {
		t.Run("TokenSecret", s.testTokenSecret)
		t.Run("ChatCompletion", s.testChatCompletion)
		t.Run("StreamWithoutUsage", s.testStreamWithoutUsage)
		t.Run("StreamWithUsage", s.testStreamWithUsage)
		t.Run("CompletionsAndEmbeddings", s.testCompletionsAndEmbeddings)
		t.Run("Models", s.testModels)
		t.Run("RequestQuota", s.testRequestQuota)
		t.Run("TokenQuota", s.testTokenQuota)
		t.Run("CostBudget", s.testCostBudget)
		t.Run("QuotaSurvivesProxyRestart", s.testQuotaSurvivesProxyRestart)
		t.Run("Suspend", s.testSuspend)
		t.Run("Unauthenticated", s.testUnauthenticated)
		t.Run("Refresh", s.testRefresh)
		t.Run("Hostile", s.testHostile)
		t.Run("ProxyCannotReadSecrets", s.testProxyCannotReadSecrets)
		t.Run("DeletedUserSecretCollected", s.testDeletedUserSecretCollected)
		t.Run("KubectlShowsProxyStatus", s.testKubectlShowsProxyStatus)
	})
	// Alone at the end: it restarts the operator with another configuration.
	t.Run("ConfigChangeRollsOutProxy", s.testConfigChangeRollsOutProxy)
}

// proxySettings configures the proxy workload of the suite's operator.
func proxySettings(upstream string, flush time.Duration) func(p *operatorconfig.Proxy) {
	return func(p *operatorconfig.Proxy) {
		p.Upstreams = []string{upstream}
		p.FlushInterval = metav1.Duration{Duration: flush}
	}
}

// startProxy runs one more proxy from the reconciled pod template, as a new
// replica would be, until t ends.
func (s *suite) startProxy(t *testing.T, name string) harness.Proxy {
	t.Helper()
	return s.StartReconciledProxy(t, name, s.manager)
}
