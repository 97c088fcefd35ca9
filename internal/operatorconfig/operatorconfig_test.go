package operatorconfig

import (
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// full is the example of CONTRACTS.md with every field set.
const full = `
apiVersion: config.llm.userops.dev/v1alpha1
kind: OperatorConfig
issuer: https://issuer.example
audience: aud
keyRotationPeriod: 48h
operatorService: ops
proxy:
  enabled: true
  name: gw
  image: registry.example/llm:1.2.3
  imagePullPolicy: Always
  replicas: 3
  upstreams: [http://vllm-a.vllm.svc:8000, https://vllm-b.example]
  baseURL: https://llm.example.com/v1
  refreshURL: http://ops.example:8082/auth/refresh
  port: 8443
  metricsPort: 9443
  flushInterval: 5s
  statusWriteRate: 20
  shutdownGrace: 45s
  counter:
    store: redis
    redis: {address: "redis.ops.svc:6379", failOpen: true, lease: 15s}
  metrics: {userLabel: false}
  limits: {maxRequestBody: 1000, maxBodyMemory: 2000, defaultMaxTokens: 512}
  timeouts: {bodyRead: 1s, idle: 2s, write: 3s, upstreamHeader: 4s, streamIdle: 5s}
  resources: {requests: {cpu: 100m, memory: 64Mi}, limits: {memory: 256Mi}}
  nodeSelector: {pool: llm}
  tolerations: [{key: dedicated, operator: Equal, value: llm, effect: NoSchedule}]
  podAnnotations: {team: ml}
  extraArgs: [--zap-log-level=debug]
  serviceMonitor: false
  networkPolicy:
    enabled: false
    clientNamespaceSelector: {matchLabels: {llm-clients: "true"}}
    prometheusNamespaceSelector: {matchLabels: {name: monitoring}}
    prometheusPodSelector: {matchLabels: {app: prom}}
`

func TestParseFull(t *testing.T) {
	c, err := Parse([]byte(full))
	if err != nil {
		t.Fatal(err)
	}
	c.Default("ns", "ignored:latest")
	if err := c.Validate(); err != nil {
		t.Fatalf("the contract's example is invalid: %v", err)
	}
	p := c.Proxy
	checks := []struct {
		name      string
		got, want any
	}{
		{"issuer", c.Issuer, "https://issuer.example"},
		{"keyRotationPeriod", c.KeyRotationPeriod.Duration, 48 * time.Hour},
		{"image", p.Image, "registry.example/llm:1.2.3"},
		{"replicas", *p.Replicas, int32(3)},
		{"upstreams", strings.Join(p.Upstreams, " "), "http://vllm-a.vllm.svc:8000 https://vllm-b.example"},
		{"baseURL", p.BaseURL, "https://llm.example.com/v1"},
		{"refreshURL", p.RefreshURL, "http://ops.example:8082/auth/refresh"},
		{"counter.redis.address", p.Counter.Redis.Address, "redis.ops.svc:6379"},
		{"counter.redis.failOpen", p.Counter.Redis.FailOpen, true},
		{"counter.redis.lease", p.Counter.Redis.Lease.Duration, 15 * time.Second},
		{"metrics.userLabel", *p.Metrics.UserLabel, false},
		{"limits.defaultMaxTokens", p.Limits.DefaultMaxTokens, int64(512)},
		{"timeouts.streamIdle", p.Timeouts.StreamIdle.Duration, 5 * time.Second},
		{"resources.limits.memory", p.Resources.Limits.Memory().String(), "256Mi"},
		{"tolerations[0].key", p.Tolerations[0].Key, "dedicated"},
		{"serviceMonitor", p.ServiceMonitor, SwitchOff},
		{"networkPolicy.enabled", *p.NetworkPolicy.Enabled, false},
		{"networkPolicy.prometheusPodSelector", p.NetworkPolicy.PrometheusPodSelector.MatchLabels["app"], "prom"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestDefault(t *testing.T) {
	c := &OperatorConfig{Proxy: Proxy{Upstreams: []string{"http://vllm:8000"}}}
	c.Default("llm-system", "ghcr.io/x/op:v1")
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults are invalid: %v", err)
	}
	p := c.Proxy
	checks := []struct {
		name      string
		got, want any
	}{
		{"apiVersion", c.APIVersion, "config.llm.userops.dev/v1alpha1"},
		{"kind", c.Kind, "OperatorConfig"},
		{"issuer", c.Issuer, "https://llm-user-operator.llm-system.svc"},
		{"audience", c.Audience, "llm-user-proxy"},
		{"keyRotationPeriod", c.KeyRotationPeriod.Duration, 720 * time.Hour},
		{"proxy.enabled", *p.Enabled, true},
		{"proxy.name", p.Name, "llm-user-proxy"},
		{"proxy.image", p.Image, "ghcr.io/x/op:v1"},
		{"proxy.imagePullPolicy", p.ImagePullPolicy, corev1.PullIfNotPresent},
		{"proxy.replicas", *p.Replicas, int32(1)},
		{"proxy.baseURL", p.BaseURL, "http://llm-user-proxy.llm-system.svc:8000/v1"},
		{"proxy.refreshURL", p.RefreshURL, "http://llm-user-operator.llm-system.svc:8082/auth/refresh"},
		{"proxy.port", p.Port, int32(8000)},
		{"proxy.metricsPort", p.MetricsPort, int32(9090)},
		{"proxy.flushInterval", p.FlushInterval.Duration, 10 * time.Second},
		{"proxy.statusWriteRate", p.StatusWriteRate, int32(200)},
		{"proxy.shutdownGrace", p.ShutdownGrace.Duration, 30 * time.Second},
		{"proxy.counter.store", p.Counter.Store, CounterMemory},
		{"proxy.counter.redis.lease", p.Counter.Redis.Lease.Duration, 30 * time.Second},
		{"proxy.counter.redis.mode", p.Counter.Redis.Mode, RedisStandalone},
		{"proxy.metrics.userLabel", *p.Metrics.UserLabel, true},
		{"proxy.metrics.userBudgets", p.Metrics.UserBudgets, "alerting"},
		{"proxy.limits.maxRequestBody", p.Limits.MaxRequestBody, int64(10485760)},
		{"proxy.limits.maxBodyMemory", p.Limits.MaxBodyMemory, int64(268435456)},
		{"proxy.limits.defaultMaxTokens", p.Limits.DefaultMaxTokens, int64(4096)},
		{"proxy.fairQueue.maxInFlight", p.FairQueue.MaxInFlight, int32(0)},
		{"proxy.fairQueue.queueTimeout", p.FairQueue.QueueTimeout.Duration, 30 * time.Second},
		{"proxy.fairQueue.maxQueued", p.FairQueue.MaxQueued, int32(1000)},
		{"proxy.fairQueue.maxQueuedPerUser", p.FairQueue.MaxQueuedPerUser, int32(100)},
		{"proxy.timeouts.bodyRead", p.Timeouts.BodyRead.Duration, 60 * time.Second},
		{"proxy.timeouts.idle", p.Timeouts.Idle.Duration, 120 * time.Second},
		{"proxy.timeouts.write", p.Timeouts.Write.Duration, 60 * time.Second},
		{"proxy.timeouts.upstreamHeader", p.Timeouts.UpstreamHeader.Duration, 10 * time.Minute},
		{"proxy.timeouts.streamIdle", p.Timeouts.StreamIdle.Duration, 2 * time.Minute},
		{"proxy.resources.requests.cpu", p.Resources.Requests.Cpu().String(), "250m"},
		{"proxy.resources.requests.memory", p.Resources.Requests.Memory().String(), "128Mi"},
		{"proxy.resources.limits.memory", p.Resources.Limits.Memory().String(), "512Mi"},
		{"proxy.serviceMonitor", p.ServiceMonitor, SwitchAuto},
		{"proxy.networkPolicy.enabled", *p.NetworkPolicy.Enabled, true},
		{"proxy.networkPolicy.clientNamespaceSelector", len(p.NetworkPolicy.ClientNamespaceSelector.MatchLabels), 0},
		{"proxy.networkPolicy.prometheusPodSelector", p.NetworkPolicy.PrometheusPodSelector.MatchLabels["app.kubernetes.io/name"], "prometheus"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestDefaultDerivesFromNames(t *testing.T) {
	c := &OperatorConfig{OperatorService: "rel-operator", Proxy: Proxy{Name: "gw", Port: 8443}}
	c.Default("tenant-a", "")
	if c.Issuer != "https://rel-operator.tenant-a.svc" {
		t.Errorf("issuer = %q", c.Issuer)
	}
	if c.Proxy.BaseURL != "http://gw.tenant-a.svc:8443/v1" {
		t.Errorf("proxy.baseURL = %q", c.Proxy.BaseURL)
	}
	if c.Proxy.RefreshURL != "http://rel-operator.tenant-a.svc:8082/auth/refresh" {
		t.Errorf("proxy.refreshURL = %q", c.Proxy.RefreshURL)
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct {
		name, yaml, want string
	}{
		{"unknown top-level field", "isuer: x", `unknown field "isuer"`},
		{"unknown nested field", "proxy: {replica: 2}", `unknown field "proxy.replica"`},
		{"wrong type", "proxy: {replicas: two}", "replicas"},
		{"bad duration", "proxy: {flushInterval: 10 seconds}", "10 seconds"},
		{"serviceMonitor not a switch", "proxy: {serviceMonitor: maybe}", `must be auto, true or false, got "maybe"`},
		{"serviceMonitor a number", "proxy: {serviceMonitor: 1}", "must be auto, true or false, got 1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestSwitch(t *testing.T) {
	for in, want := range map[string]Switch{
		"proxy: {serviceMonitor: true}":    SwitchOn,
		"proxy: {serviceMonitor: false}":   SwitchOff,
		`proxy: {serviceMonitor: "true"}`:  SwitchOn,
		"proxy: {serviceMonitor: auto}":    SwitchAuto,
		`proxy: {serviceMonitor: "false"}`: SwitchOff,
	} {
		c, err := Parse([]byte(in))
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if c.Proxy.ServiceMonitor != want {
			t.Errorf("%s: %q, want %q", in, c.Proxy.ServiceMonitor, want)
		}
	}
}

func TestValidate(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(c *OperatorConfig)
		want   []string // each must appear in the error
	}{
		{"wrong kind", func(c *OperatorConfig) { c.Kind = "Config" }, []string{`kind: Unsupported value: "Config"`, `"OperatorConfig"`}},
		{"wrong apiVersion", func(c *OperatorConfig) { c.APIVersion = "v1" }, []string{"apiVersion: Unsupported value"}},
		{"negative rotation", func(c *OperatorConfig) { c.KeyRotationPeriod.Duration = -time.Hour }, []string{"keyRotationPeriod", "must be positive, e.g. 720h"}},
		{"operator service not DNS", func(c *OperatorConfig) { c.OperatorService = "Ops_1" }, []string{"operatorService", "must be a Service name"}},
		{"proxy name not DNS", func(c *OperatorConfig) { c.Proxy.Name = "LLM.proxy" }, []string{"proxy.name", "must be a Service name"}},
		{"proxy name too long for -metrics", func(c *OperatorConfig) { c.Proxy.Name = strings.Repeat("a", 60) }, []string{"proxy.name: Too long", "55"}},
		{"no image", func(c *OperatorConfig) { c.Proxy.Image = "" }, []string{"proxy.image: Required value", "OPERATOR_IMAGE"}},
		{"pull policy", func(c *OperatorConfig) { c.Proxy.ImagePullPolicy = "Sometimes" }, []string{"proxy.imagePullPolicy: Unsupported value", `"IfNotPresent"`}},
		{"zero replicas", func(c *OperatorConfig) { c.Proxy.Replicas = ptr.To[int32](0) }, []string{"proxy.replicas", "proxy.enabled: false"}},
		{"no upstreams", func(c *OperatorConfig) { c.Proxy.Upstreams = nil }, []string{"proxy.upstreams: Required value", "http://vllm.vllm.svc:8000"}},
		{"relative upstream", func(c *OperatorConfig) { c.Proxy.Upstreams = []string{"vllm:8000"} }, []string{"proxy.upstreams[0]", "absolute http:// or https:// URL"}},
		{"kv transfer to an unknown upstream", func(c *OperatorConfig) { c.Proxy.KVTransferUpstreams = []string{"http://prefill:8000"} },
			[]string{"proxy.kvTransferUpstreams[0]", "must be one of proxy.upstreams"}},
		{"objective prefix in upper case", func(c *OperatorConfig) { c.Proxy.InferenceObjectivePrefix = "LLM-" },
			[]string{"proxy.inferenceObjectivePrefix", "lower-case letters"}},
		{"objective prefix ending in a dot", func(c *OperatorConfig) { c.Proxy.InferenceObjectivePrefix = "llm.tier." },
			[]string{"proxy.inferenceObjectivePrefix", "e.g. llm-tier-"}},
		{"negative media bound", func(c *OperatorConfig) { c.Proxy.Limits.MediaItemTokens = -1 }, []string{"proxy.limits.mediaItemTokens", "must not be negative"}},
		{"negative in-flight limit", func(c *OperatorConfig) { c.Proxy.FairQueue.MaxInFlight = -1 }, []string{"proxy.fairQueue.maxInFlight", "must not be negative"}},
		{"in-flight limit of an unknown upstream", func(c *OperatorConfig) { c.Proxy.FairQueue.PerUpstream = map[string]int32{"http://vllm:8000/": 8} },
			[]string{`proxy.fairQueue.perUpstream[http://vllm:8000/]`, "is not one of upstreams"}},
		{"negative reserved slots", func(c *OperatorConfig) { c.Proxy.FairQueue.ReservedSlots = -1 }, []string{"proxy.fairQueue.reservedSlots", "must not be negative"}},
		{"reserved slots as many as the limit", func(c *OperatorConfig) {
			c.Proxy.FairQueue.MaxInFlight, c.Proxy.FairQueue.ReservedSlots = 8, 8
		}, []string{"proxy.fairQueue.reservedSlots: Invalid value: 8", "must be below maxInFlight (8)"}},
		{"reserved slots above an upstream's limit", func(c *OperatorConfig) {
			c.Proxy.FairQueue.MaxInFlight, c.Proxy.FairQueue.ReservedSlots = 16, 4
			c.Proxy.FairQueue.PerUpstream = map[string]int32{c.Proxy.Upstreams[0]: 4}
		}, []string{"proxy.fairQueue.reservedSlots", "must be below perUpstream[http://vllm:8000] (4)"}},
		{"zero queue timeout", func(c *OperatorConfig) { c.Proxy.FairQueue.QueueTimeout = metav1.Duration{Duration: -1} }, []string{"proxy.fairQueue.queueTimeout", "positive duration"}},
		{"per-user queue above the queue", func(c *OperatorConfig) { c.Proxy.FairQueue.MaxQueuedPerUser = 2000 },
			[]string{"proxy.fairQueue.maxQueuedPerUser", "between 1 and maxQueued (1000)"}},
		{"comma list as one upstream", func(c *OperatorConfig) { c.Proxy.Upstreams = []string{"http://a,http://b"} }, []string{"proxy.upstreams[0]", "without spaces or commas"}},
		{"baseURL without scheme", func(c *OperatorConfig) { c.Proxy.BaseURL = "llm.example.com/v1" }, []string{"proxy.baseURL", "absolute"}},
		{"port out of range", func(c *OperatorConfig) { c.Proxy.Port = 70000 }, []string{"proxy.port", "between 1 and 65535"}},
		{"same ports", func(c *OperatorConfig) { c.Proxy.MetricsPort = c.Proxy.Port }, []string{"proxy.metricsPort: Duplicate value: 8000"}},
		{"zero grace", func(c *OperatorConfig) { c.Proxy.ShutdownGrace = metav1.Duration{Duration: -1} }, []string{"proxy.shutdownGrace", "positive duration"}},
		{"status write rate", func(c *OperatorConfig) { c.Proxy.StatusWriteRate = -5 }, []string{"proxy.statusWriteRate", "at least 1"}},
		{"user budgets", func(c *OperatorConfig) { c.Proxy.Metrics.UserBudgets = "some" }, []string{"proxy.metrics.userBudgets: Unsupported value", `"alerting"`}},
		{"unknown store", func(c *OperatorConfig) { c.Proxy.Counter.Store = "etcd" }, []string{"proxy.counter.store: Unsupported value", `"redis"`}},
		{"redis without address", func(c *OperatorConfig) { c.Proxy.Counter.Store = CounterRedis }, []string{"proxy.counter.redis.address: Required value", "host:port"}},
		{"redis address without port", func(c *OperatorConfig) {
			c.Proxy.Counter.Store = CounterRedis
			c.Proxy.Counter.Redis.Address = "redis"
		}, []string{"proxy.counter.redis.address", "must be host:port"}},
		{"unknown redis mode", func(c *OperatorConfig) {
			c.Proxy.Counter.Store = CounterRedis
			c.Proxy.Counter.Redis.Mode = "replicated"
		}, []string{"proxy.counter.redis.mode: Unsupported value", `"cluster"`}},
		{"cluster without addresses", func(c *OperatorConfig) {
			c.Proxy.Counter.Store = CounterRedis
			c.Proxy.Counter.Redis.Mode = RedisCluster
		}, []string{"proxy.counter.redis.addresses: Required value", "cluster's nodes"}},
		{"cluster with one address", func(c *OperatorConfig) {
			c.Proxy.Counter.Store = CounterRedis
			c.Proxy.Counter.Redis = Redis{Mode: RedisCluster, Address: "redis:6379", Lease: c.Proxy.Counter.Redis.Lease}
		}, []string{"proxy.counter.redis.address: Forbidden", "mode cluster reads addresses", "proxy.counter.redis.addresses: Required value"}},
		{"cluster address without port", func(c *OperatorConfig) {
			c.Proxy.Counter.Store = CounterRedis
			c.Proxy.Counter.Redis = Redis{Mode: RedisCluster, Addresses: []string{"a:6379", "b"}, Lease: c.Proxy.Counter.Redis.Lease}
		}, []string{"proxy.counter.redis.addresses[1]", "must be host:port"}},
		{"sentinel without master name", func(c *OperatorConfig) {
			c.Proxy.Counter.Store = CounterRedis
			c.Proxy.Counter.Redis = Redis{Mode: RedisSentinel, Addresses: []string{"s:26379"}, Lease: c.Proxy.Counter.Redis.Lease}
		}, []string{"proxy.counter.redis.masterName: Required value"}},
		{"password secret without key", func(c *OperatorConfig) {
			c.Proxy.Counter.Store = CounterRedis
			c.Proxy.Counter.Redis.Address = "r:6379"
			c.Proxy.Counter.Redis.PasswordSecret = &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "auth"}}
		}, []string{"proxy.counter.redis.passwordSecret.key: Required value"}},
		{"TLS secrets without tls", func(c *OperatorConfig) {
			c.Proxy.Counter.Store = CounterRedis
			c.Proxy.Counter.Redis.Address = "r:6379"
			c.Proxy.Counter.Redis.CASecret = &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "redis-ca"}}
			c.Proxy.Counter.Redis.ClientCertSecret = "redis-client"
		}, []string{"proxy.counter.redis.caSecret: Forbidden", "set tls: true", "proxy.counter.redis.clientCertSecret: Forbidden",
			"proxy.counter.redis.caSecret.key: Required value"}},
		{"sentinel password outside sentinel mode", func(c *OperatorConfig) {
			c.Proxy.Counter.Store = CounterRedis
			c.Proxy.Counter.Redis.Address = "r:6379"
			c.Proxy.Counter.Redis.SentinelPasswordSecret = &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "s"}, Key: "p"}
		}, []string{"proxy.counter.redis.sentinelPasswordSecret: Forbidden", "is for mode sentinel"}},
		{"standalone with addresses", func(c *OperatorConfig) {
			c.Proxy.Counter.Store = CounterRedis
			c.Proxy.Counter.Redis = Redis{Mode: RedisStandalone, Address: "r:6379", Addresses: []string{"s:6379"}, MasterName: "m", Lease: c.Proxy.Counter.Redis.Lease}
		}, []string{"proxy.counter.redis.addresses: Forbidden", "proxy.counter.redis.masterName: Forbidden"}},
		{"body memory below one body", func(c *OperatorConfig) { c.Proxy.Limits.MaxBodyMemory = 5 }, []string{"proxy.limits.maxBodyMemory", "at least limits.maxRequestBody (10485760)"}},
		{"negative max tokens", func(c *OperatorConfig) { c.Proxy.Limits.DefaultMaxTokens = -1 }, []string{"proxy.limits.defaultMaxTokens"}},
		{"write timeout", func(c *OperatorConfig) { c.Proxy.Timeouts.Write = metav1.Duration{Duration: -time.Second} }, []string{"proxy.timeouts.write"}},
		{"requests above limits", func(c *OperatorConfig) {
			c.Proxy.Resources.Requests[corev1.ResourceMemory] = resource.MustParse("1Gi")
		}, []string{"proxy.resources.requests[memory]", "must not exceed resources.limits.memory (512Mi)"}},
		{"bad selector", func(c *OperatorConfig) {
			c.Proxy.NetworkPolicy.PrometheusPodSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: "Near"}}}
		}, []string{"proxy.networkPolicy.prometheusPodSelector", "Near"}},
		{"several problems at once", func(c *OperatorConfig) {
			c.Proxy.Upstreams = nil
			c.Proxy.Port = 0
		}, []string{"proxy.upstreams: Required value", "proxy.port"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := &OperatorConfig{Proxy: Proxy{Upstreams: []string{"http://vllm:8000"}}}
			c.Default("ns", "img")
			tc.mutate(c)
			err := c.Validate()
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestValidateDisabledProxyNeedsNoUpstreams(t *testing.T) {
	c := &OperatorConfig{Proxy: Proxy{Enabled: ptr.To(false)}}
	c.Default("ns", "")
	if err := c.Validate(); err != nil {
		t.Fatalf("a disabled proxy needs no image or upstreams: %v", err)
	}
}

func TestParseRedisCluster(t *testing.T) {
	c, err := Parse([]byte("audience: a\nproxy: {upstreams: [http://vllm:8000], counter: {store: redis, redis: {mode: cluster, addresses: [r-0.r:6379, r-1.r:6379], " +
		"tls: true, passwordSecret: {name: redis-auth, key: password}}}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	c.Default("ns", "img:1")
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if r := c.Proxy.Counter.Redis; r.Mode != RedisCluster || !slices.Equal(r.Addresses, []string{"r-0.r:6379", "r-1.r:6379"}) {
		t.Errorf("redis = %+v, want mode cluster at r-0.r:6379 and r-1.r:6379", r)
	}
	if r := c.Proxy.Counter.Redis; !r.TLS || r.PasswordSecret == nil || r.PasswordSecret.Name != "redis-auth" || r.PasswordSecret.Key != "password" {
		t.Errorf("redis = %+v, want TLS and the password from redis-auth's key password", r)
	}
}

func TestParseRedisSentinelTLS(t *testing.T) {
	c, err := Parse([]byte("audience: a\nproxy: {upstreams: [http://vllm:8000], counter: {store: redis, redis: {mode: sentinel, addresses: [s-0:26379], " +
		"masterName: counters, tls: true, caSecret: {name: redis-tls, key: ca.crt}, clientCertSecret: proxy-redis-client, " +
		"sentinelPasswordSecret: {name: sentinel-auth, key: password}}}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	c.Default("ns", "img:1")
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	r := c.Proxy.Counter.Redis
	if r.CASecret == nil || r.CASecret.Name != "redis-tls" || r.CASecret.Key != "ca.crt" || r.ClientCertSecret != "proxy-redis-client" ||
		r.SentinelPasswordSecret == nil || r.SentinelPasswordSecret.Name != "sentinel-auth" || r.SentinelPasswordSecret.Key != "password" {
		t.Errorf("redis = %+v, want the CA from redis-tls's ca.crt, the client certificate proxy-redis-client and the Sentinels' password", r)
	}
}

func TestSharedCounterProblem(t *testing.T) {
	cases := []struct {
		name     string
		replicas int32
		store    CounterStore
		address  string
		addrs    []string
		want     string // "" for no problem, else a fragment
	}{
		{"one replica in memory", 1, CounterMemory, "", nil, ""},
		{"three replicas on redis", 3, CounterRedis, "redis:6379", nil, ""},
		{"three replicas on a redis cluster", 3, CounterRedis, "", []string{"a:6379", "b:6379"}, ""},
		{"two replicas in memory", 2, CounterMemory, "", nil, `proxy.replicas is 2 but proxy.counter.store is "memory"`},
		{"says what to set", 4, CounterMemory, "", nil, "Set proxy.counter.store: redis and proxy.counter.redis.address"},
		{"redis without address", 2, CounterRedis, "", nil, "only 1 replica runs"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := Proxy{Replicas: ptr.To(tc.replicas), Counter: Counter{Store: tc.store, Redis: Redis{Address: tc.address, Addresses: tc.addrs}}}
			got := p.SharedCounterProblem()
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(file, []byte("audience: from-file\nproxy: {upstreams: [http://file:8000], replicas: 2, counter: {store: redis, redis: {address: r:6379}}}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name      string
		args      []string
		audience  string
		upstreams string
		baseURL   string
		wantErr   string
	}{
		{"file only", []string{"--config", file}, "from-file", "http://file:8000", "http://llm-user-proxy.ns.svc:8000/v1", ""},
		{"flags override the file", []string{"--config", file, "--audience", "from-flag", "--proxy-upstreams", "http://a:1, http://b:2", "--proxy-base-url", "http://127.0.0.1:8000/v1"},
			"from-flag", "http://a:1 http://b:2", "http://127.0.0.1:8000/v1", ""},
		{"flags only", []string{"--proxy-upstreams", "http://x:1"}, "llm-user-proxy", "http://x:1", "http://llm-user-proxy.ns.svc:8000/v1", ""},
		{"nothing at all", nil, "", "", "", "invalid operator configuration (the flags): proxy.upstreams: Required value"},
		{"missing file", []string{"--config", filepath.Join(dir, "nope.yaml")}, "", "", "", "nope.yaml: no such file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			f := BindFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			c, err := f.Load("ns", "img")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Audience != tc.audience || strings.Join(c.Proxy.Upstreams, " ") != tc.upstreams || c.Proxy.BaseURL != tc.baseURL {
				t.Errorf("audience %q upstreams %v baseURL %q, want %q %q %q", c.Audience, c.Proxy.Upstreams, c.Proxy.BaseURL, tc.audience, tc.upstreams, tc.baseURL)
			}
		})
	}
}
