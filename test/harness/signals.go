package harness

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// Kill sends SIGKILL to the process alone, as the kernel's OOM killer or a
// lost node would end it: no shutdown, no flush. It waits until it is gone.
func (p *Process) Kill(t testing.TB) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("sending SIGKILL to %s: %v", p.name, err)
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s still running 10s after SIGKILL", p.name)
	}
}

// PeakRSS is the most resident memory the process has used so far, in
// bytes (VmHWM in /proc/<pid>/status).
func (p *Process) PeakRSS(t testing.TB) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("reading %s's memory: %v", p.name, err)
	}
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("VmHWM:")); ok {
			kb, err := strconv.ParseInt(string(bytes.TrimSpace(bytes.TrimSuffix(bytes.TrimSpace(v), []byte("kB")))), 10, 64)
			if err != nil {
				t.Fatalf("reading %s's VmHWM %q: %v", p.name, v, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("%s: no VmHWM in /proc status", p.name)
	return 0
}
