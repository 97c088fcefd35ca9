package proxyserver

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/redisserver"
)

func parseRedisFlags(t *testing.T, args ...string) (Options, error) {
	t.Helper()
	o := Defaults()
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	o.BindFlags(fs)
	if err := fs.Parse(append([]string{"--upstreams=http://vllm:8000", "--counter=redis"}, args...)); err != nil {
		t.Fatal(err)
	}
	return o, o.Validate()
}

// TestRedisModeFlags: the Redis flags as the operator writes them, and
// what is missing said plainly.
func TestRedisModeFlags(t *testing.T) {
	o, err := parseRedisFlags(t, "--redis-mode=cluster", "--redis-addrs=r-0.r:6379, r-1.r:6379")
	if err != nil {
		t.Fatal(err)
	}
	if o.RedisMode != "cluster" || !slices.Equal(o.RedisAddrs, []string{"r-0.r:6379", "r-1.r:6379"}) {
		t.Errorf("mode %q addrs %q", o.RedisMode, o.RedisAddrs)
	}
	if _, ok := mustRedisClient(t, o).(*redis.ClusterClient); !ok {
		t.Error("--redis-mode=cluster does not build a cluster client")
	}
	if o, _ := parseRedisFlags(t, "--redis-addr=r:6379"); o.RedisMode != "standalone" {
		t.Errorf("default mode %q, want standalone", o.RedisMode)
	}
	t.Setenv(EnvRedisPassword, "s3cret")
	o, _ = parseRedisFlags(t, "--redis-addr=r:6379", "--redis-tls")
	if ro := mustRedisClient(t, o).(*redis.Client).Options(); ro.Password != "s3cret" || ro.TLSConfig == nil {
		t.Errorf("standalone client: password %q, TLS %v; want the password from $%s and TLS", ro.Password, ro.TLSConfig, EnvRedisPassword)
	}
	o, _ = parseRedisFlags(t, "--redis-mode=cluster", "--redis-addrs=a:1")
	if ro := mustRedisClient(t, o).(*redis.ClusterClient).Options(); ro.Password != "s3cret" || ro.TLSConfig != nil {
		t.Errorf("cluster client: password %q, TLS %v; want the password and no TLS", ro.Password, ro.TLSConfig)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--redis-mode=cluster"}, "--redis-mode=cluster needs --redis-addrs"},
		{[]string{"--redis-mode=sentinel", "--redis-addrs=s:26379"}, "needs --redis-master-name"},
		{[]string{"--redis-mode=ring", "--redis-addr=r:6379"}, `unknown --redis-mode "ring"`},
		{nil, "--counter=redis needs --redis-addr"},
		{[]string{"--redis-addr=r:6379", "--redis-tls-ca-file=/ca.crt"}, "--redis-tls-ca-file and --redis-tls-cert-file need --redis-tls"},
		{[]string{"--redis-addr=r:6379", "--redis-tls", "--redis-tls-cert-file=/tls.crt"}, "--redis-tls-cert-file and --redis-tls-key-file go together"},
	} {
		if _, err := parseRedisFlags(t, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error saying %q", tc.args, err, tc.want)
		}
	}
}

// TestCounterOnRedisSentinel: the counter the proxy builds for
// --redis-mode=sentinel finds the master through the Sentinel and keeps
// the single-instance layout there.
func TestCounterOnRedisSentinel(t *testing.T) {
	master := redisserver.New(t)
	sentinel := redisserver.NewSentinel(t, "counters", master.Addr())
	store := seededCounter(t, "--redis-mode=sentinel", "--redis-addrs="+sentinel.Addr(), "--redis-master-name=counters")
	ctx := context.Background()
	if v, err := redisserver.Command(master.Addr(), "GET", "llmq:seeded"); err != nil || v != "1" {
		t.Errorf("llmq:seeded on the master = %q, %v; want 1", v, err)
	}
	b := quota.UserBudget("team", "alice", "u1", []quota.Limit{{Window: llmv1alpha1.WindowDay, Requests: new(int64(1))}}, false)
	r, d, err := store.Reserve(ctx, quota.Request{Budgets: []quota.Budget{b}, Estimate: quota.Amount{Requests: 1}})
	if err != nil || !d.Allowed {
		t.Fatalf("Reserve: %v %+v", err, d)
	}
	if err := store.Settle(ctx, r, quota.Amount{Requests: 1, InputTokens: 5}); err != nil {
		t.Fatal(err)
	}
	if v, err := redisserver.Command(master.Addr(), "HGET", "llmq:user/team/alice/u1:lifetime", "in"); err != nil || v != "5" {
		t.Errorf("the lifetime's input tokens on the master = %q, %v; want 5", v, err)
	}
}

