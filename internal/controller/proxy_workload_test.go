package controller

import (
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/llm-user-operator/llm-user-operator/internal/operatorconfig"
)

func defaulted(edit func(p *operatorconfig.Proxy)) *operatorconfig.OperatorConfig {
	c := &operatorconfig.OperatorConfig{Proxy: operatorconfig.Proxy{Upstreams: []string{"http://vllm:8000"}}}
	if edit != nil {
		edit(&c.Proxy)
	}
	c.Default("ops", "img:1")
	return c
}

func TestProxyArgs(t *testing.T) {
	cases := []struct {
		name string
		edit func(p *operatorconfig.Proxy)
		want []string
	}{
		{"defaults", nil, []string{
			"--listen-address=:8000",
			"--metrics-bind-address=:9090",
			"--upstreams-file=/etc/llm-user-proxy/upstreams/upstreams",
			"--jwks-configmap=jwks",
			"--issuer=https://llm-user-operator.ops.svc",
			"--audience=llm-user-proxy",
			"--refresh-url=http://llm-user-operator.ops.svc:8082/auth/refresh",
			"--counter=memory",
			"--flush-interval=10s",
			"--status-write-rate=200",
			"--shutdown-grace=30s",
			"--metrics-user-label=true",
			"--metrics-user-budgets=alerting",
			"--max-request-body=10485760",
			"--max-body-memory=268435456",
			"--default-max-tokens=4096",
			"--body-read-timeout=1m0s",
			"--idle-timeout=2m0s",
			"--write-timeout=1m0s",
			"--upstream-header-timeout=10m0s",
			"--stream-idle-timeout=2m0s",
			"--memory-limit=512Mi",
		}},
		{"redis, ports and extra args", func(p *operatorconfig.Proxy) {
			p.Port, p.MetricsPort = 18000, 19090
			p.Counter = operatorconfig.Counter{Store: operatorconfig.CounterRedis,
				Redis: operatorconfig.Redis{Address: "redis:6379", FailOpen: true, Lease: metav1.Duration{Duration: 45 * time.Second}}}
			p.Metrics.UserLabel = ptr.To(false)
			p.ExtraArgs = []string{"--zap-log-level=debug"}
			p.Resources = &corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("2Gi")}}
			p.Limits.MediaItemTokens = 1500
			p.KVTransferUpstreams = []string{"http://prefill:8000", "http://decode:8000"}
			p.FairQueue.MaxInFlight = 16
			p.FairQueue.PerUpstream = map[string]int32{"http://vllm:8000": 64, "http://small:8000": 4}
			p.FairQueue.ReservedSlots = 2
			p.InferenceObjectivePrefix = "llm-tier-"
		}, []string{
			"--listen-address=:18000",
			"--metrics-bind-address=:19090",
			"--upstreams-file=/etc/llm-user-proxy/upstreams/upstreams",
			"--jwks-configmap=jwks",
			"--issuer=https://llm-user-operator.ops.svc",
			"--audience=llm-user-proxy",
			"--refresh-url=http://llm-user-operator.ops.svc:8082/auth/refresh",
			"--counter=redis",
			"--redis-addr=redis:6379",
			"--redis-fail-open=true",
			"--redis-lease=45s",
			"--flush-interval=10s",
			"--status-write-rate=200",
			"--shutdown-grace=30s",
			"--metrics-user-label=false",
			"--metrics-user-budgets=alerting",
			"--max-request-body=10485760",
			"--max-body-memory=268435456",
			"--default-max-tokens=4096",
			"--body-read-timeout=1m0s",
			"--idle-timeout=2m0s",
			"--write-timeout=1m0s",
			"--upstream-header-timeout=10m0s",
			"--stream-idle-timeout=2m0s",
			"--media-item-tokens=1500",
			"--max-in-flight-per-upstream=16",
			"--upstream-max-in-flight=http://small:8000=4,http://vllm:8000=64",
			"--reserved-slots=2",
			"--queue-timeout=30s",
			"--max-queued=1000",
			"--max-queued-per-user=100",
			"--inference-objective-prefix=llm-tier-",
			"--kv-transfer-upstreams=http://prefill:8000,http://decode:8000",
			"--memory-limit=2Gi",
			"--zap-log-level=debug",
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := proxyArgs(workloadInput{Namespace: "ops", JWKSConfigMap: "jwks", Config: defaulted(tc.edit)})
			if !slices.Equal(got, tc.want) {
				t.Errorf("args\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

// TestProxyArgsRedisModes: sentinel and cluster pass their addresses as a
// list, and the mode.
func TestProxyArgsRedisModes(t *testing.T) {
	for _, tc := range []struct {
		redis operatorconfig.Redis
		want  []string
	}{
		{operatorconfig.Redis{Mode: operatorconfig.RedisCluster, Addresses: []string{"r-0.r:6379", "r-1.r:6379"}},
			[]string{"--redis-mode=cluster", "--redis-addrs=r-0.r:6379,r-1.r:6379"}},
		{operatorconfig.Redis{Mode: operatorconfig.RedisSentinel, Addresses: []string{"s:26379"}, MasterName: "counters"},
			[]string{"--redis-mode=sentinel", "--redis-addrs=s:26379", "--redis-master-name=counters"}},
	} {
		c := defaulted(func(p *operatorconfig.Proxy) {
			p.Counter = operatorconfig.Counter{Store: operatorconfig.CounterRedis, Redis: tc.redis}
		})
		got := proxyArgs(workloadInput{Namespace: "ops", JWKSConfigMap: "jwks", Config: c})
		i := slices.Index(got, "--counter=redis")
		if i < 0 || len(got) < i+1+len(tc.want) || !slices.Equal(got[i+1:i+1+len(tc.want)], tc.want) || slices.ContainsFunc(got, func(a string) bool { return strings.HasPrefix(a, "--redis-addr=") }) {
			t.Errorf("mode %s: args\n%s\nwant after --counter=redis\n%s", tc.redis.Mode, strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
		}
	}
}

// TestRenderProxyRedisAuth: the Redis password reaches the proxy from its
// Secret through the environment, never through args; TLS through a flag.
func TestRenderProxyRedisAuth(t *testing.T) {
	c := defaulted(func(p *operatorconfig.Proxy) {
		p.Counter = operatorconfig.Counter{Store: operatorconfig.CounterRedis, Redis: operatorconfig.Redis{Address: "redis:6379", TLS: true,
			PasswordSecret: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "redis-auth"}, Key: "password"}}}
	})
	d := renderProxy(workloadInput{Namespace: "ops", JWKSConfigMap: "jwks", Config: c}).deployment
	ct := d.Spec.Template.Spec.Containers[0]
	var ref *corev1.SecretKeySelector
	for _, e := range ct.Env {
		if e.Name != nil && *e.Name == "REDIS_PASSWORD" && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			ref = &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: *e.ValueFrom.SecretKeyRef.Name}, Key: *e.ValueFrom.SecretKeyRef.Key}
		}
	}
	if ref == nil || ref.Name != "redis-auth" || ref.Key != "password" {
		t.Errorf("REDIS_PASSWORD from %+v, want Secret redis-auth key password", ref)
	}
	if !slices.Contains(ct.Args, "--redis-tls=true") {
		t.Errorf("args %v lack --redis-tls=true", ct.Args)
	}
	if slices.ContainsFunc(ct.Args, func(a string) bool { return strings.Contains(a, "password") }) {
		t.Errorf("args %v name the password", ct.Args)
	}
	plain := renderProxy(workloadInput{Namespace: "ops", JWKSConfigMap: "jwks", Config: defaulted(nil)}).deployment
	for _, e := range plain.Spec.Template.Spec.Containers[0].Env {
		if *e.Name == "REDIS_PASSWORD" {
			t.Error("REDIS_PASSWORD set without a password Secret")
		}
	}
}

