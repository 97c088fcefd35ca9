package e2e_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/proxy"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/openapi"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
	"github.com/llm-user-operator/llm-user-operator/test/harness"
)

// usageModels are the two names the simulator of TestUsage serves, so that
// the split of usage by model is seen end to end.
var usageModels = [2]string{"e2e-org/sim-chat-1b", "e2e-org/sim-chat-2b"}

// usageSuite is TestUsage's running system: the operator, one proxy run
// from its Deployment, and a simulator serving two models.
type usageSuite struct {
	*harness.Env
	proxy harness.Proxy
	doc   *openapi.Document
}

// TestUsage: GET /v1/usage, through the real operator and proxy, answers a
// token holder what the client saw, what the next request is admitted
// against, and what status says once flushed; every reply of /v1/usage and
// /auth/refresh seen is the one the OpenAPI document describes. It runs a
// system of its own because its simulator serves two models, which
// TestE2E's model listing tests do not expect.
func TestUsage(t *testing.T) {
	doc, err := openapi.Load()
	if err != nil {
		t.Fatal(err)
	}
	env := harness.Start(t, harness.Options{Issuer: "https://e2e-usage", Model: usageModels[0], NamespacePrefix: "usage", FlushWait: flushWait})
	sim := env.StartSimulator(t, "llm-d-inference-sim", "--mode", "random", "--served-model-name", usageModels[0], usageModels[1])
	mgr := env.StartManager(t, harness.ManagerConfig{Proxy: proxySettings(sim.URL, proxyFlushInterval)})
	s := &usageSuite{Env: env, doc: doc}
	s.proxy = env.StartReconciledProxy(t, "proxy", mgr)

	t.Run("Usage", func(t *testing.T) {
		t.Run("MatchesClientHeadersAndStatus", s.testMatches)
		t.Run("Refresh", s.testRefresh)
		t.Run("QuotaDeleted", s.testQuotaDeleted)
		t.Run("Shared", s.testShared)
	})
}

// usage calls GET /v1/usage with openai-go's generic Get, as a user of the
// SDK would, and validates the reply against the OpenAPI document.
func (s *usageSuite) usage(t *testing.T, c openai.Client) (proxy.Usage, http.Header) {
	t.Helper()
	var body []byte
	var resp *http.Response
	if err := c.Get(t.Context(), "usage", nil, &body, option.WithResponseInto(&resp)); err != nil {
		t.Fatalf("GET /v1/usage: %v", err)
	}
	s.validate(t, http.MethodGet, "/v1/usage", resp, body)
	var u proxy.Usage
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&u); err != nil {
		t.Fatalf("GET /v1/usage: %v: %s", err, body)
	}
	return u, resp.Header
}

// settledUsage is usage once no request of the caller is still in flight
// (see waitSettled).
func (s *usageSuite) settledUsage(t *testing.T, c openai.Client) (proxy.Usage, http.Header) {
	t.Helper()
	waitSettled(t, c)
	return s.usage(t, c)
}

// waitSettled waits until GET /v1/usage shows none of the caller's requests
// in flight: the proxy settles a request just after its last byte reaches
// the client, so a reply or a next request that comes at once may still see
// the last one's reservation rather than its charge.
func waitSettled(t *testing.T, c openai.Client) {
	t.Helper()
	poll.Until(t, flushWait, func() error {
		var u proxy.Usage
		if err := c.Get(t.Context(), "usage", nil, &u); err != nil {
			return err
		}
		windows := u.Windows
		if u.Shared != nil {
			windows = append(slices.Clone(windows), u.Shared.Windows...)
		}
		for _, w := range windows {
			if w.Reserved.Requests != 0 {
				return fmt.Errorf("%d requests still in flight in the %s window", w.Reserved.Requests, w.Window)
			}
		}
		return nil
	})
}

// validate fails t unless the OpenAPI document describes the response.
func (s *usageSuite) validate(t *testing.T, method, path string, resp *http.Response, body []byte) {
	t.Helper()
	if err := s.doc.Validate(method, path, openapi.Response{Status: resp.StatusCode, Header: resp.Header, Body: body}); err != nil {
		t.Error(err)
	}
}

// apiError validates a refusal the SDK returned, and returns it.
func (s *usageSuite) apiError(t *testing.T, method, path string, err error, status int) *openai.Error {
	t.Helper()
	e := harness.RequireAPIError(t, err, status)
	body, rerr := io.ReadAll(e.Response.Body)
	if rerr != nil {
		t.Fatal(rerr)
	}
	s.validate(t, method, path, e.Response, body)
	return e
}

