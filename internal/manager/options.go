package manager

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"

	"github.com/llm-user-operator/llm-user-operator/internal/operatorconfig"
)

// Defaults sized for onboarding 10,000 users in a minute; see NewOptions.
const (
	defaultMaxConcurrentReconciles = 8
	defaultKubeAPIQPS              = 500
	defaultKubeAPIBurst            = 1000
)

// Options configure the operator. [NewOptions] holds every default; the
// command line binds them with [Options.BindFlags]; [Run] checks them with
// [Options.Validate].
type Options struct {
	// RestConfig reaches the API server; nil loads the usual kubeconfig chain.
	RestConfig *rest.Config

	MetricsAddr       string // "0" disables
	ProbeAddr         string // "0" disables
	RefreshAddr       string // serves POST /auth/refresh; "" or "0" disables
	LeaderElection    bool
	LeaderElectionID  string
	Namespace         string // the operator's own namespace: keys Secret and JWKS ConfigMap
	SigningKeysSecret string
	JWKSConfigMap     string
	KeyRotationPeriod time.Duration
	// Issuer is the iss claim; empty means https://llm-user-operator.<Namespace>.svc.
	Issuer   string
	Audience string
	// ProxyBaseURL is the OPENAI_BASE_URL written into every token Secret;
	// empty means http://llm-user-proxy.<Namespace>.svc:8000/v1.
	ProxyBaseURL     string
	GracefulShutdown time.Duration
	// MaxConcurrentReconciles is how many objects each controller reconciles at once.
	MaxConcurrentReconciles int
	// KubeAPIQPS and KubeAPIBurst bound the operator's requests to the API server.
	KubeAPIQPS   float64
	KubeAPIBurst int

	SkipNameValidation bool // tests start several managers in one process
	Clock              clock.Clock
	Scheme             *runtime.Scheme

	// Config is the operator's configuration file; with it the operator
	// runs the proxy workload it describes, and takes the issuer, audience,
	// key rotation period and proxy base URL from it. Nil runs no workload
	// (tests of other controllers) and keeps the options' own values.
	Config *operatorconfig.OperatorConfig
	// configFlags are --config and its overrides, bound by BindFlags; Run
	// loads Config through them.
	configFlags *operatorconfig.Flags
}

// NewOptions returns the defaults. The namespace comes from POD_NAMESPACE
// (the chart sets it from the downward API) when set.
func NewOptions() Options {
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "llm-user-operator-system"
	}
	return Options{
		MetricsAddr:       ":8080",
		ProbeAddr:         ":8081",
		RefreshAddr:       ":8082",
		LeaderElectionID:  "llm-user-operator.llm.userops.dev",
		Namespace:         ns,
		SigningKeysSecret: "llm-user-operator-signing-keys",
		JWKSConfigMap:     "llm-user-operator-jwks",
		KeyRotationPeriod: 30 * 24 * time.Hour,
		Audience:          "llm-user-proxy",
		GracefulShutdown:  30 * time.Second,
		// A reconcile waits on the API server (a Secret and a status write
		// for a new user), not on CPU: a handful in flight keep those writes
		// pipelined on a small machine without piling up conflicts.
		MaxConcurrentReconciles: defaultMaxConcurrentReconciles,
		// Onboarding costs two writes per user (its Secret, its status) plus
		// an Event; 10,000 users in a minute is about 500 requests a second.
		// The API server's priority and fairness still protects it from us.
		KubeAPIQPS:   defaultKubeAPIQPS,
		KubeAPIBurst: defaultKubeAPIBurst,
	}
}

// BindFlags registers a flag for every option a command line sets, each
// defaulting to o's current value (call it on [NewOptions]).
func (o *Options) BindFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.MetricsAddr, "metrics-bind-address", o.MetricsAddr, `Address of the metrics endpoint; "0" disables it.`)
	fs.StringVar(&o.ProbeAddr, "health-probe-bind-address", o.ProbeAddr, `Address of /healthz and /readyz; "0" disables them.`)
	fs.StringVar(&o.RefreshAddr, "refresh-bind-address", o.RefreshAddr, `Address of POST /auth/refresh, served by every replica; "0" disables it.`)
	fs.BoolVar(&o.LeaderElection, "leader-elect", o.LeaderElection, "Elect a leader so only one replica reconciles and writes; every replica serves /auth/refresh.")
	fs.StringVar(&o.LeaderElectionID, "leader-election-id", o.LeaderElectionID, "Name of the Lease used for leader election, in --namespace.")
	fs.StringVar(&o.Namespace, "namespace", o.Namespace, "The operator's namespace: signing keys, JWKS and the leader election Lease live here (default: env POD_NAMESPACE).")
	fs.StringVar(&o.SigningKeysSecret, "signing-keys-secret", o.SigningKeysSecret, "Secret holding the private signing keys.")
	fs.StringVar(&o.JWKSConfigMap, "jwks-configmap", o.JWKSConfigMap, "ConfigMap publishing the public keys (JWKS) for the proxy.")
	fs.DurationVar(&o.GracefulShutdown, "graceful-shutdown-timeout", o.GracefulShutdown, "How long running reconciles and requests get to finish on shutdown.")
	fs.IntVar(&o.MaxConcurrentReconciles, "max-concurrent-reconciles", o.MaxConcurrentReconciles, "How many objects each controller reconciles at once.")
	fs.Float64Var(&o.KubeAPIQPS, "kube-api-qps", o.KubeAPIQPS, "Sustained requests per second to the API server.")
	fs.IntVar(&o.KubeAPIBurst, "kube-api-burst", o.KubeAPIBurst, "Requests to the API server allowed in a burst above --kube-api-qps.")
	// The issuer, audience, key rotation period and proxy base URL are in
	// the configuration file; these flags override it.
	o.configFlags = operatorconfig.BindFlags(fs)
}

