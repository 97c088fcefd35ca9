package metrics

import (
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// observeMix records requests of every kind that makes a per-user series:
// chat and embeddings (no output series), priced and not, two models, two
// namespaces, a model name that needs escaping, a refusal and a budget.
func observeMix(m *Metrics) {
	for i := range 40 {
		model := []string{"llama", "org/mo\"de\\l\n2"}[i%2]
		op := []string{OperationChat, OperationEmbeddings, OperationTextCompletion}[i%3]
		r := Request{Namespace: fmt.Sprintf("team-%d", i%2), User: fmt.Sprintf("user-%02d", i%13), Model: model, Operation: op,
			Code: 200, InputTokens: int64(10 + i), OutputTokens: int64(i * 1000), Duration: time.Duration(i) * time.Millisecond}
		if op == OperationEmbeddings {
			r.OutputTokens = 0
		}
		if i%4 == 0 {
			r.Currency, r.Cost = "EUR", int64(i)*1_250_000_000
		}
		m.ObserveRequest(r)
	}
	m.ObserveRequest(Request{Namespace: "team-0", Model: "", Code: 401})
	m.Reject("team-1", "user-03", ReasonRateLimit)
}

func scrape(t *testing.T, h http.Handler, encoding string) (*http.Response, string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	if encoding != "" {
		req.Header.Set("Accept-Encoding", encoding)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	resp := w.Result()
	body := io.Reader(resp.Body)
	if resp.Header.Get("Content-Encoding") == "gzip" {
		gz, err := gzip.NewReader(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		body = gz
	}
	b, err := io.ReadAll(body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// TestHandlerWritesWhatTheRegistryWrites: with the per-user counters
// written directly, a scrape is byte for byte the registry's own text of
// the same requests, every family in its place, gzipped or not.
func TestHandlerWritesWhatTheRegistryWrites(t *testing.T) {
	regReg := prometheus.NewPedanticRegistry()
	observeMix(New(regReg, Options{UserLabel: true}))
	directReg := prometheus.NewPedanticRegistry()
	direct := New(directReg, Options{UserLabel: true, DirectUsers: true})
	observeMix(direct)

	_, want := scrape(t, promhttp.HandlerFor(regReg, promhttp.HandlerOpts{}), "identity")
	for _, name := range []string{"llm_proxy_requests_total", "llm_proxy_tokens_total", "llm_user_cost_total", `model="org/mo\"de\\l\n2"`} {
		if !strings.Contains(want, name) {
			t.Fatalf("the registry's scrape has no %s: the test observes too little", name)
		}
	}
	for _, enc := range []string{"identity", "gzip, deflate"} {
		resp, got := scrape(t, direct.Handler(directReg), enc)
		if got != want {
			t.Errorf("Accept-Encoding %s: the direct scrape differs from the registry's:\n%s", enc, firstDiff(got, want))
		}
		if ct := resp.Header.Get("Content-Type"); ct != "text/plain; version=0.0.4; charset=utf-8" {
			t.Errorf("Content-Type %q", ct)
		}
		if ce, wantCE := resp.Header.Get("Content-Encoding"), map[string]string{"identity": "", "gzip, deflate": "gzip"}[enc]; ce != wantCE {
			t.Errorf("Accept-Encoding %s: Content-Encoding %q, want %q", enc, ce, wantCE)
		}
	}
}

// TestHandlerUsers: the per-user families as a scraper reads them, and
// only once; with nobody charged, none.
func TestHandlerUsers(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg, Options{UserLabel: true, DirectUsers: true})
	if _, got := scrape(t, m.Handler(reg), ""); strings.Contains(got, "llm_proxy_requests_total") || strings.Contains(got, "llm_proxy_tokens_total") {
		t.Errorf("a scrape before any request has per-user families:\n%s", got)
	}
	m.ObserveRequest(Request{Namespace: "ns", User: "alice", Model: "m", Operation: OperationChat, Code: 200,
		InputTokens: 12, OutputTokens: 2_500_000, Currency: "USD", Cost: 1_500_000_000_000})
	m.ObserveRequest(Request{Namespace: "ns", User: "bob", Model: "m", Operation: OperationEmbeddings, Code: 200, InputTokens: 7})
	_, got := scrape(t, m.Handler(reg), "")
	var users []string
	for line := range strings.Lines(got) {
		if strings.HasPrefix(line, "llm_proxy_requests_total") || strings.HasPrefix(line, "llm_proxy_tokens_total") ||
			strings.HasPrefix(line, "llm_user_cost_total") || strings.HasPrefix(line, "# TYPE llm_proxy_requests") ||
			strings.HasPrefix(line, "# TYPE llm_proxy_tokens") || strings.HasPrefix(line, "# TYPE llm_user_cost") {
			users = append(users, line)
		}
	}
	want := `# TYPE llm_proxy_requests_total counter
llm_proxy_requests_total{model="m",namespace="ns",user="alice"} 1
llm_proxy_requests_total{model="m",namespace="ns",user="bob"} 1
# TYPE llm_proxy_tokens_total counter
llm_proxy_tokens_total{model="m",namespace="ns",type="input",user="alice"} 12
llm_proxy_tokens_total{model="m",namespace="ns",type="input",user="bob"} 7
llm_proxy_tokens_total{model="m",namespace="ns",type="output",user="alice"} 2.5e+06
# TYPE llm_user_cost_total counter
llm_user_cost_total{currency="USD",model="m",namespace="ns",user="alice"} 1.5
`
	if strings.Join(users, "") != want {
		t.Errorf("per-user lines:\n%s\nwant:\n%s", strings.Join(users, ""), want)
	}
}

// firstDiff shows where a and b part.
func firstDiff(a, b string) string {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	from := max(0, i-200)
	return fmt.Sprintf("got  …%q\nwant …%q", a[from:min(len(a), i+200)], b[from:min(len(b), i+200)])
}

// TestHandlerSeesNewAndForgottenUsers: the order kept between scrapes is
// built again when a user makes a first request, is priced, or is
// forgotten.
func TestHandlerSeesNewAndForgottenUsers(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg, Options{UserLabel: true, DirectUsers: true})
	h := m.Handler(reg)
	chat := func(user string, cost int64) {
		r := Request{Namespace: "ns", User: user, Model: "m", Operation: OperationChat, Code: 200, InputTokens: 1, OutputTokens: 1}
		if cost > 0 {
			r.Currency, r.Cost = "EUR", cost
		}
		m.ObserveRequest(r)
	}
	requestsOf := func() string {
		_, page := scrape(t, h, "")
		var users []string
		for line := range strings.Lines(page) {
			if rest, ok := strings.CutPrefix(line, `llm_proxy_requests_total{model="m",namespace="ns",user="`); ok {
				users = append(users, strings.TrimSuffix(rest, "\n"))
			}
			if rest, ok := strings.CutPrefix(line, `llm_user_cost_total{currency="EUR",model="m",namespace="ns",user="`); ok {
				users = append(users, "cost:"+strings.TrimSuffix(rest, "\n"))
			}
		}
		return strings.Join(users, " ")
	}
	chat("bob", 0)
	if got, want := requestsOf(), `bob"} 1`; got != want {
		t.Errorf("first scrape: %s, want %s", got, want)
	}
	chat("alice", 0)
	chat("bob", 0)
	if got, want := requestsOf(), `alice"} 1 bob"} 2`; got != want {
		t.Errorf("after alice's first request: %s, want %s", got, want)
	}
	chat("carol", 2_000_000_000_000)
	if got, want := requestsOf(), `alice"} 1 bob"} 2 carol"} 1 cost:carol"} 2`; got != want {
		t.Errorf("after carol's priced request: %s, want %s", got, want)
	}
	m.ForgetUser("ns", "alice")
	if got, want := requestsOf(), `bob"} 2 carol"} 1 cost:carol"} 2`; got != want {
		t.Errorf("after alice was forgotten: %s, want %s", got, want)
	}
}