// TestRenderProxyRedisTLS: a private CA and a client certificate are
// mounted from their Secrets and named by flags; the Sentinels' password
// comes through the environment like Redis's.
func TestRenderProxyRedisTLS(t *testing.T) {
	c := defaulted(func(p *operatorconfig.Proxy) {
		p.Counter = operatorconfig.Counter{Store: operatorconfig.CounterRedis, Redis: operatorconfig.Redis{
			Mode: operatorconfig.RedisSentinel, Addresses: []string{"s-0:26379"}, MasterName: "counters", TLS: true,
			CASecret:               &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "redis-tls"}, Key: "ca.crt"},
			ClientCertSecret:       "proxy-redis-client",
			SentinelPasswordSecret: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "sentinel-auth"}, Key: "pw"}}}
	})
	d := renderProxy(workloadInput{Namespace: "ops", JWKSConfigMap: "jwks", Config: c}).deployment
	pod := d.Spec.Template.Spec
	ct := pod.Containers[0]
	for _, want := range []string{"--redis-tls=true", "--redis-tls-ca-file=/etc/llm-user-proxy/redis-ca/ca.crt",
		"--redis-tls-cert-file=/etc/llm-user-proxy/redis-client-tls/tls.crt", "--redis-tls-key-file=/etc/llm-user-proxy/redis-client-tls/tls.key"} {
		if !slices.Contains(ct.Args, want) {
			t.Errorf("args lack %s:\n%s", want, strings.Join(ct.Args, "\n"))
		}
	}
	var env []string
	for _, e := range ct.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			env = append(env, *e.Name+"="+*e.ValueFrom.SecretKeyRef.Name+"/"+*e.ValueFrom.SecretKeyRef.Key)
		}
	}
	if !slices.Contains(env, "REDIS_SENTINEL_PASSWORD=sentinel-auth/pw") {
		t.Errorf("Secret env %v, want REDIS_SENTINEL_PASSWORD from sentinel-auth/pw", env)
	}
	mounts := map[string]string{}
	for _, m := range ct.VolumeMounts {
		if m.ReadOnly == nil || !*m.ReadOnly {
			t.Errorf("volume %s mounted writable", *m.Name)
		}
		mounts[*m.Name] = *m.MountPath
	}
	vols := map[string]string{}
	for _, v := range pod.Volumes {
		if v.Secret != nil {
			var items []string
			for _, it := range v.Secret.Items {
				items = append(items, *it.Key+"->"+*it.Path)
			}
			vols[*v.Name] = *v.Secret.SecretName + ":" + strings.Join(items, ",")
		}
	}
	wantVols := map[string]string{"redis-ca": "redis-tls:ca.crt->ca.crt", "redis-client-tls": "proxy-redis-client:tls.crt->tls.crt,tls.key->tls.key"}
	if !maps.Equal(vols, wantVols) {
		t.Errorf("Secret volumes %v, want %v", vols, wantVols)
	}
	if mounts["redis-ca"] != "/etc/llm-user-proxy/redis-ca" || mounts["redis-client-tls"] != "/etc/llm-user-proxy/redis-client-tls" {
		t.Errorf("mounts %v", mounts)
	}
}

