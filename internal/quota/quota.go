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

// Amount is a quantity of usage: what a request is admitted with (its
// reservation) and what it is charged.
type Amount struct {
	Requests     int64
	InputTokens  int64
	OutputTokens int64
	// CachedInputTokens are the input tokens the model server found in its
	// prefix cache: a part of InputTokens, priced apart. A reservation holds
	// none (it cannot know them); only a charge has them.
	CachedInputTokens int64
	// Cost is what the tokens cost, in pico-units of the quota's currency
	// (see money.go): for a reservation the most they can cost, for a
	// charge what they cost.
	Cost int64
}

// Total is input plus output tokens.
func (a Amount) Total() int64 { return a.InputTokens + a.OutputTokens }

// Add returns a+b; the cost saturates at [MaxCost].
func (a Amount) Add(b Amount) Amount {
	return Amount{a.Requests + b.Requests, a.InputTokens + b.InputTokens, a.OutputTokens + b.OutputTokens,
		a.CachedInputTokens + b.CachedInputTokens, addSat(a.Cost, b.Cost)}
}

// Sub returns a-b.
func (a Amount) Sub(b Amount) Amount {
	return Amount{a.Requests - b.Requests, a.InputTokens - b.InputTokens, a.OutputTokens - b.OutputTokens,
		a.CachedInputTokens - b.CachedInputTokens, a.Cost - b.Cost}
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
	// Cost caps the cost, in pico-units.
	Cost *int64
	// Soft caps never refuse (overage: Demote): a request they have no
	// room for is admitted as overflow ([Decision.Overflow]).
	Soft bool
	// Ceiling is the hard caps above soft ones (hardLimit), enforced as any
	// limit of the same window; nil for none. Its Window, Soft and Ceiling
	// are ignored.
	Ceiling *Limit
}

// LimitsFromSpec converts an LLMQuota's limits.
func LimitsFromSpec(in []llmv1alpha1.QuotaLimit) []Limit {
	out := make([]Limit, 0, len(in))
	for _, l := range in {
		lim := Limit{Window: l.Window, Tokens: l.Tokens, InputTokens: l.InputTokens, OutputTokens: l.OutputTokens,
			Requests: l.Requests, Cost: costCap(l.Cost), Soft: l.Overage == llmv1alpha1.OverageDemote}
		if h := l.HardLimit; h != nil && lim.Soft {
			lim.Ceiling = &Limit{Window: l.Window, Tokens: h.Tokens, InputTokens: h.InputTokens, OutputTokens: h.OutputTokens,
				Requests: h.Requests, Cost: costCap(h.Cost)}
		}
		out = append(out, lim)
	}
	return out
}

// HasSoft reports whether any of b's limits is soft: only then can its
// requests be overflow.
func (b Budget) HasSoft() bool {
	return slices.ContainsFunc(b.Limits, func(l Limit) bool { return l.Soft })
}

// OverflowKey is the key of the counters that count what budget key was
// charged for overflow.
func OverflowKey(budget string) string { return "overflow/" + budget }

// OverflowBudget is the tally of b's overflow: the same windows, no caps.
// Its windows count the part of b's usage that was admitted past a soft
// limit; b's own windows count it as well.
func OverflowBudget(b Budget) Budget {
	o := Budget{Key: OverflowKey(b.Key), Kind: b.Kind, Namespace: b.Namespace, Name: b.Name, UID: b.UID,
		Limits: make([]Limit, 0, len(b.Limits)), Tag: TagOf(b)}
	for _, l := range b.Limits {
		o.Limits = append(o.Limits, Limit{Window: l.Window})
	}
	return o
}

