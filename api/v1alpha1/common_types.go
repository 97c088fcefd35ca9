package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// Window is a calendar-aligned accounting period in UTC. Every replica of the
// proxy derives the same window start and reset time from the clock alone.
// +kubebuilder:validation:Enum=Minute;Hour;Day;Week;Month
type Window string

const (
	// WindowMinute starts at second zero of every minute.
	WindowMinute Window = "Minute"
	// WindowHour starts at minute zero of every hour.
	WindowHour Window = "Hour"
	// WindowDay starts at 00:00 UTC.
	WindowDay Window = "Day"
	// WindowWeek starts on Monday at 00:00 UTC (ISO 8601 weeks).
	WindowWeek Window = "Week"
	// WindowMonth starts on the first day of the month at 00:00 UTC.
	WindowMonth Window = "Month"
)

// Windows lists every window, shortest first.
var Windows = []Window{WindowMinute, WindowHour, WindowDay, WindowWeek, WindowMonth}

// WindowUsage is what was used in one window of a quota's limits.
type WindowUsage struct {
	// window is the accounting period this entry counts.
	// +required
	Window Window `json:"window"`

	// windowStart is when the current window began (UTC, calendar-aligned).
	// +required
	WindowStart metav1.Time `json:"windowStart"`

	// resetAt is when the current window ends and its usage returns to zero.
	// +required
	ResetAt metav1.Time `json:"resetAt"`

	// requests counts the requests charged in this window.
	// +optional
	Requests int64 `json:"requests"`

	// inputTokens counts prompt tokens charged in this window.
	// +optional
	InputTokens int64 `json:"inputTokens"`

	// outputTokens counts completion tokens charged in this window.
	// +optional
	OutputTokens int64 `json:"outputTokens"`

	// totalTokens is inputTokens plus outputTokens.
	// +optional
	TotalTokens int64 `json:"totalTokens"`

	// remaining is what is left of this window's tokens limit (or, when the limit
	// sets no total, of its tightest token limit). Absent when the window limits
	// requests only.
	// +optional
	Remaining *int64 `json:"remaining,omitempty"`

	// remainingRequests is what is left of this window's requests limit, if any.
	// +optional
	RemainingRequests *int64 `json:"remainingRequests,omitempty"`

	// cachedInputTokens counts the input tokens of this window that the model
	// server found in its prefix cache: a part of inputTokens, priced apart
	// (spec.pricing.models[].cachedInput). vLLM reports them when run with
	// --enable-prompt-tokens-details.
	// +optional
	CachedInputTokens int64 `json:"cachedInputTokens,omitempty"`

	// cost is what this window's usage cost, in the quota's
	// spec.pricing.currency, as an exact decimal ("12.5"). Absent when the
	// quota has no pricing.
	// +kubebuilder:validation:MaxLength=32
	// +optional
	Cost string `json:"cost,omitempty"`

	// currency is the unit of cost and remainingCost: the quota's
	// spec.pricing.currency when the window was written.
	// +kubebuilder:validation:MaxLength=16
	// +optional
	Currency string `json:"currency,omitempty"`

	// overflow is the part of this window's usage that was admitted past a
	// soft limit (spec.limits[].overage: Demote): already counted in the
	// totals above, shown apart. Absent when there was none.
	// +optional
	Overflow *UsageTotals `json:"overflow,omitempty"`

	// remainingCost is what is left of this window's cost budget
	// (spec.limits[].cost), if it has one.
	// +kubebuilder:validation:MaxLength=32
	// +optional
	RemainingCost string `json:"remainingCost,omitempty"`

	// models splits this window's usage by model. The first 10 models used
	// in the window have an entry each; the usage of any further model is
	// summed in one entry named "other".
	// +listType=map
	// +listMapKey=model
	// +kubebuilder:validation:MaxItems=11
	// +optional
	Models []ModelUsage `json:"models,omitempty"`
}

// ModelUsage is what one model was used for in a window.
type ModelUsage struct {
	// model is the model's name, or "other" for the models used after the
	// first 10 of the window.
	// +kubebuilder:validation:MaxLength=253
	// +required
	Model string `json:"model"`

	// requests counts the requests charged for this model.
	// +optional
	Requests int64 `json:"requests"`

	// inputTokens counts its prompt tokens.
	// +optional
	InputTokens int64 `json:"inputTokens"`

	// cachedInputTokens counts the part of inputTokens the model server found
	// in its prefix cache.
	// +optional
	CachedInputTokens int64 `json:"cachedInputTokens,omitempty"`

	// outputTokens counts its completion tokens.
	// +optional
	OutputTokens int64 `json:"outputTokens"`

	// cost is what this model's usage cost, when the quota has pricing.
	// +kubebuilder:validation:MaxLength=32
	// +optional
	Cost string `json:"cost,omitempty"`
}

