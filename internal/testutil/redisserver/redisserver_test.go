package redisserver

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestStartStopRestart(t *testing.T) {
	s := New(t)
	pid, err := serverPID(s.Addr(), "")
	if err != nil {
		t.Fatalf("server does not answer after New: %v", err)
	}

	s.Stop()
	if _, err := serverPID(s.Addr(), ""); err == nil {
		t.Fatal("server still answers after Stop")
	}
	s.Stop() // idempotent

	s.Restart()
	pid2, err := serverPID(s.Addr(), "")
	if err != nil {
		t.Fatalf("server does not answer after Restart: %v", err)
	}
	if pid2 == pid {
		t.Errorf("Restart kept process %d", pid)
	}
}

func TestStartReturnsStop(t *testing.T) {
	addr, stop := Start(t)
	if _, err := serverPID(addr, ""); err != nil {
		t.Fatalf("server does not answer: %v", err)
	}
	stop()
	if _, err := serverPID(addr, ""); err == nil {
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

func TestCluster(t *testing.T) {
	c := NewCluster(t)
	masters, replicas := 0, 0
	for _, n := range c.Nodes {
		info, err := Command(n.Addr(), "INFO", "replication")
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case strings.Contains(info, "role:master"):
			masters++
		case strings.Contains(info, "role:slave"):
			replicas++
		}
	}
	if masters != 3 || replicas != 3 {
		t.Errorf("%d masters and %d replicas, want 3 and 3", masters, replicas)
	}
	if _, err := Command(c.Nodes[0].Addr(), "SET", "{a}x", "1"); err != nil && !strings.Contains(err.Error(), "MOVED") {
		t.Errorf("SET on a cluster node: %v", err)
	}
}

func TestSentinel(t *testing.T) {
	m := New(t)
	s := NewSentinel(t, "counters", m.Addr())
	for deadline := time.Now().Add(startTimeout); ; time.Sleep(20 * time.Millisecond) {
		info, err := Command(s.Addr(), "INFO", "sentinel")
		if err == nil && strings.Contains(info, "name=counters,status=ok,address="+m.Addr()) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the Sentinel does not watch %s: %v\n%s", m.Addr(), err, info)
		}
	}
}
