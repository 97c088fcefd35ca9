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
	"testing"
	"time"

	"github.com/llm-user-operator/llm-user-operator/test/harness"
)

const (
	modelID = "reliability-org/sim-chat-1b"
	// flushWait bounds how long usage takes to reach status once the proxy
	// can write it: a flush every second, API-server latency, and slack for a
	// loaded two-core machine running every subtest at once.
	flushWait = 20 * time.Second
)

// suite is the running system the subtests share: one API server, one
// operator, and two simulators. Each subtest starts its own proxies (and
// Redis) and works in a namespace of its own.
type suite struct {
	*harness.Env
	// fast answers at once, with random text of at most max_tokens tokens.
	fast harness.Simulator
	// slow echoes the prompt back a token at a time, so that a long prompt
	// makes a stream that lasts a second or two. It serves the restart test
	// alone, which counts its running requests.
	slow harness.Simulator
}

func TestReliability(t *testing.T) {
	env := harness.Start(t, harness.Options{Issuer: "https://reliability", Model: modelID, NamespacePrefix: "rel", FlushWait: flushWait})
	s := &suite{
		Env:  env,
		fast: env.StartSimulator(t, "simulator-fast", "--mode", "random"),
		slow: env.StartSimulator(t, "simulator-slow", "--mode", "echo",
			"--time-to-first-token", "100ms", "--inter-token-latency", "40ms"),
	}
	env.StartManager(t, harness.ManagerConfig{})

	// Alone, before the parallel subtests: it measures the proxy's memory.
	t.Run("SlowClients", s.testSlowClients)
	t.Run("Restart", s.testRestart)
	t.Run("Rollover", s.testRollover)
	t.Run("Replicas", s.testReplicas)
	t.Run("OwnerKilled", s.testOwnerKilled)
	t.Run("APIServerOutage", s.testAPIServerOutage)
	t.Run("RedisOutage", s.testRedisOutage)
	t.Run("Lease", s.testLease)
	t.Run("GraceExpiry", s.testGraceExpiry)
}
