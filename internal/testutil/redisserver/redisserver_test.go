package redisserver

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
)

func TestStartStopRestart(t *testing.T) {
	s := New(t)
	pid, err := serverPID(s.Addr())
	if err != nil {
		t.Fatalf("server does not answer after New: %v", err)
	}

	s.Stop()
	if _, err := serverPID(s.Addr()); err == nil {
		t.Fatal("server still answers after Stop")
	}
	s.Stop() // idempotent

	s.Restart()
	pid2, err := serverPID(s.Addr())
	if err != nil {
		t.Fatalf("server does not answer after Restart: %v", err)
	}
	if pid2 == pid {
		t.Errorf("Restart kept process %d", pid)
	}
}

func TestStartReturnsStop(t *testing.T) {
	addr, stop := Start(t)
	if _, err := serverPID(addr); err != nil {
		t.Fatalf("server does not answer: %v", err)
	}
	stop()
	if _, err := serverPID(addr); err == nil {
		t.Fatal("server still answers after stop")
	}
}

func TestTwoServersDoNotShare(t *testing.T) {
	a, b := New(t), New(t)
	if a.Addr() == b.Addr() {
		t.Fatalf("both servers on %s", a.Addr())
	}
}

// outcome is how a test driven through recorder ended.
type outcome struct {
	failed, skipped bool
	msg             string
}

// recorder is a testing.TB whose Fatalf and Skipf end only the goroutine
// running it, so a test can assert how New treats a missing binary.
type recorder struct {
	testing.TB
	out outcome
}

func (r *recorder) Helper() {}

func (r *recorder) Fatalf(format string, args ...any) {
	r.out = outcome{failed: true, msg: fmt.Sprintf(format, args...)}
	runtime.Goexit()
}

func (r *recorder) Skipf(format string, args ...any) {
	r.out = outcome{skipped: true, msg: fmt.Sprintf(format, args...)}
	runtime.Goexit()
}

func runNew(t *testing.T) outcome {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		New(r)
	}()
	<-done
	return r.out
}

func TestMissingBinary(t *testing.T) {
	t.Setenv(EnvBinary, "/nonexistent/redis-server")

	t.Run("fails with install hint", func(t *testing.T) {
		t.Setenv(EnvSkip, "")
		out := runNew(t)
		if !out.failed || !strings.Contains(out.msg, "hack/install-deps.sh") {
			t.Errorf("got %+v, want a failure naming hack/install-deps.sh", out)
		}
	})
	t.Run("skips when asked", func(t *testing.T) {
		t.Setenv(EnvSkip, "1")
		if out := runNew(t); !out.skipped {
			t.Errorf("got %+v, want a skip", out)
		}
	})
}
