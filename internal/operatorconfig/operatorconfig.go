// Package operatorconfig owns the operator's configuration file: the
// OperatorConfig type (what the Helm chart renders into a ConfigMap mounted
// at --config), its defaults, its validation, and the command-line flags that
// override it for local runs. It knows nothing of how the configuration is
// used: the proxy workload reconciler renders it into objects.
package operatorconfig

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

const (
	// APIVersion is the apiVersion of the configuration file.
	APIVersion = "config.llm.userops.dev/v1alpha1"
	// Kind is the kind of the configuration file.
	Kind = "OperatorConfig"
	// DefaultPath is where the chart mounts the file.
	DefaultPath = "/etc/llm-user-operator/config.yaml"
	// EnvOperatorImage names the environment variable holding the operator's
	// own image, the default image of the proxy (the image ships both binaries).
	EnvOperatorImage = "OPERATOR_IMAGE"
	// RefreshPort is the port of the operator's Service that serves
	// POST /auth/refresh.
	RefreshPort = 8082
)

// OperatorConfig is the operator's configuration file. Every field is
// optional; Default fills what is unset.
type OperatorConfig struct {
	metav1.TypeMeta `json:",inline"`

	// Issuer is the iss claim of the tokens the operator issues and the proxy
	// checks. Default https://<operatorService>.<namespace>.svc.
	Issuer string `json:"issuer,omitempty"`
	// Audience is the aud claim of the tokens. Default llm-user-proxy.
	Audience string `json:"audience,omitempty"`
	// KeyRotationPeriod is how often a new signing key is created. Default 720h.
	KeyRotationPeriod metav1.Duration `json:"keyRotationPeriod,omitempty"`
	// OperatorService is the name of the operator's Service in its
	// namespace, which serves POST /auth/refresh on port 8082. Default
	// llm-user-operator.
	OperatorService string `json:"operatorService,omitempty"`
	// Proxy is the proxy workload the operator runs in its namespace.
	Proxy Proxy `json:"proxy,omitempty"`
}

