package e2e_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
	"github.com/llm-user-operator/llm-user-operator/test/harness"
)

// testModels: a user sees, and may use, only the models its quota allows.
func (s *suite) testModels(t *testing.T) {
	t.Parallel()
	t.Run("Allowed", func(t *testing.T) {
		t.Parallel()
		a := s.NewAccount(t, llmv1alpha1.LLMQuotaSpec{Models: []string{"e2e-org/*"}})
		page, err := a.Client.Models.List(t.Context())
		if err != nil {
			t.Fatalf("listing models: %v", err)
		}
		if len(page.Data) != 1 || page.Data[0].ID != modelID {
			t.Fatalf("models %s, want only %s", page.RawJSON(), modelID)
		}
		m, err := a.Client.Models.Get(t.Context(), modelID)
		if err != nil || m.ID != modelID {
			t.Fatalf("getting model %s: %v %v", modelID, m, err)
		}
		if _, err := a.Client.Chat.Completions.New(t.Context(), chatParams("Hello")); err != nil {
			t.Fatalf("chat with an allowed model: %v", err)
		}
	})
	t.Run("NotAllowed", func(t *testing.T) {
		t.Parallel()
		a := s.NewAccount(t, llmv1alpha1.LLMQuotaSpec{Models: []string{"other-*"}})
		page, err := a.Client.Models.List(t.Context())
		if err != nil {
			t.Fatalf("listing models: %v", err)
		}
		if len(page.Data) != 0 {
			t.Fatalf("models %s, want none", page.RawJSON())
		}
		_, err = a.Client.Models.Get(t.Context(), modelID)
		harness.RequireAPIError(t, err, http.StatusNotFound)

		_, err = a.Client.Chat.Completions.New(t.Context(), chatParams("Hello"))
		e := harness.RequireAPIError(t, err, http.StatusForbidden)
		if e.Code != "model_not_allowed" || e.Param != "model" {
			t.Errorf("code %q param %q, want model_not_allowed on model; body: %s", e.Code, e.Param, e.RawJSON())
		}
	})
}

// testRequestQuota: past a request limit, the next request gets OpenAI's 429
// with the rate-limit headers and Retry-After, and is not charged.
func (s *suite) testRequestQuota(t *testing.T) {
	t.Parallel()
	// An hour window: a minute one could reset between the requests.
	a := s.NewAccount(t, llmv1alpha1.LLMQuotaSpec{Limits: []llmv1alpha1.QuotaLimit{
		{Window: llmv1alpha1.WindowHour, Requests: ptr.To[int64](2)},
	}})
	var usages []openai.CompletionUsage
	for i := range 2 {
		var resp *http.Response
		res, err := a.Client.Chat.Completions.New(t.Context(), chatParams("Hello"), option.WithResponseInto(&resp))
		if err != nil {
			t.Fatalf("request %d of 2 allowed: %v", i+1, err)
		}
		usages = append(usages, res.Usage)
		if got, want := resp.Header.Get("X-Ratelimit-Remaining-Requests"), strconv.Itoa(1-i); got != want {
			t.Errorf("request %d: x-ratelimit-remaining-requests = %q, want %q", i+1, got, want)
		}
	}

	_, err := a.Client.Chat.Completions.New(t.Context(), chatParams("Hello"))
	e := harness.RequireAPIError(t, err, http.StatusTooManyRequests)
	if e.Type != "rate_limit_error" || e.Code != "rate_limit_exceeded" {
		t.Errorf("type %q code %q, want rate_limit_error/rate_limit_exceeded; body: %s", e.Type, e.Code, e.RawJSON())
	}
	h := e.Response.Header
	if h.Get("X-Ratelimit-Limit-Requests") != "2" || h.Get("X-Ratelimit-Remaining-Requests") != "0" {
		t.Errorf("x-ratelimit-limit-requests %q remaining %q, want 2 and 0", h.Get("X-Ratelimit-Limit-Requests"), h.Get("X-Ratelimit-Remaining-Requests"))
	}
	if d, err := time.ParseDuration(h.Get("X-Ratelimit-Reset-Requests")); err != nil || d <= 0 || d > time.Hour {
		t.Errorf("x-ratelimit-reset-requests %q, want a duration within the hour", h.Get("X-Ratelimit-Reset-Requests"))
	}
	checkRetryAfter(t, h, time.Hour)

	want := harness.Totals(usages...)
	st := s.WaitRequests(t, a, want.Requests)
	harness.CheckCharged(t, st, want)
	if r := st.Usage[0].RemainingRequests; r == nil || *r != 0 {
		t.Errorf("status.usage[0].remainingRequests = %s, want 0", harness.ToJSON(r))
	}
}

