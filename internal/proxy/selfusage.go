package proxy

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/openaiapi"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
	"github.com/llm-user-operator/llm-user-operator/internal/token"
)

// GET /v1/usage tells the holder of a token what they used, what is left,
// when it resets and when their token expires, without an administrator.
// It reads the counters admission reads (not status, which lags by a flush
// interval), so its remaining amounts are the ones the next request is
// admitted against. It is neither charged nor counted against any limit.
//
// The reply is [Usage]; api/openapi/llm-user-operator.yaml documents it.

// UsageObject is the "object" of every [Usage] reply.
const UsageObject = "llm.usage"

// UsageVersion is the "version" of the [Usage] shape. A field may be added
// within a version; renaming or removing one, or changing its meaning,
// makes a new version.
const UsageVersion = "v1"

// Usage is the reply of GET /v1/usage. Every field is always present:
// null stands for "not applicable" (no quota, no Shared pool), and the
// cost fields are omitted only when the quota has no pricing.
type Usage struct {
	// Object is always [UsageObject].
	Object string `json:"object"`
	// Version is the shape's version, [UsageVersion].
	Version string `json:"version"`
	// User is the caller.
	User UsageUser `json:"user"`
	// Token is the caller's token: its expiry, and whether it can be
	// exchanged for a fresh one at POST /auth/refresh.
	Token UsageToken `json:"token"`
	// Quota is the caller's LLMQuota; null when it does not exist (every
	// request is then refused with 403 quota_not_found).
	Quota *UsageQuota `json:"quota"`
	// Windows are the caller's own windows, in the order of the quota's
	// limits. For a Shared quota they carry no limit: they are the caller's
	// share of the pool, whose limits are in Shared. Empty when the quota
	// has no limits.
	Windows []UsageWindow `json:"windows"`
	// Lifetime is everything charged to the caller since their counters
	// began (or were restored from status when the proxy started).
	Lifetime UsageAmount `json:"lifetime"`
	// Shared is the pool of a Shared quota, drawn on by all its users;
	// null for a PerUser quota.
	Shared *UsagePool `json:"shared"`
}

// UsageUser names the LLMUser the token belongs to.
type UsageUser struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// UsageToken describes the bearer token the request was made with.
type UsageToken struct {
	// ExpiresAt is when the token stops working (RFC 3339, UTC); null for
	// a token without expiry, which the operator never issues.
	ExpiresAt *time.Time `json:"expires_at"`
	// ExpiresIn is the seconds left until ExpiresAt, never negative; null
	// with it.
	ExpiresIn *int64 `json:"expires_in"`
	// RefreshAllowed is the LLMUser's spec.token.allowRefresh: whether
	// POST /auth/refresh exchanges this token for a fresh one.
	RefreshAllowed bool `json:"refresh_allowed"`
}

// UsageQuota describes the caller's LLMQuota.
type UsageQuota struct {
	Name string `json:"name"`
	// Scope is PerUser (each user has the limits) or Shared (one pool for
	// all the quota's users).
	Scope llmv1alpha1.QuotaScope `json:"scope"`
	// Enforcement is Enforce (requests over a limit are refused) or DryRun
	// (they are counted and reported, never refused).
	Enforcement llmv1alpha1.Enforcement `json:"enforcement"`
	// Currency is the unit of every cost; omitted when the quota has no
	// pricing.
	Currency string `json:"currency,omitempty"`
	// MaxTokensPerRequest caps the output of one request; null when
	// uncapped.
	MaxTokensPerRequest *int64 `json:"max_tokens_per_request"`
	// MaxConcurrentRequests caps the requests in flight at once; null when
	// uncapped.
	MaxConcurrentRequests *int64 `json:"max_concurrent_requests"`
}

// UsagePool is a Shared quota's pool.
type UsagePool struct {
	// Quota is the LLMQuota's name (in the caller's namespace).
	Quota string `json:"quota"`
	// Windows are the pool's windows, with the quota's limits.
	Windows []UsageWindow `json:"windows"`
	// Lifetime is everything charged to the pool.
	Lifetime UsageAmount `json:"lifetime"`
}