// Decimal is a non-negative decimal number written as a string, with at most
// 7 digits before the point and 6 after it, such as "0.15" or "12": prices
// and budgets are exact, never floating point.
// +kubebuilder:validation:MaxLength=14
// +kubebuilder:validation:XValidation:rule="self.matches('^(0|[1-9][0-9]{0,6})([.][0-9]{1,6})?$')",message="must be a decimal number such as 0.15 or 12, written as a string: digits, at most 7 before the point and 6 after it, with no sign, exponent or separators"
type Decimal string

// AlertStatus records the highest alert threshold already reported for the
// current instance of a window, so each threshold fires once per window.
type AlertStatus struct {
	// window is the accounting period.
	// +required
	Window Window `json:"window"`

	// windowStart identifies the window instance the alert belongs to.
	// +required
	WindowStart metav1.Time `json:"windowStart"`

	// threshold is the highest percentage of spec.alertThresholds crossed
	// (100 when exhausted).
	// +required
	Threshold int32 `json:"threshold"`
}

// UsageTotals are counts that only grow: a lifetime total.
type UsageTotals struct {
	// requests counts every charged request.
	// +optional
	Requests int64 `json:"requests"`

	// inputTokens counts every charged prompt token.
	// +optional
	InputTokens int64 `json:"inputTokens"`

	// outputTokens counts every charged completion token.
	// +optional
	OutputTokens int64 `json:"outputTokens"`

	// totalTokens is inputTokens plus outputTokens.
	// +optional
	TotalTokens int64 `json:"totalTokens"`

	// cachedInputTokens counts every charged prompt token the model server
	// found in its prefix cache (a part of inputTokens).
	// +optional
	CachedInputTokens int64 `json:"cachedInputTokens,omitempty"`

	// cost is what everything charged cost, in the quota's
	// spec.pricing.currency, while the quota had pricing.
	// +kubebuilder:validation:MaxLength=32
	// +optional
	Cost string `json:"cost,omitempty"`
}

// Well-known condition types, reasons, labels and annotations.
const (
	// ConditionReady is true when the object is fully usable: for an LLMUser, a
	// valid token is issued and its quota exists.
	ConditionReady = "Ready"
	// ConditionTokenIssued is true when the user's Secret holds a valid token.
	ConditionTokenIssued = "TokenIssued"
	// ConditionQuotaExceeded is true while a window of the user's (or the shared)
	// budget is exhausted: what is left admits not even the smallest request
	// (fewer than 9 tokens under a tokens or inputTokens limit, no output token,
	// no request). Its message says how much is left, in which window, and when
	// it resets. It appears the first time a window is exhausted (absent: never
	// was), so that a user who starts using the proxy costs the operator no write.
	ConditionQuotaExceeded = "QuotaExceeded"

	// ReasonIssued means a token was issued and is valid.
	ReasonIssued = "Issued"
	// ReasonQuotaNotFound means spec.quotaRef names no LLMQuota in the namespace.
	ReasonQuotaNotFound = "QuotaNotFound"
	// ReasonSuspended means spec.suspended is true: every token of the user is refused.
	ReasonSuspended = "Suspended"
	// ReasonSecretConflict means spec.token.secretName names a Secret that is
	// not this user's (another owner's, nobody's, or the operator's signing
	// keys): the operator neither overwrites nor adopts it.
	ReasonSecretConflict = "SecretConflict"
	// ReasonWithinLimits means no window is exhausted.
	ReasonWithinLimits = "WithinLimits"
	// ReasonLimitReached means a window is exhausted until its reset.
	ReasonLimitReached = "LimitReached"
	// ReasonThresholdCrossed is the Event reason when usage crosses an alert threshold.
	ReasonThresholdCrossed = "ThresholdCrossed"
	// ReasonValid means an LLMQuota was accepted.
	ReasonValid = "Valid"

	// LabelUser is set on every Secret the operator writes for an LLMUser; its
	// value is the LLMUser's name.
	LabelUser = "llm.userops.dev/user"
	// LabelManagedBy marks objects written by the operator.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// ManagedByValue is the value of LabelManagedBy.
	ManagedByValue = "llm-user-operator"

	// AnnotationRotateToken forces a new token generation when set to a value
	// not handled before; every token of an older generation is refused from then on.
	AnnotationRotateToken = "llm.userops.dev/rotate-token"
)
