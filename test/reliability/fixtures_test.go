package reliability_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	dto "github.com/prometheus/client_model/go"
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

// account is an LLMUser with its quota, as the operator left it.
type account struct {
	ns, name string
	// apiKey is the token from the user's Secret (OPENAI_API_KEY).
	apiKey string
}

func (a *account) key() types.NamespacedName {
	return types.NamespacedName{Namespace: a.ns, Name: a.name}
}

// newAccount creates a namespace named after t, an LLMQuota "quota" with
// spec q and an LLMUser referencing it, then waits for the operator to issue
// the token Secret. (As test/e2e's newAccount.)
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
		if err := s.c.Get(ctx, types.NamespacedName{Namespace: ns, Name: userName + "-llm-token"}, &sec); err != nil {
			return false, err.Error()
		}
		return len(sec.Data["OPENAI_API_KEY"]) > 0, "Secret has no OPENAI_API_KEY yet"
	})
	a.apiKey = string(sec.Data["OPENAI_API_KEY"])
	return a
}

// newClient is the SDK client a pod would build, aimed at one proxy.
// Retries are off: a retried request is charged again, and the tests count
// requests exactly. Each client has its own connection pool, so that no
// connection to a proxy that was stopped is reused for the next one.
func newClient(baseURL, apiKey string) openai.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	return openai.NewClient(
		option.WithBaseURL(baseURL),
		option.WithAPIKey(apiKey),
		option.WithMaxRetries(0),
		option.WithRequestTimeout(30*time.Second),
		option.WithHTTPClient(&http.Client{Transport: tr}),
	)
}

var notDNS = regexp.MustCompile(`[^a-z0-9]+`)

// namespaceFor names a namespace after the subtest:
// TestReliability/Replicas/3 uses rel-replicas-3.
func namespaceFor(t *testing.T) string {
	_, name, _ := strings.Cut(t.Name(), "/")
	name = strings.Trim(notDNS.ReplaceAllString(strings.ToLower(name), "-"), "-")
	return "rel-" + name[:min(len(name), 50)]
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

// ledger adds up the usage the clients were told about: the ground truth
// status must match. It is safe for concurrent use.
type ledger struct {
	mu sync.Mutex
	t  llmv1alpha1.UsageTotals
}

func (l *ledger) add(u openai.CompletionUsage) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.t.Requests++
	l.t.InputTokens += u.PromptTokens
	l.t.OutputTokens += u.CompletionTokens
	l.t.TotalTokens += u.TotalTokens
}

func (l *ledger) total() llmv1alpha1.UsageTotals {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.t
}

// checkUsage fails t unless usage is a complete report: the SDK parsed it,
// and its total is the sum of its parts (status adds the parts).
func checkUsage(t *testing.T, what string, u openai.CompletionUsage, valid bool) {
	t.Helper()
	if !valid || u.PromptTokens == 0 || u.CompletionTokens == 0 || u.TotalTokens != u.PromptTokens+u.CompletionTokens {
		t.Errorf("%s: usage %s is missing or inconsistent", what, u.RawJSON())
	}
}

// readStatus returns the account's LLMUser status as the API server has it.
func (s *suite) readStatus(t *testing.T, a *account) llmv1alpha1.LLMUserStatus {
	t.Helper()
	var u llmv1alpha1.LLMUser
	if err := s.c.Get(t.Context(), a.key(), &u); err != nil {
		t.Fatalf("reading LLMUser %s: %v", a.key(), err)
	}
	return u.Status
}

// charged is what the status records in its first window and in lifetime.
func charged(st llmv1alpha1.LLMUserStatus) (window, lifetime llmv1alpha1.UsageTotals) {
	if len(st.Usage) > 0 {
		w := st.Usage[0]
		window = llmv1alpha1.UsageTotals{Requests: w.Requests, InputTokens: w.InputTokens, OutputTokens: w.OutputTokens, TotalTokens: w.TotalTokens}
	}
	if st.Lifetime != nil {
		lifetime = *st.Lifetime
	}
	return window, lifetime
}