// Proxy configures the proxy workload.
type Proxy struct {
	// Enabled runs the proxy workload; false removes what the operator created.
	// Default true.
	Enabled *bool `json:"enabled,omitempty"`
	// Name names the Deployment, the API Service, the ServiceAccount, the
	// PodDisruptionBudget and the NetworkPolicy; the metrics Service is
	// <name>-metrics. Default llm-user-proxy.
	Name string `json:"name,omitempty"`
	// Image is the proxy's image. Default: the operator's own image
	// ($OPERATOR_IMAGE, set by the chart), which ships /proxy.
	Image string `json:"image,omitempty"`
	// ImagePullPolicy is Always, IfNotPresent or Never. Default IfNotPresent.
	ImagePullPolicy corev1.PullPolicy `json:"imagePullPolicy,omitempty"`
	// Replicas is the number of proxy pods. More than one needs
	// counter.store redis. Default 1.
	Replicas *int32 `json:"replicas,omitempty"`
	// Upstreams are the base URLs of the vLLM servers. They are mounted as a
	// file the proxy re-reads, so changing them restarts nothing. Required.
	Upstreams []string `json:"upstreams,omitempty"`
	// KVTransferUpstreams are the upstreams (as in Upstreams) that receive
	// the kv_transfer_params clients send (prefill/decode split serving);
	// every other upstream gets none, since those instruct a KV connector.
	// Default none.
	KVTransferUpstreams []string `json:"kvTransferUpstreams,omitempty"`
	// InferenceObjectivePrefix, when set, sends each request upstream with
	// X-Gateway-Inference-Objective: the prefix and the request's tier (the
	// quota's spec.priority, 0 without one, or "overflow" past a soft
	// limit), for a Gateway API Inference Extension (llm-d) scheduler behind
	// the proxy: create an InferenceObjective of each such name. Default
	// none sent.
	InferenceObjectivePrefix string `json:"inferenceObjectivePrefix,omitempty"`
	// BaseURL is the OPENAI_BASE_URL written into every token Secret.
	// Default http://<name>.<namespace>.svc:<port>/v1; set it when clients
	// reach the proxy through an Ingress.
	BaseURL string `json:"baseURL,omitempty"`
	// RefreshURL is where the proxy forwards POST /auth/refresh. Default
	// http://<operatorService>.<namespace>.svc:8082/auth/refresh.
	RefreshURL string `json:"refreshURL,omitempty"`
	// Port is the OpenAI API port. Default 8000.
	Port int32 `json:"port,omitempty"`
	// MetricsPort serves /metrics, /healthz and /readyz. Default 9090.
	MetricsPort int32 `json:"metricsPort,omitempty"`
	// FlushInterval is how often usage is written to status. Default 10s.
	FlushInterval metav1.Duration `json:"flushInterval,omitempty"`
	// StatusWriteRate caps status writes per second per replica. Default 200.
	StatusWriteRate int32 `json:"statusWriteRate,omitempty"`
	// ShutdownGrace is how long in-flight requests may run after SIGTERM.
	// The pod's terminationGracePeriodSeconds leaves room for it and the
	// final usage flush. Default 30s.
	ShutdownGrace metav1.Duration `json:"shutdownGrace,omitempty"`
	// Counter is where the quota counters live.
	Counter Counter `json:"counter,omitempty"`
	// Metrics configures the proxy's metrics.
	Metrics Metrics `json:"metrics,omitempty"`
	// Limits bound what one request, and all requests together, may hold.
	Limits Limits `json:"limits,omitempty"`
	// FairQueue shares each upstream fairly between users when it is busy.
	FairQueue FairQueue `json:"fairQueue,omitempty"`
	// Timeouts bound slow clients and upstreams.
	Timeouts Timeouts `json:"timeouts,omitempty"`
	// Resources of the proxy container. Default requests cpu 250m, memory
	// 128Mi; limits memory 512Mi.
	Resources *corev1.ResourceRequirements `json:"resources,omitempty"`
	// NodeSelector of the proxy pods.
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`
	// Tolerations of the proxy pods.
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`
	// TopologySpreadConstraints of the proxy pods. Default: spread across
	// nodes and zones, as a preference (ScheduleAnyway).
	TopologySpreadConstraints []corev1.TopologySpreadConstraint `json:"topologySpreadConstraints,omitempty"`
	// PodAnnotations are added to the proxy pods.
	PodAnnotations map[string]string `json:"podAnnotations,omitempty"`
	// ExtraArgs are appended to the proxy's arguments (e.g. --zap-log-level=debug).
	ExtraArgs []string `json:"extraArgs,omitempty"`
	// ServiceMonitor is auto (created when the monitoring.coreos.com CRDs
	// are installed), true or false. Default auto.
	ServiceMonitor Switch `json:"serviceMonitor,omitempty"`
	// ServiceMonitorLabels are added to the ServiceMonitor, for a Prometheus
	// that selects ServiceMonitors by label (kube-prometheus-stack's
	// release: <name>).
	ServiceMonitorLabels map[string]string `json:"serviceMonitorLabels,omitempty"`
	// NetworkPolicy admits clients to the API port and Prometheus to the
	// metrics port, and nothing else.
	NetworkPolicy NetworkPolicy `json:"networkPolicy,omitempty"`
}

// CounterStore names where the quota counters live.
type CounterStore string

const (
	// CounterMemory keeps counters in each replica: exact with one replica.
	CounterMemory CounterStore = "memory"
	// CounterRedis shares the counters between replicas.
	CounterRedis CounterStore = "redis"
)

// Counter is where the quota counters live.
type Counter struct {
	// Store is memory or redis. Default memory.
	Store CounterStore `json:"store,omitempty"`
	// Redis is the shared store, for store redis.
	Redis Redis `json:"redis,omitempty"`
}

// RedisMode says how the proxy reaches Redis.
type RedisMode string

const (
	// RedisStandalone is one Redis at Address.
	RedisStandalone RedisMode = "standalone"
	// RedisSentinel is the master MasterName, found through the Sentinels at
	// Addresses.
	RedisSentinel RedisMode = "sentinel"
	// RedisCluster is a Redis Cluster, found through the nodes at Addresses;
	// each request's keys share one hash slot.
	RedisCluster RedisMode = "cluster"
)

