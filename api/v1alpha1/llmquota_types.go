package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// QuotaScope says whether a quota's limits apply to each user or to all of them together.
// +kubebuilder:validation:Enum=PerUser;Shared
type QuotaScope string

const (
	// ScopePerUser gives every referencing user the full limits.
	ScopePerUser QuotaScope = "PerUser"
	// ScopeShared pools the limits: one budget for all referencing users (a team budget).
	ScopeShared QuotaScope = "Shared"
)

// Enforcement says what happens when a limit is reached.
// +kubebuilder:validation:Enum=Enforce;DryRun
type Enforcement string

const (
	// EnforcementEnforce refuses requests over a limit with HTTP 429.
	EnforcementEnforce Enforcement = "Enforce"
	// EnforcementDryRun counts and reports what would have been refused, but never refuses.
	EnforcementDryRun Enforcement = "DryRun"
)

// CacheIsolation says whose requests may share vLLM's prefix cache.
// +kubebuilder:validation:Enum=User;Quota;None
type CacheIsolation string

const (
	// CacheIsolationUser gives every user a prefix cache of their own.
	CacheIsolationUser CacheIsolation = "User"
	// CacheIsolationQuota lets the users of one quota share their prefixes.
	CacheIsolationQuota CacheIsolation = "Quota"
	// CacheIsolationNone shares the prefix cache with every other request
	// that sets no cache_salt.
	CacheIsolationNone CacheIsolation = "None"
)

// Overage says what a request past a limit gets.
// +kubebuilder:validation:Enum=Refuse;Demote
type Overage string

const (
	// OverageRefuse refuses a request past the limit with HTTP 429.
	OverageRefuse Overage = "Refuse"
	// OverageDemote admits a request past the limit as overflow: it waits
	// until no request within its quota waits for the same model server,
	// goes upstream with the lowest priority, and is counted apart.
	OverageDemote Overage = "Demote"
)

// LimitCaps are the caps of a hard ceiling above a soft limit. At least one
// must be set.
// +kubebuilder:validation:XValidation:rule="has(self.tokens) || has(self.inputTokens) || has(self.outputTokens) || has(self.requests) || has(self.cost)",message="must set at least one of tokens, inputTokens, outputTokens, requests or cost"
type LimitCaps struct {
	// tokens caps input plus output tokens in the window.
	// +kubebuilder:validation:Minimum=0
	// +optional
	Tokens *int64 `json:"tokens,omitempty"`

	// inputTokens caps prompt tokens in the window.
	// +kubebuilder:validation:Minimum=0
	// +optional
	InputTokens *int64 `json:"inputTokens,omitempty"`

	// outputTokens caps completion tokens in the window.
	// +kubebuilder:validation:Minimum=0
	// +optional
	OutputTokens *int64 `json:"outputTokens,omitempty"`

	// requests caps the number of requests in the window.
	// +kubebuilder:validation:Minimum=0
	// +optional
	Requests *int64 `json:"requests,omitempty"`

	// cost caps what the window's usage may cost, in spec.pricing.currency,
	// as a decimal string (at most 9000000).
	// +kubebuilder:validation:XValidation:rule="!self.matches('^9[0-9]{6}') || self.matches('^9000000([.]0{1,6})?$')",message="must be at most 9000000: costs are counted exactly, in 10^-12 units of the currency, in 64-bit integers"
	// +optional
	Cost *Decimal `json:"cost,omitempty"`
}

