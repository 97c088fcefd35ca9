package redisserver

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// nodeTimeout is the cluster's node timeout: how long a node may not
// answer before the others take it for failed. Replicas never take over on
// their own (cluster-replica-no-failover); a test promotes one with CLUSTER
// FAILOVER.
const nodeTimeout = 5 * time.Second

// Cluster is a Redis Cluster owned by one test: three masters, each with
// one replica, all on loopback ports, keeping nothing on disk.
type Cluster struct {
	// Nodes are its servers, in the order the cluster was created from:
	// redis-cli makes the first three masters and the others their replicas.
	Nodes []*Server
}

// NewCluster starts six cluster-enabled servers for t, creates the cluster
// with redis-cli --cluster create (three masters, one replica each) and
// waits until every node reports it ok. The servers stop when t ends.
func NewCluster(t testing.TB) *Cluster {
	t.Helper()
	cli := cliBinary(t)
	c := &Cluster{}
	for range 6 {
		c.Nodes = append(c.Nodes, New(t, clusterNode()))
	}
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	if out, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redisserver: redis-cli %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	for _, n := range c.Nodes {
		c.waitOK(t, n.Addr())
	}
	return c
}

// clusterNode makes the server a cluster node, with a bus port of its own.
func clusterNode() Option { return func(s *Server) { s.busPort = -1 } }

// Addrs are the host:port of every node.
func (c *Cluster) Addrs() []string {
	out := make([]string, 0, len(c.Nodes))
	for _, n := range c.Nodes {
		out = append(out, n.Addr())
	}
	return out
}

// Node is the server listening on addr, nil if none of the cluster's.
func (c *Cluster) Node(addr string) *Server {
	for _, n := range c.Nodes {
		if n.Addr() == addr {
			return n
		}
	}
	return nil
}

// WaitOK waits until every running node reports cluster_state:ok and all
// 16384 slots served, after a failover or a slot migration.
func (c *Cluster) WaitOK(t testing.TB) {
	t.Helper()
	for _, n := range c.Nodes {
		if n.running() {
			c.waitOK(t, n.Addr())
		}
	}
}

func (c *Cluster) waitOK(t testing.TB, addr string) {
	t.Helper()
	var info string
	var err error
	for deadline := time.Now().Add(startTimeout); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		info, err = Command(addr, "CLUSTER", "INFO")
		if err == nil && strings.Contains(info, "cluster_state:ok") && strings.Contains(info, "cluster_slots_ok:16384") {
			return
		}
	}
	t.Fatalf("redisserver: cluster node %s not ok within %s: %v\n%s", addr, startTimeout, err, info)
}

func (s *Server) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc != nil
}

// cliBinary is redis-cli: $REDIS_CLI, else the one next to redis-server,
// else on PATH. Without it the test fails or, with LLM_SKIP_REDIS=1, skips,
// as without redis-server.
func cliBinary(t testing.TB) string {
	t.Helper()
	if v := os.Getenv("REDIS_CLI"); v != "" {
		return v
	}
	next := filepath.Join(filepath.Dir(binary(t)), "redis-cli")
	if _, err := os.Stat(next); err == nil {
		return next
	}
	path, err := exec.LookPath("redis-cli")
	if err == nil {
		return path
	}
	if os.Getenv(EnvSkip) == "1" {
		t.Skipf("redisserver: redis-cli is not installed and %s=1: skipping", EnvSkip)
	}
	t.Fatalf("redisserver: redis-cli not found (%v); it comes with redis-server (Debian's redis-tools)", err)
	return ""
}

// Command sends one command to addr over plain RESP and returns its reply:
// a simple or bulk string, or an integer in decimal. An error reply is an
// error. Arrays are not read.
func Command(addr string, args ...string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer func() { _ = conn.Close() }()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(conn, b.String()); err != nil {
		return "", err
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimSuffix(line, "\r\n")
	switch {
	case strings.HasPrefix(line, "+"), strings.HasPrefix(line, ":"):
		return line[1:], nil
	case strings.HasPrefix(line, "-"):
		return "", fmt.Errorf("%s: %s", strings.Join(args, " "), line[1:])
	case strings.HasPrefix(line, "$"):
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return "", fmt.Errorf("%s answered %q", strings.Join(args, " "), line)
		}
		v := make([]byte, n+2)
		if _, err := io.ReadFull(r, v); err != nil {
			return "", err
		}
		return string(v[:n]), nil
	}
	return "", fmt.Errorf("%s answered %q", strings.Join(args, " "), line)
}