// Redis is the shared counter store.
type Redis struct {
	// Mode is standalone, sentinel or cluster. Default standalone.
	Mode RedisMode `json:"mode,omitempty"`
	// Address is the Redis host:port. Required for store redis in mode
	// standalone.
	Address string `json:"address,omitempty"`
	// Addresses are host:port of the Sentinels (mode sentinel) or of some
	// of the cluster's nodes (mode cluster).
	Addresses []string `json:"addresses,omitempty"`
	// MasterName is the master the Sentinels watch (mode sentinel).
	MasterName string `json:"masterName,omitempty"`
	// PasswordSecret is the key of a Secret, in the proxy's namespace,
	// holding the password the proxies authenticate to Redis with (AUTH, to
	// the master or the cluster's nodes; not to the Sentinels). Unset: none.
	PasswordSecret *corev1.SecretKeySelector `json:"passwordSecret,omitempty"`
	// SentinelPasswordSecret is the key of a Secret, in the proxy's
	// namespace, holding the password of the Sentinels themselves (their
	// requirepass), for mode sentinel. Unset: none.
	SentinelPasswordSecret *corev1.SecretKeySelector `json:"sentinelPasswordSecret,omitempty"`
	// TLS connects to Redis over TLS, verifying its certificate against the
	// system's roots, or against CASecret's.
	TLS bool `json:"tls,omitempty"`
	// CASecret is the key of a Secret, in the proxy's namespace, holding
	// the PEM bundle of the CAs that Redis's certificate is verified
	// against instead of the system's roots (a private CA; cert-manager
	// writes it as ca.crt). Needs tls.
	CASecret *corev1.SecretKeySelector `json:"caSecret,omitempty"`
	// ClientCertSecret names a kubernetes.io/tls Secret, in the proxy's
	// namespace, whose tls.crt and tls.key the proxies present to a Redis
	// that requires client certificates (tls-auth-clients). Needs tls.
	ClientCertSecret string `json:"clientCertSecret,omitempty"`
	// FailOpen admits requests when Redis is unreachable; default false
	// refuses them with 503.
	FailOpen bool `json:"failOpen,omitempty"`
	// Lease bounds how long a crashed replica's reservations stay held.
	// Default 30s.
	Lease metav1.Duration `json:"lease,omitempty"`
}

// Metrics configures the proxy's metrics.
type Metrics struct {
	// UserLabel labels per-user series with the user's name. Default true.
	UserLabel *bool `json:"userLabel,omitempty"`
	// UserBudgets chooses which users' budget windows have gauges:
	// alerting (once past the quota's first alert threshold), all, or none.
	// Default alerting.
	UserBudgets string `json:"userBudgets,omitempty"`
}

// Limits bound request bodies and generated output.
type Limits struct {
	// MaxRequestBody is the largest request body, in bytes. Default 10485760.
	MaxRequestBody int64 `json:"maxRequestBody,omitempty"`
	// MaxBodyMemory bounds the request bodies held at once, all requests
	// together, in bytes. Default 268435456.
	MaxBodyMemory int64 `json:"maxBodyMemory,omitempty"`
	// DefaultMaxTokens is the output cap written into a request that has
	// none. Default 4096.
	DefaultMaxTokens int64 `json:"defaultMaxTokens,omitempty"`
	// MediaItemTokens bounds the input tokens of one image, audio or video
	// in a prompt, for admission (the charge is what vLLM reports). Default
	// 0: the model's context length, the only bound vLLM guarantees.
	MediaItemTokens int64 `json:"mediaItemTokens,omitempty"`
}

// FairQueue gates each upstream: at most MaxInFlight requests of one proxy
// replica run on it at once, and the rest wait, served by the quota's
// spec.priority and then the user who was served the fewest tokens
// (divided by the quota's spec.fairShareWeight) first. README, "Fair share".
type FairQueue struct {
	// MaxInFlight is how many requests one proxy replica sends to one
	// upstream at once. Default 0: unlimited, no queue. Size it to the
	// upstream's vLLM --max-num-seqs divided by the proxy's replicas.
	MaxInFlight int32 `json:"maxInFlight,omitempty"`
	// PerUpstream overrides MaxInFlight for the upstreams it names (by URL,
	// as in upstreams); 0 leaves one unlimited.
	PerUpstream map[string]int32 `json:"perUpstream,omitempty"`
	// ReservedSlots is how many of each gated upstream's slots go only to a
	// user with nothing running on it: one busy user holds at most
	// maxInFlight − reservedSlots, and a user who sends one request at a
	// time starts at once beside it, since vLLM does not preempt a running
	// request. Default 0. Must be below maxInFlight (and every non-zero
	// perUpstream limit).
	ReservedSlots int32 `json:"reservedSlots,omitempty"`
	// QueueTimeout is the longest a request waits (then 429 queue_timeout).
	// Default 30s.
	QueueTimeout metav1.Duration `json:"queueTimeout,omitempty"`
	// MaxQueued bounds the requests waiting for one upstream (then 429
	// queue_full). Default 1000.
	MaxQueued int32 `json:"maxQueued,omitempty"`
	// MaxQueuedPerUser bounds those of one user, or one Shared quota's
	// users together. Default 100.
	MaxQueuedPerUser int32 `json:"maxQueuedPerUser,omitempty"`
}

