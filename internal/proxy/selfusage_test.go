package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/redis/go-redis/v9"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/openapi"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/redisserver"
)

// usageDoc is the OpenAPI document every reply of GET /v1/usage is
// validated against.
var usageDoc = sync.OnceValues(openapi.Load)

// documented reads resp and fails t unless the OpenAPI document describes
// it (status, content type, headers, body).
func documented(t *testing.T, method, path string, resp *http.Response) []byte {
	t.Helper()
	d, err := usageDoc()
	if err != nil {
		t.Fatal(err)
	}
	r, err := openapi.Read(resp)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Validate(method, path, r); err != nil {
		t.Error(err)
	}
	return r.Body
}

// getUsage answers GET /v1/usage for alice (or tok), requiring 200 and a
// reply as documented.
func (e *env) getUsage(t *testing.T, tok ...string) (Usage, http.Header, []byte) {
	t.Helper()
	resp := e.do(t, http.MethodGet, "/v1/usage", "", tok...)
	expectStatus(t, resp, http.StatusOK)
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control = %q, want no-store: the reply is one user's", cc)
	}
	b := documented(t, http.MethodGet, "/v1/usage", resp)
	var u Usage
	if err := json.Unmarshal(b, &u); err != nil {
		t.Fatalf("GET /v1/usage: %v: %s", err, b)
	}
	return u, resp.Header, b
}

// expiring gives alice's token an expiry a day after testNow.
func expiring(e *env) {
	e.verifier().claims[alice].ExpiresAt = jwt.NewNumericDate(testNow.Add(24 * time.Hour))
}

