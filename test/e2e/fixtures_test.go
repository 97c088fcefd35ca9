package e2e_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
)

// userName is the LLMUser every subtest creates in its own namespace.
const userName = "alice"

// account is an LLMUser with its quota, as the operator left it: the token
// Secret's keys and an SDK client built from them.
type account struct {
	ns, name string
	// env is the Secret's data, as envFrom would put it in a pod.
	env    map[string]string
	client openai.Client
}

// key names the LLMUser.
func (a *account) key() types.NamespacedName {
	return types.NamespacedName{Namespace: a.ns, Name: a.name}
}

// newAccount creates a namespace named after t, an LLMQuota "quota" with
// spec q and an LLMUser referencing it, then waits for the operator to issue
// the token Secret.
func (s *suite) newAccount(t *testing.T, q llmv1alpha1.LLMQuotaSpec) *account {
	t.Helper()
	ctx := t.Context()
	ns := namespaceFor(t)
	s.mustCreate(t, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
	s.mustCreate(t, &llmv1alpha1.LLMQuota{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "quota"}, Spec: q})
	s.mustCreate(t, &llmv1alpha1.LLMUser{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: userName},
		Spec:       llmv1alpha1.LLMUserSpec{QuotaRef: llmv1alpha1.QuotaReference{Name: "quota"}},
	})

	a := &account{ns: ns, name: userName}
	var sec corev1.Secret
	eventually(t, 30*time.Second, func() (bool, string) {
		var cur llmv1alpha1.LLMUser
		if err := s.c.Get(ctx, a.key(), &cur); err != nil {
			return false, err.Error()
		}
		if !meta.IsStatusConditionTrue(cur.Status.Conditions, llmv1alpha1.ConditionReady) {
			return false, "LLMUser not Ready: " + toJSON(cur.Status.Conditions)
		}
		// The default Secret name, which pods' envFrom refer to.
		if err := s.c.Get(ctx, types.NamespacedName{Namespace: ns, Name: userName + "-llm-token"}, &sec); err != nil {
			return false, err.Error()
		}
		return len(sec.Data["OPENAI_API_KEY"]) > 0, "Secret has no OPENAI_API_KEY yet"
	})
	a.env = map[string]string{}
	for k, v := range sec.Data {
		a.env[k] = string(v)
	}
	a.client = newClient(a.env["OPENAI_BASE_URL"], a.env["OPENAI_API_KEY"])
	return a
}

// newClient is the SDK client a pod would build from OPENAI_BASE_URL and
// OPENAI_API_KEY. Retries are off: a retried request is charged again, and
// the tests count requests exactly.
func newClient(baseURL, apiKey string) openai.Client {
	return openai.NewClient(
		option.WithBaseURL(baseURL),
		option.WithAPIKey(apiKey),
		option.WithMaxRetries(0),
		option.WithRequestTimeout(30*time.Second),
	)
}

var notDNS = regexp.MustCompile(`[^a-z0-9]+`)

// namespaceFor names a namespace after the subtest, so that a failure's
// objects are easy to find in the logs: TestE2E/Models/Allowed uses
// e2e-models-allowed.
func namespaceFor(t *testing.T) string {
	_, name, _ := strings.Cut(t.Name(), "/")
	name = strings.Trim(notDNS.ReplaceAllString(strings.ToLower(name), "-"), "-")
	return "e2e-" + name[:min(len(name), 50)]
}

func (s *suite) mustCreate(t *testing.T, obj client.Object) {
	t.Helper()
	if err := s.c.Create(t.Context(), obj); err != nil {
		t.Fatalf("creating %T %s/%s: %v", obj, obj.GetNamespace(), obj.GetName(), err)
	}
}

