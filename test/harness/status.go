package harness

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"

	"github.com/openai/openai-go/v3"
	"k8s.io/utils/ptr"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
)

// ReadStatus returns the account's LLMUser status as the API server has it.
func (e *Env) ReadStatus(t testing.TB, a *Account) llmv1alpha1.LLMUserStatus {
	t.Helper()
	var u llmv1alpha1.LLMUser
	if err := e.Client.Get(t.Context(), a.Key(), &u); err != nil {
		t.Fatalf("reading LLMUser %s: %v", a.Key(), err)
	}
	return u.Status
}

// WaitUser polls the account's LLMUser for up to FlushWait until cond holds,
// and returns it.
func (e *Env) WaitUser(t testing.TB, a *Account, cond func(u *llmv1alpha1.LLMUser) (bool, string)) *llmv1alpha1.LLMUser {
	t.Helper()
	var u llmv1alpha1.LLMUser
	poll.Until(t, e.FlushWait, func() error {
		if err := e.Client.Get(t.Context(), a.Key(), &u); err != nil {
			return err
		}
		ok, why := cond(&u)
		return poll.Check(ok, why+"; status: "+ToJSON(u.Status))
	})
	return &u
}

// WaitRequests waits until status counts at least n requests, in the first
// window and in the lifetime totals, and returns the status. A charge
// carries its request and its tokens together, so the tokens are all in by
// then too.
func (e *Env) WaitRequests(t testing.TB, a *Account, n int64) llmv1alpha1.LLMUserStatus {
	t.Helper()
	return e.WaitUser(t, a, func(u *llmv1alpha1.LLMUser) (bool, string) {
		st := &u.Status
		ok := len(st.Usage) > 0 && st.Usage[0].Requests >= n && st.Lifetime != nil && st.Lifetime.Requests >= n
		return ok, fmt.Sprintf("want %d requests in status.usage[0] and status.lifetime", n)
	}).Status
}

// WaitCharged waits until status counts at least want.Requests, in the
// first window and in lifetime, then checks both are exactly want: waiting
// for the count and not for equality makes a double count fail at once
// rather than at the timeout.
func (e *Env) WaitCharged(t testing.TB, a *Account, want llmv1alpha1.UsageTotals) llmv1alpha1.LLMUserStatus {
	t.Helper()
	st := e.WaitRequests(t, a, want.Requests)
	CheckCharged(t, st, want)
	return st
}

// Charged is what the status records in its first window and in lifetime.
func Charged(st llmv1alpha1.LLMUserStatus) (window, lifetime llmv1alpha1.UsageTotals) {
	if len(st.Usage) > 0 {
		w := st.Usage[0]
		window = llmv1alpha1.UsageTotals{Requests: w.Requests, InputTokens: w.InputTokens, OutputTokens: w.OutputTokens, TotalTokens: w.TotalTokens}
	}
	if st.Lifetime != nil {
		lifetime = *st.Lifetime
	}
	return window, lifetime
}

// CheckCharged checks that the first window and the lifetime totals are
// exactly want.
func CheckCharged(t testing.TB, st llmv1alpha1.LLMUserStatus, want llmv1alpha1.UsageTotals) {
	t.Helper()
	window, lifetime := Charged(st)
	if len(st.Usage) == 0 {
		t.Errorf("status.usage is empty, want %+v in its first window", want)
	} else if window != want {
		t.Errorf("status.usage[0] (%s) counts %+v, want %+v", st.Usage[0].Window, window, want)
	}
	if lifetime != want {
		t.Errorf("status.lifetime counts %+v, want %+v", lifetime, want)
	}
}

// Totals adds up usage reported to the client.
func Totals(us ...openai.CompletionUsage) llmv1alpha1.UsageTotals {
	var t llmv1alpha1.UsageTotals
	for _, u := range us {
		addUsage(&t, u)
	}
	return t
}

func addUsage(t *llmv1alpha1.UsageTotals, u openai.CompletionUsage) {
	t.Requests++
	t.InputTokens += u.PromptTokens
	t.OutputTokens += u.CompletionTokens
	t.TotalTokens += u.TotalTokens
}

// Ledger adds up the usage the clients were told about: the ground truth
// status must match. It is safe for concurrent use; the zero value is
// empty.
type Ledger struct {
	mu sync.Mutex
	t  llmv1alpha1.UsageTotals
}

// Add records one answered request and its usage.
func (l *Ledger) Add(u openai.CompletionUsage) {
	l.mu.Lock()
	defer l.mu.Unlock()
	addUsage(&l.t, u)
}

// Total is what the ledger holds so far.
func (l *Ledger) Total() llmv1alpha1.UsageTotals {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.t
}

// DayTokens is a quota of n tokens a day. With a large n it never gets in
// the way and only gives status.usage a window to report.
func DayTokens(n int64) llmv1alpha1.LLMQuotaSpec {
	return llmv1alpha1.LLMQuotaSpec{Limits: []llmv1alpha1.QuotaLimit{{Window: llmv1alpha1.WindowDay, Tokens: ptr.To(n)}}}
}

// ChatParams asks model for at most maxTokens tokens in answer to prompt.
func ChatParams(model, prompt string, maxTokens int64) openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model:     model,
		Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage(prompt)},
		MaxTokens: openai.Int(maxTokens),
	}
}

// ToJSON renders v for a failure message.
func ToJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}