func TestTerminationGracePeriod(t *testing.T) {
	for grace, want := range map[float64]int64{30: 50, 0.5: 21, 120: 140} {
		if got := terminationGracePeriod(grace); got != want {
			t.Errorf("shutdown grace %gs: terminationGracePeriodSeconds %d, want %d", grace, got, want)
		}
	}
}

func TestRenderProxyOptionalObjects(t *testing.T) {
	cases := []struct {
		name                    string
		replicas                int32
		monitor, networkOff     bool
		wantPDB, wantNP, wantSM bool
	}{
		{"one replica", 1, false, false, false, true, false},
		{"two replicas", 2, false, false, true, true, false},
		{"monitor and no network policy", 1, true, true, false, false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := defaulted(func(p *operatorconfig.Proxy) { p.NetworkPolicy.Enabled = ptr.To(!tc.networkOff) })
			w := renderProxy(workloadInput{Namespace: "ops", JWKSConfigMap: "jwks", Config: c, Replicas: tc.replicas, ServiceMonitor: tc.monitor})
			if (w.podDisruptionBudget != nil) != tc.wantPDB || (w.networkPolicy != nil) != tc.wantNP || (w.serviceMonitor != nil) != tc.wantSM {
				t.Errorf("PDB %v NetworkPolicy %v ServiceMonitor %v, want %v %v %v",
					w.podDisruptionBudget != nil, w.networkPolicy != nil, w.serviceMonitor != nil, tc.wantPDB, tc.wantNP, tc.wantSM)
			}
			var kinds []string
			for _, o := range w.objects() {
				kinds = append(kinds, *o.GetKind()+"/"+*o.GetName())
			}
			if kinds[0] != "ServiceAccount/llm-user-proxy" || !slices.Contains(kinds, "ClusterRole/ops:llm-user-proxy") ||
				!slices.Contains(kinds, "Service/llm-user-proxy-metrics") || !slices.Contains(kinds, "ConfigMap/llm-user-proxy-upstreams") {
				t.Errorf("objects %v", kinds)
			}
		})
	}
}