// TestCounterOnRedisCluster: the counter the proxy builds for
// --redis-mode=cluster admits a Shared quota's request (the user's tally and
// the pool in one script) and a PerUser one, on a real cluster.
func TestCounterOnRedisCluster(t *testing.T) {
	cl := redisserver.NewCluster(t)
	store := seededCounter(t, "--redis-mode=cluster", "--redis-addrs="+strings.Join(cl.Addrs()[:2], ","))
	ctx := context.Background()
	u := &llmv1alpha1.LLMUser{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "alice", UID: "u1"}}
	for _, scope := range []llmv1alpha1.QuotaScope{llmv1alpha1.ScopeShared, llmv1alpha1.ScopePerUser} {
		tokens := int64(100)
		q := &llmv1alpha1.LLMQuota{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "q-" + strings.ToLower(string(scope)), UID: "q1"},
			Spec: llmv1alpha1.LLMQuotaSpec{Scope: scope, Limits: []llmv1alpha1.QuotaLimit{{Window: llmv1alpha1.WindowDay, Tokens: &tokens}}}}
		bs := quota.BudgetsFor(u, q)
		req := quota.Request{Budgets: bs, Estimate: quota.Amount{Requests: 1, InputTokens: 40, OutputTokens: 40},
			Concurrency: &quota.Concurrency{Key: bs[0].Key, Limit: 4}}
		r, d, err := store.Reserve(ctx, req)
		if err != nil || !d.Allowed {
			t.Fatalf("%s: Reserve: %v %+v", scope, err, d)
		}
		if err := store.Settle(ctx, r, quota.Amount{Requests: 1, InputTokens: 40, OutputTokens: 30}); err != nil {
			t.Fatalf("%s: Settle: %v", scope, err)
		}
		if _, d, err := store.Reserve(ctx, req); err != nil || d.Allowed {
			t.Errorf("%s: 80 more tokens after 70 of 100: allowed %v, %v", scope, d.Allowed, err)
		}
		if lt, err := store.Lifetime(ctx, bs[len(bs)-1]); err != nil || lt.Total() != 70 {
			t.Errorf("%s: lifetime %+v, %v; want 70 tokens", scope, lt, err)
		}
	}
}

// seededCounter is the counter the proxy builds for its Redis flags args,
// marked seeded, closed when t ends.
func seededCounter(t *testing.T, args ...string) quota.Counter {
	t.Helper()
	o, err := parseRedisFlags(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	store, closeCounter, err := newCounter(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeCounter)
	if err := store.(*quota.Redis).MarkSeeded(t.Context()); err != nil {
		t.Fatal(err)
	}
	return store
}

func mustRedisClient(t *testing.T, o Options) redis.UniversalClient {
	t.Helper()
	c, err := newRedisClient(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// TestCounterOnRedisTLS: a Redis with a certificate of a private CA, that
// requires client certificates and a password. The proxy's flags get it
// through, the CA alone verifies the server, and each missing piece is
// refused with what is wrong.
func TestCounterOnRedisTLS(t *testing.T) {
	pki := redisserver.NewPKI(t)
	srv := redisserver.New(t, redisserver.TLS(pki, true), redisserver.Password("s3cret"))
	t.Setenv(EnvRedisPassword, "s3cret")
	full := []string{"--redis-addr=" + srv.TLSAddr(), "--redis-tls", "--redis-tls-ca-file=" + pki.CA,
		"--redis-tls-cert-file=" + pki.ClientCert, "--redis-tls-key-file=" + pki.ClientKey}
	store := seededCounter(t, full...)
	ctx := context.Background()
	b := quota.UserBudget("team", "alice", "u1", []quota.Limit{{Window: llmv1alpha1.WindowDay, Tokens: new(int64(100))}}, false)
	req := quota.Request{Budgets: []quota.Budget{b}, Estimate: quota.Amount{Requests: 1, InputTokens: 40, OutputTokens: 40}}
	r, d, err := store.Reserve(ctx, req)
	if err != nil || !d.Allowed {
		t.Fatalf("Reserve over TLS: %v %+v", err, d)
	}
	if err := store.Settle(ctx, r, quota.Amount{Requests: 1, InputTokens: 40, OutputTokens: 30}); err != nil {
		t.Fatal(err)
	}
	if _, d, err := store.Reserve(ctx, req); err != nil || d.Allowed {
		t.Errorf("80 more tokens after 70 of 100: allowed %v, %v", d.Allowed, err)
	}
	if v := hget(t, srv.Addr(), "s3cret", "llmq:user/team/alice/u1:lifetime", "out"); v != "30" {
		t.Errorf("the lifetime's output tokens in Redis = %q, want 30", v)
	}

	for _, tc := range []struct {
		name     string
		args     []string
		password string
		want     string
	}{
		{"the system's roots", full[:2:2], "s3cret", "certificate signed by unknown authority"},
		{"another CA", []string{full[0], "--redis-tls", "--redis-tls-ca-file=" + pki.OtherCA, full[3], full[4]}, "s3cret", "certificate signed by unknown authority"},
		{"no client certificate", full[:3:3], "s3cret", "certificate required"},
		{"a wrong password", full, "guess", "WRONGPASS"},
		{"no password", full, "", "NOAUTH"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(EnvRedisPassword, tc.password)
			o, err := parseRedisFlags(t, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			c := mustRedisClient(t, o)
			err = c.Ping(ctx).Err()
			t.Logf("PING: %v", err)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("PING: %v, want an error saying %q", err, tc.want)
			}
		})
	}
	o, _ := parseRedisFlags(t, "--redis-addr=r:6379", "--redis-tls", "--redis-tls-ca-file="+pki.ClientKey)
	if _, err := newRedisClient(o); err == nil || !strings.Contains(err.Error(), "holds no PEM certificate") {
		t.Errorf("a CA file of a key: %v, want an error saying it holds no PEM certificate", err)
	}
}

// TestRedisTLSFilesRenewed: a CA bundle and a client certificate replaced
// on disk, as a Secret volume replaces its files when cert-manager renews
// them, are used from the next connection on, by the same client, without
// a restart; a file that does not parse mid-change keeps the last good one.
func TestRedisTLSFilesRenewed(t *testing.T) {
	pki := redisserver.NewPKI(t)
	srv := redisserver.New(t, redisserver.TLS(pki, true))
	dir := t.TempDir()
	ca, crt, key := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	swap := func(dst, src string) { // a new file renamed over the old, as the kubelet swaps a Secret's
		t.Helper()
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst+".new", b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(dst+".new", dst); err != nil {
			t.Fatal(err)
		}
	}
	swap(ca, pki.OtherCA)
	swap(crt, pki.OtherClientCert)
	swap(key, pki.OtherClientKey)
	o, err := parseRedisFlags(t, "--redis-addr="+srv.TLSAddr(), "--redis-tls", "--redis-tls-ca-file="+ca, "--redis-tls-cert-file="+crt, "--redis-tls-key-file="+key)
	if err != nil {
		t.Fatal(err)
	}
	c := mustRedisClient(t, o)
	ctx := context.Background()
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr()}) // the plain port
	t.Cleanup(func() { _ = admin.Close() })
	// reconnect drops the client's connections, so that its next command dials.
	reconnect := func() {
		t.Helper()
		if err := admin.Do(ctx, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes").Err(); err != nil {
			t.Fatal(err)
		}
	}

	if err := c.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Fatalf("trusting the other CA: PING %v, want the server refused as signed by an unknown authority", err)
	}
	swap(ca, pki.CA)
	err = c.Ping(ctx).Err()
	t.Logf("the right CA, the other CA's client certificate: PING %v", err)
	if err == nil {
		t.Fatal("PING with a client certificate of the other CA succeeded")
	}
	swap(crt, pki.ClientCert)
	swap(key, pki.ClientKey)
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("after both renewals: PING %v", err)
	}

	swap(ca, pki.ClientKey) // not a certificate: a file caught mid-change
	reconnect()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Errorf("a CA file that does not parse: PING %v, want the last good CA kept", err)
	}
	swap(ca, pki.OtherCA)
	reconnect()
	if err := c.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Errorf("the CA replaced by one that did not sign the server: PING %v, want it refused", err)
	}
}

