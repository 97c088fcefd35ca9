// Package quota owns usage budgets: calendar windows, per-user and per-shared-
// quota counters of requests and tokens, per-user limits on requests in
// flight, and reservations that are settled to the real usage once a request
// is done. It also defines the [Charge] every settled request reports to the
// usage write-back. It knows nothing of HTTP or of the Kubernetes API; the
// clock is injected.
package quota

import (
	"context"
	"slices"
	"sync/atomic"
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

// The resources a Limit (or, for Concurrency, a Concurrency) can cap.
const (
	ResourceTokens       Resource = "tokens"
	ResourceInputTokens  Resource = "input_tokens"
	ResourceOutputTokens Resource = "output_tokens"
	ResourceRequests     Resource = "requests"
	// ResourceConcurrency is requests in flight at once; it has no window.
	ResourceConcurrency Resource = "concurrent_requests"
)

// BudgetKind says whose counters a budget is.
type BudgetKind uint8

const (
	// BudgetUser is one LLMUser's own budget (a PerUser quota).
	BudgetUser BudgetKind = iota
	// BudgetPool is a Shared LLMQuota's pool, drawn on by all its users.
	BudgetPool
)

// Budget is one set of counters with its limits: a user's own budget or a
// Shared quota's pool. Build it with [UserBudget] or [PoolBudget]: its Key
// names the object's uid, so an object deleted and created again under the
// same name starts from zero.
type Budget struct {
	// Key is stable and unique; it names the counters in every store.
	Key  string
	Kind BudgetKind
	// Namespace and Name name the LLMUser (BudgetUser) or the LLMQuota
	// (BudgetPool); UID is that object's uid.
	Namespace, Name, UID string
	Limits               []Limit
	// DryRun budgets never refuse; the Decision still says what would have been refused.
	DryRun bool
	// Thresholds are the percentages of a limit whose crossing is worth
	// telling at once (alerts); 100 is always one.
	Thresholds []int32
}

// UserBudget is the budget of an LLMUser's own counters.
func UserBudget(namespace, name, uid string, limits []Limit, dryRun bool) Budget {
	return Budget{Key: UserKey(namespace, name, uid), Kind: BudgetUser, Namespace: namespace, Name: name, UID: uid, Limits: limits, DryRun: dryRun}
}

// PoolBudget is the budget of a Shared LLMQuota's pooled counters.
func PoolBudget(namespace, name, uid string, limits []Limit, dryRun bool) Budget {
	return Budget{Key: PoolKey(namespace, name, uid), Kind: BudgetPool, Namespace: namespace, Name: name, UID: uid, Limits: limits, DryRun: dryRun}
}

// UserKey is the budget key of a user's own counters.
func UserKey(namespace, name, uid string) string { return "user/" + namespace + "/" + name + "/" + uid }

// PoolKey is the budget key of a Shared quota's pooled counters.
func PoolKey(namespace, name, uid string) string {
	return "quota/" + namespace + "/" + name + "/" + uid
}

// Concurrency caps one user's requests in flight at once, across every
// replica that shares the Counter.
type Concurrency struct {
	// Key names the user's in-flight counter; UserKey of the user.
	Key   string
	Limit int64
	// DryRun reports a request over the limit without refusing it.
	DryRun bool
}

// Request asks to reserve Estimate in every budget at once.
type Request struct {
	Budgets  []Budget
	Estimate Amount
	// OutputStep, when above zero, lets Reserve lower Estimate.OutputTokens
	// to what the enforcing limits have room for: a multiple of OutputStep
	// (the proxy passes the number of sequences the request generates, so
	// that every sequence gets the same whole number of tokens), at least
	// OutputStep. The request is refused only when not even that fits.
	OutputStep int64
	// Concurrency, when set, also holds one of the user's in-flight slots
	// until Settle.
	Concurrency *Concurrency
}

// Exceeded describes the limit that refused a request.
type Exceeded struct {
	// Budget is the key of the budget whose limit refused; for
	// ResourceConcurrency the concurrency key.
	Budget   string
	Window   llmv1alpha1.Window
	Resource Resource
	Limit    int64
	// Used includes outstanding reservations, not this request's.
	Used int64
	// ResetAt is when the window ends; zero for ResourceConcurrency.
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
	// Allowed is false when an enforcing limit has no room.
	Allowed bool
	// Granted is what was reserved: the estimate, or with OutputStep
	// possibly fewer output tokens. Zero when refused.
	Granted Amount
	// WouldGrant is what the dry-run limits would have granted had they
	// been enforced (equal to Granted when they have room): it tells a
	// request that would have been shortened.
	WouldGrant Amount
	// Exceeded is the limit without room (nil when every limit had room),
	// for an enforcing limit or, with Allowed true, a dry-run one.
	Exceeded *Exceeded
	// Windows is every window of every budget after the reservation (or
	// before it, when refused), in request order: for rate-limit headers.
	Windows []WindowStatus
}

// Reservation is usage held for a request in flight. Settle it exactly once.
type Reservation struct {
	Budgets []Budget
	// Amount is what was reserved (the Decision's Granted).
	Amount Amount
	// At is when the reservation was made. The request's usage counts in
	// the windows current then, wherever the clock is when it settles.
	At time.Time
	// ID is unique within the process.
	ID uint64
	// concurrency is the in-flight counter held, "" if none.
	concurrency string
	// settled is set by the Memory counter once it settled r.
	settled bool
}

// reservationIDs numbers every reservation of the process, whichever
// counter made it.
var reservationIDs atomic.Uint64

// Unreserved returns a reservation that holds nothing, for a request admitted
// without the counter (a shared store that failed open). Settling it charges
// the budgets' windows current at at, like any reservation made then.
func Unreserved(budgets []Budget, at time.Time) *Reservation {
	return &Reservation{Budgets: slices.Clone(budgets), At: at, ID: reservationIDs.Add(1)}
}

// Counter keeps budgets. Implementations are safe for concurrent use.
//
// Admission is reserve-then-settle: Reserve checks used+reserved+estimate
// against every limit of every budget atomically and holds the estimate;
// Settle swaps the hold for the real usage, in the windows the reservation
// was made in. A request whose estimate bounds its usage can therefore
// never take a window past its limit.
type Counter interface {
	// Reserve holds req.Estimate (or less, see Request.OutputStep) in every
	// budget, or refuses when an enforcing limit has no room. The
	// reservation is nil when refused.
	Reserve(ctx context.Context, req Request) (*Reservation, Decision, error)
	// Settle releases r and charges actual to the windows r was made in. A
	// zero actual releases the reservation without charging anything.
	// Settling r again changes nothing, so a Settle that failed, or whose
	// reply was lost, may be retried.
	Settle(ctx context.Context, r *Reservation, actual Amount) error
	// Status returns the budget's windows as of now, without changing them.
	Status(ctx context.Context, b Budget) ([]WindowStatus, error)
	// Seed raises the used amount of a budget's window that started at start
	// to at least used (per field). Counts already higher are kept. It restores
	// what status recorded before a restart; a window that has ended is ignored.
	Seed(ctx context.Context, budget string, w llmv1alpha1.Window, start time.Time, used Amount) error
	// Lifetime returns everything charged to a budget (by its key), in every
	// window, since its counters began or were seeded.
	Lifetime(ctx context.Context, budget string) (Amount, error)
	// SeedLifetime raises a budget's lifetime to at least used (per field).
	SeedLifetime(ctx context.Context, budget string, used Amount) error
}

// keys returns the distinct keys of budgets, in order.
func keys(budgets []Budget) []string {
	out := make([]string, 0, len(budgets))
	for _, b := range budgets {
		if !slices.Contains(out, b.Key) {
			out = append(out, b.Key)
		}
	}
	return out
}

// raise returns a with each field raised to at least b's.
func raise(a, b Amount) Amount {
	return Amount{max(a.Requests, b.Requests), max(a.InputTokens, b.InputTokens), max(a.OutputTokens, b.OutputTokens)}
}

// Charge is what one settled request cost: what the proxy reports to the
// usage write-back for the user's (and, when Pool, the Shared quota's) status.
type Charge struct {
	Namespace string
	// User and UserUID name the LLMUser; a write-back must not add the
	// usage to another object that took the same name.
	User, UserUID string
	// Quota and QuotaUID name the LLMQuota.
	Quota, QuotaUID string
	// Pool is true when the charge also went to the quota's Shared pool.
	Pool   bool
	Model  string
	Amount Amount
	// At is when the request was admitted: its usage counts in the windows
	// current then. Zero means now.
	At time.Time
	// Alert: admitting the request took one of its windows across an alert
	// threshold or to its limit (see [Crossed]), so its status is worth
	// writing before others'.
	Alert bool
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

// TightestTokens is the lowest of the limit's token caps (total, input,
// output), nil when it caps no tokens.
func (l Limit) TightestTokens() *int64 {
	var t *int64
	for _, v := range []*int64{l.Tokens, l.InputTokens, l.OutputTokens} {
		if v != nil && (t == nil || *v < *t) {
			t = v
		}
	}
	return t
}