// UsageWindow is one calendar window of a budget, as admission sees it now.
type UsageWindow struct {
	// Window is Minute, Hour, Day, Week or Month (calendar, UTC).
	Window llmv1alpha1.Window `json:"window"`
	// Start is when the window began; ResetsAt when it ends and its usage
	// starts again from zero (RFC 3339, UTC).
	Start    time.Time `json:"start"`
	ResetsAt time.Time `json:"resets_at"`
	// Used is what the requests that finished in the window were charged.
	Used UsageAmount `json:"used"`
	// Reserved is what requests still in flight hold: their prompt
	// estimate and the most output they may generate. It is released, and
	// the real usage charged, when each finishes.
	Reserved UsageAmount `json:"reserved"`
	// Limit is what the quota allows in the window, per unit; null when the
	// window caps nothing (a Shared quota's per-user tally).
	Limit *UsageUnits `json:"limit"`
	// Remaining is, for each unit Limit caps, the limit less used and
	// reserved, never below zero: what the next request is admitted
	// against, and what its x-ratelimit-remaining-* headers start from.
	// Null with Limit.
	Remaining *UsageUnits `json:"remaining"`
	// Models splits Used by model: the window's first models by name, the
	// usage of any further one summed under "other".
	Models []UsageModel `json:"models"`
	// Overage is "Demote" when Limit is soft: past it, requests are still
	// admitted, as overflow, up to HardLimit (if any). Absent for a hard
	// limit.
	Overage llmv1alpha1.Overage `json:"overage,omitempty"`
	// HardLimit is a soft limit's ceiling, past which requests are refused.
	HardLimit *UsageUnits `json:"hard_limit,omitempty"`
	// Overflow is the part of Used admitted past a soft limit; absent when
	// there was none.
	Overflow *UsageAmount `json:"overflow,omitempty"`
}

// UsageAmount is an amount of usage.
type UsageAmount struct {
	Requests    int64 `json:"requests"`
	InputTokens int64 `json:"input_tokens"`
	// CachedInputTokens is the part of InputTokens the model server found
	// in its prefix cache (priced apart).
	CachedInputTokens int64 `json:"cached_input_tokens"`
	OutputTokens      int64 `json:"output_tokens"`
	// TotalTokens is InputTokens plus OutputTokens.
	TotalTokens int64 `json:"total_tokens"`
	// Cost is what the tokens cost in the quota's currency, as an exact
	// decimal string ("0.0042"); omitted when the quota has no pricing.
	Cost string `json:"cost,omitempty"`
}

// UsageModel is one model's share of a window.
type UsageModel struct {
	Model string `json:"model"`
	UsageAmount
}

// UsageUnits has a value per unit a limit can cap; a unit the limit does
// not cap is omitted.
type UsageUnits struct {
	Requests     *int64 `json:"requests,omitempty"`
	Tokens       *int64 `json:"tokens,omitempty"`
	InputTokens  *int64 `json:"input_tokens,omitempty"`
	OutputTokens *int64 `json:"output_tokens,omitempty"`
	// Cost is in the quota's currency, as an exact decimal string.
	Cost *string `json:"cost,omitempty"`
}

// serveUsage answers GET /v1/usage.
func (p *Proxy) serveUsage(w http.ResponseWriter, r *http.Request) {
	if p.disableAuth {
		openaiapi.WriteError(w, http.StatusNotFound, openaiapi.TypeInvalidRequest, openaiapi.CodeNotFound, "",
			"GET /v1/usage needs a caller, and this proxy runs without authentication.")
		return
	}
	u, claims, ok := p.authenticate(w, r)
	if !ok {
		return
	}
	now := p.now()
	out, all, err := p.usageOf(r.Context(), &u, claims, now)
	if err != nil {
		p.log.Error(err, "Reading usage failed", "namespace", u.Namespace, "user", u.Name)
		openaiapi.WriteError(w, http.StatusServiceUnavailable, openaiapi.TypeServer, openaiapi.CodeQuotaUnavailable, "",
			"The quota store is unavailable; retry shortly.")
		return
	}
	b, err := json.Marshal(out)
	if err != nil {
		openaiapi.WriteError(w, http.StatusInternalServerError, openaiapi.TypeServer, openaiapi.CodeInternal, "", "Could not encode the usage.")
		return
	}
	h := w.Header()
	// The headers a request admitted now would start from (before its own
	// reservation), so a client reads both the same way.
	setRateLimitHeaders(h, all, now)
	h["Content-Type"] = []string{"application/json"}
	h["Cache-Control"] = []string{"no-store"}
	h["Content-Length"] = []string{strconv.Itoa(len(b))}
	_, _ = w.Write(b)
}