// Timeouts bound slow clients and upstreams.
type Timeouts struct {
	// BodyRead bounds reading a request body. Default 60s.
	BodyRead metav1.Duration `json:"bodyRead,omitempty"`
	// Idle bounds an idle keep-alive connection. Default 120s.
	Idle metav1.Duration `json:"idle,omitempty"`
	// Write is the longest a client may take to accept a chunk. Default 60s.
	Write metav1.Duration `json:"write,omitempty"`
	// UpstreamHeader bounds the wait for vLLM's response headers. Default 10m.
	UpstreamHeader metav1.Duration `json:"upstreamHeader,omitempty"`
	// StreamIdle bounds the gap between two streamed chunks. Default 2m.
	StreamIdle metav1.Duration `json:"streamIdle,omitempty"`
}

// NetworkPolicy restricts who reaches the proxy pods.
type NetworkPolicy struct {
	// Enabled creates the NetworkPolicy. Default true.
	Enabled *bool `json:"enabled,omitempty"`
	// ClientNamespaceSelector selects the namespaces whose pods may call the
	// API port. Default {}: every namespace (users' workloads live anywhere).
	ClientNamespaceSelector *metav1.LabelSelector `json:"clientNamespaceSelector,omitempty"`
	// PrometheusNamespaceSelector selects the namespaces Prometheus runs in.
	// Default {}: every namespace.
	PrometheusNamespaceSelector *metav1.LabelSelector `json:"prometheusNamespaceSelector,omitempty"`
	// PrometheusPodSelector selects the Prometheus pods in those namespaces,
	// the only pods that may read the per-user metrics. Default
	// app.kubernetes.io/name=prometheus, the label the Prometheus Operator
	// gives its pods.
	PrometheusPodSelector *metav1.LabelSelector `json:"prometheusPodSelector,omitempty"`
}

// Switch is auto, true or false. YAML's unquoted true and false are
// accepted as well as the strings.
type Switch string

const (
	// SwitchAuto decides from what the cluster has (e.g. installed CRDs).
	SwitchAuto Switch = "auto"
	// SwitchOn always creates the object.
	SwitchOn Switch = "true"
	// SwitchOff never creates it.
	SwitchOff Switch = "false"
)

// UnmarshalJSON accepts true, false, "true", "false" and "auto".
func (s *Switch) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	var str string
	switch {
	case bytes.Equal(b, []byte("true")), bytes.Equal(b, []byte("false")):
		str = string(b)
	case json.Unmarshal(b, &str) == nil:
	default:
		return fmt.Errorf("must be auto, true or false, got %s", b)
	}
	switch v := Switch(str); v {
	case SwitchAuto, SwitchOn, SwitchOff, "":
		*s = v
		return nil
	}
	return fmt.Errorf("must be auto, true or false, got %q", str)
}

