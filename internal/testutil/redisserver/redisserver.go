// Package redisserver runs a throwaway redis-server process for tests. Tests
// of the shared quota counter need the real server: its Lua scripts, key
// expiry and pipelining are exactly what a fake would get subtly wrong.
//
// The binary is $REDIS_SERVER, or redis-server on PATH (Debian's
// redis-server package, installed by hack/install-deps.sh). When it is
// missing the test fails, so that CI cannot go green without having run the
// Redis tests; set LLM_SKIP_REDIS=1 to skip them instead.
package redisserver

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Environment variables read by [New].
const (
	// EnvBinary names the redis-server binary to run.
	EnvBinary = "REDIS_SERVER"
	// EnvSkip, set to 1, skips tests that need redis-server when it is not
	// installed, instead of failing them.
	EnvSkip = "LLM_SKIP_REDIS"
)

// startTimeout bounds how long a starting server may take to answer; a
// loaded two-core machine can be slow to fork and exec.
const startTimeout = 15 * time.Second

// Server is a redis-server process owned by one test. It listens on a
// loopback port and, unless started [Durable], keeps nothing on disk, so
// every start is empty.
type Server struct {
	t       testing.TB
	bin     string
	dir     string
	addr    string
	durable bool
	// busPort is the cluster bus port of a cluster node, 0 for none.
	busPort int
	// sentinel, when set, makes the server a Sentinel with this
	// configuration.
	sentinel string
	// tls are the TLS settings of a [TLS] server; tlsPort its TLS port
	// (-1 until one is picked).
	tls     []string
	tlsPort int
	// password is the requirepass of a [Password] server.
	password string

	mu   sync.Mutex
	proc *process
}

type process struct {
	cmd  *exec.Cmd
	done chan struct{}
	out  *syncBuffer
}

// Start runs a server for t and returns its address and a function that
// stops it early; it is stopped at the end of t in any case.
func Start(t testing.TB) (addr string, stop func()) {
	t.Helper()
	s := New(t)
	return s.Addr(), s.Stop
}

// Option configures [New].
type Option func(*Server)

// Durable makes the server write every command to its append-only file
// before answering (appendfsync always), so that a [Server.Restart] comes
// back with everything it had, as a Redis with persistence does after an
// outage.
func Durable() Option { return func(s *Server) { s.durable = true } }

// New runs a server for t on a free loopback port and waits until it answers
// PING. It is stopped when t ends.
func New(t testing.TB, opts ...Option) *Server {
	t.Helper()
	s := &Server{t: t, bin: binary(t), dir: t.TempDir()}
	for _, o := range opts {
		o(s)
	}
	// Registered after TempDir so that it runs first: the server goes before
	// its directory does.
	t.Cleanup(s.Stop)
	var err error
	for range 5 {
		var port int
		if port, err = freePort(); err != nil {
			break
		}
		s.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if s.busPort < 0 {
			if s.busPort, err = freePort(); err != nil {
				break
			}
		}
		if s.tlsPort < 0 {
			if s.tlsPort, err = freePort(); err != nil {
				break
			}
		}
		if err = s.start(); err == nil {
			return s
		}
	}
	t.Fatalf("redisserver: %v", err)
	return nil
}

// Addr is the server's host:port. It stays the same across [Server.Restart].
func (s *Server) Addr() string { return s.addr }

// Stop kills the server, as a crash or an outage would. Clients see
// connection errors until [Server.Restart]. Stopping a stopped server does
// nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	p := s.proc
	s.proc = nil
	s.mu.Unlock()
	if p != nil {
		p.kill()
	}
}

// Restart stops the server if it runs and starts it again on the same
// address: empty, unless it is [Durable]. Like [testing.T.Fatal], call it from the test's goroutine.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	var err error
	// The old listener is gone once the process is reaped, but another
	// process may briefly hold the port; try for a while.
	for deadline := time.Now().Add(startTimeout); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if err = s.start(); err == nil {
			return
		}
	}
	s.t.Fatalf("redisserver: restart on %s: %v", s.addr, err)
}

func binary(t testing.TB) string {
	t.Helper()
	name := "redis-server"
	if v := os.Getenv(EnvBinary); v != "" {
		name = v
	}
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if os.Getenv(EnvSkip) == "1" {
		t.Skipf("redisserver: %s is not installed and %s=1: skipping", name, EnvSkip)
	}
	t.Fatalf("redisserver: %s not found (%v). Run hack/install-deps.sh to install it, "+
		"set $%s to its path, or set %s=1 to skip the tests that need Redis", name, err, EnvBinary, EnvSkip)
	return ""
}

