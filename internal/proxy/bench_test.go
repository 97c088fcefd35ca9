package proxy

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/metrics"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
	"github.com/llm-user-operator/llm-user-operator/internal/token"
)

// The benchmarks compare the proxy's CPU per request with a plain, tuned
// httputil.ReverseProxy doing no auth, quota or accounting, in two ways:
//
//   - *Handler: both handlers called directly with an in-memory upstream and
//     response writer, so the numbers are the handlers' own cost;
//   - *Loopback: real HTTP through loopback servers, client and upstream
//     included (their cost is the same in both arms, so the ratio is smaller).

const benchChatBody = `{"model":"m","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write a haiku about Kubernetes operators and quotas."}],"max_tokens":128,"temperature":0.7}`

var benchStreamBody = strings.Replace(benchChatBody, `"max_tokens"`, `"stream":true,"max_tokens"`, 1)

// memTransport answers every request in memory, like a fast vLLM.
type memTransport struct{ stream bool }

var benchStream = func() string {
	var b strings.Builder
	for i := range 32 {
		ev := streamEvents[1+i%2]
		b.WriteString(ev)
	}
	b.WriteString(usageEvent)
	b.WriteString(doneEvent)
	return b.String()
}()

func (m memTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	if r.URL.Path == "/v1/models" {
		return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}},
			Body: io.NopCloser(strings.NewReader(`{"data":[{"id":"m"}]}`)), Request: r}, nil
	}
	if m.stream {
		return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"text/event-stream"}},
			Body: io.NopCloser(strings.NewReader(benchStream)), ContentLength: -1, Request: r}, nil
	}
	return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}},
		Body: io.NopCloser(strings.NewReader(chatJSON)), ContentLength: int64(len(chatJSON)), Request: r}, nil
}

// discardWriter is a ResponseWriter that drops the body.
type discardWriter struct {
	h    http.Header
	code int
	n    int
}

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) WriteHeader(code int)        { d.code = code }
func (d *discardWriter) Write(p []byte) (int, error) { d.n += len(p); return len(p), nil }
func (d *discardWriter) Flush()                      {}

type nopSink struct{}

func (nopSink) Charge(quota.Charge) {}

func benchProxy(b *testing.B, tr http.RoundTripper, upstreamURL string, arm ...func(*Options)) *Proxy {
	dir := &fakeDirectory{users: map[string]User{}}
	u := aliceUser()
	u.Models = []string{"*"}
	u.MaxTokensPerRequest = ptr[int64](4096)
	u.Budgets = []quota.Budget{quota.UserBudget("team-a", "alice", "uid-alice", []quota.Limit{
		{Window: llmv1alpha1.WindowMinute, Tokens: ptr[int64](1 << 60), Requests: ptr[int64](1 << 60)},
		{Window: llmv1alpha1.WindowMonth, Tokens: ptr[int64](1 << 60)},
	}, false)}
	dir.set(u)
	v := &fakeVerifier{claims: map[string]*token.Claims{alice: {Namespace: "team-a", Name: "alice", UID: "uid-alice", Generation: 2}}}
	opts := Options{
		Verifier: v, Directory: dir, Counter: quota.NewMemory(time.Now), Sink: nopSink{},
		Upstreams: []string{upstreamURL}, Transport: tr,
		Metrics: metrics.New(prometheus.NewRegistry(), metrics.Options{UserLabel: true}),
	}
	for _, f := range arm {
		f(&opts)
	}
	p, err := New(opts)
	if err != nil {
		b.Fatal(err)
	}
	p.RefreshModels(b.Context())
	return p
}

func baselineProxy(tr http.RoundTripper, upstreamURL string) http.Handler {
	target, _ := url.Parse(upstreamURL)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = tr
	rp.BufferPool = bufferPool{}
	return rp
}

type bufferPool struct{}

var bpool = sync.Pool{New: func() any { return make([]byte, 32<<10) }}