// testTokenQuota: once a window holds usage, a request whose possible cost
// (its prompt plus max_tokens) exceeds the tokens left is refused before it
// reaches the model. (The first request of an empty window is let in
// whatever its estimate, so that an estimate above the limit cannot lock a
// user out for good.)
func (s *suite) testTokenQuota(t *testing.T) {
	t.Parallel()
	const limit = 60
	a := s.NewAccount(t, harness.DayTokens(limit))
	small := chatParams("Hello")
	small.MaxTokens = openai.Int(4)
	res, err := a.Client.Chat.Completions.New(t.Context(), small)
	if err != nil {
		t.Fatalf("a request that fits the quota: %v", err)
	}

	big := chatParams("Hello")
	big.MaxTokens = openai.Int(500)
	_, err = a.Client.Chat.Completions.New(t.Context(), big)
	e := harness.RequireAPIError(t, err, http.StatusTooManyRequests)
	// A day is a quota, not a rate: OpenAI's insufficient_quota.
	if e.Type != "insufficient_quota" || e.Code != "insufficient_quota" {
		t.Errorf("type %q code %q, want insufficient_quota; body: %s", e.Type, e.Code, e.RawJSON())
	}
	if got := e.Response.Header.Get("X-Ratelimit-Limit-Tokens"); got != strconv.Itoa(limit) {
		t.Errorf("x-ratelimit-limit-tokens = %q, want %d", got, limit)
	}
	checkRetryAfter(t, e.Response.Header, 24*time.Hour)

	want := harness.Totals(res.Usage)
	st := s.WaitRequests(t, a, want.Requests)
	harness.CheckCharged(t, st, want)
	if r := st.Usage[0].Remaining; r == nil || *r != limit-want.TotalTokens {
		t.Errorf("status.usage[0].remaining = %s, want %d", harness.ToJSON(r), limit-want.TotalTokens)
	}
}

// testQuotaSurvivesProxyRestart: a proxy that starts fresh takes up the
// counts from status, so restarting (or adding) a replica does not hand
// out a new budget.
func (s *suite) testQuotaSurvivesProxyRestart(t *testing.T) {
	t.Parallel()
	a := s.NewAccount(t, llmv1alpha1.LLMQuotaSpec{Limits: []llmv1alpha1.QuotaLimit{
		{Window: llmv1alpha1.WindowHour, Requests: ptr.To[int64](3)},
	}})
	for i := range 2 {
		if _, err := a.Client.Chat.Completions.New(t.Context(), chatParams("Hello")); err != nil {
			t.Fatalf("request %d through the first proxy: %v", i+1, err)
		}
	}
	s.WaitRequests(t, a, 2)

	fresh := s.startProxy(t, "proxy-2")
	c := harness.NewClient(fresh.BaseURL, a.Env["OPENAI_API_KEY"])
	if _, err := c.Chat.Completions.New(t.Context(), chatParams("Hello")); err != nil {
		t.Fatalf("request 3 of 3 through the fresh proxy: %v", err)
	}
	_, err := c.Chat.Completions.New(t.Context(), chatParams("Hello"))
	harness.RequireAPIError(t, err, http.StatusTooManyRequests)
}

// testSuspend: suspending a user revokes its token within seconds, and
// lifting the suspension restores it.
func (s *suite) testSuspend(t *testing.T) {
	t.Parallel()
	a := s.NewAccount(t, harness.DayTokens(1_000_000))
	if _, err := a.Client.Chat.Completions.New(t.Context(), chatParams("Hello")); err != nil {
		t.Fatalf("before suspension: %v", err)
	}
	s.setSuspended(t, a, true)
	var refused error
	poll.Until(t, 5*time.Second, func() error {
		_, refused = a.Client.Chat.Completions.New(t.Context(), chatParams("Hello"))
		return poll.Check(refused != nil, "the suspended user's request still succeeds")
	})
	e := harness.RequireAPIError(t, refused, http.StatusUnauthorized)
	if e.Code != "invalid_api_key" || !strings.Contains(e.Message, "suspended") {
		t.Errorf("code %q message %q, want invalid_api_key saying the user is suspended", e.Code, e.Message)
	}
	// The operator learns of the suspension from its own watch, which may
	// be a moment behind the proxy's.
	poll.Until(t, 5*time.Second, func() error {
		code, body := s.refresh(t, a.Env["OPENAI_BASE_URL"], a.Env["OPENAI_API_KEY"])
		return poll.Check(code == http.StatusUnauthorized, fmt.Sprintf("refresh while suspended: %d %s, want 401", code, body))
	})
	s.WaitUser(t, a, func(u *llmv1alpha1.LLMUser) (bool, string) {
		c := meta.FindStatusCondition(u.Status.Conditions, llmv1alpha1.ConditionReady)
		return c != nil && c.Status == "False" && c.Reason == llmv1alpha1.ReasonSuspended, "want Ready False with reason Suspended"
	})

	s.setSuspended(t, a, false)
	poll.Until(t, 5*time.Second, func() error {
		_, err := a.Client.Chat.Completions.New(t.Context(), chatParams("Hello"))
		return poll.Check(err == nil, "the same token still refused after the suspension was lifted")
	})
}

