package reliability_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
)

// The helpers in this file are copied from test/e2e (processes_test.go),
// with a way added to signal a process and collect its exit status, which
// the restart test needs.

// EnvSimulator names the llm-d-inference-sim binary; `make test` sets it.
// Unset, hack/simulator.sh builds (or finds) it and prints its path.
const EnvSimulator = "LLM_SIM_BINARY"

// startTimeout bounds how long a process may take to become ready. A
// two-core machine starting a dozen processes at once is slow.
const startTimeout = 60 * time.Second

// build compiles the manager and the proxy exactly as shipped into dir, as
// dir/manager and dir/proxy. It takes no *testing.T so that it can run
// beside the API server's start.
func build(dir string) error {
	cmd := exec.Command("go", "build", "-buildvcs=false", "-o", dir+string(filepath.Separator), "./cmd/manager", "./cmd/proxy")
	cmd.Dir = envtest.RepoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building ./cmd/manager and ./cmd/proxy: %w\n%s", err, out)
	}
	return nil
}

// simulatorBinary finds llm-d-inference-sim, the vLLM stand-in.
func simulatorBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv(EnvSimulator); bin != "" {
		return bin
	}
	cmd := exec.Command(filepath.Join(envtest.RepoRoot(), "hack", "simulator.sh"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("llm-d-inference-sim unavailable (set %s or run hack/simulator.sh): %v\n%s", EnvSimulator, err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// freeAddr returns a loopback address with a port that was free a moment
// ago. Another process could take it before ours binds; on a test machine
// that is rare enough, and the failure would be loud.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// process is a program started for a test, in its own process group so that
// it and anything it forks are stopped together.
type process struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error // valid once done is closed
}

// start runs bin with args until t ends. On stop it gets SIGTERM (so the
// proxy can flush usage), and SIGKILL if it has not exited 10s later. If t
// failed, its output is logged.
func start(t *testing.T, name, bin string, args ...string) *process {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, args...)
	p := &process{name: name, cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.SysProcAttr = sysProcAttr()
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		cancel()
		<-p.done
		// WaitDelay kills the leader only; take the rest of the group too.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if t.Failed() {
			t.Logf("=== %s %s (exit: %v) ===\n%s", name, strings.Join(args, " "), p.err, p.out.String())
		}
	})
	return p
}

// terminate sends SIGTERM to the process alone, as the kubelet does to a
// container, and returns how it exited: nil for status 0. It fails t if the
// process is still running after timeout.
func (p *process) terminate(t *testing.T, timeout time.Duration) error {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("sending SIGTERM to %s: %v", p.name, err)
	}
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		t.Fatalf("%s still running %s after SIGTERM", p.name, timeout)
		return nil
	}
}

// waitHTTP polls url until it answers 200, failing t early if the process
// exits first.
func (p *process) waitHTTP(t *testing.T, url string) {
	t.Helper()
	hc := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(startTimeout)
	var last string
	for {
		resp, err := hc.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited before %s answered 200: %v\n%s", p.name, url, p.err, p.out.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s did not answer 200 within %s (last: %s)", p.name, url, startTimeout, last)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for a process writing while a test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// simulator is a running llm-d-inference-sim.
type simulator struct {
	// URL is its base URL, without /v1.
	URL string
}

// startSimulator starts llm-d-inference-sim serving modelID, with extra
// flags (modes, latencies) after the common ones.
func startSimulator(t *testing.T, name string, extra ...string) simulator {
	t.Helper()
	addr := freeAddr(t)
	args := append([]string{
		"--port", port(addr), "--model", modelID, "--force-dummy-tokenizer",
		"--max-num-seqs", "1000",
	}, extra...)
	p := start(t, name, simulatorBinary(t), args...)
	base := "http://" + addr
	p.waitHTTP(t, base+"/v1/models")
	return simulator{URL: base}
}

// startManager runs the operator against kubeconfig, so that every LLMUser
// gets its token Secret.
func startManager(t *testing.T, bin, kubeconfig string) {
	t.Helper()
	probe, refresh := freeAddr(t), freeAddr(t)
	p := start(t, "manager", bin,
		"--kubeconfig", kubeconfig,
		"--namespace", operatorNamespace,
		"--metrics-bind-address", "0",
		"--health-probe-bind-address", probe,
		"--refresh-bind-address", refresh,
		"--issuer", issuer,
		"--audience", audience,
	)
	p.waitHTTP(t, "http://"+probe+"/readyz")
}

// proxyProcess is a running proxy.
type proxyProcess struct {
	*process
	// Listen is the address of its OpenAI API.
	Listen string
	// BaseURL is the OpenAI base URL, ending in /v1.
	BaseURL string
	// MetricsURL is its /metrics.
	MetricsURL string
}

// proxyConfig is what varies between the proxies of these tests.
type proxyConfig struct {
	// Listen is the API address; empty picks a free one.
	Listen string
	// Kubeconfig defaults to the suite's, straight to the API server.
	Kubeconfig string
	// Upstream is the simulator's base URL.
	Upstream string
	// Flags are added after the common ones (counter, flush interval, grace).
	Flags []string
}

// startProxy runs a proxy until t ends and waits until /readyz says it
// knows the users, the keys and the models.
func (s *suite) startProxy(t *testing.T, name string, c proxyConfig) proxyProcess {
	t.Helper()
	if c.Listen == "" {
		c.Listen = freeAddr(t)
	}
	if c.Kubeconfig == "" {
		c.Kubeconfig = s.kubeconfig
	}
	metricsAddr := freeAddr(t)
	args := append([]string{
		"--kubeconfig", c.Kubeconfig,
		"--namespace", operatorNamespace,
		"--listen-address", c.Listen,
		"--metrics-bind-address", metricsAddr,
		"--upstreams", c.Upstream,
		"--issuer", issuer,
		"--audience", audience,
	}, c.Flags...)
	p := start(t, name, s.proxyBin, args...)
	p.waitHTTP(t, "http://"+metricsAddr+"/readyz")
	return proxyProcess{process: p, Listen: c.Listen, BaseURL: "http://" + c.Listen + "/v1", MetricsURL: "http://" + metricsAddr + "/metrics"}
}
