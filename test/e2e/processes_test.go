package e2e_test

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

// EnvSimulator names the llm-d-inference-sim binary; `make test` sets it.
// Unset, hack/simulator.sh builds (or finds) it and prints its path.
const EnvSimulator = "LLM_SIM_BINARY"

// startTimeout bounds how long a process may take to become ready. A
// two-core machine building and starting four processes at once is slow.
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
	p := &process{name: name, out: &syncBuffer{}, done: make(chan struct{})}
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

// startSimulator starts llm-d-inference-sim serving model and returns its
// base URL. Random mode: answers of random length, with exact usage.
func startSimulator(t *testing.T) string {
	t.Helper()
	addr := freeAddr(t)
	p := start(t, "llm-d-inference-sim", simulatorBinary(t),
		"--port", port(addr), "--model", modelID, "--force-dummy-tokenizer",
		"--max-num-seqs", "1000", "--mode", "random")
	base := "http://" + addr
	p.waitHTTP(t, base+"/v1/models")
	return base
}

// startManager runs the operator against kubeconfig, writing proxyBaseURL
// into every token Secret, and returns the URL of its /auth/refresh.
func startManager(t *testing.T, bin, kubeconfig, proxyBaseURL string) string {
	t.Helper()
	probe, refresh := freeAddr(t), freeAddr(t)
	p := start(t, "manager", bin,
		"--kubeconfig", kubeconfig,
		"--namespace", operatorNamespace,
		"--metrics-bind-address", "0",
		"--health-probe-bind-address", probe,
		"--refresh-bind-address", refresh,
		"--proxy-base-url", proxyBaseURL,
		"--issuer", issuer,
		"--audience", audience,
	)
	p.waitHTTP(t, "http://"+probe+"/readyz")
	return "http://" + refresh + "/auth/refresh"
}

// proxyProcess is a running proxy.
type proxyProcess struct {
	*process
	// BaseURL is the OpenAI base URL, ending in /v1.
	BaseURL string
	// MetricsURL is its /metrics.
	MetricsURL string
}

// startProxy runs a proxy serving the OpenAI API on listen, until t ends,
// and waits until /readyz says it knows the users, the keys and the models.
func (s *suite) startProxy(t *testing.T, name, listen string) proxyProcess {
	t.Helper()
	metricsAddr := freeAddr(t)
	p := start(t, name, s.proxyBin,
		"--kubeconfig", s.kubeconfig,
		"--namespace", operatorNamespace,
		"--listen-address", listen,
		"--metrics-bind-address", metricsAddr,
		"--upstreams", s.simURL,
		"--issuer", issuer,
		"--audience", audience,
		"--refresh-url", s.refreshURL,
		"--flush-interval", "1s",
	)
	p.waitHTTP(t, "http://"+metricsAddr+"/readyz")
	return proxyProcess{process: p, BaseURL: "http://" + listen + "/v1", MetricsURL: "http://" + metricsAddr + "/metrics"}
}
