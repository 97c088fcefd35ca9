package reliability_test

import (
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/llm-user-operator/llm-user-operator/test/harness"
)

// testAPIServerOutage: while the proxy cannot reach the API server it keeps
// serving the users it knows and keeps their usage; once the API server is
// back, status gets all of it, once.
//
// The outage is the proxy's own: its kubeconfig points at an [apiGate] that
// the test cuts and restores, while the operator and the test keep talking
// to the API server directly. Stopping envtest's kube-apiserver instead does
// not work: its Start after Stop provisions a new serving CA and forgets the
// users added with AddUser, so no kubeconfig written before (the proxy's,
// the operator's) would be accepted again, which a real API server restart
// does not do.
func (s *suite) testAPIServerOutage(t *testing.T) {
	t.Parallel()
	gate := newAPIGate(t, s.RestConfig)
	a := s.NewAccount(t, harness.DayTokens(1_000_000))
	p := s.StartProxy(t, "proxy", harness.ProxyConfig{Kubeconfig: gate.kubeconfig(t), Upstream: s.fast.URL,
		Flags: []string{"--flush-interval", "1s"}})
	c := harness.NewClient(p.BaseURL, a.APIKey())

	var l harness.Ledger
	send := func(what string) {
		t.Helper()
		res, err := c.Chat.Completions.New(t.Context(), chatParams("Hello", 16))
		if err != nil {
			t.Fatalf("a request %s: %v", what, err)
		}
		checkUsage(t, "a request "+what, res.Usage, res.JSON.Usage.Valid())
		l.Add(res.Usage)
	}
	for range 5 {
		send("before the outage")
	}
	before := l.Total()
	s.WaitCharged(t, a, before)

	gate.cut()
	cut := time.Now()
	// Three seconds of traffic are three failed flushes.
	for time.Since(cut) < 3*time.Second {
		send("while the API server is unreachable")
		time.Sleep(50 * time.Millisecond)
	}
	during := l.Total().Requests - before.Requests
	// None of it can be in status, and the proxy knows its writes failed
	// and still holds the user's usage.
	harness.CheckCharged(t, s.ReadStatus(t, a), before)
	m := harness.Scrape(t, p.MetricsURL)
	failed, _ := m.Value("llm_proxy_status_writes_total", "kind=LLMUser", "result=error")
	if failed == 0 {
		t.Errorf("llm_proxy_status_writes_total{kind=LLMUser,result=error} is 0 after 3s without the API server: the outage was not noticed")
	}
	if pending, _ := m.Value("llm_proxy_status_pending_objects"); pending != 1 {
		t.Errorf("llm_proxy_status_pending_objects = %v during the outage, want 1 (the user)", pending)
	}

	gate.open(t)
	restored := time.Now()
	s.WaitCharged(t, a, l.Total())
	caughtUp := time.Since(restored)
	for range 3 {
		send("after the outage")
	}
	s.WaitCharged(t, a, l.Total())
	success, _ := harness.Scrape(t, p.MetricsURL).Value("llm_proxy_status_writes_total", "kind=LLMUser", "result=success")
	t.Logf("%d requests served during a %s outage; %v failed status writes; status exact %s after the API server came back; %v successful writes in all; status %+v",
		during, restored.Sub(cut).Round(time.Millisecond), failed, caughtUp.Round(time.Millisecond), success, l.Total())
}

// apiGate stands between a proxy and the API server: a plain-HTTP reverse
// proxy that authenticates upstream with the suite's credentials, and that
// the test can cut and restore.
//
// It works on requests rather than bytes so that a cut is clean: it waits
// for the requests being forwarded (all but watches) to be answered, then
// closes its listener and every connection. A byte-level cut could drop the
// answer to a status patch the API server had applied, which the proxy then
// retries and counts twice: the README's documented known limit, not what
// this test is about.
type apiGate struct {
	addr  string
	proxy *httputil.ReverseProxy

	mu  sync.Mutex
	srv *http.Server // nil while cut
	// inflight counts the forwarded requests other than watches.
	inflight sync.WaitGroup
}

func newAPIGate(t *testing.T, cfg *rest.Config) *apiGate {
	t.Helper()
	target, _, err := rest.DefaultServerUrlFor(cfg)
	if err != nil {
		t.Fatalf("the API server's URL: %v", err)
	}
	tr, err := rest.TransportFor(cfg)
	if err != nil {
		t.Fatalf("a transport to the API server: %v", err)
	}
	g := &apiGate{addr: harness.FreeAddr(t)}
	g.proxy = &httputil.ReverseProxy{
		Rewrite:       func(r *httputil.ProxyRequest) { r.SetURL(target) },
		Transport:     tr,
		FlushInterval: -1, // watches are streams
		ErrorLog:      log.New(io.Discard, "", 0),
	}
	g.open(t)
	t.Cleanup(g.cut)
	return g
}

// kubeconfig writes a kubeconfig that reaches the API server through g.
func (g *apiGate) kubeconfig(t *testing.T) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["gate"] = &clientcmdapi.Cluster{Server: "http://" + g.addr}
	cfg.AuthInfos["gate"] = &clientcmdapi.AuthInfo{}
	cfg.Contexts["gate"] = &clientcmdapi.Context{Cluster: "gate", AuthInfo: "gate"}
	cfg.CurrentContext = "gate"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// open starts serving on g's address (again).
func (g *apiGate) open(t *testing.T) {
	t.Helper()
	var l net.Listener
	var err error
	// The port was ours until the cut; give the kernel a moment if it
	// still holds it.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if l, err = net.Listen("tcp", g.addr); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("the API gate cannot listen on %s again: %v", g.addr, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(g.serve), ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = srv.Serve(l) }()
	g.mu.Lock()
	g.srv = srv
	g.mu.Unlock()
}

// cut makes the API server unreachable through g: new connections are
// refused, open ones (watches included) are closed. Requests being
// forwarded are answered first.
func (g *apiGate) cut() {
	g.mu.Lock()
	srv := g.srv
	g.srv = nil
	g.mu.Unlock()
	if srv == nil {
		return
	}
	g.inflight.Wait()
	_ = srv.Close()
}

func (g *apiGate) serve(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	if g.srv == nil {
		// Cut while this connection was open: it dies without an answer,
		// and the request never reaches the API server.
		g.mu.Unlock()
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				_ = conn.Close()
			}
		}
		return
	}
	if watch := r.URL.Query().Get("watch"); watch != "true" && watch != "1" {
		g.inflight.Add(1)
		defer g.inflight.Done()
	}
	g.mu.Unlock()
	g.proxy.ServeHTTP(w, r)
}
