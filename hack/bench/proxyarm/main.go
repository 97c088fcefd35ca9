// Command proxyarm runs one arm of the proxy benchmark as a process of its
// own, so that the load generator can pin it to a core and read its CPU time
// and memory from /proc:
//
//   - reverseproxy: a plain httputil.ReverseProxy on the proxy's own upstream
//     transport ([proxy.NewTransport]) and a pooled 32 KiB copy buffer: the
//     floor any Go proxy pays. It declares itself full duplex: otherwise
//     net/http discards the unread rest of a request body when the response
//     starts, racing the transport still sending it, and about one stream in
//     a hundred breaks;
//   - full: [proxy.New] as production builds it: a real, caching
//     [token.Verifier], a Directory of --users users (a map behind a RWMutex,
//     as the informer-backed one is), a generous quota (Minute and Day
//     windows that never refuse) kept by [quota.NewMemory], metrics on a
//     registry, and a Sink that counts the charges it receives;
//   - noauth: [proxy.New] with DisableAuth: no token, no user, no quota; the
//     body is still parsed, the stream still relayed event by event and the
//     usage still read and counted in the metrics.
//
// Once the proxy has listed the upstream's models it writes the full arm's
// tokens (one a line) to --token-file and prints one JSON line to stdout:
// {"addr":"127.0.0.1:…","stats":"127.0.0.1:…"}. GET http://<stats>/ answers
// the charges the Sink received, so the harness can check that the full arm
// really accounted for every request; /memstats says where the memory is,
// and /debug/pprof/ profiles the arm under the harness's load.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/http/pprof"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/metrics"
	"github.com/llm-user-operator/llm-user-operator/internal/proxy"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
	"github.com/llm-user-operator/llm-user-operator/internal/token"
)

// The claims the full arm's verifier requires, as production's does.
const (
	issuer   = "https://llm-user-operator.bench.svc"
	audience = "llm-user-proxy"
)

type options struct {
	arm       string
	upstream  string
	listen    string
	stats     string
	users     int
	tokenFile string
	// maxInFlight, when positive, puts the fair queue in front of the
	// upstream (the full arm only).
	maxInFlight int
	// reserved is the fair queue's slots for users with nothing running.
	reserved int
	// softUsers are the last users of the full arm whose daily limit is a
	// soft limit of zero requests: every request of theirs is overflow.
	softUsers int
}