// modelTotals is what the client saw of one model.
type modelTotals struct {
	requests, input, cached, output int64
}

func (m *modelTotals) add(u openai.CompletionUsage) {
	m.requests++
	m.input += u.PromptTokens
	m.cached += u.PromptTokensDetails.CachedTokens
	m.output += u.CompletionTokens
}

// testMatches: after a mix of requests to two models, streamed and not,
// /v1/usage says exactly what the client was told, the next request is
// admitted against what it says is left, and after a flush status agrees.
func (s *usageSuite) testMatches(t *testing.T) {
	t.Parallel()
	const tokenLimit, requestLimit = 1_000_000, 1000
	// Prices per million tokens, in micro-USD (which is pico-USD per
	// token): model 0 at 0.5 input and 1.5 output, model 1 at 2 input, 1
	// cached input and 8 output; a budget of 100 USD a day.
	prices := [2]struct{ input, cached, output int64 }{{500_000, 500_000, 1_500_000}, {2_000_000, 1_000_000, 8_000_000}}
	a := s.NewAccount(t, llmv1alpha1.LLMQuotaSpec{
		Limits: []llmv1alpha1.QuotaLimit{{Window: llmv1alpha1.WindowDay, Tokens: ptr.To[int64](tokenLimit),
			Requests: ptr.To[int64](requestLimit), Cost: ptr.To[llmv1alpha1.Decimal]("100")}},
		Pricing: &llmv1alpha1.Pricing{Currency: "USD", Models: []llmv1alpha1.ModelPrice{
			{Model: usageModels[0], Input: "0.5", Output: "1.5"},
			{Model: usageModels[1], Input: "2", CachedInput: ptr.To[llmv1alpha1.Decimal]("1"), Output: "8"},
		}},
	})
	ctx := t.Context()

	// Nothing used yet: the reply has the quota's window, empty.
	fresh, _ := s.usage(t, a.Client)
	if fresh.Object != "llm.usage" || fresh.Version != "v1" {
		t.Errorf("object %q version %q, want llm.usage v1", fresh.Object, fresh.Version)
	}
	if fresh.User != (proxy.UsageUser{Namespace: a.Namespace, Name: harness.UserName}) {
		t.Errorf("user %+v, want %s/%s", fresh.User, a.Namespace, harness.UserName)
	}
	if q := fresh.Quota; q == nil || q.Name != "quota" || q.Scope != llmv1alpha1.ScopePerUser || q.Enforcement != llmv1alpha1.EnforcementEnforce || q.Currency != "USD" {
		t.Errorf("quota %s, want quota, PerUser, Enforce, USD", harness.ToJSON(fresh.Quota))
	}
	if w := fresh.Windows; len(w) == 1 && (w[0].Used.Cost != "0" || *w[0].Limit.Cost != "100" || *w[0].Remaining.Cost != "100") {
		t.Errorf("fresh window %s, want nothing spent of 100 USD", harness.ToJSON(w[0]))
	}
	if len(fresh.Windows) != 1 || fresh.Windows[0].Used.Requests != 0 || *fresh.Windows[0].Remaining.Tokens != tokenLimit {
		t.Fatalf("windows %s, want one Day window with nothing used", harness.ToJSON(fresh.Windows))
	}
	// The token is the Secret's: same expiry, refresh allowed by default.
	exp, err := time.Parse(time.RFC3339, a.Env["expiresAt"])
	if err != nil {
		t.Fatal(err)
	}
	if tk := fresh.Token; tk.ExpiresAt == nil || !tk.ExpiresAt.Equal(exp) || !tk.RefreshAllowed {
		t.Errorf("token %s, want expiry %s (the Secret's expiresAt) and refresh allowed", harness.ToJSON(tk), exp)
	}

	// The mix: each model non-streamed twice and streamed once.
	var seen [2]modelTotals
	for i, model := range usageModels {
		for n := range 2 {
			res, err := a.Client.Chat.Completions.New(ctx, harness.ChatParams(model, "Say hello to the usage test.", 16))
			if err != nil {
				t.Fatalf("%s chat %d: %v", model, n, err)
			}
			if !res.JSON.Usage.Valid() || res.Usage.TotalTokens == 0 {
				t.Fatalf("%s chat %d reports no usage: %s", model, n, res.RawJSON())
			}
			seen[i].add(res.Usage)
		}
		p := harness.ChatParams(model, "Tell a very short story.", 24)
		p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
		stream := a.Client.Chat.Completions.NewStreaming(ctx, p)
		var usage *openai.CompletionUsage
		for stream.Next() {
			if c := stream.Current(); c.JSON.Usage.Valid() && c.Usage.TotalTokens > 0 {
				u := c.Usage
				usage = &u
			}
		}
		if err := stream.Err(); err != nil || usage == nil {
			t.Fatalf("%s stream: %v, usage %v", model, err, usage)
		}
		seen[i].add(*usage)
	}
	var all modelTotals
	var costs [2]int64 // pico-USD, from the prices and what the client saw
	for i, m := range seen {
		all.requests += m.requests
		all.input += m.input
		all.cached += m.cached
		all.output += m.output
		p := prices[i]
		costs[i] = (m.input-m.cached)*p.input + m.cached*p.cached + m.output*p.output
	}

	got, h := s.settledUsage(t, a.Client)
	w := got.Windows[0]
	wantUsed := proxy.UsageAmount{Requests: all.requests, InputTokens: all.input, CachedInputTokens: all.cached,
		OutputTokens: all.output, TotalTokens: all.input + all.output, Cost: w.Used.Cost}
	checkCost(t, "used", w.Used.Cost, costs[0]+costs[1])
	checkCost(t, "remaining", *w.Remaining.Cost, 100_000_000_000_000-costs[0]-costs[1])
	if w.Window != llmv1alpha1.WindowDay || w.Used != wantUsed || w.Reserved != (proxy.UsageAmount{Cost: "0"}) {
		t.Errorf("window %s used %s reserved %s, want Day, what the client saw %s, nothing reserved",
			w.Window, harness.ToJSON(w.Used), harness.ToJSON(w.Reserved), harness.ToJSON(wantUsed))
	}
	if got.Lifetime != wantUsed {
		t.Errorf("lifetime %s, want %s", harness.ToJSON(got.Lifetime), harness.ToJSON(wantUsed))
	}
	if *w.Limit.Tokens != tokenLimit || *w.Limit.Requests != requestLimit ||
		*w.Remaining.Tokens != tokenLimit-wantUsed.TotalTokens || *w.Remaining.Requests != requestLimit-all.requests {
		t.Errorf("limit %s remaining %s, want %d tokens and %d requests less what the client saw",
			harness.ToJSON(w.Limit), harness.ToJSON(w.Remaining), tokenLimit, requestLimit)
	}
	if len(w.Models) != 2 {
		t.Fatalf("models %s, want one entry per model", harness.ToJSON(w.Models))
	}
	for i, model := range usageModels {
		m, want := w.Models[i], seen[i]
		checkCost(t, model, m.Cost, costs[i])
		if m.Model != model || m.Requests != want.requests || m.InputTokens != want.input || m.CachedInputTokens != want.cached ||
			m.OutputTokens != want.output || m.TotalTokens != want.input+want.output {
			t.Errorf("models[%d] = %s, want %s with what the client saw: %+v", i, harness.ToJSON(m), model, want)
		}
	}
	if h.Get("X-Ratelimit-Remaining-Tokens") != strconv.FormatInt(tokenLimit-wantUsed.TotalTokens, 10) {
		t.Errorf("GET /v1/usage's x-ratelimit-remaining-tokens = %q, want %d", h.Get("X-Ratelimit-Remaining-Tokens"), tokenLimit-wantUsed.TotalTokens)
	}

	// The next request (a /tokenize: one request, no tokens) is admitted
	// against what /v1/usage said was left.
	var next *http.Response
	var tok []byte
	root := strings.TrimSuffix(a.Env["OPENAI_BASE_URL"], "v1")
	if err := a.Client.Post(ctx, "tokenize", map[string]string{"model": usageModels[0], "prompt": "hello"}, &tok,
		option.WithBaseURL(root), option.WithResponseInto(&next)); err != nil {
		t.Fatalf("POST /tokenize: %v", err)
	}
	for k, want := range map[string]int64{
		"X-Ratelimit-Limit-Tokens":       tokenLimit,
		"X-Ratelimit-Remaining-Tokens":   *w.Remaining.Tokens,
		"X-Ratelimit-Limit-Requests":     requestLimit,
		"X-Ratelimit-Remaining-Requests": *w.Remaining.Requests - 1,
	} {
		if got := next.Header.Get(k); got != strconv.FormatInt(want, 10) {
			t.Errorf("next request's %s = %q, want %d from GET /v1/usage", k, got, want)
		}
	}
	if got := next.Header.Get("X-Ratelimit-Reset-Tokens"); got == "" || next.Header.Get("X-Ratelimit-Reset-Requests") != got {
		t.Errorf("next request's reset headers %q and %q, want the Day window's, the same", got, next.Header.Get("X-Ratelimit-Reset-Requests"))
	}

	// After a flush, status says what /v1/usage says.
	wantReqs := all.requests + 1 // and the /tokenize
	st := s.WaitRequests(t, a, wantReqs)
	after, _ := s.usage(t, a.Client)
	aw := after.Windows[0]
	if aw.Used.Requests != wantReqs || aw.Used.TotalTokens != wantUsed.TotalTokens {
		t.Errorf("after /tokenize: used %s, want %d requests and %d tokens", harness.ToJSON(aw.Used), wantReqs, wantUsed.TotalTokens)
	}
	sw := st.Usage[0]
	if sw.Window != aw.Window || !sw.WindowStart.Time.Equal(aw.Start) || sw.Requests != aw.Used.Requests ||
		sw.InputTokens != aw.Used.InputTokens || sw.OutputTokens != aw.Used.OutputTokens || sw.TotalTokens != aw.Used.TotalTokens {
		t.Errorf("status.usage[0] %s, want what GET /v1/usage says: %s", harness.ToJSON(sw), harness.ToJSON(aw))
	}
	if sw.Remaining == nil || *sw.Remaining != *aw.Remaining.Tokens || sw.RemainingRequests == nil || *sw.RemainingRequests != *aw.Remaining.Requests {
		t.Errorf("status.usage[0] remaining %v / %v requests, want GET /v1/usage's %s",
			harness.ToJSON(sw.Remaining), harness.ToJSON(sw.RemainingRequests), harness.ToJSON(aw.Remaining))
	}
	if len(sw.Models) != len(aw.Models) {
		t.Errorf("status.usage[0].models %s, want GET /v1/usage's %s", harness.ToJSON(sw.Models), harness.ToJSON(aw.Models))
	} else {
		for i, m := range sw.Models {
			u := aw.Models[i]
			if m.Model != u.Model || m.Requests != u.Requests || m.InputTokens != u.InputTokens ||
				m.CachedInputTokens != u.CachedInputTokens || m.OutputTokens != u.OutputTokens || m.Cost != u.Cost {
				t.Errorf("status.usage[0].models[%d] %s, want GET /v1/usage's %s", i, harness.ToJSON(m), harness.ToJSON(u))
			}
		}
	}
	if sw.Cost != aw.Used.Cost || sw.Currency != "USD" || sw.RemainingCost != *aw.Remaining.Cost {
		t.Errorf("status.usage[0] cost %q %s, %q left, want GET /v1/usage's %q USD, %q left", sw.Cost, sw.Currency, sw.RemainingCost, aw.Used.Cost, *aw.Remaining.Cost)
	}
	if st.Lifetime == nil || st.Lifetime.TotalTokens != after.Lifetime.TotalTokens || st.Lifetime.Requests != after.Lifetime.Requests {
		t.Errorf("status.lifetime %s, want GET /v1/usage's %s", harness.ToJSON(st.Lifetime), harness.ToJSON(after.Lifetime))
	}

	// Calling /v1/usage counted nothing: status and the counters still
	// have the mix and the /tokenize alone.
	again, _ := s.usage(t, a.Client)
	if again.Windows[0].Used.Requests != wantReqs {
		t.Errorf("GET /v1/usage was counted: %d requests, want %d", again.Windows[0].Used.Requests, wantReqs)
	}

	// A refusal is documented too.
	bad := harness.NewClient(a.Env["OPENAI_BASE_URL"], "not-a-token")
	err = bad.Get(ctx, "usage", nil, nil)
	if e := s.apiError(t, http.MethodGet, "/v1/usage", err, http.StatusUnauthorized); e.Code != "invalid_api_key" {
		t.Errorf("code %q, want invalid_api_key", e.Code)
	}
}