func (s *suite) setSuspended(t *testing.T, a *harness.Account, v bool) {
	t.Helper()
	var u llmv1alpha1.LLMUser
	if err := s.Client.Get(t.Context(), a.Key(), &u); err != nil {
		t.Fatal(err)
	}
	orig := u.DeepCopy()
	u.Spec.Suspended = v
	if err := s.Client.Patch(t.Context(), &u, client.MergeFrom(orig)); err != nil {
		t.Fatalf("setting spec.suspended=%t: %v", v, err)
	}
}

// testUnauthenticated: requests without a valid token of a current user get
// OpenAI's 401.
func (s *suite) testUnauthenticated(t *testing.T) {
	t.Parallel()
	t.Run("NotAToken", func(t *testing.T) {
		t.Parallel()
		c := harness.NewClient(s.proxy.BaseURL, "sk-not-a-token")
		_, err := c.Chat.Completions.New(t.Context(), chatParams("Hello"))
		e := harness.RequireAPIError(t, err, http.StatusUnauthorized)
		if e.Code != "invalid_api_key" {
			t.Errorf("code %q, want invalid_api_key; body: %s", e.Code, e.RawJSON())
		}
		if got := e.Response.Header.Get("Www-Authenticate"); !strings.HasPrefix(got, "Bearer") {
			t.Errorf("WWW-Authenticate = %q, want a Bearer challenge", got)
		}
	})
	t.Run("DeletedUser", func(t *testing.T) {
		t.Parallel()
		a := s.NewAccount(t, harness.DayTokens(1_000_000))
		var u llmv1alpha1.LLMUser
		if err := s.Client.Get(t.Context(), a.Key(), &u); err != nil {
			t.Fatal(err)
		}
		if err := s.Client.Delete(t.Context(), &u); err != nil {
			t.Fatal(err)
		}
		var refused error
		poll.Until(t, 5*time.Second, func() error {
			_, refused = a.Client.Chat.Completions.New(t.Context(), chatParams("Hello"))
			return poll.Check(refused != nil, "the deleted user's token still works")
		})
		harness.RequireAPIError(t, refused, http.StatusUnauthorized)
	})
}

// testRefresh: POST /auth/refresh through the proxy exchanges a valid token
// for a fresh one that works.
func (s *suite) testRefresh(t *testing.T) {
	t.Parallel()
	a := s.NewAccount(t, harness.DayTokens(1_000_000))
	code, body := s.refresh(t, a.Env["OPENAI_BASE_URL"], a.Env["OPENAI_API_KEY"])
	if code != http.StatusOK {
		t.Fatalf("refresh: %d %s", code, body)
	}
	var r struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		ExpiresIn   int64  `json:"expires_in"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("refresh answer %s: %v", body, err)
	}
	if r.AccessToken == "" || !strings.EqualFold(r.TokenType, "bearer") || r.ExpiresIn <= 0 || r.ExpiresIn > 24*3600 {
		t.Fatalf("refresh answer %s, want a bearer access_token valid for up to the 24h TTL", body)
	}
	c := harness.NewClient(a.Env["OPENAI_BASE_URL"], r.AccessToken)
	if _, err := c.Chat.Completions.New(t.Context(), chatParams("Hello")); err != nil {
		t.Fatalf("chat with the refreshed token: %v", err)
	}
	if code, body := s.refresh(t, a.Env["OPENAI_BASE_URL"], ""); code != http.StatusUnauthorized {
		t.Errorf("refresh without a token: %d %s, want 401", code, body)
	}
}

// refresh POSTs to /auth/refresh beside the OpenAI base URL, as a client
// that knows only OPENAI_BASE_URL would.
func (s *suite) refresh(t *testing.T, baseURL, token string) (int, []byte) {
	t.Helper()
	url := strings.TrimSuffix(baseURL, "/v1") + "/auth/refresh"
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("POST %s: reading the answer: %v", url, err)
	}
	return resp.StatusCode, b
}

// checkRetryAfter checks Retry-After is whole seconds within the window.
func checkRetryAfter(t *testing.T, h http.Header, window time.Duration) {
	t.Helper()
	ra := h.Get("Retry-After")
	n, err := strconv.Atoi(ra)
	if err != nil || n < 1 || time.Duration(n)*time.Second > window {
		t.Errorf("Retry-After = %q, want whole seconds between 1 and %s", ra, window)
	}
}