// QuotaLimit caps usage within one calendar window. At least one of tokens,
// inputTokens, outputTokens, requests or cost must be set.
// +kubebuilder:validation:XValidation:rule="has(self.tokens) || has(self.inputTokens) || has(self.outputTokens) || has(self.requests) || has(self.cost)",message="must set at least one of tokens, inputTokens, outputTokens, requests or cost"
// +kubebuilder:validation:XValidation:rule="!has(self.hardLimit) || (has(self.overage) && self.overage == 'Demote')",message="hardLimit is the ceiling above a soft limit: set overage: Demote, or remove hardLimit (a Refuse limit is hard already)"
// +kubebuilder:validation:XValidation:rule="!has(self.hardLimit) || !has(self.tokens) || !has(self.hardLimit.tokens) || self.hardLimit.tokens >= self.tokens",message="hardLimit.tokens must be at least tokens: the hard ceiling sits above the soft limit"
// +kubebuilder:validation:XValidation:rule="!has(self.hardLimit) || !has(self.inputTokens) || !has(self.hardLimit.inputTokens) || self.hardLimit.inputTokens >= self.inputTokens",message="hardLimit.inputTokens must be at least inputTokens: the hard ceiling sits above the soft limit"
// +kubebuilder:validation:XValidation:rule="!has(self.hardLimit) || !has(self.outputTokens) || !has(self.hardLimit.outputTokens) || self.hardLimit.outputTokens >= self.outputTokens",message="hardLimit.outputTokens must be at least outputTokens: the hard ceiling sits above the soft limit"
// +kubebuilder:validation:XValidation:rule="!has(self.hardLimit) || !has(self.requests) || !has(self.hardLimit.requests) || self.hardLimit.requests >= self.requests",message="hardLimit.requests must be at least requests: the hard ceiling sits above the soft limit"
// +kubebuilder:validation:XValidation:rule="!has(self.hardLimit) || !has(self.cost) || !has(self.hardLimit.cost) || quantity(self.hardLimit.cost).compareTo(quantity(self.cost)) >= 0",message="hardLimit.cost must be at least cost: the hard ceiling sits above the soft limit"
type QuotaLimit struct {
	// window is the calendar period (UTC) the limit applies to: Minute, Hour,
	// Day, Week (Monday 00:00 UTC) or Month (first day, 00:00 UTC).
	// +required
	Window Window `json:"window"`

	// tokens caps input plus output tokens in the window.
	// +kubebuilder:validation:Minimum=0
	// +optional
	Tokens *int64 `json:"tokens,omitempty"`

	// inputTokens caps prompt tokens in the window.
	// +kubebuilder:validation:Minimum=0
	// +optional
	InputTokens *int64 `json:"inputTokens,omitempty"`

	// outputTokens caps completion tokens in the window.
	// +kubebuilder:validation:Minimum=0
	// +optional
	OutputTokens *int64 `json:"outputTokens,omitempty"`

	// requests caps the number of requests in the window.
	// +kubebuilder:validation:Minimum=0
	// +optional
	Requests *int64 `json:"requests,omitempty"`

	// cost caps what the window's usage may cost, in spec.pricing.currency,
	// as a decimal string such as "25" or "7.5" (at most 9000000). Like a
	// token limit, it admits a request only when the most it can cost fits
	// what is left: its prompt at the model's higher input price and every
	// output token it may generate at the output price. Requests that cost
	// nothing (a model no price matches, /tokenize) are not held back by it.
	// +kubebuilder:validation:XValidation:rule="!self.matches('^9[0-9]{6}') || self.matches('^9000000([.]0{1,6})?$')",message="must be at most 9000000: costs are counted exactly, in 10^-12 units of the currency, in 64-bit integers"
	// +optional
	Cost *Decimal `json:"cost,omitempty"`

	// overage says what a request past this limit gets: Refuse (the
	// default) answers HTTP 429 until the window resets; Demote makes the
	// limit soft: the request is still admitted, as overflow. Overflow waits
	// at the proxy's fair queue until no request within its quota waits for
	// the same model server, goes upstream with the lowest priority (when
	// spec.priority is set), is counted apart in status.usage[].overflow,
	// and its response carries x-llm-overage: true. Idle GPUs at night serve
	// it at full speed; by day it yields to in-quota work.
	// +kubebuilder:default=Refuse
	// +optional
	Overage Overage `json:"overage,omitempty"`

	// hardLimit is a hard ceiling above a soft limit (overage: Demote):
	// past it, requests are refused with HTTP 429 as past a Refuse limit.
	// Unset, a soft limit has no ceiling. Each of its caps must be at least
	// the soft limit's cap of the same resource.
	// +optional
	HardLimit *LimitCaps `json:"hardLimit,omitempty"`
}

// Pricing says what each model's tokens cost, in one currency.
type Pricing struct {
	// currency is the unit of every price and cost budget of the quota: an
	// ISO 4217 code such as USD or EUR, or a unit of your own such as
	// credits.
	// +kubebuilder:validation:MaxLength=16
	// +kubebuilder:validation:XValidation:rule="self.matches('^[A-Za-z]{1,16}$')",message="must be a currency code such as USD or EUR, or a unit name of your own: 1 to 16 letters"
	// +required
	Currency string `json:"currency"`

	// models are the prices per model, as glob patterns of model names ("*"
	// matches any run of characters, "?" one). The first entry whose pattern
	// matches a model prices it; a model that no entry matches costs nothing.
	// +listType=atomic
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=50
	// +kubebuilder:validation:XValidation:rule="self.all(m, self.exists_one(n, n.model == m.model))",message="must list each model pattern once: the first entry that matches a model prices it, so a second one would never apply"
	// +required
	Models []ModelPrice `json:"models"`
}

