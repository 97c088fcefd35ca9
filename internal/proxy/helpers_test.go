package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
	"github.com/llm-user-operator/llm-user-operator/internal/token"
)

func ptr[T any](v T) *T { return &v }

// fakeVerifier maps raw tokens to claims or errors.
type fakeVerifier struct {
	claims map[string]*token.Claims
	errs   map[string]error
}

func (f *fakeVerifier) Verify(raw string) (*token.Claims, error) {
	if c, ok := f.claims[raw]; ok {
		return c, nil
	}
	if err, ok := f.errs[raw]; ok {
		return nil, err
	}
	return nil, &token.Error{Reason: token.ReasonMalformed, Err: fmt.Errorf("token is malformed")}
}

// fakeDirectory is a map of users.
type fakeDirectory struct {
	mu    sync.Mutex
	users map[string]User
}

func (d *fakeDirectory) User(ns, name string) (User, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	u, ok := d.users[ns+"/"+name]
	return u, ok
}

func (d *fakeDirectory) Ready() bool { return true }

func (d *fakeDirectory) set(u User) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.users[u.Namespace+"/"+u.Name] = u
}

// recordingSink keeps every charge.
type recordingSink struct {
	mu      sync.Mutex
	charges []quota.Charge
	notify  chan struct{}
}

func newSink() *recordingSink { return &recordingSink{notify: make(chan struct{}, 1024)} }

func (s *recordingSink) Charge(c quota.Charge) {
	s.mu.Lock()
	s.charges = append(s.charges, c)
	s.mu.Unlock()
	s.notify <- struct{}{}
}

func (s *recordingSink) all() []quota.Charge {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]quota.Charge(nil), s.charges...)
}

func (s *recordingSink) wait(t *testing.T) quota.Charge {
	t.Helper()
	select {
	case <-s.notify:
	case <-time.After(5 * time.Second):
		t.Fatal("no charge recorded")
	}
	cs := s.all()
	return cs[len(cs)-1]
}

// fakeUpstream is a vLLM-like server.
type fakeUpstream struct {
	*httptest.Server
	models []string
	// handle, when set, answers API requests instead of the default.
	handle func(w http.ResponseWriter, r *http.Request, body []byte)

	mu       sync.Mutex
	requests []recorded
}

type recorded struct {
	path   string
	header http.Header
	body   []byte
}

func newUpstream(t testing.TB, models ...string) *fakeUpstream {
	f := &fakeUpstream{models: models}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeUpstream) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/v1/models" {
		var data []string
		for _, m := range f.models {
			data = append(data, fmt.Sprintf(`{"id":%q,"object":"model","created":1700000000,"owned_by":"vllm","root":%q,"max_model_len":%d}`, m, m, fakeContext))
		}
		fmt.Fprintf(w, `{"object":"list","data":[%s]}`, strings.Join(data, ","))
		return
	}
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.requests = append(f.requests, recorded{path: r.URL.Path, header: r.Header.Clone(), body: body})
	f.mu.Unlock()
	if f.handle != nil {
		f.handle(w, r, body)
		return
	}
	defaultHandler(w, r, body)
}

func (f *fakeUpstream) last(t *testing.T) recorded {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.requests) == 0 {
		t.Fatal("upstream received no request")
	}
	return f.requests[len(f.requests)-1]
}

func (f *fakeUpstream) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.requests)
}

// Canned answers.
const (
	chatJSON = `{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}`
	embJSON  = `{"id":"embd-1","object":"list","created":1,"model":"m","data":[{"index":0,"object":"embedding","embedding":[0.1,0.2]}],"usage":{"prompt_tokens":5,"total_tokens":5,"completion_tokens":0}}`
)

// streamEvents are what the fake upstream streams (the usage chunk is added
// when asked for), in vLLM's exact framing.
var streamEvents = []string{
	"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
	"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
	"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo \\\"usage\\\": {\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
	": keep-alive comment\r\n\r\n",
	"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"!\"},\"logprobs\":null,\"finish_reason\":\"stop\",\"stop_reason\":null}]}\n\n",
}

// fakeContext is the context length the fake upstream reports, as vLLM
// reports max_model_len.
const fakeContext = 8192

const usageEvent = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"total_tokens\":16,\"completion_tokens\":4}}\n\n"
const doneEvent = "data: [DONE]\n\n"

// streamOptions reports what a request body asks of a stream's usage: the
// final usage chunk, and (vLLM's continuous_usage_stats, which counts only
// with include_usage) usage on every chunk.
func streamOptions(body []byte) (final, continuous bool) {
	var req struct {
		StreamOptions *struct {
			IncludeUsage         bool `json:"include_usage"`
			ContinuousUsageStats bool `json:"continuous_usage_stats"`
		} `json:"stream_options"`
	}
	_ = json.Unmarshal(body, &req)
	if so := req.StreamOptions; so != nil && so.IncludeUsage {
		return true, so.ContinuousUsageStats
	}
	return false, false
}

