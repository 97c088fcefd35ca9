package proxyserver

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/client-go/rest"

	"github.com/llm-user-operator/llm-user-operator/internal/metrics"
	"github.com/llm-user-operator/llm-user-operator/internal/proxy"
)

// Options configure the proxy process. BindFlags binds every one a command
// line sets, with its default; Validate checks them all in one place.
type Options struct {
	RestConfig *rest.Config

	ListenAddr  string // the OpenAI API
	MetricsAddr string // /metrics, /healthz, /readyz

	Namespace     string // where the operator publishes the JWKS
	JWKSConfigMap string
	Issuer        string
	Audience      string

	// Upstreams are vLLM base URLs; UpstreamsFile names a file with more,
	// one per line, re-read at every model refresh (a mounted ConfigMap is
	// updated in place, so upstreams change without a restart).
	Upstreams     []string
	UpstreamsFile string
	RefreshURL    string // the operator's /auth/refresh, proxied when set

	MaxRequestBody       int64
	MaxBodyMemory        int64
	MaxBodyMemoryPerUser int64
	DefaultMaxTokens     int64
	MediaItemTokens      int64
	KVTransferUpstreams  []string
	// InferenceObjectivePrefix names the tiers' InferenceObjectives
	// (proxy.Options.InferenceObjectivePrefix).
	InferenceObjectivePrefix string
	// FairQueue gates each upstream (proxy.FairQueue).
	FairQueue proxy.FairQueue

	BodyReadTimeout       time.Duration
	IdleTimeout           time.Duration
	WriteTimeout          time.Duration
	UpstreamHeaderTimeout time.Duration
	StreamIdleTimeout     time.Duration

	// Counter is "memory" (exact for one replica) or "redis" (shared by replicas).
	Counter string
	// RedisMode is "standalone" (RedisAddr), "sentinel" (the master
	// RedisMasterName through the Sentinels at RedisAddrs) or "cluster"
	// (the Redis Cluster of the nodes at RedisAddrs).
	RedisMode       string
	RedisAddr       string
	RedisAddrs      []string
	RedisMasterName string
	// RedisPassword authenticates to Redis (env REDIS_PASSWORD; no flag, so
	// that it shows in no process list).
	RedisPassword string
	// RedisSentinelPassword authenticates to the Sentinels themselves
	// (env REDIS_SENTINEL_PASSWORD), for Sentinels run with requirepass.
	RedisSentinelPassword string
	// RedisTLS connects to Redis over TLS, verified by the system's roots
	// or, with RedisTLSCAFile, by the CAs in that PEM file alone.
	RedisTLS       bool
	RedisTLSCAFile string
	// RedisTLSCertFile and RedisTLSKeyFile are the client certificate the
	// proxy presents, for a Redis that requires one (tls-auth-clients).
	RedisTLSCertFile string
	RedisTLSKeyFile  string
	RedisFailOpen    bool
	RedisLease       time.Duration

	// MemoryLimit is the container's memory limit in bytes; 0 reads it from
	// the cgroup. The Go runtime is given a soft limit below it.
	MemoryLimit int64

	FlushInterval   time.Duration
	StatusWriteRate float64
	UserLabel       bool
	UserBudgets     string
	ShutdownGrace   time.Duration
	DisableQuota    bool
	Logger          logr.Logger
	RegisterMetric  prometheus.Registerer
}

// EnvRedisPassword is the environment variable the Redis password is read
// from.
const EnvRedisPassword = "REDIS_PASSWORD"

// EnvRedisSentinelPassword is the environment variable the Sentinels'
// password is read from.
const EnvRedisSentinelPassword = "REDIS_SENTINEL_PASSWORD"

// Defaults are the values a bare command line gets.
func Defaults() Options {
	return Options{
		Upstreams:             proxy.ParseUpstreams(os.Getenv("LLM_UPSTREAMS")),
		ListenAddr:            ":8000",
		MetricsAddr:           ":9090",
		Namespace:             envOr("POD_NAMESPACE", "llm-user-operator-system"),
		JWKSConfigMap:         "llm-user-operator-jwks",
		Issuer:                "https://llm-user-operator.llm-user-operator-system.svc",
		Audience:              "llm-user-proxy",
		MaxRequestBody:        10 << 20,
		MaxBodyMemory:         256 << 20,
		DefaultMaxTokens:      4096,
		BodyReadTimeout:       time.Minute,
		IdleTimeout:           2 * time.Minute,
		WriteTimeout:          time.Minute,
		UpstreamHeaderTimeout: 10 * time.Minute,
		StreamIdleTimeout:     2 * time.Minute,
		Counter:               "memory",
		RedisMode:             "standalone",
		RedisPassword:         os.Getenv(EnvRedisPassword),
		RedisSentinelPassword: os.Getenv(EnvRedisSentinelPassword),
		RedisLease:            30 * time.Second,
		FlushInterval:         10 * time.Second,
		StatusWriteRate:       200,
		UserLabel:             true,
		UserBudgets:           string(metrics.BudgetsAlerting),
		ShutdownGrace:         30 * time.Second,
	}
}

