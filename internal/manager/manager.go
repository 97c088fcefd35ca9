// Package manager runs the operator: a controller-runtime manager with the
// signing-key, token and quota controllers, health probes, metrics, leader
// election and the /auth/refresh endpoint.
package manager

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/controller"
	"github.com/llm-user-operator/llm-user-operator/internal/operatorconfig"
	"github.com/llm-user-operator/llm-user-operator/internal/refresh"
)

// Options configure the operator.
type Options struct {
	// RestConfig reaches the API server; nil loads the usual kubeconfig chain.
	RestConfig *rest.Config

	MetricsAddr        string // "0" disables
	ProbeAddr          string
	RefreshAddr        string // serves POST /auth/refresh; "" or "0" disables
	LeaderElection     bool
	LeaderElectionID   string
	Namespace          string // the operator's own namespace: keys Secret and JWKS ConfigMap
	SigningKeysSecret  string
	JWKSConfigMap      string
	KeyRotationPeriod  time.Duration
	Issuer             string
	Audience           string
	ProxyBaseURL       string // OPENAI_BASE_URL written into every token Secret
	GracefulShutdown   time.Duration
	SkipNameValidation bool // tests start several managers in one process
	Clock              clock.Clock
	Scheme             *runtime.Scheme

	// Config is the operator's configuration file; with it the operator
	// runs the proxy workload it describes. Nil runs none (tests of other
	// controllers).
	Config *operatorconfig.OperatorConfig
}

// Defaults fills unset options.
func (o *Options) Defaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&o.MetricsAddr, ":8080")
	def(&o.ProbeAddr, ":8081")
	def(&o.LeaderElectionID, "llm-user-operator.llm.userops.dev")
	def(&o.Namespace, "llm-user-operator-system")
	def(&o.SigningKeysSecret, "llm-user-operator-signing-keys")
	def(&o.JWKSConfigMap, "llm-user-operator-jwks")
	def(&o.Issuer, "https://llm-user-operator.llm-user-operator-system.svc")
	def(&o.Audience, "llm-user-proxy")
	def(&o.ProxyBaseURL, "http://llm-user-proxy.llm-user-operator-system.svc:8000/v1")
	if o.KeyRotationPeriod == 0 {
		o.KeyRotationPeriod = 30 * 24 * time.Hour
	}
	if o.GracefulShutdown == 0 {
		o.GracefulShutdown = 30 * time.Second
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	if o.Scheme == nil {
		o.Scheme = NewScheme()
	}
}

// NewScheme registers the built-in and llm.userops.dev types.
func NewScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(llmv1alpha1.AddToScheme(s))
	return s
}

// +kubebuilder:rbac:groups=llm.userops.dev,resources=llmusers;llmquotas,verbs=get;list;watch
// +kubebuilder:rbac:groups=llm.userops.dev,resources=llmusers/status;llmquotas/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;update;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch;delete