// refresh POSTs to /auth/refresh beside the base URL, through the proxy,
// with openai-go's generic Post, and validates the reply.
func (s *usageSuite) refresh(t *testing.T, c openai.Client, baseURL string) (string, error) {
	t.Helper()
	var body []byte
	var resp *http.Response
	err := c.Post(t.Context(), "auth/refresh", nil, &body, option.WithBaseURL(strings.TrimSuffix(baseURL, "v1")), option.WithResponseInto(&resp))
	if err != nil {
		return "", err
	}
	s.validate(t, http.MethodPost, "/auth/refresh", resp, body)
	var r struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("POST /auth/refresh: %v: %s", err, body)
	}
	return r.AccessToken, nil
}

// testRefresh: /auth/refresh answers as documented, a refreshed token
// reports its own expiry in /v1/usage, and a user who may not refresh is
// told so by both.
func (s *usageSuite) testRefresh(t *testing.T) {
	t.Parallel()
	a := s.NewAccount(t, harness.DayTokens(1_000_000))
	base := a.Env["OPENAI_BASE_URL"]
	fresh, err := s.refresh(t, a.Client, base)
	if err != nil {
		t.Fatalf("POST /auth/refresh: %v", err)
	}
	c := harness.NewClient(base, fresh)
	u, _ := s.usage(t, c)
	if u.Token.ExpiresAt == nil || u.Token.ExpiresIn == nil || *u.Token.ExpiresIn <= 23*3600 || *u.Token.ExpiresIn > 24*3600 {
		t.Errorf("refreshed token %s, want the default TTL of 24h left", harness.ToJSON(u.Token))
	}

	_, err = s.refresh(t, harness.NewClient(base, "not-a-token"), base)
	if e := s.apiError(t, http.MethodPost, "/auth/refresh", err, http.StatusUnauthorized); e.Code != "invalid_api_key" {
		t.Errorf("code %q, want invalid_api_key", e.Code)
	}

	var user llmv1alpha1.LLMUser
	if err := s.Client.Get(t.Context(), a.Key(), &user); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(user.DeepCopy())
	user.Spec.Token.AllowRefresh = ptr.To(false)
	if err := s.Client.Patch(t.Context(), &user, patch); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, flushWait, func() error {
		u, _ := s.usage(t, a.Client)
		return poll.Check(!u.Token.RefreshAllowed, "refresh_allowed is still true")
	})
	poll.Until(t, flushWait, func() error {
		_, err := s.refresh(t, a.Client, base)
		var e *openai.Error
		if !errors.As(err, &e) || e.StatusCode != http.StatusForbidden {
			return errors.New("refresh not refused with 403 yet: " + harness.ToJSON(err))
		}
		return nil
	})
	_, err = s.refresh(t, a.Client, base)
	if e := s.apiError(t, http.MethodPost, "/auth/refresh", err, http.StatusForbidden); e.Code != "refresh_not_allowed" {
		t.Errorf("code %q, want refresh_not_allowed", e.Code)
	}
}

