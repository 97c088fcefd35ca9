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
}

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
	// it resets. It appears with the user's first usage.
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