// eventually polls cond every 100ms until it holds, failing t with cond's
// last explanation after timeout.
func eventually(t *testing.T, timeout time.Duration, cond func() (ok bool, why string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not true after %s: %s", timeout, why)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("test ended while waiting: %s", why)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitUser polls the account's LLMUser until cond holds and returns it.
func (s *suite) waitUser(t *testing.T, a *account, cond func(u *llmv1alpha1.LLMUser) (bool, string)) *llmv1alpha1.LLMUser {
	t.Helper()
	var u llmv1alpha1.LLMUser
	eventually(t, flushWait, func() (bool, string) {
		if err := s.c.Get(t.Context(), a.key(), &u); err != nil {
			return false, err.Error()
		}
		ok, why := cond(&u)
		return ok, why + "; status: " + toJSON(u.Status)
	})
	return &u
}

// waitStatus polls the account's LLMUser until cond holds for its status
// and returns that status.
func (s *suite) waitStatus(t *testing.T, a *account, cond func(st *llmv1alpha1.LLMUserStatus) (bool, string)) llmv1alpha1.LLMUserStatus {
	t.Helper()
	return s.waitUser(t, a, func(u *llmv1alpha1.LLMUser) (bool, string) { return cond(&u.Status) }).Status
}

// waitCharged waits until status counts n requests, in the first window
// and in the lifetime totals, and returns the status. A charge carries its
// request and its tokens together, so the tokens are all in by then too.
func (s *suite) waitCharged(t *testing.T, a *account, n int64) llmv1alpha1.LLMUserStatus {
	t.Helper()
	return s.waitStatus(t, a, func(st *llmv1alpha1.LLMUserStatus) (bool, string) {
		ok := len(st.Usage) > 0 && st.Usage[0].Requests >= n && st.Lifetime != nil && st.Lifetime.Requests >= n
		return ok, fmt.Sprintf("want %d requests in status.usage[0] and status.lifetime", n)
	})
}

// checkCharged checks that the first window and the lifetime totals are
// exactly want.
func checkCharged(t *testing.T, st llmv1alpha1.LLMUserStatus, want llmv1alpha1.UsageTotals) {
	t.Helper()
	w := st.Usage[0]
	if got := (llmv1alpha1.UsageTotals{Requests: w.Requests, InputTokens: w.InputTokens, OutputTokens: w.OutputTokens, TotalTokens: w.TotalTokens}); got != want {
		t.Errorf("status.usage[0] (%s) counts %+v, want %+v", w.Window, got, want)
	}
	if *st.Lifetime != want {
		t.Errorf("status.lifetime counts %+v, want %+v", *st.Lifetime, want)
	}
}

// totals adds up usage reported to the client.
func totals(us ...openai.CompletionUsage) llmv1alpha1.UsageTotals {
	var t llmv1alpha1.UsageTotals
	for _, u := range us {
		t.Requests++
		t.InputTokens += u.PromptTokens
		t.OutputTokens += u.CompletionTokens
		t.TotalTokens += u.TotalTokens
	}
	return t
}

// dayTokens is a quota of n tokens a day. With a large n it never gets in
// the way and only gives status.usage a window to report.
func dayTokens(n int64) llmv1alpha1.LLMQuotaSpec {
	return llmv1alpha1.LLMQuotaSpec{Limits: []llmv1alpha1.QuotaLimit{{Window: llmv1alpha1.WindowDay, Tokens: ptr.To(n)}}}
}

// chatParams asks for a short answer to prompt.
func chatParams(prompt string) openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model:     modelID,
		Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage(prompt)},
		MaxTokens: openai.Int(16),
	}
}

// apiError returns err as the SDK's API error, failing t if it is not one
// with the wanted status.
func apiError(t *testing.T, err error, status int) *openai.Error {
	t.Helper()
	var e *openai.Error
	if !errors.As(err, &e) {
		t.Fatalf("got error %v (%T), want an *openai.Error with status %d", err, err, status)
	}
	if e.StatusCode != status {
		t.Fatalf("status %d (%s), want %d; body: %s", e.StatusCode, e.Type, status, e.RawJSON())
	}
	return e
}

// userMetrics are one user's series of the proxy's per-user counters.
type userMetrics struct {
	// InputTokens and OutputTokens are llm_proxy_tokens_total over every model.
	InputTokens, OutputTokens int64
	// Requests is llm_proxy_requests_total by HTTP status code.
	Requests map[string]int64
}

// scrapeUser reads the per-user counters of ns/user from the proxy's /metrics.
func scrapeUser(t *testing.T, metricsURL, ns, user string) userMetrics {
	t.Helper()
	resp, err := http.Get(metricsURL)
	if err != nil {
		t.Fatalf("scraping %s: %v", metricsURL, err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing %s: %v", metricsURL, err)
	}
	um := userMetrics{Requests: map[string]int64{}}
	each := func(name string, f func(labels map[string]string, v int64)) {
		for _, m := range fams[name].GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["namespace"] == ns && labels["user"] == user {
				f(labels, int64(m.GetCounter().GetValue()))
			}
		}
	}
	each("llm_proxy_tokens_total", func(l map[string]string, v int64) {
		switch l["type"] {
		case "input":
			um.InputTokens += v
		case "output":
			um.OutputTokens += v
		}
	})
	each("llm_proxy_requests_total", func(l map[string]string, v int64) { um.Requests[l["code"]] += v })
	return um
}

// checkMetrics checks that the proxy's counters for the account say what
// want says, with every request recorded as a 200.
func checkMetrics(t *testing.T, metricsURL string, a *account, want llmv1alpha1.UsageTotals) {
	t.Helper()
	m := scrapeUser(t, metricsURL, a.ns, a.name)
	if m.InputTokens != want.InputTokens || m.OutputTokens != want.OutputTokens {
		t.Errorf("llm_proxy_tokens_total input=%d output=%d, want %d and %d", m.InputTokens, m.OutputTokens, want.InputTokens, want.OutputTokens)
	}
	if m.Requests["200"] != want.Requests || len(m.Requests) != 1 {
		t.Errorf("llm_proxy_requests_total by code %v, want {200: %d}", m.Requests, want.Requests)
	}
}

func toJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}