// testQuotaDeleted: a user whose quota is gone still gets their usage,
// without quota or windows, not an error.
func (s *usageSuite) testQuotaDeleted(t *testing.T) {
	t.Parallel()
	a := s.NewAccount(t, harness.DayTokens(1_000_000))
	res, err := a.Client.Chat.Completions.New(t.Context(), harness.ChatParams(usageModels[1], "Hello", 8))
	if err != nil {
		t.Fatal(err)
	}
	q := &llmv1alpha1.LLMQuota{}
	q.Namespace, q.Name = a.Namespace, "quota"
	if err := s.Client.Delete(t.Context(), q); err != nil {
		t.Fatal(err)
	}
	var u proxy.Usage
	poll.Until(t, flushWait, func() error {
		u, _ = s.usage(t, a.Client)
		return poll.Check(u.Quota == nil, "quota still reported: "+harness.ToJSON(u.Quota))
	})
	if len(u.Windows) != 0 || u.Shared != nil {
		t.Errorf("windows %s shared %s, want none", harness.ToJSON(u.Windows), harness.ToJSON(u.Shared))
	}
	if u.Lifetime.Requests != 1 || u.Lifetime.TotalTokens != res.Usage.TotalTokens {
		t.Errorf("lifetime %s, want the one request of %d tokens the client saw", harness.ToJSON(u.Lifetime), res.Usage.TotalTokens)
	}
	_, err = a.Client.Chat.Completions.New(t.Context(), harness.ChatParams(usageModels[1], "Hello", 8))
	if e := harness.RequireAPIError(t, err, http.StatusForbidden); e.Code != "quota_not_found" {
		t.Errorf("code %q, want quota_not_found", e.Code)
	}
}