// TestCounterOnRedisSentinelAuth: Sentinels that require a password of
// their own, watching a master that requires another.
func TestCounterOnRedisSentinelAuth(t *testing.T) {
	master := redisserver.New(t, redisserver.Password("master-pw"))
	sentinel := redisserver.NewSentinelAuth(t, "counters", master.Addr(), "master-pw", "sentinel-pw")
	t.Setenv(EnvRedisPassword, "master-pw")
	args := []string{"--redis-mode=sentinel", "--redis-addrs=" + sentinel.Addr(), "--redis-master-name=counters"}
	ctx := context.Background()

	t.Setenv(EnvRedisSentinelPassword, "")
	o, _ := parseRedisFlags(t, args...)
	if err := mustRedisClient(t, o).Ping(ctx).Err(); err == nil {
		t.Error("PING without the Sentinels' password succeeded")
	}

	t.Setenv(EnvRedisSentinelPassword, "sentinel-pw")
	store := seededCounter(t, args...)
	b := quota.UserBudget("team", "bob", "u2", []quota.Limit{{Window: llmv1alpha1.WindowDay, Requests: new(int64(1))}}, false)
	r, d, err := store.Reserve(ctx, quota.Request{Budgets: []quota.Budget{b}, Estimate: quota.Amount{Requests: 1}})
	if err != nil || !d.Allowed {
		t.Fatalf("Reserve through password-protected Sentinels: %v %+v", err, d)
	}
	if err := store.Settle(ctx, r, quota.Amount{Requests: 1, InputTokens: 7}); err != nil {
		t.Fatal(err)
	}
	if v := hget(t, master.Addr(), "master-pw", "llmq:user/team/bob/u2:lifetime", "in"); v != "7" {
		t.Errorf("the lifetime's input tokens on the master = %q, want 7", v)
	}
}

// hget reads a hash field from the Redis at addr, without TLS.
func hget(t *testing.T, addr, password, key, field string) string {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, Password: password})
	defer func() { _ = c.Close() }()
	v, err := c.HGet(t.Context(), key, field).Result()
	if err != nil {
		t.Errorf("HGET %s %s: %v", key, field, err)
	}
	return v
}