// freePort asks the kernel for a port that was free a moment ago; start
// retries if another process takes it first.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Server) start() error {
	_, port, _ := net.SplitHostPort(s.addr)
	appendOnly := []string{"--appendonly", "no"}
	if s.durable {
		appendOnly = []string{"--appendonly", "yes", "--appendfsync", "always"}
	}
	args := append([]string{
		"--port", port,
		"--bind", "127.0.0.1",
		"--save", "",
		"--dir", s.dir,
		"--daemonize", "no",
	}, appendOnly...)
	if s.busPort > 0 {
		args = append(args, "--cluster-enabled", "yes", "--cluster-port", strconv.Itoa(s.busPort),
			"--cluster-config-file", "nodes.conf", "--cluster-node-timeout", strconv.Itoa(int(nodeTimeout.Milliseconds())),
			// A loaded test machine must not fail a master over behind a
			// test's back; the tests promote replicas themselves.
			"--cluster-replica-no-failover", "yes")
	}
	if s.tls != nil {
		args = append(append(args, "--tls-port", strconv.Itoa(s.tlsPort)), s.tls...)
	}
	if s.password != "" {
		args = append(args, "--requirepass", s.password)
	}
	if s.sentinel != "" {
		conf := filepath.Join(s.dir, "sentinel.conf")
		sentinel := s.sentinel
		if s.password != "" {
			sentinel += "requirepass " + s.password + "\n"
		}
		if err := os.WriteFile(conf, []byte("port "+port+"\nbind 127.0.0.1\ndir "+s.dir+"\n"+sentinel), 0o600); err != nil {
			return err
		}
		args = []string{conf, "--sentinel"}
	}
	cmd := exec.Command(s.bin, args...)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{}), out: out}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()

	deadline := time.Now().Add(startTimeout)
	for {
		// A server that answers may be another one that got the port first;
		// only ours has our process id.
		pid, err := serverPID(s.addr, s.password)
		if err == nil && pid == cmd.Process.Pid {
			s.mu.Lock()
			s.proc = p
			s.mu.Unlock()
			return nil
		}
		if err == nil {
			err = fmt.Errorf("%s is served by process %d, not ours (%d)", s.addr, pid, cmd.Process.Pid)
		}
		select {
		case <-p.done:
			return fmt.Errorf("redis-server on %s exited while starting (%w); its output:\n%s", s.addr, err, out)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.kill()
			return fmt.Errorf("redis-server on %s did not answer within %s (%w); its output:\n%s", s.addr, startTimeout, err, out)
		}
	}
}

func (p *process) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// serverPID sends PING and INFO server over plain RESP, keeping this
// package free of any Redis client library, and returns the process_id the
// server reports.
func serverPID(addr, password string) (int, error) {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return 0, err
	}
	defer func() { _ = conn.Close() }()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	r := bufio.NewReader(conn)
	if password != "" {
		if _, err := fmt.Fprintf(conn, "*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n", len(password), password); err != nil {
			return 0, err
		}
		line, err := r.ReadString('\n')
		if err != nil {
			return 0, err
		}
		if line != "+OK\r\n" {
			return 0, fmt.Errorf("AUTH answered %q", strings.TrimSpace(line))
		}
	}
	if _, err := io.WriteString(conn, "*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n"); err != nil {
		return 0, err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return 0, err
	}
	if line != "+PONG\r\n" {
		return 0, fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	if line, err = r.ReadString('\n'); err != nil {
		return 0, err
	}
	if !strings.HasPrefix(line, "$") {
		return 0, fmt.Errorf("INFO answered %q", strings.TrimSpace(line))
	}
	n, err := strconv.Atoi(strings.TrimSpace(line[1:]))
	if err != nil || n < 0 {
		return 0, fmt.Errorf("INFO answered %q", strings.TrimSpace(line))
	}
	info := make([]byte, n)
	if _, err := io.ReadFull(r, info); err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(info), "\r\n") {
		if v, ok := strings.CutPrefix(l, "process_id:"); ok {
			return strconv.Atoi(v)
		}
	}
	return 0, errors.New("INFO server has no process_id")
}

// syncBuffer collects the server's output, written by exec's copying
// goroutines and read by the test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// NewSentinel runs a Sentinel for t that watches the master at addr under
// name; a master that stops answering for a second is down to it.
func NewSentinel(t testing.TB, name, addr string) *Server {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf("sentinel monitor %[1]s %[2]s %[3]s 1\nsentinel down-after-milliseconds %[1]s 1000\n", name, host, port)
	return New(t, func(s *Server) { s.sentinel = conf })
}

// NewSentinelAuth is [NewSentinel] for a master that requires
// masterPassword, itself requiring sentinelPassword of its clients.
func NewSentinelAuth(t testing.TB, name, addr, masterPassword, sentinelPassword string) *Server {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf("sentinel monitor %[1]s %[2]s %[3]s 1\nsentinel down-after-milliseconds %[1]s 1000\nsentinel auth-pass %[1]s %[4]s\n",
		name, host, port, masterPassword)
	return New(t, func(s *Server) { s.sentinel = conf }, Password(sentinelPassword))
}
