// Package quota owns usage budgets: calendar windows, per-user and per-shared-
// quota counters of requests and tokens, and reservations that are settled to
// the real usage once a request is done. It knows nothing of HTTP or of the
// Kubernetes API; the clock is injected.
package quota

import (
	"context"
	"time"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
)

// Amount is a quantity of usage.
type Amount struct {
	Requests     int64
	InputTokens  int64
	OutputTokens int64
}

// Total is input plus output tokens.
func (a Amount) Total() int64 { return a.InputTokens + a.OutputTokens }

// Add returns a+b.
func (a Amount) Add(b Amount) Amount {
	return Amount{a.Requests + b.Requests, a.InputTokens + b.InputTokens, a.OutputTokens + b.OutputTokens}
}

// Sub returns a-b.
func (a Amount) Sub(b Amount) Amount {
	return Amount{a.Requests - b.Requests, a.InputTokens - b.InputTokens, a.OutputTokens - b.OutputTokens}
}

// IsZero reports whether a counts nothing.
func (a Amount) IsZero() bool { return a == Amount{} }

// MinRequestTokens is the fewest tokens a generation request can be admitted
// with: the proxy's smallest prompt estimate (8 tokens of overhead) plus one
// output token. A window with fewer tokens left admits nothing more until it
// resets, so it counts as exhausted.
const MinRequestTokens = 9

// Limit caps usage in one window; a nil cap is unlimited.
type Limit struct {
	Window       llmv1alpha1.Window
	Tokens       *int64
	InputTokens  *int64
	OutputTokens *int64
	Requests     *int64
}

// LimitsFromSpec converts an LLMQuota's limits.
func LimitsFromSpec(in []llmv1alpha1.QuotaLimit) []Limit {
	out := make([]Limit, 0, len(in))
	for _, l := range in {
		out = append(out, Limit{Window: l.Window, Tokens: l.Tokens, InputTokens: l.InputTokens, OutputTokens: l.OutputTokens, Requests: l.Requests})
	}
	return out
}

// Resource names what a limit counts.
type Resource string

// The resources a Limit can cap.
const (
	ResourceTokens       Resource = "tokens"
	ResourceInputTokens  Resource = "input_tokens"
	ResourceOutputTokens Resource = "output_tokens"
	ResourceRequests     Resource = "requests"
)

// Budget is one set of counters with its limits: a user's own budget or a
// Shared quota's pool. Its Key is stable and unique, see UserKey and PoolKey.
type Budget struct {
	Key    string
	Limits []Limit
	// DryRun budgets never refuse; the Decision still says what would have been refused.
	DryRun bool
}

// UserKey is the budget key of a user's own counters.
func UserKey(namespace, name string) string { return "user/" + namespace + "/" + name }

// PoolKey is the budget key of a Shared quota's pooled counters.
func PoolKey(namespace, name string) string { return "quota/" + namespace + "/" + name }

// Request asks to reserve Estimate in every budget at once.
type Request struct {
	Budgets  []Budget
	Estimate Amount
}

// Exceeded describes the window and resource that refused a request.
type Exceeded struct {
	Budget   string
	Window   llmv1alpha1.Window
	Resource Resource
	Limit    int64
	// Used includes outstanding reservations, not this request's.
	Used    int64
	ResetAt time.Time
	// DryRun is true when the budget only reports and the request went ahead.
	DryRun bool
}

// WindowStatus is one budget's state in one window.
type WindowStatus struct {
	Budget  string
	Limit   Limit
	Start   time.Time
	ResetAt time.Time
	// Used is what was charged in the window.
	Used Amount
	// Reserved is held by requests in flight.
	Reserved Amount
}

// Decision is the outcome of Counter.Reserve.
type Decision struct {
	// Allowed is false when an enforcing budget has no room.
	Allowed bool
	// Exceeded is the first window without room (nil when every window had
	// room), for an enforcing budget or, with Allowed true, a dry-run one.
	Exceeded *Exceeded
	// Windows is every window of every budget after the reservation (or
	// before it, when refused), in request order: for rate-limit headers.
	Windows []WindowStatus
}

// Reservation is usage held for a request in flight. Settle it exactly once.
type Reservation struct {
	Budgets []Budget
	Amount  Amount
	// At is when the reservation was made; it is released from the windows
	// that were current then.
	At time.Time
	// ID is unique within the process.
	ID uint64
}

// Counter keeps budgets. Implementations are safe for concurrent use.
//
// Admission is reserve-then-settle: Reserve checks used+reserved+estimate
// against every limit of every budget atomically and holds the estimate;
// Settle swaps the hold for the real usage. Concurrent requests therefore
// cannot overshoot a limit by more than one request's reservation.
type Counter interface {
	// Reserve holds req.Estimate in every budget, or refuses when an
	// enforcing budget has no room. The reservation is nil when refused.
	Reserve(ctx context.Context, req Request) (*Reservation, Decision, error)
	// Settle releases r from the windows it was made in (if they are still
	// current) and charges actual to the windows current now. A zero actual
	// releases the reservation without charging anything.
	Settle(ctx context.Context, r *Reservation, actual Amount) error
	// Status returns the budget's windows as of now, without changing them.
	Status(ctx context.Context, b Budget) ([]WindowStatus, error)
	// Seed raises the used amount of a budget's window that started at start
	// to at least used (per field). Counts already higher are kept. It restores
	// what status recorded before a restart; a window that has ended is ignored.
	Seed(ctx context.Context, budget string, w llmv1alpha1.Window, start time.Time, used Amount) error
}

// Remaining returns what is left under the limit's tightest token cap and its
// requests cap (nil when uncapped), never below zero.
func (s WindowStatus) Remaining() (tokens, requests *int64) {
	held := s.Used.Add(s.Reserved)
	var t *int64
	pick := func(limit *int64, used int64) {
		if limit == nil {
			return
		}
		r := max(*limit-used, 0)
		if t == nil || r < *t {
			t = &r
		}
	}
	pick(s.Limit.Tokens, held.Total())
	pick(s.Limit.InputTokens, held.InputTokens)
	pick(s.Limit.OutputTokens, held.OutputTokens)
	if s.Limit.Requests != nil {
		r := max(*s.Limit.Requests-held.Requests, 0)
		requests = &r
	}
	return t, requests
}