// BindFlags binds the options a command line sets to fs, with o's values as
// defaults (start from [Defaults]).
func (o *Options) BindFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.ListenAddr, "listen-address", o.ListenAddr, "Address of the OpenAI-compatible API.")
	fs.StringVar(&o.MetricsAddr, "metrics-bind-address", o.MetricsAddr, "Address of /metrics, /healthz and /readyz.")
	fs.Func("upstreams", "Comma-separated base URLs of the vLLM servers (their models are discovered from /v1/models). Env LLM_UPSTREAMS.", func(s string) error {
		o.Upstreams = proxy.ParseUpstreams(s)
		return nil
	})
	fs.StringVar(&o.UpstreamsFile, "upstreams-file", o.UpstreamsFile, "A file listing more upstream base URLs, one per line; re-read at every model refresh, so a mounted ConfigMap is hot-reloaded.")
	fs.StringVar(&o.Namespace, "namespace", o.Namespace, "The operator's namespace, where the JWKS ConfigMap is published (env POD_NAMESPACE).")
	fs.StringVar(&o.JWKSConfigMap, "jwks-configmap", o.JWKSConfigMap, "ConfigMap holding the published public keys.")
	fs.StringVar(&o.Issuer, "issuer", o.Issuer, "Expected iss claim.")
	fs.StringVar(&o.Audience, "audience", o.Audience, "Expected aud claim.")
	fs.StringVar(&o.RefreshURL, "refresh-url", o.RefreshURL, "The operator's /auth/refresh URL; when set, POST /auth/refresh is forwarded there.")
	fs.Int64Var(&o.MaxRequestBody, "max-request-body", o.MaxRequestBody, "Largest request body accepted, in bytes (413 above).")
	fs.Int64Var(&o.MaxBodyMemory, "max-body-memory", o.MaxBodyMemory, "Memory all request bodies in flight may hold together, in bytes (503 above).")
	fs.Int64Var(&o.MaxBodyMemoryPerUser, "max-body-memory-per-user", o.MaxBodyMemoryPerUser, "Memory one user's request bodies may hold together, in bytes (default an eighth of --max-body-memory).")
	fs.Int64Var(&o.DefaultMaxTokens, "default-max-tokens", o.DefaultMaxTokens, "Output cap written into a request that sets none, when the model's context length is unknown and the quota has no maxTokensPerRequest.")
	fs.Int64Var(&o.MediaItemTokens, "media-item-tokens", o.MediaItemTokens, "Input tokens reserved for each image, audio or video of a prompt (0: the model's context length).")
	fs.StringVar(&o.InferenceObjectivePrefix, "inference-objective-prefix", "", "When set, each request goes upstream with X-Gateway-Inference-Objective: this prefix and its tier (the quota's spec.priority, 0 without one, or overflow), for an Inference Extension scheduler.")
	fs.Func("kv-transfer-upstreams", "Comma-separated upstreams (as in --upstreams) that receive the kv_transfer_params clients send; others get none.", func(s string) error {
		o.KVTransferUpstreams = proxy.ParseUpstreams(s)
		return nil
	})
	fs.IntVar(&o.FairQueue.MaxInFlight, "max-in-flight-per-upstream", o.FairQueue.MaxInFlight, "Requests this replica sends to one upstream at once; the rest wait in its fair queue (0: unlimited, no queue).")
	fs.Func("upstream-max-in-flight", "Comma-separated URL=N: --max-in-flight-per-upstream for the upstreams named.", func(s string) error {
		per, err := parsePerUpstream(s)
		o.FairQueue.PerUpstream = per
		return err
	})
	fs.IntVar(&o.FairQueue.Reserved, "reserved-slots", 0, "Slots of each gated upstream that only a user with nothing running on it may take (below every limit): one busy user holds at most the limit minus these.")
	fs.DurationVar(&o.FairQueue.QueueTimeout, "queue-timeout", 30*time.Second, "Longest a request waits in a fair queue (429 queue_timeout after).")
	fs.IntVar(&o.FairQueue.MaxQueued, "max-queued", 1000, "Requests that may wait for one upstream (429 queue_full above).")
	fs.IntVar(&o.FairQueue.MaxQueuedPerFlow, "max-queued-per-user", 100, "Requests of one user (or Shared quota) that may wait for one upstream (429 queue_full above).")
	fs.DurationVar(&o.BodyReadTimeout, "body-read-timeout", o.BodyReadTimeout, "Longest time a request body may take to arrive (408 after).")
	fs.DurationVar(&o.IdleTimeout, "idle-timeout", o.IdleTimeout, "How long an idle keep-alive connection is kept.")
	fs.DurationVar(&o.WriteTimeout, "write-timeout", o.WriteTimeout, "Longest a client may take to accept one write of an answer; a client that stops reading is cut off and charged what it consumed.")
	fs.DurationVar(&o.UpstreamHeaderTimeout, "upstream-header-timeout", o.UpstreamHeaderTimeout, "Longest wait for an upstream's response headers (a non-streamed answer sends them when generation is done).")
	fs.DurationVar(&o.StreamIdleTimeout, "stream-idle-timeout", o.StreamIdleTimeout, "Longest gap between two reads of a streamed answer before the stream is cut.")
	fs.StringVar(&o.Counter, "counter", o.Counter, `Quota counters: "memory" (exact with one replica) or "redis" (shared by replicas).`)
	fs.StringVar(&o.RedisMode, "redis-mode", o.RedisMode, `How --counter=redis reaches Redis: "standalone" (--redis-addr), "sentinel" (--redis-master-name through the Sentinels at --redis-addrs) or "cluster" (the Redis Cluster of the nodes at --redis-addrs).`)
	fs.StringVar(&o.RedisAddr, "redis-addr", o.RedisAddr, "Redis address for --counter=redis in --redis-mode=standalone.")
	fs.Func("redis-addrs", "Comma-separated host:port of the Sentinels (--redis-mode=sentinel) or of some of the cluster's nodes (--redis-mode=cluster).", func(s string) error {
		o.RedisAddrs = nil
		for a := range strings.SplitSeq(s, ",") {
			if a = strings.TrimSpace(a); a != "" {
				o.RedisAddrs = append(o.RedisAddrs, a)
			}
		}
		return nil
	})
	fs.StringVar(&o.RedisMasterName, "redis-master-name", o.RedisMasterName, "The master the Sentinels watch, for --redis-mode=sentinel.")
	fs.BoolVar(&o.RedisTLS, "redis-tls", o.RedisTLS, "Connect to Redis over TLS, verifying its certificate against the system's roots (or --redis-tls-ca-file). The password, if any, is read from $"+EnvRedisPassword+", the Sentinels' from $"+EnvRedisSentinelPassword+".")
	fs.StringVar(&o.RedisTLSCAFile, "redis-tls-ca-file", o.RedisTLSCAFile, "PEM file of the CAs that Redis's certificate is verified against, instead of the system's roots (with --redis-tls). Read again when it changes, for the next connection.")
	fs.StringVar(&o.RedisTLSCertFile, "redis-tls-cert-file", o.RedisTLSCertFile, "PEM client certificate presented to a Redis that requires one (tls-auth-clients), with --redis-tls-key-file. Read again when they change, for the next connection.")
	fs.StringVar(&o.RedisTLSKeyFile, "redis-tls-key-file", o.RedisTLSKeyFile, "PEM private key of --redis-tls-cert-file.")
	fs.BoolVar(&o.RedisFailOpen, "redis-fail-open", o.RedisFailOpen, "Admit requests when Redis is unreachable (default: refuse with 503).")
	fs.DurationVar(&o.RedisLease, "redis-lease", o.RedisLease, "A replica that stops renewing its lease (it crashed) loses its reservations in Redis after this long.")
	fs.Func("memory-limit", "The container's memory limit (a quantity such as 512Mi; default: the cgroup's). The Go runtime keeps 85% of it as a soft limit, unless GOMEMLIMIT is set.", func(s string) error {
		q, err := resource.ParseQuantity(s)
		if err != nil {
			return err
		}
		o.MemoryLimit = q.Value()
		return nil
	})
	fs.DurationVar(&o.FlushInterval, "flush-interval", o.FlushInterval, "How often usage is written to status.")
	fs.Float64Var(&o.StatusWriteRate, "status-write-rate", o.StatusWriteRate, "Status writes per second this replica may make.")
	fs.BoolVar(&o.UserLabel, "metrics-user-label", o.UserLabel, "Label per-user metrics with the user name (cardinality = number of LLMUsers).")
	fs.StringVar(&o.UserBudgets, "metrics-user-budgets", o.UserBudgets, `Which users' budget windows have llm_proxy_budget_* gauges: "alerting" (once past the quota's first alert threshold), "all" (every window a user made a request in) or "none". Shared pools always have theirs.`)
	fs.DurationVar(&o.ShutdownGrace, "shutdown-grace", o.ShutdownGrace, "How long in-flight requests may run after SIGTERM.")
}