// checkCost checks that a decimal cost in USD is exactly pico pico-USD,
// read with math/big rather than the product's own decimal code.
func checkCost(t *testing.T, what, got string, pico int64) {
	t.Helper()
	g, ok := new(big.Rat).SetString(got)
	want := big.NewRat(pico, 1_000_000_000_000)
	if !ok || g.Cmp(want) != 0 || strings.ContainsAny(got, "eE") {
		t.Errorf("%s cost %q USD, want exactly %s", what, got, want.FloatString(12))
	}
}

// testShared: with a Shared quota, a user sees their own share and the
// pool's use by everyone, and what the pool has left.
func (s *usageSuite) testShared(t *testing.T) {
	t.Parallel()
	const poolLimit = 500_000
	q := harness.DayTokens(poolLimit)
	q.Scope = llmv1alpha1.ScopeShared
	alice := s.NewAccount(t, q)
	bob := s.secondUser(t, alice, "bob")

	var alices, bobs int64
	for _, c := range []struct {
		a   openai.Client
		sum *int64
	}{{alice.Client, &alices}, {bob, &bobs}, {bob, &bobs}} {
		res, err := c.a.Chat.Completions.New(t.Context(), harness.ChatParams(usageModels[0], "Hello from a team.", 8))
		if err != nil {
			t.Fatal(err)
		}
		*c.sum += res.Usage.TotalTokens
	}

	u, h := s.settledUsage(t, alice.Client)
	if u.Quota == nil || u.Quota.Scope != llmv1alpha1.ScopeShared {
		t.Fatalf("quota %s, want Shared", harness.ToJSON(u.Quota))
	}
	if len(u.Windows) != 1 || u.Windows[0].Used.Requests != 1 || u.Windows[0].Used.TotalTokens != alices || u.Windows[0].Limit != nil {
		t.Errorf("alice's windows %s, want her 1 request of %d tokens, without limit", harness.ToJSON(u.Windows), alices)
	}
	p := u.Shared
	if p == nil || p.Quota != "quota" || len(p.Windows) != 1 {
		t.Fatalf("shared %s, want the pool of quota with its Day window", harness.ToJSON(p))
	}
	w := p.Windows[0]
	if w.Used.Requests != 3 || w.Used.TotalTokens != alices+bobs || *w.Limit.Tokens != poolLimit || *w.Remaining.Tokens != poolLimit-alices-bobs {
		t.Errorf("pool window %s, want 3 requests and %d tokens of %d", harness.ToJSON(w), alices+bobs, poolLimit)
	}
	if got := h.Get("X-Ratelimit-Remaining-Tokens"); got != strconv.FormatInt(poolLimit-alices-bobs, 10) {
		t.Errorf("x-ratelimit-remaining-tokens %q, want the pool's %d", got, poolLimit-alices-bobs)
	}
}

