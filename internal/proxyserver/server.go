// Package proxyserver runs the proxy process: informers on LLMUsers, LLMQuotas
// and the published JWKS, the request path of package proxy, the quota
// counters (in-process or Redis), the batched usage write-back, metrics and
// probes on their own port, and a graceful shutdown that charges and flushes
// everything in flight.
package proxyserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	toolscache "k8s.io/client-go/tools/cache"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	apischeme "github.com/llm-user-operator/llm-user-operator/api/scheme"
	"github.com/llm-user-operator/llm-user-operator/internal/metrics"
	"github.com/llm-user-operator/llm-user-operator/internal/openaiapi"
	"github.com/llm-user-operator/llm-user-operator/internal/proxy"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
	"github.com/llm-user-operator/llm-user-operator/internal/token"
	"github.com/llm-user-operator/llm-user-operator/internal/usage"
)

// +kubebuilder:rbac:groups=llm.userops.dev,resources=llmusers;llmquotas,verbs=get;list;watch
// +kubebuilder:rbac:groups=llm.userops.dev,resources=llmusers/status;llmquotas/status,verbs=get;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Run serves until ctx is done, then drains in-flight requests for up to
// ShutdownGrace, charges what they produced and flushes usage before
// returning. Every long-running part runs in one errgroup: the first to
// fail stops the rest, and its error is returned.
func Run(ctx context.Context, o Options) error {
	if err := o.Validate(); err != nil {
		return err
	}
	if o.Logger.GetSink() == nil {
		o.Logger = ctrl.Log.WithName("proxy")
	}
	log := o.Logger
	if soft := applyMemoryLimit(o.MemoryLimit); soft > 0 {
		log.Info("Go memory limit set below the container's", "bytes", soft)
	}
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
	// The per-user counters are written straight into each scrape, not
	// through the registry: at 50,000 users that is most of a scrape.
	m := metrics.New(reg, metrics.Options{UserLabel: o.UserLabel, UserBudgets: metrics.BudgetMode(o.UserBudgets), DirectUsers: true})

	store, closeCounter, err := newCounter(o)
	if err != nil {
		return err
	}
	defer closeCounter()
	var reseed func(context.Context) error
	rs, shared := store.(*quota.Redis)
	if shared {
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

	// The in-process counter counts this replica's requests only: before
	// each write it merges what another (the other pod of a rolling update)
	// recorded in status.
	replica, _ := store.(quota.Replica)
	var owners *usage.RedisOwners
	if shared {
		// One writer per object: the replicas share the counters, so any
		// of them can write a user's status, and its owner alone does.
		owners = usage.NewRedisOwners(rs.Client(), "llmq:", replicaID(), o.RedisLease, time.Now)
		// A replica killed before it sent its last marks: they are found
		// in the counter, recorded with the charges.
		owners.RecoverWith(rs.Recent)
	}
	rec := usage.New(writer, usage.Options{
		Counter: counter, Replica: replica, Reader: c, APIReader: writer, Owners: ownersOption(owners),
		FlushInterval: o.FlushInterval, WriteRate: o.StatusWriteRate, Registerer: reg, Logger: log.WithName("usage"),
		Observe: func(b *quota.Budget, quotaName string, ws []quota.WindowStatus) {
			for _, w := range ws {
				proxy.ObserveWindow(m, b, quotaName, w)
			}
		},
	})
	notices, err := newDryRunEvents(cfg, scheme)
	if err != nil {
		return err
	}

	p, err := proxy.New(proxy.Options{
		Verifier: verifier, Directory: dir, Counter: counter, Sink: rec, DryRun: notices,
		Upstreams: o.Upstreams, UpstreamsFile: o.UpstreamsFile,
		MaxRequestBody: o.MaxRequestBody, MaxBodyMemory: o.MaxBodyMemory, MaxBodyMemoryPerUser: o.MaxBodyMemoryPerUser,
		DefaultMaxTokens: o.DefaultMaxTokens, MediaItemTokens: o.MediaItemTokens, KVTransferUpstreams: o.KVTransferUpstreams,
		FairQueue: fairQueue(o.FairQueue, store), InferenceObjectivePrefix: o.InferenceObjectivePrefix,
		Timeouts: proxy.Timeouts{
			ResponseHeader: o.UpstreamHeaderTimeout, StreamIdle: o.StreamIdleTimeout,
			BodyRead: o.BodyReadTimeout, Write: o.WriteTimeout,
		},
		Metrics: m, Logger: log, DisableQuota: o.DisableQuota,
	})
	if err != nil {
		return err
	}

	// Background parts stop after the API server has drained, so that the
	// requests in flight still find the counters, the users and the keys.
	bgCtx, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBackground()
	bg, bgCtx := errgroup.WithContext(bgCtx)
	bg.Go(func() error { return c.Start(bgCtx) })
	bg.Go(func() error { return p.Start(bgCtx) })
	bg.Go(func() error { return p.RetrySettles(bgCtx) })
	bg.Go(func() error { return rec.Start(bgCtx) })
	bg.Go(func() error { notices.run(bgCtx); return nil })
	if shared {
		bg.Go(func() error { return rs.Start(bgCtx) })
	}

	if err := start(ctx, c, rec, store, writer); err != nil {
		stopBackground()
		return errors.Join(err, bg.Wait())
	}

	srv, err := newServers(o, p, dir, keysLoaded, m.Handler(reg.(prometheus.Gatherer)), log)
	if err != nil {
		stopBackground()
		return errors.Join(err, bg.Wait())
	}
	serveErr := srv.serve(ctx, bgCtx)

	// Every request has settled: write what they cost, then stop.
	stopBackground()
	bgErr := bg.Wait()
	flushCtx, cancelFlush := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancelFlush()
	if n := p.SettleKept(flushCtx); n > 0 {
		log.Error(nil, "stopping with requests the quota store never took; their usage is lost", "requests", n)
	}
	if err := rec.Flush(flushCtx); err != nil {
		log.Error(err, "final usage flush incomplete")
		serveErr = errors.Join(serveErr, err)
	}
	if owners != nil {
		// What was charged since the flush goes to the other replicas.
		if err := owners.Leave(flushCtx); err != nil {
			log.Error(err, "handing this replica's status writes to the others failed; they take them when its lease expires")
		}
	}
	srv.stopOps(flushCtx)
	if errors.Is(bgErr, context.Canceled) {
		bgErr = nil
	}
	return errors.Join(serveErr, bgErr)
}

// start waits for the informer caches and seeds the counters from status.
func start(ctx context.Context, c cache.Cache, rec *usage.Recorder, store quota.Counter, r client.Reader) error {
	syncCtx, cancelSync := context.WithTimeout(ctx, 2*time.Minute)
	synced := c.WaitForCacheSync(syncCtx)
	cancelSync()
	if !synced {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("informer caches did not sync within 2m")
	}
	if err := usage.SeedFromStatus(ctx, store, r, time.Now()); err != nil {
		return fmt.Errorf("seeding counters from status: %w", err)
	}
	if rs, ok := store.(*quota.Redis); ok {
		if err := rs.MarkSeeded(ctx); err != nil {
			return fmt.Errorf("marking the shared counters seeded: %w", err)
		}
	}
	return nil
}

// servers are the API and the ops (metrics, probes) HTTP servers.
type servers struct {
	api, ops        *http.Server
	apiL, opsL      net.Listener
	grace           time.Duration
	log             logr.Logger
	inflight        sync.WaitGroup
	errc            chan error
	upstreamsLogged []string
	// cut ends the upstream requests that outlive their client (a
	// non-streamed answer read to its usage) once the grace is over.
	cut func()
}

func newServers(o Options, p *proxy.Proxy, dir *Directory, keysLoaded chan struct{}, metricsHandler http.Handler, log logr.Logger) (*servers, error) {
	s := &servers{grace: o.ShutdownGrace, log: log, errc: make(chan error, 2), upstreamsLogged: o.Upstreams, cut: p.CutRequests}
	api := http.NewServeMux()
	if o.RefreshURL != "" {
		rp, err := refreshHandler(o.RefreshURL, log)
		if err != nil {
			return nil, err
		}
		api.Handle("/auth/refresh", rp)
	}
	api.Handle("/", p.Handler())
	keysReady := func() bool {
		select {
		case <-keysLoaded:
			return true
		default:
			return false
		}
	}
	ops := http.NewServeMux()
	ops.Handle("/metrics", metricsHandler)
	ops.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	ops.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !dir.Ready() || !keysReady() || !p.Ready() {
			http.Error(w, "caches, keys or upstream models not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	// The API server's own timeouts bound what comes before a handler (the
	// headers) and between requests (idle keep-alive); the body and every
	// write of the answer have deadlines of their own in package proxy, so
	// that a long stream is not cut by a whole-request timeout.
	s.api = &http.Server{
		Handler:           s.track(api),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       o.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
	}
	s.ops = &http.Server{Handler: ops, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: o.IdleTimeout}
	var err error
	if s.apiL, err = net.Listen("tcp", o.ListenAddr); err != nil {
		return nil, err
	}
	if s.opsL, err = net.Listen("tcp", o.MetricsAddr); err != nil {
		_ = s.apiL.Close()
		return nil, err
	}
	return s, nil
}

// track counts the handlers running, so that shutdown can wait for the
// last one to settle even after the grace period closed its connection.
func (s *servers) track(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.inflight.Add(1)
		defer s.inflight.Done()
		h.ServeHTTP(w, r)
	})
}

// serve runs both servers until ctx is done or one fails, then stops
// accepting, lets in-flight requests (streams too) finish for the grace
// period, closes what is left and waits for every handler to settle its
// request. bgCtx ending (a background part failed) stops it too.
func (s *servers) serve(ctx, bgCtx context.Context) error {
	go func() { s.errc <- s.api.Serve(s.apiL) }()
	go func() { s.errc <- s.ops.Serve(s.opsL) }()
	s.log.Info("serving", "api", s.apiL.Addr().String(), "metrics", s.opsL.Addr().String(), "upstreams", s.upstreamsLogged)

	var serveErr error
	select {
	case <-ctx.Done():
	case <-bgCtx.Done():
	case serveErr = <-s.errc:
	}
	shutdown, cancel := context.WithTimeout(context.Background(), s.grace)
	defer cancel()
	if err := s.api.Shutdown(shutdown); err != nil {
		s.log.Info("grace period over, closing remaining connections", "err", err.Error())
		_ = s.api.Close()
		s.cut()
	}
	// A closed connection cancels its request, whose handler then settles
	// what was generated so far: wait for them all.
	s.inflight.Wait()
	if errors.Is(serveErr, http.ErrServerClosed) {
		serveErr = nil
	}
	return serveErr
}

func (s *servers) stopOps(ctx context.Context) { _ = s.ops.Shutdown(ctx) }

// ownersOption keeps a nil *RedisOwners from becoming a non-nil interface.
func ownersOption(o *usage.RedisOwners) usage.Owners {
	if o == nil {
		return nil
	}
	return o
}

// replicaID names this replica among the writers: the pod's name (the
// Deployment sets HOSTNAME to it) and a random suffix, so that a pod
// restarted under the same name is a new replica.
func replicaID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	host, _ := os.Hostname()
	return host + "-" + hex.EncodeToString(b[:])
}