// usageOf builds the reply for u, and returns every window of every budget
// in request order, as a Decision lists them.
func (p *Proxy) usageOf(ctx context.Context, u *User, claims *token.Claims, now time.Time) (*Usage, []quota.WindowStatus, error) {
	out := &Usage{
		Object:  UsageObject,
		Version: UsageVersion,
		User:    UsageUser{Namespace: u.Namespace, Name: u.Name},
		Token:   UsageToken{RefreshAllowed: u.AllowRefresh},
		Windows: []UsageWindow{},
	}
	if claims != nil && claims.ExpiresAt != nil {
		at := claims.ExpiresAt.UTC()
		in := max(int64(at.Sub(now)/time.Second), 0)
		out.Token.ExpiresAt, out.Token.ExpiresIn = &at, &in
	}
	if u.QuotaFound {
		q := &UsageQuota{Name: u.QuotaName, Scope: llmv1alpha1.ScopePerUser, Enforcement: llmv1alpha1.EnforcementEnforce,
			MaxTokensPerRequest: u.MaxTokensPerRequest, MaxConcurrentRequests: u.MaxConcurrentRequests}
		if u.pool() {
			q.Scope = llmv1alpha1.ScopeShared
		}
		if u.DryRun {
			q.Enforcement = llmv1alpha1.EnforcementDryRun
		}
		if u.Pricing != nil {
			q.Currency = u.Pricing.Currency
		}
		out.Quota = q
	}
	if p.counter == nil || p.disableQuota { // nothing is counted
		return out, nil, nil
	}
	priced := u.QuotaFound && u.Pricing != nil
	var all []quota.WindowStatus
	missing := true
	for _, b := range u.Budgets {
		ws, err := p.counter.Status(ctx, b)
		if err != nil {
			return nil, nil, err
		}
		all = append(all, ws...)
		var ows []quota.WindowStatus
		if b.HasSoft() {
			if ows, err = p.counter.Status(ctx, quota.OverflowBudget(b)); err != nil {
				return nil, nil, err
			}
		}
		life, err := p.counter.Lifetime(ctx, b)
		if err != nil {
			return nil, nil, err
		}
		switch b.Kind {
		case quota.BudgetPool:
			out.Shared = &UsagePool{Quota: b.Name, Windows: usageWindows(ws, ows, priced), Lifetime: usageAmount(life, priced)}
		default:
			out.Windows = usageWindows(ws, ows, priced)
			out.Lifetime = usageAmount(life, priced)
			missing = false
		}
	}
	if missing {
		// No budget (the quota is missing): what the user was charged
		// before still counts in their lifetime.
		life, err := p.counter.Lifetime(ctx, quota.UserBudget(u.Namespace, u.Name, u.UID, nil, false))
		if err != nil {
			return nil, nil, err
		}
		out.Lifetime = usageAmount(life, false)
	}
	return out, all, nil
}

// usageWindows converts a budget's windows, with their overflow from ows
// (the overflow tally's windows in the same order, nil when not read);
// priced shows their costs.
func usageWindows(ws, ows []quota.WindowStatus, priced bool) []UsageWindow {
	out := make([]UsageWindow, 0, len(ws))
	for i, s := range ws {
		w := UsageWindow{
			Window:   s.Limit.Window,
			Start:    s.Start.UTC(),
			ResetsAt: s.ResetAt.UTC(),
			Used:     usageAmount(s.Used, priced),
			Reserved: usageAmount(s.Reserved, priced),
			Models:   make([]UsageModel, 0, len(s.Models)),
		}
		for _, m := range s.Models {
			w.Models = append(w.Models, UsageModel{Model: m.Model, UsageAmount: usageAmount(m.Amount, priced)})
		}
		w.Limit, w.Remaining = usageLimits(s)
		if s.Limit.Soft && w.Limit != nil {
			w.Overage = llmv1alpha1.OverageDemote
			if c := s.Limit.Ceiling; c != nil {
				w.HardLimit, _ = usageLimits(quota.WindowStatus{Limit: *c})
			}
		}
		if i < len(ows) && !ows[i].Used.IsZero() {
			o := usageAmount(ows[i].Used, priced)
			w.Overflow = &o
		}
		out = append(out, w)
	}
	return out
}

// usageLimits returns the window's caps and what is left of each, with
// used and reserved usage both counted ([quota.WindowStatus.Left], as
// admission and the rate-limit headers count them).
func usageLimits(s quota.WindowStatus) (limit, remaining *UsageUnits) {
	var l, r UsageUnits
	capped := false
	for _, c := range [...]struct {
		res    quota.Resource
		lp, rp **int64
	}{
		{quota.ResourceRequests, &l.Requests, &r.Requests},
		{quota.ResourceTokens, &l.Tokens, &r.Tokens},
		{quota.ResourceInputTokens, &l.InputTokens, &r.InputTokens},
		{quota.ResourceOutputTokens, &l.OutputTokens, &r.OutputTokens},
	} {
		if left, ok := s.Left(c.res); ok {
			capv := *s.Limit.Cap(c.res)
			*c.lp, *c.rp, capped = &capv, &left, true
		}
	}
	if left, ok := s.Left(quota.ResourceCost); ok {
		lc, rc := quota.FormatCost(*s.Limit.Cap(quota.ResourceCost)), quota.FormatCost(left)
		l.Cost, r.Cost, capped = &lc, &rc, true
	}
	if !capped {
		return nil, nil
	}
	return &l, &r
}

// usageAmount converts an amount; priced shows its cost.
func usageAmount(a quota.Amount, priced bool) UsageAmount {
	out := UsageAmount{
		Requests: a.Requests, InputTokens: a.InputTokens, CachedInputTokens: a.CachedInputTokens,
		OutputTokens: a.OutputTokens, TotalTokens: a.Total(),
	}
	if priced {
		out.Cost = quota.FormatCost(a.Cost)
	}
	return out
}
