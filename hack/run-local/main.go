// Command run-local starts everything on this machine for `make run`: a local
// control plane (kube-apiserver and etcd, as envtest runs them) with the CRDs,
// the vLLM simulator, the operator and the proxy, applies the samples and
// prints how to call the proxy. Ctrl-C stops it all.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding manager and proxy")
	sim := flag.String("simulator", os.Getenv("LLM_SIM_BINARY"), "llm-d-inference-sim binary")
	model := flag.String("model", "Qwen/Qwen2.5-1.5B-Instruct", "model the simulator serves")
	port := flag.Int("port", 8000, "proxy port")
	flag.Parse()
	if err := run(*bin, *sim, *model, *port); err != nil {
		fmt.Fprintln(os.Stderr, "run-local:", err)
		os.Exit(1)
	}
}

func run(bin, sim, model string, port int) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	fmt.Println("starting kube-apiserver and etcd ...")
	env, err := envtest.New()
	if err != nil {
		return err
	}
	defer env.Stop()
	state := filepath.Join(bin, "run")
	if err := os.MkdirAll(state, 0o755); err != nil {
		return err
	}
	kubeconfig, _ := filepath.Abs(filepath.Join(state, "kubeconfig"))
	data, err := os.ReadFile(env.Kubeconfig)
	if err != nil {
		return err
	}
	if err := os.WriteFile(kubeconfig, data, 0o600); err != nil {
		return err
	}

	simPort, refreshPort, probePort, metricsPort := free(), free(), free(), free()
	proxyAddr := fmt.Sprintf("127.0.0.1:%d", port)
	procs := []*exec.Cmd{
		command(ctx, state, "simulator", sim, "--port", fmt.Sprint(simPort), "--model", model,
			"--force-dummy-tokenizer", "--max-num-seqs", "256", "--max-model-len", "32768", "--mode", "random",
			"--time-to-first-token", "50ms", "--inter-token-latency", "10ms"),
		command(ctx, state, "operator", filepath.Join(bin, "manager"), "--kubeconfig", kubeconfig,
			"--namespace", "llm-user-operator-system", "--metrics-bind-address", "0",
			"--health-probe-bind-address", fmt.Sprintf("127.0.0.1:%d", probePort),
			"--refresh-bind-address", fmt.Sprintf("127.0.0.1:%d", refreshPort),
			"--issuer", "https://llm-user-operator.local", "--proxy-base-url", "http://"+proxyAddr+"/v1"),
		command(ctx, state, "proxy", filepath.Join(bin, "proxy"), "--kubeconfig", kubeconfig,
			"--namespace", "llm-user-operator-system", "--listen-address", proxyAddr,
			"--metrics-bind-address", fmt.Sprintf("127.0.0.1:%d", metricsPort),
			"--upstreams", fmt.Sprintf("http://127.0.0.1:%d", simPort),
			"--issuer", "https://llm-user-operator.local",
			"--refresh-url", fmt.Sprintf("http://127.0.0.1:%d/auth/refresh", refreshPort)),
	}
	kubectl := func(args ...string) error {
		c := exec.CommandContext(ctx, "kubectl", append([]string{"--kubeconfig", kubeconfig}, args...)...)
		c.Stdout, c.Stderr = os.Stdout, os.Stderr
		return c.Run()
	}
	if err := kubectl("create", "namespace", "llm-user-operator-system"); err != nil {
		return err
	}
	for _, p := range procs {
		if err := p.Start(); err != nil {
			return fmt.Errorf("%s: %w", p.Path, err)
		}
		defer func(p *exec.Cmd) {
			_ = p.Process.Signal(syscall.SIGTERM)
			_ = p.Wait()
		}(p)
	}
	if err := kubectl("apply", "-n", "default", "-k", "config/samples"); err != nil {
		return err
	}
	ready := fmt.Sprintf("http://127.0.0.1:%d/readyz", metricsPort)
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		if r, err := http.Get(ready); err == nil {
			_ = r.Body.Close()
			if r.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("proxy not ready; logs in %s", state)
		}
	}
	_ = kubectl("get", "llmusers,llmquotas", "-n", "default")
	fmt.Printf(`
Everything is up (logs in %[1]s). Try:

  export KUBECONFIG=%[2]s
  export OPENAI_API_KEY=$(kubectl get secret alice-llm-token -o jsonpath='{.data.OPENAI_API_KEY}' | base64 -d)
  curl -s http://%[3]s/v1/chat/completions -H "Authorization: Bearer $OPENAI_API_KEY" \
    -d '{"model":"%[4]s","messages":[{"role":"user","content":"hello"}]}'
  kubectl get llmusers
  curl -s http://127.0.0.1:%[5]d/metrics | grep llm_proxy

Ctrl-C stops everything.
`, state, kubeconfig, proxyAddr, model, metricsPort)
	<-ctx.Done()
	fmt.Println("stopping ...")
	return nil
}

func command(ctx context.Context, dir, name, path string, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, path, args...)
	log, err := os.Create(filepath.Join(dir, name+".log"))
	if err == nil {
		c.Stdout, c.Stderr = log, log
	}
	c.Cancel = func() error { return c.Process.Signal(syscall.SIGTERM) }
	c.WaitDelay = 30 * time.Second
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
