// Package manager runs the operator: a controller-runtime manager with the
// signing-key, token, quota and usage controllers, health probes, metrics,
// leader election and the /auth/refresh endpoint (on every replica). Its
// options, their defaults, flags and validation live in options.go.
package manager

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	apischeme "github.com/llm-user-operator/llm-user-operator/api/scheme"
	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/controller"
	"github.com/llm-user-operator/llm-user-operator/internal/refresh"
	"github.com/llm-user-operator/llm-user-operator/internal/token"
)

// Leader election; each reconciler carries the markers of what it touches.
// +kubebuilder:rbac:groups=coordination.k8s.io,resources=leases,verbs=get;list;watch;create;update;patch;delete

// Run starts the operator and blocks until ctx is done or it fails.
func Run(ctx context.Context, o Options) error {
	if err := o.loadConfig(); err != nil {
		return err
	}
	o.complete()
	if err := o.Validate(); err != nil {
		return err
	}
	cfg := o.RestConfig
	if cfg == nil {
		var err error
		if cfg, err = ctrl.GetConfig(); err != nil {
			return fmt.Errorf("no Kubernetes API to talk to: %w", err)
		}
	}
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = float32(o.KubeAPIQPS), o.KubeAPIBurst
	if o.Scheme == nil {
		o.Scheme = apischeme.New()
	}
	managed := labels.SelectorFromSet(labels.Set{llmv1alpha1.LabelManagedBy: llmv1alpha1.ManagedByValue})
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  o.Scheme,
		Metrics:                 metricsserver.Options{BindAddress: o.MetricsAddr},
		HealthProbeBindAddress:  o.ProbeAddr,
		LeaderElection:          o.LeaderElection,
		LeaderElectionID:        o.LeaderElectionID,
		LeaderElectionNamespace: o.Namespace,
		// Run returns only after every runnable stopped, and the process exits
		// right after: handing the lease over at once lets a follower take over
		// in one retry period instead of a whole lease duration.
		LeaderElectionReleaseOnCancel: true,
		GracefulShutdownTimeout:       &o.GracefulShutdown,
		Controller: config.Controller{
			SkipNameValidation:      &o.SkipNameValidation,
			MaxConcurrentReconciles: o.MaxConcurrentReconciles,
		},
		Cache: cache.Options{ByObject: cacheByObject(o.Namespace, managed)},
	})
	if err != nil {
		return fmt.Errorf("creating manager: %w", err)
	}

	keys := token.NewKeyStore(o.Issuer, o.Audience, o.Clock.Now)
	recorder := mgr.GetEventRecorder("llm-user-operator")
	keysSecret := types.NamespacedName{Namespace: o.Namespace, Name: o.SigningKeysSecret}
	// One reconciler per concern, each owning its own status fields.
	reconcilers := []interface{ SetupWithManager(ctrl.Manager) error }{
		&controller.SigningKeyReconciler{
			Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Namespace: o.Namespace, SecretName: o.SigningKeysSecret,
			ConfigMapName: o.JWKSConfigMap, RotationPeriod: o.KeyRotationPeriod, Clock: o.Clock,
		},
		&controller.SigningKeyLoader{Client: mgr.GetClient(), Secret: keysSecret, Store: keys},
		&controller.TokenReconciler{
			Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Clock: o.Clock, Keys: keys,
			BaseURL: o.ProxyBaseURL, Recorder: recorder, ReservedSecrets: []types.NamespacedName{keysSecret},
		},
		&controller.QuotaReconciler{Client: mgr.GetClient(), Clock: o.Clock},
		&controller.UsageReconciler{Client: mgr.GetClient(), Clock: o.Clock, Recorder: recorder},
	}
	if o.Config != nil {
		reconcilers = append(reconcilers, &controller.ProxyReconciler{
			Client: mgr.GetClient(), Namespace: o.Namespace, JWKSConfigMap: o.JWKSConfigMap, Config: o.Config,
			Recorder: recorder, Clock: o.Clock,
		})
	}
	for _, r := range reconcilers {
		if err := r.SetupWithManager(mgr); err != nil {
			return err
		}
	}

	if o.RefreshAddr != "" && o.RefreshAddr != "0" {
		h := &refresh.Handler{Users: users{mgr.GetClient()}, Keys: keys}
		mux := http.NewServeMux()
		mux.Handle("/auth/refresh", h)
		if err := mgr.Add(&httpServer{addr: o.RefreshAddr, handler: mux}); err != nil {
			return err
		}
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	// A replica is ready once it holds the signing keys: only then can it
	// serve /auth/refresh, whether it leads or not.
	if err := mgr.AddReadyzCheck("signing-keys", func(*http.Request) error {
		select {
		case <-keys.Ready():
			return nil
		default:
			return errors.New("no signing key loaded yet")
		}
	}); err != nil {
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
