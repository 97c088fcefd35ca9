// Package reliability_test checks the accounting model of the README under
// failure: a proxy restarted while streams are in flight, several replicas
// sharing one Redis under a tight budget, the API server unreachable, and
// Redis down in both failure modes. Like test/e2e it runs the product as
// shipped (the manager and proxy binaries, a real kube-apiserver and etcd,
// llm-d-inference-sim for vLLM, redis-server, the official OpenAI Go SDK),
// and its ground truth is what the client was told: the sum of the usage of
// every response it received. Status must equal that sum exactly.
package reliability_test

import (
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
)

const (
	operatorNamespace = "llm-system"
	issuer            = "https://reliability"
	audience          = "llm-user-proxy"
	modelID           = "reliability-org/sim-chat-1b"
	// flushWait bounds how long usage takes to reach status once the proxy
	// can write it: a flush every second, API-server latency, and slack for a
	// loaded two-core machine running every subtest at once.
	flushWait = 20 * time.Second
)

// suite is the running system the subtests share: one API server, one
// operator, and two simulators. Each subtest starts its own proxies (and
// Redis) and works in a namespace of its own.
type suite struct {
	c          client.Client
	restConfig *rest.Config
	kubeconfig string
	proxyBin   string
	// fast answers at once, with random text of at most max_tokens tokens.
	fast simulator
	// slow echoes the prompt back a token at a time, so that a long prompt
	// makes a stream that lasts a second or two. It serves the restart test
	// alone, which counts its running requests.
	slow simulator
}

func TestReliability(t *testing.T) {
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
	s := &suite{
		c: env.Client, restConfig: env.Config, kubeconfig: env.Kubeconfig, proxyBin: filepath.Join(bin, "proxy"),
		fast: startSimulator(t, "simulator-fast", "--mode", "random"),
		slow: startSimulator(t, "simulator-slow", "--mode", "echo",
			"--time-to-first-token", "100ms", "--inter-token-latency", "40ms"),
	}
	startManager(t, filepath.Join(bin, "manager"), env.Kubeconfig)

	t.Run("Restart", s.testRestart)
	t.Run("Replicas", s.testReplicas)
	t.Run("APIServerOutage", s.testAPIServerOutage)
	t.Run("RedisOutage", s.testRedisOutage)
}