// secondUser creates another LLMUser on a's quota and returns the client
// its token Secret gives.
func (s *usageSuite) secondUser(t *testing.T, a *harness.Account, name string) openai.Client {
	t.Helper()
	s.MustCreate(t, &llmv1alpha1.LLMUser{
		ObjectMeta: metav1.ObjectMeta{Namespace: a.Namespace, Name: name},
		Spec:       llmv1alpha1.LLMUserSpec{QuotaRef: llmv1alpha1.QuotaReference{Name: "quota"}},
	})
	var sec corev1.Secret
	poll.Until(t, 30*time.Second, func() error {
		if err := s.Client.Get(t.Context(), types.NamespacedName{Namespace: a.Namespace, Name: name + "-llm-token"}, &sec); err != nil {
			return err
		}
		return poll.Check(len(sec.Data["OPENAI_API_KEY"]) > 0, "no OPENAI_API_KEY yet")
	})
	c := harness.NewClient(string(sec.Data["OPENAI_BASE_URL"]), string(sec.Data["OPENAI_API_KEY"]))
	// The proxy learns of the user from its informer, which may trail the
	// Secret by a moment.
	poll.Until(t, flushWait, func() error {
		var body []byte
		return c.Get(t.Context(), "usage", nil, &body)
	})
	return c
}