// Validate checks the options together and says what to fix.
func (o *Options) Validate() error {
	var errs []error
	if len(o.Upstreams) == 0 && o.UpstreamsFile == "" {
		errs = append(errs, errors.New("no upstream: set --upstreams (or LLM_UPSTREAMS) or --upstreams-file"))
	}
	if o.MaxRequestBody <= 0 {
		errs = append(errs, fmt.Errorf("--max-request-body must be positive, not %d", o.MaxRequestBody))
	}
	if min := proxy.MinBodyMemory(o.MaxRequestBody); o.MaxBodyMemoryPerUser != 0 && o.MaxBodyMemoryPerUser < min {
		errs = append(errs, fmt.Errorf("--max-body-memory-per-user (%d) must be at least %d: a body of --max-request-body (%d) and its edited copy", o.MaxBodyMemoryPerUser, min, o.MaxRequestBody))
	}
	if min := proxy.MinBodyMemory(o.MaxRequestBody); o.MaxBodyMemory < min {
		errs = append(errs, fmt.Errorf("--max-body-memory (%d) must be at least %d: a body of --max-request-body (%d) and its edited copy", o.MaxBodyMemory, min, o.MaxRequestBody))
	}
	if fq := o.FairQueue; fq.MaxInFlight < 0 || fq.QueueTimeout <= 0 || fq.MaxQueued < 1 || fq.MaxQueuedPerFlow < 1 {
		errs = append(errs, fmt.Errorf("--max-in-flight-per-upstream (%d) must not be negative, --queue-timeout (%s) must be positive, --max-queued (%d) and --max-queued-per-user (%d) at least 1",
			fq.MaxInFlight, fq.QueueTimeout, fq.MaxQueued, fq.MaxQueuedPerFlow))
	}
	if o.FairQueue.Reserved < 0 {
		errs = append(errs, fmt.Errorf("--reserved-slots must not be negative, not %d", o.FairQueue.Reserved))
	}
	if o.DefaultMaxTokens <= 0 {
		errs = append(errs, fmt.Errorf("--default-max-tokens must be positive, not %d", o.DefaultMaxTokens))
	}
	for name, d := range map[string]time.Duration{
		"--body-read-timeout": o.BodyReadTimeout, "--idle-timeout": o.IdleTimeout, "--write-timeout": o.WriteTimeout,
		"--upstream-header-timeout": o.UpstreamHeaderTimeout, "--stream-idle-timeout": o.StreamIdleTimeout,
		"--flush-interval": o.FlushInterval, "--shutdown-grace": o.ShutdownGrace,
	} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s must be positive, not %s", name, d))
		}
	}
	switch o.Counter {
	case "memory":
	case "redis":
		switch o.RedisMode {
		case "standalone":
			if o.RedisAddr == "" {
				errs = append(errs, errors.New("--counter=redis needs --redis-addr"))
			}
		case "sentinel", "cluster":
			if len(o.RedisAddrs) == 0 {
				errs = append(errs, fmt.Errorf("--redis-mode=%s needs --redis-addrs", o.RedisMode))
			}
			if o.RedisMode == "sentinel" && o.RedisMasterName == "" {
				errs = append(errs, errors.New("--redis-mode=sentinel needs --redis-master-name"))
			}
		default:
			errs = append(errs, fmt.Errorf("unknown --redis-mode %q: use standalone, sentinel or cluster", o.RedisMode))
		}
		if !o.RedisTLS && (o.RedisTLSCAFile != "" || o.RedisTLSCertFile != "") {
			errs = append(errs, errors.New("--redis-tls-ca-file and --redis-tls-cert-file need --redis-tls"))
		}
		if (o.RedisTLSCertFile == "") != (o.RedisTLSKeyFile == "") {
			errs = append(errs, errors.New("--redis-tls-cert-file and --redis-tls-key-file go together: set both or neither"))
		}
		if o.RedisLease < time.Second {
			errs = append(errs, fmt.Errorf("--redis-lease must be at least 1s, not %s", o.RedisLease))
		}
	default:
		errs = append(errs, fmt.Errorf("unknown --counter %q: use memory or redis", o.Counter))
	}
	if _, err := metrics.ParseBudgetMode(o.UserBudgets); err != nil {
		errs = append(errs, fmt.Errorf("--metrics-user-budgets: %w", err))
	}
	if o.StatusWriteRate <= 0 {
		errs = append(errs, fmt.Errorf("--status-write-rate must be positive, not %g", o.StatusWriteRate))
	}
	return errors.Join(errs...)
}

// envOr is the environment variable key, or def when it is unset.
func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// parsePerUpstream reads URL=N,URL=N.
func parsePerUpstream(s string) (map[string]int, error) {
	out := map[string]int{}
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		i := strings.LastIndexByte(item, '=')
		if i <= 0 {
			return nil, fmt.Errorf("%q is not URL=N", item)
		}
		n, err := strconv.Atoi(item[i+1:])
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%q: N must be a whole number, 0 or more", item)
		}
		out[item[:i]] = n
	}
	return out, nil
}
