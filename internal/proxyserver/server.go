// Package proxyserver runs the proxy process: informers on LLMUsers, LLMQuotas
// and the published JWKS, the request path of package proxy, the quota
// counters (in-process or Redis), the batched usage write-back, metrics and
// probes on their own port, and a graceful shutdown that charges and flushes
// everything in flight.
package proxyserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	apischeme "github.com/llm-user-operator/llm-user-operator/api/scheme"
	"github.com/llm-user-operator/llm-user-operator/internal/metrics"
	"github.com/llm-user-operator/llm-user-operator/internal/proxy"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
	"github.com/llm-user-operator/llm-user-operator/internal/token"
	"github.com/llm-user-operator/llm-user-operator/internal/usage"
)

// +kubebuilder:rbac:groups=llm.userops.dev,resources=llmusers;llmquotas,verbs=get;list;watch
// +kubebuilder:rbac:groups=llm.userops.dev,resources=llmusers/status;llmquotas/status,verbs=get;patch

// Options configure the proxy process.
type Options struct {
	RestConfig *rest.Config

	ListenAddr  string // the OpenAI API, default ":8000"
	MetricsAddr string // /metrics, /healthz, /readyz, default ":9090"

	Namespace     string // where the operator publishes the JWKS
	JWKSConfigMap string
	Issuer        string
	Audience      string

	Upstreams      []string
	RefreshURL     string // the operator's /auth/refresh, proxied when set
	MaxRequestBody int64

	// Counter is "memory" (exact for one replica) or "redis" (shared by replicas).
	Counter       string
	RedisAddr     string
	RedisFailOpen bool

	FlushInterval  time.Duration
	UserLabel      bool
	ShutdownGrace  time.Duration
	DisableQuota   bool
	Logger         logr.Logger
	RegisterMetric prometheus.Registerer
}

func (o *Options) defaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&o.ListenAddr, ":8000")
	def(&o.MetricsAddr, ":9090")
	def(&o.Namespace, "llm-user-operator-system")
	def(&o.JWKSConfigMap, "llm-user-operator-jwks")
	def(&o.Audience, "llm-user-proxy")
	def(&o.Counter, "memory")
	if o.ShutdownGrace == 0 {
		o.ShutdownGrace = 30 * time.Second
	}
	if o.FlushInterval == 0 {
		o.FlushInterval = 10 * time.Second
	}
	if o.Logger.GetSink() == nil {
		o.Logger = ctrl.Log.WithName("proxy")
	}
}