// ModelPrice is the price of the models a pattern matches, per million
// tokens, in the quota's currency.
type ModelPrice struct {
	// model is a glob pattern of model names, such as "meta-llama/*".
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +required
	Model string `json:"model"`

	// input is the price of a million input (prompt) tokens.
	// +required
	Input Decimal `json:"input"`

	// cachedInput is the price of a million input tokens that the model
	// server found in its prefix cache (vLLM reports them when run with
	// --enable-prompt-tokens-details). Defaults to input.
	// +optional
	CachedInput *Decimal `json:"cachedInput,omitempty"`

	// output is the price of a million output (completion) tokens.
	// +required
	Output Decimal `json:"output"`
}

// LLMQuotaSpec is a usage policy that LLMUsers of the same namespace reference.
// +kubebuilder:validation:XValidation:rule="!has(self.limits) || !self.limits.exists(l, has(l.cost)) || has(self.pricing)",message="limits[].cost is a budget in spec.pricing.currency: set spec.pricing (a currency and the models' prices), or remove cost"
type LLMQuotaSpec struct {
	// limits are the budgets, at most one per window. Requests are refused once
	// any window's limit is reached, until that window resets (or, for a limit
	// with overage: Demote, admitted as overflow). Empty means no
	// usage limit (the quota then only restricts models and request size).
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=5
	// +kubebuilder:validation:XValidation:rule="self.all(l, self.exists_one(m, m.window == l.window))",message="must list each window at most once: merge the entries that share a window"
	// +optional
	Limits []QuotaLimit `json:"limits,omitempty"`

	// maxTokensPerRequest caps the output tokens of a single request, all its
	// sequences together (max_tokens × n × prompts): a request asking for more
	// is refused with HTTP 400 saying which field to lower, and a request that
	// sets no cap is sent upstream with one that fits (and fits what is left
	// of the budget).
	// +kubebuilder:validation:Minimum=1
	// +optional
	MaxTokensPerRequest *int64 `json:"maxTokensPerRequest,omitempty"`

	// maxConcurrentRequests caps the requests each user of this quota may have
	// in flight at once, across every proxy replica, so that one user cannot
	// take every slot of the model server; a request beyond it is refused
	// at once with HTTP 429 (concurrency_limit_exceeded). Unset means no cap.
	// +kubebuilder:validation:XValidation:rule="self >= 1",message="must be at least 1; unset it to allow any number of requests in flight"
	// +optional
	MaxConcurrentRequests *int64 `json:"maxConcurrentRequests,omitempty"`

	// models is the allowlist of model names, each a glob pattern ("*" matches
	// any run of characters, "?" one character). Empty allows every model.
	// +listType=set
	// +kubebuilder:validation:MaxItems=100
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=253
	// +optional
	Models []string `json:"models,omitempty"`

	// scope is PerUser (each user gets the limits) or Shared (one pooled budget
	// for all users that reference this quota).
	// +kubebuilder:default=PerUser
	// +optional
	Scope QuotaScope `json:"scope,omitempty"`

	// enforcement is Enforce (refuse over-limit requests with 429) or DryRun
	// (count and report what would have been refused, never refuse).
	// +kubebuilder:default=Enforce
	// +optional
	Enforcement Enforcement `json:"enforcement,omitempty"`

	// alertThresholds are percentages of a limit; crossing one records an Event
	// once per window. Each must be between 1 and 100.
	// +kubebuilder:default={80,95}
	// +listType=set
	// +kubebuilder:validation:MaxItems=10
	// +kubebuilder:validation:items:Minimum=1
	// +kubebuilder:validation:items:Maximum=100
	// +optional
	AlertThresholds []int32 `json:"alertThresholds,omitempty"`

	// pricing says what each model's tokens cost: status, the proxy's
	// GET /v1/usage and the llm_user_cost_total metric then show costs, and
	// limits[].cost budgets them.
	// +optional
	Pricing *Pricing `json:"pricing,omitempty"`

	// priority is the scheduling priority of every request of this quota's
	// users: the proxy writes it into the request's priority field, replacing
	// any priority the client sent. vLLM run with --scheduling-policy
	// priority serves lower values first (0 is its default). Unset sends no
	// priority; a client's own is dropped all the same, so that no user can
	// promote themselves.
	// +kubebuilder:validation:XValidation:rule="self >= -1000 && self <= 1000",message="must be between -1000 and 1000: vLLM serves lower values first (with --scheduling-policy priority), and 0 is its default"
	// +optional
	Priority *int32 `json:"priority,omitempty"`

	// fairShareWeight is the share of a busy model server that this quota's
	// users get against the other quotas of the same priority, when the
	// proxy queues requests in front of it (operator configuration
	// proxy.fairQueue.maxInFlight): among the requests waiting, the user who
	// was served the fewest tokens divided by this weight goes first, so a
	// user of weight 2 is served twice the tokens of a user of weight 1 while
	// both wait. A Shared quota's users are one flow and share one weight.
	// +kubebuilder:default=1
	// +kubebuilder:validation:XValidation:rule="self >= 1 && self <= 1000",message="must be between 1 and 1000: a user of weight 2 gets twice the share of a busy model server of a user of weight 1"
	// +optional
	FairShareWeight int32 `json:"fairShareWeight,omitempty"`

	// cacheIsolation says whose requests may share vLLM's prefix cache. A
	// shared prefix cache tells a user, by the time to the first token or by
	// cached_tokens in the usage, whether someone else sent the same prefix
	// (a system prompt, a document). The proxy writes vLLM's cache_salt into
	// every request, which keeps cached prefixes apart: User (the default)
	// per user, Quota per quota (a Shared pool whose users may share their
	// prefixes and save prefill), None no salt at all. A client's own
	// cache_salt is always dropped.
	// +kubebuilder:default=User
	// +optional
	CacheIsolation CacheIsolation `json:"cacheIsolation,omitempty"`
}