// loadConfig reads the configuration file and the flags that override it
// (when BindFlags bound them), and takes from the configuration what it
// decides for the whole install.
func (o *Options) loadConfig() error {
	if o.configFlags != nil {
		cfg, err := o.configFlags.Load(o.Namespace, os.Getenv(operatorconfig.EnvOperatorImage))
		if err != nil {
			return err
		}
		o.Config = cfg
	}
	if c := o.Config; c != nil {
		o.Issuer, o.Audience, o.KeyRotationPeriod, o.ProxyBaseURL = c.Issuer, c.Audience, c.KeyRotationPeriod.Duration, c.Proxy.BaseURL
	}
	return nil
}

// complete fills what was left unset (an Options literal in a test) from
// [NewOptions] and derives the namespace-dependent defaults.
func (o *Options) complete() {
	d := NewOptions()
	str := func(v *string, def string) {
		if *v == "" {
			*v = def
		}
	}
	str(&o.MetricsAddr, d.MetricsAddr)
	str(&o.ProbeAddr, d.ProbeAddr)
	str(&o.LeaderElectionID, d.LeaderElectionID)
	str(&o.Namespace, d.Namespace)
	str(&o.SigningKeysSecret, d.SigningKeysSecret)
	str(&o.JWKSConfigMap, d.JWKSConfigMap)
	str(&o.Audience, d.Audience)
	str(&o.Issuer, "https://llm-user-operator."+o.Namespace+".svc")
	str(&o.ProxyBaseURL, "http://llm-user-proxy."+o.Namespace+".svc:8000/v1")
	if o.KeyRotationPeriod == 0 {
		o.KeyRotationPeriod = d.KeyRotationPeriod
	}
	if o.GracefulShutdown == 0 {
		o.GracefulShutdown = d.GracefulShutdown
	}
	if o.MaxConcurrentReconciles == 0 {
		o.MaxConcurrentReconciles = d.MaxConcurrentReconciles
	}
	if o.KubeAPIQPS == 0 {
		o.KubeAPIQPS = d.KubeAPIQPS
	}
	if o.KubeAPIBurst == 0 {
		o.KubeAPIBurst = d.KubeAPIBurst
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
}

// Validate reports every option that cannot work, each with what to set.
func (o *Options) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if msgs := validation.IsDNS1123Label(o.Namespace); len(msgs) > 0 {
		bad("--namespace %q is not a namespace name: %s", o.Namespace, strings.Join(msgs, "; "))
	}
	for _, n := range []struct{ flag, name string }{
		{"--signing-keys-secret", o.SigningKeysSecret}, {"--jwks-configmap", o.JWKSConfigMap}, {"--leader-election-id", o.LeaderElectionID},
	} {
		if msgs := validation.IsDNS1123Subdomain(n.name); len(msgs) > 0 {
			bad("%s %q is not an object name: %s", n.flag, n.name, strings.Join(msgs, "; "))
		}
	}
	if o.KeyRotationPeriod < time.Hour {
		bad("--key-rotation-period %s is too short: a key must outlive the token renewals it serves; use 1h or more, such as 720h", o.KeyRotationPeriod)
	}
	if o.Audience == "" {
		bad("--audience is empty: set the audience the proxy checks, such as llm-user-proxy")
	}
	if u, err := url.Parse(o.Issuer); err != nil || u.Scheme == "" || u.Host == "" {
		bad("--issuer %q is not an absolute URL, such as https://llm-user-operator.%s.svc", o.Issuer, o.Namespace)
	}
	if u, err := url.Parse(o.ProxyBaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("--proxy-base-url %q is not an http(s) URL, such as http://llm-user-proxy.%s.svc:8000/v1", o.ProxyBaseURL, o.Namespace)
	}
	if o.GracefulShutdown < 0 {
		bad("--graceful-shutdown-timeout %s is negative", o.GracefulShutdown)
	}
	if o.MaxConcurrentReconciles < 1 {
		bad("--max-concurrent-reconciles %d: set 1 or more", o.MaxConcurrentReconciles)
	}
	if o.KubeAPIQPS <= 0 || o.KubeAPIBurst < 1 {
		bad("--kube-api-qps %g and --kube-api-burst %d must both be positive, such as %g and %d", o.KubeAPIQPS, o.KubeAPIBurst, float64(defaultKubeAPIQPS), defaultKubeAPIBurst)
	}
	return errors.Join(errs...)
}