// Default fills every unset field. namespace is the operator's namespace
// and operatorImage its own image (the proxy's default image).
func (c *OperatorConfig) Default(namespace, operatorImage string) {
	if c.APIVersion == "" {
		c.APIVersion = APIVersion
	}
	if c.Kind == "" {
		c.Kind = Kind
	}
	def(&c.OperatorService, "llm-user-operator")
	def(&c.Issuer, "https://"+c.OperatorService+"."+namespace+".svc")
	def(&c.Audience, "llm-user-proxy")
	defDuration(&c.KeyRotationPeriod, 30*24*time.Hour)

	p := &c.Proxy
	if p.Enabled == nil {
		p.Enabled = ptr.To(true)
	}
	def(&p.Name, "llm-user-proxy")
	def(&p.Image, operatorImage)
	if p.ImagePullPolicy == "" {
		p.ImagePullPolicy = corev1.PullIfNotPresent
	}
	if p.Replicas == nil {
		p.Replicas = ptr.To[int32](1)
	}
	if p.Port == 0 {
		p.Port = 8000
	}
	if p.MetricsPort == 0 {
		p.MetricsPort = 9090
	}
	def(&p.BaseURL, "http://"+p.Name+"."+namespace+".svc:"+strconv.Itoa(int(p.Port))+"/v1")
	def(&p.RefreshURL, "http://"+c.OperatorService+"."+namespace+".svc:"+strconv.Itoa(RefreshPort)+"/auth/refresh")
	defDuration(&p.FlushInterval, 10*time.Second)
	if p.StatusWriteRate == 0 {
		p.StatusWriteRate = 200
	}
	defDuration(&p.ShutdownGrace, 30*time.Second)
	if p.Counter.Store == "" {
		p.Counter.Store = CounterMemory
	}
	defDuration(&p.Counter.Redis.Lease, 30*time.Second)
	if p.Counter.Redis.Mode == "" {
		p.Counter.Redis.Mode = RedisStandalone
	}
	if p.Metrics.UserBudgets == "" {
		p.Metrics.UserBudgets = "alerting"
	}
	if p.Metrics.UserLabel == nil {
		p.Metrics.UserLabel = ptr.To(true)
	}
	defInt(&p.Limits.MaxRequestBody, 10<<20)
	defInt(&p.Limits.MaxBodyMemory, 256<<20)
	defInt(&p.Limits.DefaultMaxTokens, 4096)
	defDuration(&p.FairQueue.QueueTimeout, 30*time.Second)
	if p.FairQueue.MaxQueued == 0 {
		p.FairQueue.MaxQueued = 1000
	}
	if p.FairQueue.MaxQueuedPerUser == 0 {
		p.FairQueue.MaxQueuedPerUser = 100
	}
	defDuration(&p.Timeouts.BodyRead, 60*time.Second)
	defDuration(&p.Timeouts.Idle, 120*time.Second)
	defDuration(&p.Timeouts.Write, 60*time.Second)
	defDuration(&p.Timeouts.UpstreamHeader, 10*time.Minute)
	defDuration(&p.Timeouts.StreamIdle, 2*time.Minute)
	if p.Resources == nil {
		p.Resources = &corev1.ResourceRequirements{
			Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("250m"),
				corev1.ResourceMemory: resource.MustParse("128Mi"),
			},
			Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("512Mi")},
		}
	}
	if p.ServiceMonitor == "" {
		p.ServiceMonitor = SwitchAuto
	}
	np := &p.NetworkPolicy
	if np.Enabled == nil {
		np.Enabled = ptr.To(true)
	}
	if np.ClientNamespaceSelector == nil {
		np.ClientNamespaceSelector = &metav1.LabelSelector{}
	}
	if np.PrometheusNamespaceSelector == nil {
		np.PrometheusNamespaceSelector = &metav1.LabelSelector{}
	}
	if np.PrometheusPodSelector == nil {
		np.PrometheusPodSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/name": "prometheus"}}
	}
}

func def(s *string, v string) {
	if *s == "" {
		*s = v
	}
}

func defDuration(d *metav1.Duration, v time.Duration) {
	if d.Duration == 0 {
		d.Duration = v
	}
}

func defInt(i *int64, v int64) {
	if *i == 0 {
		*i = v
	}
}

// SharedCounterProblem says why the configured replicas cannot run, and
// what to set, or "" when they can. It is not a validation error: the
// operator keeps issuing tokens and runs one proxy replica until it is fixed.
func (p *Proxy) SharedCounterProblem() string {
	if p.Replicas == nil || *p.Replicas <= 1 || (p.Counter.Store == CounterRedis && p.Counter.Redis.located()) {
		return ""
	}
	return fmt.Sprintf("proxy.replicas is %d but proxy.counter.store is %q: each replica would count quotas on its own "+
		"and admit up to %d times every budget, so only 1 replica runs. "+
		"Set proxy.counter.store: redis and proxy.counter.redis.address: <host:port> (or proxy.replicas: 1)",
		*p.Replicas, p.Counter.Store, *p.Replicas)
}

// located reports whether r says where Redis is, whatever its mode.
func (r *Redis) located() bool { return r.Address != "" || len(r.Addresses) > 0 }