// LLMQuotaStatus is the observed state of an LLMQuota.
type LLMQuotaStatus struct {
	// conditions describe the quota: Ready (accepted), QuotaExceeded (Shared only).
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// observedGeneration is the spec generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// users is the number of LLMUsers that reference this quota.
	// +optional
	Users int32 `json:"users"`

	// usage is the pooled usage per window, for Shared quotas only, in the
	// order of spec.limits.
	// +listType=map
	// +listMapKey=window
	// +optional
	Usage []WindowUsage `json:"usage,omitempty"`

	// alerts are the alert thresholds already reported per window (written by
	// the operator; each fires once per window).
	// +listType=map
	// +listMapKey=window
	// +optional
	Alerts []AlertStatus `json:"alerts,omitempty"`

	// lifetime is the pooled usage since the quota was created (Shared quotas only).
	// +optional
	Lifetime *UsageTotals `json:"lifetime,omitempty"`

	// lastRequestAt is when a request was last charged to the pool (Shared quotas only).
	// +optional
	LastRequestAt *metav1.Time `json:"lastRequestAt,omitempty"`
}

// LLMQuota is a named usage policy: token and request limits per calendar
// window, a model allowlist and a per-request cap. LLMUsers in the same
// namespace reference it by name.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:path=llmquotas,shortName=llmq,categories=llm
// +kubebuilder:printcolumn:name="Scope",type=string,JSONPath=`.spec.scope`
// +kubebuilder:printcolumn:name="Window",type=string,JSONPath=`.spec.limits[0].window`
// +kubebuilder:printcolumn:name="Tokens",type=integer,JSONPath=`.spec.limits[0].tokens`
// +kubebuilder:printcolumn:name="Users",type=integer,JSONPath=`.status.users`
// +kubebuilder:printcolumn:name="Enforcement",type=string,JSONPath=`.spec.enforcement`,priority=1
// +kubebuilder:printcolumn:name="Concurrency",type=integer,JSONPath=`.spec.maxConcurrentRequests`,priority=1
// +kubebuilder:printcolumn:name="Used",type=integer,JSONPath=`.status.usage[0].totalTokens`,priority=1
// +kubebuilder:printcolumn:name="Cost",type=string,JSONPath=`.status.usage[0].cost`,priority=1
// +kubebuilder:printcolumn:name="Currency",type=string,JSONPath=`.spec.pricing.currency`,priority=1
// +kubebuilder:printcolumn:name="Priority",type=integer,JSONPath=`.spec.priority`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type LLMQuota struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the policy.
	// +required
	Spec LLMQuotaSpec `json:"spec"`

	// status has one writer per field: the operator writes conditions,
	// observedGeneration, users and alerts; for Shared quotas the proxy writes
	// usage.
	// +optional
	Status LLMQuotaStatus `json:"status,omitempty"`
}

// LLMQuotaList is a list of LLMQuota.
//
// +kubebuilder:object:root=true
type LLMQuotaList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []LLMQuota `json:"items"`
}