func TestParseProxyRules(t *testing.T) {
	const generated = `---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: proxy-role
rules:
- apiGroups: [llm.userops.dev]
  resources: [llmusers]
  verbs: [get, list, watch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: proxy-role
  namespace: system
rules:
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get]
`
	r, err := parseProxyRules([]byte(generated))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.cluster) != 2 || len(r.namespaced) != 1 {
		t.Fatalf("%d cluster and %d namespaced rules, want 2 and 1", len(r.cluster), len(r.namespaced))
	}
	if r.cluster[1].Resources[0] != "events" || !slices.Equal(r.cluster[1].Verbs, []string{"create", "patch"}) {
		t.Errorf("second cluster rule %v %v", r.cluster[1].Resources, r.cluster[1].Verbs)
	}
	if _, err := parseProxyRules([]byte("")); err == nil || !strings.Contains(err.Error(), "run make manifests") {
		t.Errorf("empty file: %v", err)
	}
	if _, err := parseProxyRules([]byte("kind: Deployment\n")); err == nil || !strings.Contains(err.Error(), `unexpected kind "Deployment"`) {
		t.Errorf("wrong kind: %v", err)
	}
	if _, err := loadProxyRules(); err != nil {
		t.Errorf("the embedded config/rbac/proxy/role.yaml: %v", err)
	}
}

// TestRenderProxyRollout: a rollout never takes a ready proxy away before its
// replacement is ready (maxUnavailable 0, one surge pod), so a single-replica
// proxy keeps serving through every change of its configuration.
func TestRenderProxyRollout(t *testing.T) {
	for _, replicas := range []int32{1, 3} {
		w := renderProxy(workloadInput{Namespace: "ops", JWKSConfigMap: "jwks", Config: defaulted(nil), Replicas: replicas})
		d := w.deployment
		if d.Spec == nil || d.Spec.Strategy == nil || d.Spec.Strategy.RollingUpdate == nil {
			t.Fatalf("%d replicas: no rolling update strategy: %+v", replicas, d.Spec)
		}
		s := d.Spec.Strategy
		if s.Type == nil || *s.Type != "RollingUpdate" {
			t.Errorf("%d replicas: strategy type %v, want RollingUpdate", replicas, s.Type)
		}
		if u := s.RollingUpdate.MaxUnavailable; u == nil || u.String() != "0" {
			t.Errorf("%d replicas: maxUnavailable %v, want 0", replicas, u)
		}
		if u := s.RollingUpdate.MaxSurge; u == nil || u.String() != "1" {
			t.Errorf("%d replicas: maxSurge %v, want 1", replicas, u)
		}
		if d.Spec.Replicas == nil || *d.Spec.Replicas != replicas {
			t.Errorf("replicas %v, want %d", d.Spec.Replicas, replicas)
		}
	}
}