// Run starts the operator and blocks until ctx is done or it fails.
func Run(ctx context.Context, o Options) error {
	o.Defaults()
	cfg := o.RestConfig
	if cfg == nil {
		var err error
		if cfg, err = ctrl.GetConfig(); err != nil {
			return fmt.Errorf("no Kubernetes API to talk to: %w", err)
		}
	}
	managed := labels.SelectorFromSet(labels.Set{llmv1alpha1.LabelManagedBy: llmv1alpha1.ManagedByValue})
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  o.Scheme,
		Metrics:                 metricsserver.Options{BindAddress: o.MetricsAddr},
		HealthProbeBindAddress:  o.ProbeAddr,
		LeaderElection:          o.LeaderElection,
		LeaderElectionID:        o.LeaderElectionID,
		LeaderElectionNamespace: o.Namespace,
		GracefulShutdownTimeout: &o.GracefulShutdown,
		Controller:              ctrlConfig(o.SkipNameValidation),
		Cache:                   cache.Options{ByObject: cacheByObject(o.Namespace, managed)},
	})
	if err != nil {
		return fmt.Errorf("creating manager: %w", err)
	}
	if err := controller.IndexQuotaRef(ctx, mgr); err != nil {
		return err
	}

	keys := controller.NewKeyStore(o.Issuer, o.Audience, o.Clock.Now)
	// Controllers: one per concern, each owning its own status fields.
	if err := (&controller.SigningKeyReconciler{
		Client: mgr.GetClient(), Namespace: o.Namespace, SecretName: o.SigningKeysSecret,
		ConfigMapName: o.JWKSConfigMap, RotationPeriod: o.KeyRotationPeriod, Clock: o.Clock, Store: keys,
	}).SetupWithManager(mgr); err != nil {
		return err
	}
	if err := (&controller.TokenReconciler{
		Client: mgr.GetClient(), Clock: o.Clock, Keys: keys, Issuer: o.Issuer, Audience: o.Audience,
		BaseURL: o.ProxyBaseURL, Recorder: mgr.GetEventRecorder("llm-user-operator"),
	}).SetupWithManager(mgr); err != nil {
		return err
	}
	if err := (&controller.QuotaReconciler{Client: mgr.GetClient(), Clock: o.Clock}).SetupWithManager(mgr); err != nil {
		return err
	}
	if err := (&controller.UsageReconciler{
		Client: mgr.GetClient(), Clock: o.Clock, Recorder: mgr.GetEventRecorder("llm-user-operator"),
	}).SetupWithManager(mgr); err != nil {
		return err
	}

	if o.Config != nil {
		if err := (&controller.ProxyReconciler{
			Client: mgr.GetClient(), Namespace: o.Namespace, JWKSConfigMap: o.JWKSConfigMap, Config: o.Config,
			Recorder: mgr.GetEventRecorder("llm-user-operator"), Clock: o.Clock,
		}).SetupWithManager(mgr); err != nil {
			return err
		}
	}

	if o.RefreshAddr != "" && o.RefreshAddr != "0" {
		h := &refresh.Handler{Users: users{mgr.GetClient()}, Keys: keys, Issuer: o.Issuer, Audience: o.Audience, Now: o.Clock.Now}
		mux := http.NewServeMux()
		mux.Handle("/auth/refresh", h)
		if err := mgr.Add(&httpServer{addr: o.RefreshAddr, handler: mux}); err != nil {
			return err
		}
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return err
	}
	return mgr.Start(ctx)
}

// cacheByObject caches only what the operator writes: never every Secret,
// ConfigMap or Deployment in the cluster.
func cacheByObject(namespace string, managed labels.Selector) map[client.Object]cache.ByObject {
	by := controller.ProxyCacheOptions(namespace)
	by[&corev1.Secret{}] = cache.ByObject{Label: managed}
	by[&corev1.ConfigMap{}] = cache.ByObject{Label: managed, Namespaces: map[string]cache.Config{namespace: {}}}
	return by
}

// users reads LLMUsers for the refresh endpoint from the manager's cache.
type users struct{ c client.Client }

func (u users) User(ctx context.Context, namespace, name string) (refresh.User, bool, error) {
	var obj llmv1alpha1.LLMUser
	if err := u.c.Get(ctx, types.NamespacedName{Namespace: namespace, Name: name}, &obj); err != nil {
		if client.IgnoreNotFound(err) == nil {
			return refresh.User{}, false, nil
		}
		return refresh.User{}, false, err
	}
	gen := int64(0)
	if obj.Status.Token != nil {
		gen = obj.Status.Token.Generation
	}
	return refresh.User{
		UID: string(obj.UID), TokenGeneration: gen, Suspended: obj.Spec.Suspended,
		AllowRefresh: obj.Spec.Token.AllowRefresh == nil || *obj.Spec.Token.AllowRefresh,
		TTL:          controller.TokenTTL(&obj),
	}, true, nil
}

// httpServer runs an HTTP server as a manager runnable on every replica.
type httpServer struct {
	addr    string
	handler http.Handler
}

func (s *httpServer) NeedLeaderElection() bool { return false }

func (s *httpServer) Start(ctx context.Context) error {
	srv := &http.Server{Addr: s.addr, Handler: s.handler, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(shutdown); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}
}

var _ manager.Runnable = (*httpServer)(nil)

func ctrlConfig(skip bool) config.Controller {
	return config.Controller{SkipNameValidation: &skip}
}