// withUsage adds usage to a chunk as vLLM's continuous usage stats do: the
// prompt and the tokens generated so far.
func withUsage(ev string, prompt, completion int) string {
	i := strings.LastIndex(ev, "}")
	return ev[:i] + fmt.Sprintf(`,"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}`, prompt, prompt+completion, completion) + ev[i:]
}

func defaultHandler(w http.ResponseWriter, r *http.Request, body []byte) {
	var req struct{ Stream bool }
	req.Stream = bytes.Contains(body, []byte(`"stream":true`)) || bytes.Contains(body, []byte(`"stream":"true"`))
	switch {
	case r.URL.Path == "/v1/embeddings":
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, embJSON)
	case req.Stream:
		w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
		fl := w.(http.Flusher)
		final, continuous := streamOptions(body)
		n := 0
		for _, ev := range streamEvents {
			if continuous && strings.HasPrefix(ev, "data: {") {
				if strings.Contains(ev, `"content":"`) && !strings.Contains(ev, `"content":""`) {
					n++
				}
				ev = withUsage(ev, 12, n)
			}
			io.WriteString(w, ev)
			fl.Flush()
		}
		if final {
			io.WriteString(w, usageEvent)
		}
		io.WriteString(w, doneEvent)
	default:
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, chatJSON)
	}
}

// testNow is the fake clock of every env: 10:00:30 UTC, half-way through a
// minute, so that no test's Minute window rolls over while it runs.
var testNow = time.Date(2026, 5, 1, 10, 0, 30, 0, time.UTC)

func testClock() time.Time { return testNow }

// env is a proxy in front of fake upstreams.
type env struct {
	proxy *Proxy
	srv   *httptest.Server
	dir   *fakeDirectory
	sink  *recordingSink
	mem   *quota.Memory
	ups   []*fakeUpstream
}

const alice = "tok-alice"

func aliceUser() User {
	return User{
		Namespace: "team-a", Name: "alice", UID: "uid-alice", TokenGeneration: 2,
		QuotaFound: true, QuotaName: "gold",
		Budgets: []quota.Budget{quota.UserBudget("team-a", "alice", "uid-alice", []quota.Limit{
			{Window: llmv1alpha1.WindowMinute, Tokens: ptr[int64](100000), Requests: ptr[int64](1000)},
		}, false)},
	}
}

func newEnv(t testing.TB, mutate func(*Options), ups ...*fakeUpstream) *env {
	t.Helper()
	if len(ups) == 0 {
		ups = []*fakeUpstream{newUpstream(t, "meta-llama/Llama-3.1-8B", "qwen/Qwen3-8B")}
	}
	e := &env{
		dir:  &fakeDirectory{users: map[string]User{}},
		sink: newSink(),
		mem:  quota.NewMemory(testClock),
		ups:  ups,
	}
	e.dir.set(aliceUser())
	v := &fakeVerifier{
		claims: map[string]*token.Claims{
			alice: {Namespace: "team-a", Name: "alice", UID: "uid-alice", Generation: 2},
		},
		errs: map[string]error{},
	}
	var urls []string
	for _, u := range ups {
		urls = append(urls, u.URL)
	}
	opts := Options{Verifier: v, Directory: e.dir, Counter: e.mem, Sink: e.sink, Upstreams: urls, Now: testClock}
	if mutate != nil {
		mutate(&opts)
	}
	p, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	p.RefreshModels(t.Context())
	e.proxy = p
	e.srv = httptest.NewServer(p.Handler())
	t.Cleanup(e.srv.Close)
	return e
}

func (e *env) verifier() *fakeVerifier { return e.proxy.verifier.(*fakeVerifier) }

// do sends a request with alice's token unless tok is given.
func (e *env) do(t testing.TB, method, path, body string, tok ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	k := alice
	if len(tok) > 0 {
		k = tok[0]
	}
	if k != "" {
		req.Header.Set("Authorization", "Bearer "+k)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// apiErr is the OpenAI error body.
type apiErr struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	} `json:"error"`
}

func readErr(t testing.TB, resp *http.Response) apiErr {
	t.Helper()
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e apiErr
	if err := json.Unmarshal(b, &e); err != nil || e.Error.Message == "" {
		t.Fatalf("not an OpenAI error (%v): %s", err, b)
	}
	return e
}

func readAll(t testing.TB, resp *http.Response) []byte {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return b
}

func str(p *string) string {
	if p == nil {
		return "<null>"
	}
	return *p
}

func expectStatus(t testing.TB, resp *http.Response, want int) {
	t.Helper()
	if resp.StatusCode != want {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("status = %d, want %d; body: %s", resp.StatusCode, want, bytes.TrimSpace(b))
	}
}

const chatBody = `{"model":"meta-llama/Llama-3.1-8B","messages":[{"role":"user","content":"Hello"}]}`