func (bufferPool) Get() []byte  { return bpool.Get().([]byte) }
func (bufferPool) Put(b []byte) { bpool.Put(b) } //nolint:staticcheck // a slice header is fine here

func runHandler(b *testing.B, h http.Handler, body string) {
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		w := &discardWriter{h: http.Header{}}
		br := strings.NewReader(body)
		req := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", br)
		req.Header.Set("Authorization", "Bearer "+alice)
		req.Header.Set("Content-Type", "application/json")
		for pb.Next() {
			br.Reset(body)
			req.Body = io.NopCloser(br)
			req.ContentLength = int64(len(body))
			clear(w.h)
			w.code, w.n = 0, 0
			h.ServeHTTP(w, req)
			if w.code != 200 {
				b.Fatalf("status %d", w.code)
			}
		}
	})
}

// BenchmarkProxyNonStreamingHandler has one sub-benchmark per arm, to tell
// the cost of each step: everything, everything through a fair queue that
// never makes a request wait (its own cost: the gate, the flow, the slot),
// no quota (auth, model checks, usage, metrics), no auth (routing, usage,
// metrics).
func BenchmarkProxyNonStreamingHandler(b *testing.B) {
	for _, arm := range []struct {
		name string
		f    func(*Options)
	}{
		{"full", func(*Options) {}},
		{"fair_queue", func(o *Options) { o.FairQueue = FairQueue{MaxInFlight: 1 << 20} }},
		{"no_quota", func(o *Options) { o.DisableQuota = true }},
		{"no_auth", func(o *Options) { o.DisableAuth = true }},
	} {
		b.Run(arm.name, func(b *testing.B) {
			runHandler(b, benchProxy(b, memTransport{}, "http://upstream", arm.f).Handler(), benchChatBody)
		})
	}
}

func BenchmarkReverseProxyBaselineHandler(b *testing.B) {
	runHandler(b, baselineProxy(memTransport{}, "http://upstream"), benchChatBody)
}

func BenchmarkProxyStreamingHandler(b *testing.B) {
	runHandler(b, benchProxy(b, memTransport{stream: true}, "http://upstream").Handler(), benchStreamBody)
}

func BenchmarkReverseProxyBaselineStreamingHandler(b *testing.B) {
	runHandler(b, baselineProxy(memTransport{stream: true}, "http://upstream"), benchStreamBody)
}

// fastUpstream is an in-process HTTP server answering like vLLM, instantly.
func fastUpstream(b *testing.B) *httptest.Server {
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/models" {
			io.WriteString(w, `{"data":[{"id":"m"}]}`)
			return
		}
		body, _ := io.ReadAll(r.Body)
		if bytes.Contains(body, []byte(`"stream":true`)) {
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, benchStream)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, chatJSON)
	}))
	b.Cleanup(s.Close)
	return s
}

func runLoopback(b *testing.B, h http.Handler, body string) {
	front := httptest.NewServer(h)
	b.Cleanup(front.Close)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1024, DisableCompression: true}}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest(http.MethodPost, front.URL+"/v1/chat/completions", strings.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+alice)
			resp, err := client.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Fatalf("status %d", resp.StatusCode)
			}
		}
	})
}

func BenchmarkProxyNonStreaming(b *testing.B) {
	up := fastUpstream(b)
	runLoopback(b, benchProxy(b, NewTransport(Timeouts{}), up.URL).Handler(), benchChatBody)
}

func BenchmarkReverseProxyBaseline(b *testing.B) {
	up := fastUpstream(b)
	runLoopback(b, baselineProxy(NewTransport(Timeouts{}), up.URL), benchChatBody)
}

func BenchmarkProxyStreaming(b *testing.B) {
	up := fastUpstream(b)
	runLoopback(b, benchProxy(b, NewTransport(Timeouts{}), up.URL).Handler(), benchStreamBody)
}

func BenchmarkReverseProxyBaselineStreaming(b *testing.B) {
	up := fastUpstream(b)
	runLoopback(b, baselineProxy(NewTransport(Timeouts{}), up.URL), benchStreamBody)
}