// overflowBudgets are the overflow tallies of a request's budgets.
func overflowBudgets(bs []Budget) []Budget {
	out := make([]Budget, 0, len(bs))
	for _, b := range bs {
		out = append(out, OverflowBudget(b))
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
	// ResourceCost is the cost, in pico-units of the quota's currency.
	ResourceCost Resource = "cost"
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
	// Tag groups the budgets one request draws on: on Redis Cluster every
	// key of a budget lives in the hash slot of its tag, so that one script
	// can touch all of a request's budgets. UserBudget and PoolBudget set it
	// to the key; a Shared quota's user tally takes its pool's
	// ([BudgetsFor]); a budget derived from another copies it.
	Tag string
}

// UserBudget is the budget of an LLMUser's own counters.
func UserBudget(namespace, name, uid string, limits []Limit, dryRun bool) Budget {
	key := UserKey(namespace, name, uid)
	return Budget{Key: key, Kind: BudgetUser, Namespace: namespace, Name: name, UID: uid, Limits: limits, DryRun: dryRun, Tag: key}
}

// PoolBudget is the budget of a Shared LLMQuota's pooled counters.
func PoolBudget(namespace, name, uid string, limits []Limit, dryRun bool) Budget {
	key := PoolKey(namespace, name, uid)
	return Budget{Key: key, Kind: BudgetPool, Namespace: namespace, Name: name, UID: uid, Limits: limits, DryRun: dryRun, Tag: key}
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
	// Model is the model the request runs: its usage is split by model in
	// each window it is charged to.
	Model string
	// Price is the model's price. Reserve sets Estimate.Cost to the most the
	// estimate can cost at it ([Price.Bound]), and lowers it with the output
	// when OutputStep lets it lower the output.
	Price Price
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
	// Models splits Used by model ([Counter.Status] only; a Decision's
	// windows leave it nil): the first [MaxModels] models charged in the
	// window by name, in name order, then the rest as [OtherModels].
	Models []ModelAmount
}

// ModelAmount is what one model was charged in a window.
type ModelAmount struct {
	Model string
	Amount
}

// MaxModels is how many models a window counts apart; the usage of any
// further model is summed under [OtherModels]. It bounds what a window
// keeps, in memory, in Redis and in status, whatever the models served.
const MaxModels = 10

// OtherModels names the usage of the models past the first MaxModels of a
// window.
const OtherModels = "other"

// chargeModel adds a to model's entry of ms: a new entry while fewer than
// MaxModels are named, else the OtherModels one.
func chargeModel(ms []ModelAmount, model string, a Amount) []ModelAmount {
	named := 0
	other := -1
	for i := range ms {
		switch ms[i].Model {
		case model:
			ms[i].Amount = ms[i].Add(a)
			return ms
		case OtherModels:
			other = i
		default:
			named++
		}
	}
	if model != OtherModels && model != "" && named < MaxModels {
		return append(ms, ModelAmount{Model: model, Amount: a})
	}
	if other < 0 {
		return append(ms, ModelAmount{Model: OtherModels, Amount: a})
	}
	ms[other].Amount = ms[other].Add(a)
	return ms
}

// sortModels puts models in name order, OtherModels last.
func sortModels(ms []ModelAmount) []ModelAmount {
	slices.SortFunc(ms, func(a, b ModelAmount) int {
		switch {
		case a.Model == b.Model:
			return 0
		case a.Model == OtherModels:
			return 1
		case b.Model == OtherModels:
			return -1
		case a.Model < b.Model:
			return -1
		}
		return 1
	})
	return ms
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
	// Overflow: a soft limit had no room for the grant, so the request was
	// admitted past it; Overage names that limit. Its charge is also counted
	// in each budget's [OverflowBudget].
	Overflow bool
	Overage  *Exceeded
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
	// Model is the request's model, under which it is charged.
	Model string
	// ID is unique within the process.
	ID uint64
	// Overflow are the overflow tallies ([OverflowBudget]) the charge also
	// goes to, when the request was admitted past a soft limit.
	Overflow []Budget
	// Marks name the objects whose status a charge of it changes
	// ([Charge.Objects]). The [Redis] counter records them with the charge,
	// in one script, so that when the replica dies before it tells their
	// writers, a survivor finds them ([Redis.Recent]).
	Marks []string
	// concurrency is the in-flight counter held, "" if none.
	concurrency string
	// settled is set by the Memory counter once it settled r.
	settled bool
}

// reservationIDs numbers every reservation of the process, whichever
// counter made it.
var reservationIDs atomic.Uint64

// Unreserved returns a reservation of req that holds nothing, for a request
// admitted without the counter (a shared store that failed open). Settling
// it charges the budgets' windows current at at, like any reservation made
// then.
func Unreserved(req Request, at time.Time) *Reservation {
	return &Reservation{Budgets: slices.Clone(req.Budgets), At: at, Model: req.Model, ID: reservationIDs.Add(1)}
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
	// to at least used (per field), and each model's share to at least what
	// models say. Counts already higher are kept. It restores what status
	// recorded before a restart; a window that has ended is ignored.
	// Only the budget's Key and Tag are read.
	Seed(ctx context.Context, b Budget, w llmv1alpha1.Window, start time.Time, used Amount, models []ModelAmount) error
	// Lifetime returns everything charged to a budget, in every window,
	// since its counters began or were seeded. Only its Key and Tag are read.
	Lifetime(ctx context.Context, b Budget) (Amount, error)
	// SeedLifetime raises a budget's lifetime to at least used (per field).
	SeedLifetime(ctx context.Context, b Budget, used Amount) error
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
	return Amount{max(a.Requests, b.Requests), max(a.InputTokens, b.InputTokens), max(a.OutputTokens, b.OutputTokens),
		max(a.CachedInputTokens, b.CachedInputTokens), max(a.Cost, b.Cost)}
}

// raiseModels raises each model's share in ms to at least seed's, adding the
// models ms lacks while it names fewer than MaxModels.
func raiseModels(ms, seed []ModelAmount) []ModelAmount {
	for _, s := range seed {
		s.Amount = nonNegative(s.Amount)
		i := slices.IndexFunc(ms, func(m ModelAmount) bool { return m.Model == s.Model })
		if i >= 0 {
			ms[i].Amount = raise(ms[i].Amount, s.Amount)
			continue
		}
		if n := len(ms) - count(ms, OtherModels); s.Model == OtherModels || n < MaxModels {
			ms = append(ms, s)
		}
	}
	return ms
}

func count(ms []ModelAmount, model string) int {
	n := 0
	for _, m := range ms {
		if m.Model == model {
			n++
		}
	}
	return n
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

// Objects names the objects whose status c changes: its LLMUser, and its
// LLMQuota when it went to the quota's Shared pool, as
// "<kind>/<namespace>/<name>/<uid>" with kind 0 for an LLMUser and 1 for an
// LLMQuota. None when c has no user.
func (c Charge) Objects() []string {
	if c.User == "" {
		return nil
	}
	out := []string{"0/" + c.Namespace + "/" + c.User + "/" + c.UserUID}
	if c.Pool && c.Quota != "" {
		out = append(out, "1/"+c.Namespace+"/"+c.Quota+"/"+c.QuotaUID)
	}
	return out
}

// Cap is l's cap of resource r, nil when uncapped.
func (l Limit) Cap(r Resource) *int64 {
	switch r {
	case ResourceTokens:
		return l.Tokens
	case ResourceInputTokens:
		return l.InputTokens
	case ResourceOutputTokens:
		return l.OutputTokens
	case ResourceRequests:
		return l.Requests
	case ResourceCost:
		return l.Cost
	}
	return nil
}

// Held is what a resource counts of what the window holds: charged, and
// reserved by requests in flight.
func (s WindowStatus) Held(r Resource) int64 { return usedOf(r, s.Used.Add(s.Reserved)) }

// Left returns what is left of the window's cap of r, charged and reserved
// usage both counted, never below zero; ok is false when r is uncapped. It
// is the one computation behind the rate-limit headers, GET /v1/usage, the
// budget gauges and the remaining fields of status.
func (s WindowStatus) Left(r Resource) (left int64, ok bool) {
	c := s.Limit.Cap(r)
	if c == nil {
		return 0, false
	}
	return max(*c-s.Held(r), 0), true
}

// Remaining returns what is left under the limit's tightest token cap and its
// requests cap (nil when uncapped), never below zero.
func (s WindowStatus) Remaining() (tokens, requests *int64) {
	for _, r := range []Resource{ResourceTokens, ResourceInputTokens, ResourceOutputTokens} {
		if v, ok := s.Left(r); ok && (tokens == nil || v < *tokens) {
			tokens = &v
		}
	}
	if v, ok := s.Left(ResourceRequests); ok {
		requests = &v
	}
	return tokens, requests
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