// fairQueue is the fair queue's configuration: with the Redis counter, the
// replicas share their virtual token counters through it.
func fairQueue(fq proxy.FairQueue, store quota.Counter) proxy.FairQueue {
	if rs, ok := store.(*quota.Redis); ok {
		fq.Shared = proxy.NewRedisCounters(rs.Client(), "llmq:fairq:", 0)
	}
	return fq
}

func newCounter(o Options) (quota.Counter, func(), error) {
	switch o.Counter {
	case "memory":
		return quota.NewMemory(time.Now), func() {}, nil
	case "redis":
		rc, err := newRedisClient(o)
		if err != nil {
			return nil, nil, err
		}
		c := quota.NewRedis(rc, quota.RedisOptions{Prefix: "llmq:", Lease: o.RedisLease, Cluster: o.RedisMode == "cluster"})
		return c, func() { _ = rc.Close() }, nil
	default:
		return nil, nil, fmt.Errorf("unknown counter %q: use memory or redis", o.Counter)
	}
}

// newRedisClient is the client of o's Redis, in its mode.
func newRedisClient(o Options) (redis.UniversalClient, error) {
	tc, dial, err := redisTLS(o)
	if err != nil {
		return nil, err
	}
	switch o.RedisMode {
	case "cluster":
		return redis.NewClusterClient(&redis.ClusterOptions{Addrs: o.RedisAddrs, Password: o.RedisPassword, TLSConfig: tc, Dialer: dial}), nil
	case "sentinel":
		return redis.NewFailoverClient(&redis.FailoverOptions{MasterName: o.RedisMasterName, SentinelAddrs: o.RedisAddrs,
			SentinelPassword: o.RedisSentinelPassword, Password: o.RedisPassword, TLSConfig: tc, Dialer: dial}), nil
	}
	return redis.NewClient(&redis.Options{Addr: o.RedisAddr, Password: o.RedisPassword, TLSConfig: tc, Dialer: dial}), nil
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

// refreshHandler forwards POST /auth/refresh to the operator at refreshURL,
// so a client that knows only OPENAI_BASE_URL finds it beside /v1.
func refreshHandler(refreshURL string, log logr.Logger) (http.Handler, error) {
	u, err := url.Parse(refreshURL)
	if err != nil {
		return nil, fmt.Errorf("refresh URL: %w", err)
	}
	return &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.Out.URL.Path = u.Path
		},
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			// In OpenAI's shape, as every other answer of the proxy, not
			// the reverse proxy's empty 502.
			log.Error(err, "Forwarding POST /auth/refresh to the operator failed", "url", refreshURL)
			openaiapi.WriteError(w, http.StatusBadGateway, openaiapi.TypeServer, openaiapi.CodeUpstreamUnavailable, "",
				"The operator, which issues tokens, could not be reached; retry shortly.")
		},
	}, nil
}
