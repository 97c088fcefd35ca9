package harness

import (
	"bytes"
	"context"
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

// StartTimeout bounds how long a process may take to become ready. A
// two-core machine building and starting a dozen processes at once is slow.
const StartTimeout = 60 * time.Second

// SimulatorBinary finds llm-d-inference-sim, the vLLM stand-in.
func SimulatorBinary(t testing.TB) string {
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

// FreeAddr returns a loopback address with a port that was free a moment
// ago. Another process could take it before ours binds; on a test machine
// that is rare enough, and the failure would be loud.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String()
}

// Port is the port of addr, a host:port.
func Port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// Process is a program started for a test, in its own process group so that
// it and anything it forks are stopped together.
type Process struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error // valid once done is closed
}

// StartProcess runs bin with args until t ends. On stop it gets SIGTERM (so
// the proxy can flush usage), and SIGKILL if it has not exited 10s later. If
// t failed, its output is logged.
func StartProcess(t testing.TB, name, bin string, args ...string) *Process {
	t.Helper()
	return StartProcessEnv(t, name, bin, nil, args...)
}

// StartProcessEnv is [StartProcess] with exactly the environment env (nil:
// this process's).
func StartProcessEnv(t testing.TB, name, bin string, env []string, args ...string) *Process {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	p := &Process{name: name, cmd: cmd, out: &syncBuffer{}, done: make(chan struct{})}
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

// Terminate sends SIGTERM to the process alone, as the kubelet does to a
// container, and returns how it exited: nil for status 0. It fails t if the
// process is still running after timeout.
func (p *Process) Terminate(t testing.TB, timeout time.Duration) error {
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

// WaitHTTP polls url until it answers 200, failing t early if the process
// exits first.
func (p *Process) WaitHTTP(t testing.TB, url string) {
	t.Helper()
	hc := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(StartTimeout)
	var last string
	for {
		resp, err := hc.Get(url)
		if err == nil {
			_ = resp.Body.Close()
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
			t.Fatalf("%s: %s did not answer 200 within %s (last: %s)", p.name, url, StartTimeout, last)
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
