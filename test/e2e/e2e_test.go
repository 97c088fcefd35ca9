// Package e2e_test runs the product as shipped: the manager and proxy
// binaries built from ./cmd, a real kube-apiserver and etcd, llm-d-inference-sim
// standing in for vLLM, and the official OpenAI Go SDK configured from the
// token Secret exactly as a pod using envFrom would be. Everything is started
// by the test and stopped when it ends.
package e2e_test

import (
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
)

const (
	operatorNamespace = "llm-system"
	issuer            = "https://e2e"
	audience          = "llm-user-proxy"
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
	c          client.Client
	kubeconfig string
	proxyBin   string
	simURL     string
	refreshURL string
	proxy      proxyProcess
}

func TestE2E(t *testing.T) {
	bin := t.TempDir()
	var buildErr error
	built := make(chan struct{})
	go func() { // compile while the API server starts
		defer close(built)
		buildErr = build(bin)
	}()
	t.Cleanup(func() { <-built }) // before bin is removed
	env := envtest.Start(t)
	<-built
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: operatorNamespace}}
	if err := env.Client.Create(t.Context(), ns); err != nil {
		t.Fatalf("creating namespace %s: %v", operatorNamespace, err)
	}

	simURL := startSimulator(t)
	listen := freeAddr(t)
	refreshURL := startManager(t, filepath.Join(bin, "manager"), env.Kubeconfig, "http://"+listen+"/v1")
	s := &suite{c: env.Client, kubeconfig: env.Kubeconfig, proxyBin: filepath.Join(bin, "proxy"), simURL: simURL, refreshURL: refreshURL}
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
}
