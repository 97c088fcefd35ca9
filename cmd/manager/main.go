// Command manager runs the llm-user-operator: it reconciles LLMUsers and
// LLMQuotas into signing keys, per-user token Secrets and quota status.
package main

import (
	"flag"
	"os"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/llm-user-operator/llm-user-operator/internal/manager"
	"github.com/llm-user-operator/llm-user-operator/internal/operatorconfig"
)

func main() {
	var o manager.Options
	flag.StringVar(&o.MetricsAddr, "metrics-bind-address", ":8080", `Address of the metrics endpoint; "0" disables it.`)
	flag.StringVar(&o.ProbeAddr, "health-probe-bind-address", ":8081", "Address of /healthz and /readyz.")
	flag.StringVar(&o.RefreshAddr, "refresh-bind-address", ":8082", `Address of POST /auth/refresh; "0" disables it.`)
	flag.BoolVar(&o.LeaderElection, "leader-elect", false, "Elect a leader so only one replica reconciles.")
	flag.StringVar(&o.Namespace, "namespace", envOr("POD_NAMESPACE", "llm-user-operator-system"), "The operator's namespace: signing keys and JWKS live here.")
	flag.StringVar(&o.SigningKeysSecret, "signing-keys-secret", "llm-user-operator-signing-keys", "Secret holding the private signing keys.")
	flag.StringVar(&o.JWKSConfigMap, "jwks-configmap", "llm-user-operator-jwks", "ConfigMap publishing the public keys (JWKS) for the proxy.")
	config := operatorconfig.BindFlags(flag.CommandLine)
	opts := zap.Options{Development: false}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))

	cfg, err := config.Load(o.Namespace, os.Getenv(operatorconfig.EnvOperatorImage))
	if err != nil {
		ctrl.Log.Error(err, "cannot start")
		os.Exit(1)
	}
	o.Config = cfg
	o.Issuer, o.Audience, o.KeyRotationPeriod = cfg.Issuer, cfg.Audience, cfg.KeyRotationPeriod.Duration
	o.ProxyBaseURL = cfg.Proxy.BaseURL

	if err := manager.Run(ctrl.SetupSignalHandler(), o); err != nil {
		ctrl.Log.Error(err, "operator failed")
		os.Exit(1)
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