// checkCharged checks that the first window and the lifetime totals are
// exactly want.
func checkCharged(t *testing.T, st llmv1alpha1.LLMUserStatus, want llmv1alpha1.UsageTotals) {
	t.Helper()
	window, lifetime := charged(st)
	if len(st.Usage) == 0 {
		t.Errorf("status.usage is empty, want %+v in its first window", want)
	} else if window != want {
		t.Errorf("status.usage[0] (%s) counts %+v, want %+v", st.Usage[0].Window, window, want)
	}
	if lifetime != want {
		t.Errorf("status.lifetime counts %+v, want %+v", lifetime, want)
	}
}

// waitCharged waits until status counts at least want.Requests, in the
// first window and in lifetime, then checks both are exactly want: waiting
// for the count and not for equality makes a double count fail at once
// rather than at the timeout.
func (s *suite) waitCharged(t *testing.T, a *account, want llmv1alpha1.UsageTotals) llmv1alpha1.LLMUserStatus {
	t.Helper()
	var st llmv1alpha1.LLMUserStatus
	eventually(t, flushWait, func() (bool, string) {
		st = s.readStatus(t, a)
		window, lifetime := charged(st)
		return window.Requests >= want.Requests && lifetime.Requests >= want.Requests,
			fmt.Sprintf("want %d requests in status.usage[0] and status.lifetime; status: %s", want.Requests, toJSON(st))
	})
	checkCharged(t, st, want)
	return st
}

// dayTokens is a quota of n tokens a day.
func dayTokens(n int64) llmv1alpha1.LLMQuotaSpec {
	return llmv1alpha1.LLMQuotaSpec{Limits: []llmv1alpha1.QuotaLimit{{Window: llmv1alpha1.WindowDay, Tokens: ptr.To(n)}}}
}

// chatParams asks for at most maxTokens tokens in answer to prompt.
func chatParams(prompt string, maxTokens int64) openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model:     modelID,
		Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage(prompt)},
		MaxTokens: openai.Int(maxTokens),
	}
}

// apiError returns err as the SDK's API error, or nil if it is another error.
func apiError(err error) *openai.Error {
	var e *openai.Error
	if errors.As(err, &e) {
		return e
	}
	return nil
}

// errorShape checks that e's body is exactly OpenAI's error shape,
// {"error":{"message":"...","type":"...","param":null,"code":"..."}}, with
// the wanted status, type and code, and returns what is wrong ("" if
// nothing).
func errorShape(e *openai.Error, status int, typ, code string) string {
	if e.StatusCode != status {
		return fmt.Sprintf("status %d, want %d", e.StatusCode, status)
	}
	body, err := io.ReadAll(e.Response.Body)
	if err != nil {
		return "reading the error body: " + err.Error()
	}
	var outer map[string]json.RawMessage
	if err := json.Unmarshal(body, &outer); err != nil || len(outer) != 1 || outer["error"] == nil {
		return fmt.Sprintf("body %s is not {\"error\":{...}}", body)
	}
	var inner map[string]any
	if err := json.Unmarshal(outer["error"], &inner); err != nil {
		return fmt.Sprintf("body %s: error is not an object", body)
	}
	for _, k := range []string{"message", "type", "param", "code"} {
		if _, ok := inner[k]; !ok {
			return fmt.Sprintf("body %s has no error.%s", body, k)
		}
	}
	if msg, _ := inner["message"].(string); msg == "" {
		return fmt.Sprintf("body %s has no message", body)
	}
	if inner["type"] != typ || inner["code"] != code {
		return fmt.Sprintf("body %s, want type %q and code %q", body, typ, code)
	}
	return ""
}

// metricSet is one scrape of a Prometheus endpoint.
type metricSet map[string]*dto.MetricFamily

// scrape reads url's metrics.
func scrape(t *testing.T, url string) metricSet {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scraping %s: %v", url, err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing %s: %v", url, err)
	}
	return fams
}

// value sums the counters or gauges named name whose labels include every
// pair of want (label=value). ok is false when no series matched.
func (m metricSet) value(name string, want ...string) (v float64, ok bool) {
	for _, s := range m[name].GetMetric() {
		labels := map[string]string{}
		for _, l := range s.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for _, kv := range want {
			k, val, _ := strings.Cut(kv, "=")
			match = match && labels[k] == val
		}
		if !match {
			continue
		}
		ok = true
		v += s.GetCounter().GetValue() + s.GetGauge().GetValue()
	}
	return v, ok
}

func toJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}