func main() {
	var o options
	flag.StringVar(&o.arm, "arm", "", "reverseproxy, full or noauth")
	flag.StringVar(&o.upstream, "upstream", "", "base URL of the upstream, e.g. http://127.0.0.1:8000")
	flag.StringVar(&o.listen, "listen", "127.0.0.1:0", "address of the proxied API")
	flag.StringVar(&o.stats, "stats-listen", "127.0.0.1:0", "address of the charge counters")
	flag.IntVar(&o.users, "users", 100, "users (and tokens) of the full arm")
	flag.StringVar(&o.tokenFile, "token-file", "", "where the full arm writes its tokens, one a line")
	flag.IntVar(&o.maxInFlight, "max-in-flight", 0, "the full arm's fair queue: requests at once on the upstream (0: no queue)")
	flag.IntVar(&o.reserved, "reserved-slots", 0, "the full arm's fair queue: slots only a user with nothing running may take")
	flag.IntVar(&o.softUsers, "soft-users", 0, "the last users of the full arm past a soft limit (overage: Demote): their every request is overflow")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "proxyarm:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options, stdout io.Writer) error {
	if o.upstream == "" {
		return errors.New("--upstream is required")
	}
	sink := &countingSink{}
	var (
		h     http.Handler
		ready = func() bool { return true }
	)
	switch o.arm {
	case "reverseproxy":
		target, err := url.Parse(o.upstream)
		if err != nil {
			return err
		}
		rp := &httputil.ReverseProxy{
			Rewrite:    func(r *httputil.ProxyRequest) { r.SetURL(target) },
			Transport:  proxy.NewTransport(proxy.Timeouts{}),
			BufferPool: bufferPool{},
		}
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_ = http.NewResponseController(w).EnableFullDuplex()
			rp.ServeHTTP(w, r)
		})
	case "full", "noauth":
		opts := proxy.Options{
			Upstreams: []string{o.upstream},
			Sink:      sink,
			Metrics:   metrics.New(prometheus.NewRegistry(), metrics.Options{UserLabel: true}),
			Logger:    logr.Discard(),
		}
		if o.arm == "noauth" {
			opts.DisableAuth = true
		} else {
			v, dir, tokens, err := users(o.users, o.softUsers)
			if err != nil {
				return err
			}
			opts.Verifier, opts.Directory, opts.Counter = v, dir, quota.NewMemory(time.Now)
			if o.maxInFlight > 0 {
				opts.FairQueue = proxy.FairQueue{MaxInFlight: o.maxInFlight, Reserved: o.reserved, QueueTimeout: 10 * time.Minute, MaxQueued: 100000, MaxQueuedPerFlow: 100000}
			}
			if o.tokenFile == "" {
				return errors.New("--token-file is required for the full arm")
			}
			if err := os.WriteFile(o.tokenFile, []byte(strings.Join(tokens, "\n")+"\n"), 0o600); err != nil {
				return err
			}
		}
		p, err := proxy.New(opts)
		if err != nil {
			return err
		}
		go func() { _ = p.Start(ctx) }()
		h, ready = p.Handler(), p.Ready
	default:
		return fmt.Errorf("unknown --arm %q: use reverseproxy, full or noauth", o.arm)
	}

	api, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	stats, err := net.Listen("tcp", o.stats)
	if err != nil {
		_ = api.Close()
		return err
	}
	// The same server settings as production's (internal/proxyserver).
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second}
	ops := http.NewServeMux()
	ops.Handle("/", sink)
	ops.HandleFunc("/memstats", serveMemStats)
	ops.HandleFunc("/debug/pprof/", pprof.Index)
	ops.HandleFunc("/debug/pprof/profile", pprof.Profile)
	statsSrv := &http.Server{Handler: ops, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(api) }()
	go func() { errc <- statsSrv.Serve(stats) }()

	deadline := time.Now().Add(30 * time.Second)
	for !ready() {
		if time.Now().After(deadline) {
			return errors.New("the proxy listed no upstream models within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	line, _ := json.Marshal(map[string]string{"addr": api.Addr().String(), "stats": stats.Addr().String()})
	if _, err := fmt.Fprintf(stdout, "%s\n", line); err != nil {
		return err
	}

	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdown)
	_ = statsSrv.Shutdown(shutdown)
	return nil
}

// users returns a verifier trusting one fresh key, a directory of n users
// with a quota that never refuses, and one token per user. The last soft
// users have a soft daily limit of no requests (overage: Demote): every
// request of theirs is admitted as overflow.
func users(n, soft int) (*token.Verifier, *directory, []string, error) {
	if n < 1 {
		return nil, nil, nil, errors.New("--users must be at least 1")
	}
	now := time.Now()
	key, err := token.GenerateKey(now)
	if err != nil {
		return nil, nil, nil, err
	}
	v := token.NewVerifier(token.VerifierOptions{Issuer: issuer, Audience: audience})
	v.SetKeys([]token.Key{key})
	iss := &token.Issuer{Key: key, Issuer: issuer, Audience: audience}
	dir := &directory{users: make(map[string]proxy.User, n)}
	big := func(v int64) *int64 { return &v }
	tokens := make([]string, 0, n)
	for i := range n {
		ns, name, uid := "bench", fmt.Sprintf("user-%04d", i), fmt.Sprintf("00000000-0000-4000-8000-%012d", i)
		tok, _, err := iss.Issue(token.IssueRequest{Namespace: ns, Name: name, UID: uid, Generation: 1, TTL: 4 * time.Hour})
		if err != nil {
			return nil, nil, nil, err
		}
		tokens = append(tokens, tok)
		day := quota.Limit{Window: llmv1alpha1.WindowDay, Tokens: big(1 << 55)}
		if i >= n-soft {
			day = quota.Limit{Window: llmv1alpha1.WindowDay, Requests: big(0), Soft: true}
		}
		dir.users[ns+"/"+name] = proxy.User{
			Namespace: ns, Name: name, UID: uid, TokenGeneration: 1,
			QuotaFound: true, QuotaName: "bench", FairnessID: proxy.FairnessID(ns, name, "bench", false),
			Models:              []string{"bench/*"},
			MaxTokensPerRequest: big(4096),
			Budgets: []quota.Budget{quota.UserBudget(ns, name, uid, []quota.Limit{
				{Window: llmv1alpha1.WindowMinute, Tokens: big(1 << 50), Requests: big(1 << 40)},
				day,
			}, false)},
		}
	}
	return v, dir, tokens, nil
}

// directory is a fixed set of users looked up the way the informer-backed
// Directory of internal/proxyserver does: a map under a read lock.
type directory struct {
	mu    sync.RWMutex
	users map[string]proxy.User
}

func (d *directory) User(namespace, name string) (proxy.User, bool) {
	d.mu.RLock()
	u, ok := d.users[namespace+"/"+name]
	d.mu.RUnlock()
	return u, ok
}

func (d *directory) Ready() bool { return true }

// countingSink receives every charge and keeps only the totals: the
// production sink's batching is not on the request path.
type countingSink struct {
	charges, requests, input, output atomic.Int64
}

func (s *countingSink) Charge(c quota.Charge) {
	s.charges.Add(1)
	s.requests.Add(c.Amount.Requests)
	s.input.Add(c.Amount.InputTokens)
	s.output.Add(c.Amount.OutputTokens)
}

func (s *countingSink) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]int64{
		"charges": s.charges.Load(), "requests": s.requests.Load(),
		"input_tokens": s.input.Load(), "output_tokens": s.output.Load(),
	})
}

// serveMemStats answers where the process's memory is: heap and goroutine
// stacks in use, and goroutines, so that the harness can say what a stream
// costs.
func serveMemStats(w http.ResponseWriter, _ *http.Request) {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]uint64{
		"heap_inuse": m.HeapInuse, "stack_inuse": m.StackInuse, "sys": m.Sys,
		"goroutines": uint64(runtime.NumGoroutine()), "num_gc": uint64(m.NumGC),
	})
}

// bufferPool lends httputil.ReverseProxy 32 KiB copy buffers, the size the
// proxy's own relay uses.
type bufferPool struct{}

var buffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (bufferPool) Get() []byte  { return *buffers.Get().(*[]byte) }
func (bufferPool) Put(b []byte) { buffers.Put(&b) }
