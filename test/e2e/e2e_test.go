// Package e2e_test runs the product as shipped: the manager and proxy
// binaries built from ./cmd, a real kube-apiserver and etcd, llm-d-inference-sim
// standing in for vLLM, and the official OpenAI Go SDK configured from the
// token Secret exactly as a pod using envFrom would be. Everything is started
// by the test and stopped when it ends.
package e2e_test

import (
	"testing"
	"time"

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
)

// suite is the running system shared by the subtests. Each subtest works in
// a namespace of its own, so they can run in parallel without seeing each
// other's users, usage or metric series.
type suite struct {
	*harness.Env
	simURL     string
	refreshURL string
	proxy      harness.Proxy
}

func TestE2E(t *testing.T) {
	env := harness.Start(t, harness.Options{Issuer: "https://e2e", Model: modelID, NamespacePrefix: "e2e", FlushWait: flushWait})
	simURL := env.StartSimulator(t, "llm-d-inference-sim", "--mode", "random").URL
	listen := harness.FreeAddr(t)
	mgr := env.StartManager(t, harness.ManagerConfig{ProxyBaseURL: "http://" + listen + "/v1"})
	s := &suite{Env: env, simURL: simURL, refreshURL: mgr.RefreshURL}
	s.proxy = s.startProxy(t, "proxy", listen)

	t.Run("TokenSecret", s.testTokenSecret)
	t.Run("ChatCompletion", s.testChatCompletion)
	t.Run("StreamWithoutUsage", s.testStreamWithoutUsage)
	t.Run("StreamWithUsage", s.testStreamWithUsage)
	t.Run("CompletionsAndEmbeddings", s.testCompletionsAndEmbeddings)
	t.Run("Models", s.testModels)
	t.Run("RequestQuota", s.testRequestQuota)
	t.Run("TokenQuota", s.testTokenQuota)
	t.Run("QuotaSurvivesProxyRestart", s.testQuotaSurvivesProxyRestart)
	t.Run("Suspend", s.testSuspend)
	t.Run("Unauthenticated", s.testUnauthenticated)
	t.Run("Refresh", s.testRefresh)
	t.Run("Hostile", s.testHostile)
}

// startProxy runs a proxy serving the OpenAI API on listen, until t ends,
// forwarding to the simulator and refreshing tokens through the operator,
// and waits until /readyz says it knows the users, the keys and the models.
func (s *suite) startProxy(t *testing.T, name, listen string) harness.Proxy {
	t.Helper()
	return s.StartProxy(t, name, harness.ProxyConfig{Listen: listen, Upstream: s.simURL,
		Flags: []string{"--refresh-url", s.refreshURL, "--flush-interval", "1s"}})
}