// Run serves until ctx is done, then drains in-flight requests for up to
// ShutdownGrace, charges what they produced and flushes usage before returning.
func Run(ctx context.Context, o Options) error {
	o.defaults()
	log := o.Logger
	cfg := o.RestConfig
	if cfg == nil {
		var err error
		if cfg, err = ctrl.GetConfig(); err != nil {
			return fmt.Errorf("no Kubernetes API to talk to: %w", err)
		}
	}
	scheme := apischeme.New()
	c, err := cache.New(cfg, cache.Options{Scheme: scheme, ByObject: map[client.Object]cache.ByObject{
		&corev1.ConfigMap{}: {
			Namespaces: map[string]cache.Config{o.Namespace: {}},
			Field:      fields.OneTermEqualSelector("metadata.name", o.JWKSConfigMap),
		},
	}})
	if err != nil {
		return err
	}
	writer, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return err
	}

	reg := o.RegisterMetric
	if reg == nil {
		r := prometheus.NewRegistry()
		r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		reg = r
	}
	m := metrics.New(reg, metrics.Options{UserLabel: o.UserLabel})

	store, closeCounter, err := newCounter(o)
	if err != nil {
		return err
	}
	defer closeCounter()
	var reseed func(context.Context) error
	if rs, ok := store.(*quota.Redis); ok {
		// The informer cache holds the status every replica flushed.
		reseed = func(ctx context.Context) error {
			if err := usage.SeedFromStatus(ctx, rs, c, time.Now()); err != nil {
				return err
			}
			return rs.MarkSeeded(ctx)
		}
	}
	fo := newFailover(store, o.RedisFailOpen, reseed, reg)
	counter := quota.Counter(fo)

	dir := NewDirectory(func(ns, name string) { m.ForgetUser(ns, name) })
	verifier := token.NewVerifier(token.VerifierOptions{Issuer: o.Issuer, Audience: o.Audience})
	keysLoaded := make(chan struct{})
	if err := watchJWKS(ctx, c, o, verifier, keysLoaded, log); err != nil {
		return err
	}
	if err := dir.Watch(ctx, c); err != nil {
		return err
	}
	reg.MustRegister(metrics.NewBudgetCollector(budgetSource(dir, counter, fo.Available, o.UserLabel)))

	sink, err := newSink(writer, dir, o, reg, log)
	if err != nil {
		return err
	}

	p, err := proxy.New(proxy.Options{
		Verifier: verifier, Directory: dir, Counter: counter, Sink: sink,
		Upstreams: o.Upstreams, MaxRequestBody: o.MaxRequestBody, Metrics: m, Logger: log,
		DisableQuota: o.DisableQuota,
	})
	if err != nil {
		return err
	}

	runCtx, stopBackground := context.WithCancel(context.Background())
	defer stopBackground()
	go func() { _ = c.Start(runCtx) }()
	go func() { _ = p.Start(runCtx) }()
	sinkDone := make(chan struct{})
	go func() { defer close(sinkDone); sink.run(runCtx) }()

	syncCtx, cancelSync := context.WithTimeout(ctx, 2*time.Minute)
	synced := c.WaitForCacheSync(syncCtx)
	cancelSync()
	if !synced {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("informer caches did not sync within 2m")
	}
	if err := sink.seed(ctx, store, writer); err != nil {
		return fmt.Errorf("seeding counters from status: %w", err)
	}
	if rs, ok := store.(*quota.Redis); ok {
		if err := rs.MarkSeeded(ctx); err != nil {
			return fmt.Errorf("marking the shared counters seeded: %w", err)
		}
	}

	keysReady := func() bool {
		select {
		case <-keysLoaded:
			return true
		default:
			return false
		}
	}
	api := http.NewServeMux()
	if o.RefreshURL != "" {
		u, err := url.Parse(o.RefreshURL)
		if err != nil {
			return fmt.Errorf("refresh URL: %w", err)
		}
		rp := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.Out.URL.Path = u.Path
		}}
		api.Handle("/auth/refresh", rp)
	}
	api.Handle("/", p.Handler())

	ops := http.NewServeMux()
	ops.Handle("/metrics", promhttp.HandlerFor(reg.(prometheus.Gatherer), promhttp.HandlerOpts{}))
	ops.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	ops.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !dir.Ready() || !keysReady() || !p.Ready() {
			http.Error(w, "caches, keys or upstream models not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})

	apiSrv := &http.Server{Handler: api, ReadHeaderTimeout: 30 * time.Second}
	opsSrv := &http.Server{Handler: ops, ReadHeaderTimeout: 10 * time.Second}
	apiL, err := net.Listen("tcp", o.ListenAddr)
	if err != nil {
		return err
	}
	opsL, err := net.Listen("tcp", o.MetricsAddr)
	if err != nil {
		_ = apiL.Close()
		return err
	}
	errc := make(chan error, 2)
	go func() { errc <- apiSrv.Serve(apiL) }()
	go func() { errc <- opsSrv.Serve(opsL) }()
	log.Info("serving", "api", apiL.Addr().String(), "metrics", opsL.Addr().String(), "upstreams", o.Upstreams, "counter", o.Counter)

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	// Stop accepting, let in-flight requests (streams too) finish and settle
	// within the grace period, then flush every counted token.
	shutdown, cancel := context.WithTimeout(context.Background(), o.ShutdownGrace)
	defer cancel()
	if err := apiSrv.Shutdown(shutdown); err != nil {
		log.Info("grace period over, closing remaining connections", "err", err.Error())
		_ = apiSrv.Close()
	}
	stopBackground()
	<-sinkDone
	flushCtx, cancelFlush := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancelFlush()
	if err := sink.flush(flushCtx); err != nil {
		log.Error(err, "final usage flush incomplete")
		serveErr = errors.Join(serveErr, err)
	}
	_ = opsSrv.Shutdown(flushCtx)
	if errors.Is(serveErr, http.ErrServerClosed) {
		serveErr = nil
	}
	return serveErr
}

func newCounter(o Options) (quota.Counter, func(), error) {
	switch o.Counter {
	case "memory":
		return quota.NewMemory(time.Now), func() {}, nil
	case "redis":
		if o.RedisAddr == "" {
			return nil, nil, errors.New("--counter=redis needs --redis-addr")
		}
		rc := redis.NewClient(&redis.Options{Addr: o.RedisAddr})
		return quota.NewRedis(rc, "llmq:", time.Now), func() { _ = rc.Close() }, nil
	default:
		return nil, nil, fmt.Errorf("unknown counter %q: use memory or redis", o.Counter)
	}
}

// watchJWKS keeps the verifier's keys equal to the published JWKS.
func watchJWKS(ctx context.Context, c cache.Cache, o Options, v *token.Verifier, loaded chan struct{}, log logr.Logger) error {
	inf, err := c.GetInformer(ctx, &corev1.ConfigMap{})
	if err != nil {
		return err
	}
	closed := false
	set := func(obj any) {
		cm, ok := obj.(*corev1.ConfigMap)
		if !ok || cm.Name != o.JWKSConfigMap {
			return
		}
		keys, err := token.ParseJWKS([]byte(cm.Data[token.JWKSKey]))
		if err != nil {
			log.Error(err, "ignoring unreadable JWKS; keeping the previous keys", "configmap", cm.Name)
			return
		}
		v.SetKeys(keys)
		if len(keys) > 0 && !closed {
			closed = true
			close(loaded)
		}
	}
	_, err = inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    set,
		UpdateFunc: func(_, n any) { set(n) },
	})
	return err
}

// budgetSource reports each user's own budget and each Shared pool at scrape time.
func budgetSource(dir *Directory, counter quota.Counter, available func() bool, userLabel bool) func() []metrics.BudgetSample {
	return func() []metrics.BudgetSample {
		if !available() {
			return nil // a scrape must not wait on a store that is down
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var out []metrics.BudgetSample
		seen := map[string]bool{}
		for _, u := range dir.Users() {
			for _, b := range u.Budgets {
				user := u.Name
				if b.Key == quota.PoolKey(u.Namespace, u.QuotaName) {
					user = ""
				} else if !userLabel {
					continue
				}
				if seen[b.Key] {
					continue
				}
				seen[b.Key] = true
				ws, err := counter.Status(ctx, b)
				if err != nil {
					continue
				}
				for _, w := range ws {
					s := metrics.BudgetSample{Namespace: u.Namespace, Quota: u.QuotaName, User: user, Window: string(w.Limit.Window)}
					s.RemainingTokens, s.RemainingRequests = w.Remaining()
					s.LimitTokens = tightest(w.Limit)
					s.LimitRequests = w.Limit.Requests
					out = append(out, s)
				}
			}
		}
		return out
	}
}

func tightest(l quota.Limit) *int64 {
	var t *int64
	for _, v := range []*int64{l.Tokens, l.InputTokens, l.OutputTokens} {
		if v != nil && (t == nil || *v < *t) {
			t = v
		}
	}
	return t
}