// TestUsageReply: after a completion and a stream, the reply is exactly the
// documented shape with what the upstream reported.
func TestUsageReply(t *testing.T) {
	e := newEnv(t, nil)
	expiring(e)
	resp := e.do(t, http.MethodPost, "/v1/chat/completions", chatBody) // 11 + 7
	expectStatus(t, resp, http.StatusOK)
	readAll(t, resp)
	resp = e.do(t, http.MethodPost, "/v1/chat/completions",
		`{"model":"qwen/Qwen3-8B","messages":[],"stream":true,"stream_options":{"include_usage":true}}`) // 12 + 4
	expectStatus(t, resp, http.StatusOK)
	readAll(t, resp)

	_, h, body := e.getUsage(t)
	want := `{"object":"llm.usage","version":"v1",
		"user":{"namespace":"team-a","name":"alice"},
		"token":{"expires_at":"2026-05-02T10:00:30Z","expires_in":86400,"refresh_allowed":false},
		"quota":{"name":"gold","scope":"PerUser","enforcement":"Enforce","max_tokens_per_request":null,"max_concurrent_requests":null},
		"windows":[{"window":"Minute","start":"2026-05-01T10:00:00Z","resets_at":"2026-05-01T10:01:00Z",
			"used":{"requests":2,"input_tokens":23,"cached_input_tokens":0,"output_tokens":11,"total_tokens":34},
			"reserved":{"requests":0,"input_tokens":0,"cached_input_tokens":0,"output_tokens":0,"total_tokens":0},
			"limit":{"requests":1000,"tokens":100000},
			"remaining":{"requests":998,"tokens":99966},
			"models":[
				{"model":"meta-llama/Llama-3.1-8B","requests":1,"input_tokens":11,"cached_input_tokens":0,"output_tokens":7,"total_tokens":18},
				{"model":"qwen/Qwen3-8B","requests":1,"input_tokens":12,"cached_input_tokens":0,"output_tokens":4,"total_tokens":16}]}],
		"lifetime":{"requests":2,"input_tokens":23,"cached_input_tokens":0,"output_tokens":11,"total_tokens":34},
		"shared":null}`
	var compact bytes.Buffer
	if err := json.Compact(&compact, []byte(want)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(body, compact.Bytes()) {
		t.Errorf("GET /v1/usage =\n%s\nwant\n%s", body, compact.Bytes())
	}
	for k, v := range map[string]string{
		"X-Ratelimit-Limit-Requests": "1000", "X-Ratelimit-Remaining-Requests": "998", "X-Ratelimit-Reset-Requests": "30s",
		"X-Ratelimit-Limit-Tokens": "100000", "X-Ratelimit-Remaining-Tokens": "99966", "X-Ratelimit-Reset-Tokens": "30s",
	} {
		if got := h.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
}

// TestUsageAgreesWithAdmission: what GET /v1/usage says is left is what the
// next request is admitted against, and a request in flight shows as
// reserved exactly as its own x-ratelimit-* headers count it.
func TestUsageAgreesWithAdmission(t *testing.T) {
	t.Run("Memory", func(t *testing.T) { testUsageAgreesWithAdmission(t, nil) })
	t.Run("Redis", func(t *testing.T) {
		addr, _ := redisserver.Start(t)
		client := redis.NewClient(&redis.Options{Addr: addr})
		t.Cleanup(func() { _ = client.Close() })
		c := quota.NewRedis(client, quota.RedisOptions{Prefix: "usage:", Now: testClock})
		if err := c.MarkSeeded(t.Context()); err != nil {
			t.Fatal(err)
		}
		testUsageAgreesWithAdmission(t, c)
	})
}

// testUsageAgreesWithAdmission runs TestUsageAgreesWithAdmission on a
// counter (nil: the env's Memory).
func testUsageAgreesWithAdmission(t *testing.T, counter quota.Counter) {
	up := newUpstream(t, "m")
	release := make(chan struct{})
	arrived := make(chan struct{}, 1)
	up.handle = func(w http.ResponseWriter, r *http.Request, body []byte) {
		if r.URL.Path == "/tokenize" {
			_, _ = io.WriteString(w, `{"count":2,"max_model_len":8192,"tokens":[1,2]}`)
			return
		}
		arrived <- struct{}{}
		<-release
		_, _ = io.WriteString(w, `{"choices":[{"index":0,"text":"x"}],"usage":{"prompt_tokens":20,"completion_tokens":30}}`)
	}
	e := newEnv(t, func(o *Options) {
		if counter != nil {
			o.Counter = counter
		}
	}, up)
	u := aliceUser()
	u.Budgets = []quota.Budget{quota.UserBudget("team-a", "alice", "uid-alice", []quota.Limit{
		{Window: llmv1alpha1.WindowHour, Tokens: ptr[int64](1000), Requests: ptr[int64](10)},
	}, false)}
	e.dir.set(u)

	// A request in flight: the prompt of 40 bytes is estimated at
	// 40/4 + 8 = 18 tokens, and it may generate its max_tokens of 100.
	done := make(chan *http.Response)
	go func() {
		done <- e.do(t, http.MethodPost, "/v1/completions", `{"model":"m","prompt":"`+string(bytes.Repeat([]byte("a"), 40))+`","max_tokens":100}`)
	}()
	<-arrived
	during, _, _ := e.getUsage(t)
	close(release)
	resp := <-done
	expectStatus(t, resp, http.StatusOK)
	readAll(t, resp)

	w := during.Windows[0]
	if w.Reserved != (UsageAmount{Requests: 1, InputTokens: 18, OutputTokens: 100, TotalTokens: 118}) || w.Used.Requests != 0 {
		t.Errorf("in flight: used %+v reserved %+v, want the request's reservation of 18 + 100 tokens", w.Used, w.Reserved)
	}
	if *w.Remaining.Tokens != 882 || *w.Remaining.Requests != 9 {
		t.Errorf("in flight: remaining %s, want 882 tokens and 9 requests", toJSON(w.Remaining))
	}
	// The in-flight request's headers were set when it was admitted: the
	// same reservation counted the same way.
	if got := resp.Header.Get("X-Ratelimit-Remaining-Tokens"); got != "882" {
		t.Errorf("the request's remaining tokens = %q, want the 882 GET /v1/usage saw while it ran", got)
	}
	if got := resp.Header.Get("X-Ratelimit-Remaining-Requests"); got != "9" {
		t.Errorf("the request's remaining requests = %q, want the 9 GET /v1/usage saw while it ran", got)
	}

	// Settled at 20 + 30: 950 tokens and 9 requests left.
	after, h, _ := e.getUsage(t)
	w = after.Windows[0]
	if w.Used != (UsageAmount{Requests: 1, InputTokens: 20, OutputTokens: 30, TotalTokens: 50}) || w.Reserved != (UsageAmount{}) {
		t.Errorf("settled: used %+v reserved %+v, want 20 + 30 used, nothing reserved", w.Used, w.Reserved)
	}
	if *w.Remaining.Tokens != 950 || *w.Remaining.Requests != 9 {
		t.Errorf("settled: remaining %s, want 950 tokens and 9 requests", toJSON(w.Remaining))
	}
	if len(w.Models) != 1 || w.Models[0] != (UsageModel{Model: "m", UsageAmount: w.Used}) {
		t.Errorf("settled: models %s, want all of it under m", toJSON(w.Models))
	}
	if h.Get("X-Ratelimit-Remaining-Tokens") != "950" || h.Get("X-Ratelimit-Remaining-Requests") != "9" {
		t.Errorf("GET /v1/usage headers remaining tokens %q requests %q, want 950 and 9",
			h.Get("X-Ratelimit-Remaining-Tokens"), h.Get("X-Ratelimit-Remaining-Requests"))
	}
	// The next request (a /tokenize: one request, no tokens) is admitted
	// against exactly that.
	resp = e.do(t, http.MethodPost, "/tokenize", `{"model":"m","prompt":"hi"}`)
	expectStatus(t, resp, http.StatusOK)
	readAll(t, resp)
	if got := resp.Header.Get("X-Ratelimit-Remaining-Tokens"); got != "950" {
		t.Errorf("next request's remaining tokens = %q, want the 950 GET /v1/usage said", got)
	}
	if got := resp.Header.Get("X-Ratelimit-Remaining-Requests"); got != "8" {
		t.Errorf("next request's remaining requests = %q, want 9 less itself", got)
	}
	if got := resp.Header.Get("X-Ratelimit-Limit-Tokens"); got != "1000" {
		t.Errorf("next request's limit tokens = %q, want 1000", got)
	}
}

// TestUsageIsFree: GET /v1/usage is neither charged nor counted, and
// answers a user whose requests limit is used up.
func TestUsageIsFree(t *testing.T) {
	e := newEnv(t, nil)
	u := aliceUser()
	u.Budgets = []quota.Budget{quota.UserBudget("team-a", "alice", "uid-alice", []quota.Limit{
		{Window: llmv1alpha1.WindowDay, Requests: ptr[int64](1)},
	}, false)}
	e.dir.set(u)
	resp := e.do(t, http.MethodPost, "/v1/chat/completions", chatBody)
	expectStatus(t, resp, http.StatusOK)
	readAll(t, resp)
	resp = e.do(t, http.MethodPost, "/v1/chat/completions", chatBody)
	expectStatus(t, resp, http.StatusTooManyRequests)
	readAll(t, resp)
	for range 3 {
		got, _, _ := e.getUsage(t)
		w := got.Windows[0]
		if w.Used.Requests != 1 || *w.Remaining.Requests != 0 || w.Limit.Tokens != nil {
			t.Fatalf("window %s, want 1 request used, 0 left, no token limit", toJSON(w))
		}
	}
	if n := len(e.sink.all()); n != 1 {
		t.Errorf("%d charges, want the one completion's", n)
	}
}

// TestUsageShared: a Shared quota's pool is reported apart, with its
// limits; the user's own windows are their share, without limits.
func TestUsageShared(t *testing.T) {
	e := newEnv(t, nil)
	limits := []quota.Limit{{Window: llmv1alpha1.WindowDay, Tokens: ptr[int64](5000)}}
	u := aliceUser()
	u.Budgets = []quota.Budget{
		quota.UserBudget("team-a", "alice", "uid-alice", []quota.Limit{{Window: llmv1alpha1.WindowDay}}, false),
		quota.PoolBudget("team-a", "gold", "uid-gold", limits, false),
	}
	e.dir.set(u)
	// Bob, of the same pool, used 100 tokens.
	bob := u
	bob.Name, bob.UID = "bob", "uid-bob"
	bob.Budgets = []quota.Budget{
		quota.UserBudget("team-a", "bob", "uid-bob", []quota.Limit{{Window: llmv1alpha1.WindowDay}}, false),
		u.Budgets[1],
	}
	r, _, err := e.mem.Reserve(t.Context(), quota.Request{Budgets: bob.Budgets, Estimate: quota.Amount{Requests: 1, InputTokens: 60, OutputTokens: 40}})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.mem.Settle(t.Context(), r, quota.Amount{Requests: 1, InputTokens: 60, OutputTokens: 40}); err != nil {
		t.Fatal(err)
	}
	resp := e.do(t, http.MethodPost, "/v1/chat/completions", chatBody) // 11 + 7
	expectStatus(t, resp, http.StatusOK)
	readAll(t, resp)

	got, h, _ := e.getUsage(t)
	if got.Quota == nil || got.Quota.Scope != llmv1alpha1.ScopeShared {
		t.Fatalf("quota %s, want scope Shared", toJSON(got.Quota))
	}
	if len(got.Windows) != 1 || got.Windows[0].Used.TotalTokens != 18 || got.Windows[0].Limit != nil || got.Windows[0].Remaining != nil {
		t.Errorf("own windows %s, want alice's 18 tokens without limit", toJSON(got.Windows))
	}
	if got.Lifetime.TotalTokens != 18 {
		t.Errorf("own lifetime %s, want 18 tokens", toJSON(got.Lifetime))
	}
	p := got.Shared
	if p == nil || p.Quota != "gold" || len(p.Windows) != 1 {
		t.Fatalf("shared %s, want the pool of gold with one window", toJSON(p))
	}
	if w := p.Windows[0]; w.Used.TotalTokens != 118 || *w.Limit.Tokens != 5000 || *w.Remaining.Tokens != 4882 {
		t.Errorf("pool window %s, want 118 used of 5000, 4882 left", toJSON(w))
	}
	if p.Lifetime.TotalTokens != 118 {
		t.Errorf("pool lifetime %s, want 118 tokens", toJSON(p.Lifetime))
	}
	if got := h.Get("X-Ratelimit-Remaining-Tokens"); got != "4882" {
		t.Errorf("X-Ratelimit-Remaining-Tokens = %q, want the pool's 4882", got)
	}
}

// TestUsageWithoutQuota: a user whose quota does not exist, or has no
// limits, gets a reply without windows, not an error.
func TestUsageWithoutQuota(t *testing.T) {
	e := newEnv(t, nil)
	expiring(e)
	u := aliceUser()
	u.QuotaFound, u.Budgets, u.AllowRefresh = false, nil, true
	e.dir.set(u)
	got, h, _ := e.getUsage(t)
	if got.Quota != nil || len(got.Windows) != 0 || got.Shared != nil || got.Lifetime != (UsageAmount{}) {
		t.Errorf("reply %s, want no quota, no windows, nothing used", toJSON(got))
	}
	if !got.Token.RefreshAllowed || got.Token.ExpiresIn == nil || *got.Token.ExpiresIn != 86400 {
		t.Errorf("token %s, want refresh allowed and 86400s left", toJSON(got.Token))
	}
	if h.Get("X-Ratelimit-Limit-Tokens") != "" {
		t.Errorf("rate-limit headers without a limit: %v", h)
	}

	u.QuotaFound = true
	u.DryRun = true
	u.Budgets = []quota.Budget{quota.UserBudget("team-a", "alice", "uid-alice", nil, true)}
	e.dir.set(u)
	got, _, _ = e.getUsage(t)
	if got.Quota == nil || got.Quota.Enforcement != llmv1alpha1.EnforcementDryRun || len(got.Windows) != 0 {
		t.Errorf("reply %s, want a DryRun quota without windows", toJSON(got))
	}
}

// TestUsageRefusals: the endpoint authenticates like every other and
// answers only GET, in OpenAI's error shape.
func TestUsageRefusals(t *testing.T) {
	e := newEnv(t, nil)
	for _, tc := range []struct {
		name, method, tok string
		suspend           bool
		status            int
		code              string
	}{
		{"no token", http.MethodGet, "", false, http.StatusUnauthorized, "invalid_api_key"},
		{"unknown token", http.MethodGet, "tok-unknown", false, http.StatusUnauthorized, "invalid_api_key"},
		{"suspended", http.MethodGet, alice, true, http.StatusUnauthorized, "invalid_api_key"},
		{"POST", http.MethodPost, alice, false, http.StatusMethodNotAllowed, "method_not_allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := aliceUser()
			u.Suspended = tc.suspend
			e.dir.set(u)
			resp := e.do(t, tc.method, "/v1/usage", "", tc.tok)
			if resp.StatusCode != tc.status {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if tc.status == http.StatusMethodNotAllowed && resp.Header.Get("Allow") != "GET" {
				t.Errorf("Allow = %q, want GET", resp.Header.Get("Allow"))
			}
			var ae apiErr
			// The document describes every refusal, under the GET it refuses.
			if err := json.Unmarshal(documented(t, http.MethodGet, "/v1/usage", resp), &ae); err != nil || str(ae.Error.Code) != tc.code {
				t.Errorf("error %+v (%v), want code %s", ae.Error, err, tc.code)
			}
		})
	}
}

// failingCounter fails every Status.
type failingCounter struct{ quota.Counter }

func (failingCounter) Status(context.Context, quota.Budget) ([]quota.WindowStatus, error) {
	return nil, errors.New("store down")
}

// TestUsageStoreDown: a counter that cannot answer gives 503, not a reply
// claiming nothing was used.
func TestUsageStoreDown(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Counter = failingCounter{quota.NewMemory(testClock)} })
	resp := e.do(t, http.MethodGet, "/v1/usage", "")
	expectStatus(t, resp, http.StatusServiceUnavailable)
	var ae apiErr
	if err := json.Unmarshal(documented(t, http.MethodGet, "/v1/usage", resp), &ae); err != nil ||
		str(ae.Error.Code) != "quota_unavailable" || ae.Error.Type != "server_error" {
		t.Errorf("error %+v (%v), want server_error quota_unavailable", ae.Error, err)
	}
}

func toJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestUsageWithoutAuth: the benchmark arm without identity has no caller to
// report on.
func TestUsageWithoutAuth(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.DisableAuth = true })
	resp := e.do(t, http.MethodGet, "/v1/usage", "", "")
	expectStatus(t, resp, http.StatusNotFound)
	documented(t, http.MethodGet, "/v1/usage", resp)
}

// TestUsagePriced: with pricing, every amount has its cost as an exact
// decimal, the quota its currency, and a cost budget its limit and what is
// left of it.
func TestUsagePriced(t *testing.T) {
	e := newEnv(t, nil)
	u := aliceUser()
	// Budgets of 2.5 USD a day and 100 requests.
	u.Budgets = []quota.Budget{quota.UserBudget("team-a", "alice", "uid-alice", []quota.Limit{
		{Window: llmv1alpha1.WindowDay, Requests: ptr[int64](100), Cost: ptr[int64](2_500_000_000_000)},
	}, false)}
	u.Pricing = &quota.Pricing{Currency: "USD"}
	e.dir.set(u)
	// What admission charges: 1000 input tokens of which 400 cached, 200
	// output, costing 0.000123 USD (123 000 000 pico-units).
	charge := func(model string, a quota.Amount) {
		r, _, err := e.mem.Reserve(t.Context(), quota.Request{Budgets: u.Budgets, Estimate: quota.Amount{Requests: 1}, Model: model})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.mem.Settle(t.Context(), r, a); err != nil {
			t.Fatal(err)
		}
	}
	charge("m1", quota.Amount{Requests: 1, InputTokens: 1000, CachedInputTokens: 400, OutputTokens: 200, Cost: 123_000_000})
	charge("m2", quota.Amount{Requests: 1, InputTokens: 10, OutputTokens: 5, Cost: 1_500_000_000_000})

	got, _, _ := e.getUsage(t)
	if got.Quota.Currency != "USD" {
		t.Errorf("currency %q, want USD", got.Quota.Currency)
	}
	w := got.Windows[0]
	want := UsageAmount{Requests: 2, InputTokens: 1010, CachedInputTokens: 400, OutputTokens: 205, TotalTokens: 1215, Cost: "1.500123"}
	if w.Used != want {
		t.Errorf("used %s, want %s", toJSON(w.Used), toJSON(want))
	}
	if *w.Limit.Cost != "2.5" || *w.Remaining.Cost != "0.999877" || *w.Remaining.Requests != 98 {
		t.Errorf("limit %s remaining %s, want 2.5 USD and 98 requests, 0.999877 USD left", toJSON(w.Limit), toJSON(w.Remaining))
	}
	if len(w.Models) != 2 || w.Models[0].Model != "m1" || w.Models[0].Cost != "0.000123" || w.Models[1].Cost != "1.5" {
		t.Errorf("models %s, want m1 at 0.000123 and m2 at 1.5", toJSON(w.Models))
	}
	if w.Reserved.Cost != "0" || got.Lifetime.Cost != "1.500123" {
		t.Errorf("reserved %s lifetime %s, want a cost of 0 and 1.500123", toJSON(w.Reserved), toJSON(got.Lifetime))
	}
}
