// Command proxy serves the OpenAI API in front of vLLM: it authenticates each
// request by its token, enforces model allowlists and quotas, forwards
// (streaming included), counts tokens, exports metrics and writes usage back
// into LLMUser and LLMQuota status.
package main

import (
	"flag"
	"os"
	"strings"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/llm-user-operator/llm-user-operator/internal/proxyserver"
)

func main() {
	var o proxyserver.Options
	var upstreams string
	flag.StringVar(&o.ListenAddr, "listen-address", ":8000", "Address of the OpenAI-compatible API.")
	flag.StringVar(&o.MetricsAddr, "metrics-bind-address", ":9090", "Address of /metrics, /healthz and /readyz.")
	flag.StringVar(&upstreams, "upstreams", os.Getenv("LLM_UPSTREAMS"), "Comma-separated base URLs of the vLLM servers (their models are discovered from /v1/models).")
	flag.StringVar(&o.Namespace, "namespace", envOr("POD_NAMESPACE", "llm-user-operator-system"), "The operator's namespace, where the JWKS ConfigMap is published.")
	flag.StringVar(&o.JWKSConfigMap, "jwks-configmap", "llm-user-operator-jwks", "ConfigMap holding the published public keys.")
	flag.StringVar(&o.Issuer, "issuer", "https://llm-user-operator.llm-user-operator-system.svc", "Expected iss claim.")
	flag.StringVar(&o.Audience, "audience", "llm-user-proxy", "Expected aud claim.")
	flag.StringVar(&o.RefreshURL, "refresh-url", "", "The operator's /auth/refresh URL; when set, POST /auth/refresh is forwarded there.")
	flag.Int64Var(&o.MaxRequestBody, "max-request-body", 10<<20, "Largest request body accepted, in bytes (413 above).")
	flag.StringVar(&o.Counter, "counter", "memory", `Quota counters: "memory" (exact with one replica) or "redis" (shared by replicas).`)
	flag.StringVar(&o.RedisAddr, "redis-addr", "", "Redis address for --counter=redis.")
	flag.BoolVar(&o.RedisFailOpen, "redis-fail-open", false, "Admit requests when Redis is unreachable (default: refuse with 503).")
	flag.DurationVar(&o.FlushInterval, "flush-interval", 0, "How often usage is written to status (default 10s).")
	flag.BoolVar(&o.UserLabel, "metrics-user-label", true, "Label per-user metrics with the user name (cardinality = number of LLMUsers).")
	flag.DurationVar(&o.ShutdownGrace, "shutdown-grace", 0, "How long in-flight requests may run after SIGTERM (default 30s).")
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))
	for _, u := range strings.Split(upstreams, ",") {
		if u = strings.TrimSpace(u); u != "" {
			o.Upstreams = append(o.Upstreams, u)
		}
	}
	if err := proxyserver.Run(ctrl.SetupSignalHandler(), o); err != nil {
		ctrl.Log.Error(err, "proxy failed")
		os.Exit(1)
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
