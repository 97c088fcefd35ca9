package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// QuotaReference names an LLMQuota in the LLMUser's own namespace.
type QuotaReference struct {
	// name of the LLMQuota, in the same namespace as the LLMUser.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +required
	Name string `json:"name"`
}

// TokenSpec configures the user's token.
type TokenSpec struct {
	// ttl is the lifetime of each issued token, between 10m and 720h (30 days).
	// The operator renews the token between 80% and 90% of it, at a point
	// derived from the user's uid (the same for every token of the user), so
	// that users created together do not all renew at the same moment.
	// +kubebuilder:default="24h"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+([.][0-9]+)?(ns|us|µs|ms|s|m|h))+$') && duration(self) >= duration('10m') && duration(self) <= duration('720h')",message="must be a duration between 10m and 720h (30 days), such as 90m or 24h (units: h, m, s)"
	// +optional
	TTL *metav1.Duration `json:"ttl,omitempty"`

	// secretName is the Secret, in the user's namespace, that receives the token
	// (keys token, OPENAI_API_KEY, OPENAI_BASE_URL, expiresAt). Defaults to
	// "<name>-llm-token".
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')",message="must be a valid Secret name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
	// +optional
	SecretName string `json:"secretName,omitempty"`

	// allowRefresh lets a holder of a valid token obtain a fresh one from
	// POST /auth/refresh.
	// +kubebuilder:default=true
	// +optional
	AllowRefresh *bool `json:"allowRefresh,omitempty"`
}

// LLMUserSpec is one identity allowed to call the models.
type LLMUserSpec struct {
	// quotaRef names the LLMQuota, in this namespace, whose limits and model
	// allowlist apply to this user.
	// +required
	QuotaRef QuotaReference `json:"quotaRef"`

	// models optionally narrows the quota's allowlist (glob patterns). A model
	// must match both lists. Empty means the quota's list alone.
	// +listType=set
	// +kubebuilder:validation:MaxItems=100
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=253
	// +optional
	Models []string `json:"models,omitempty"`

	// suspended, when true, makes every token of this user stop working at
	// once. The Secret is kept; setting it back to false restores access.
	// +kubebuilder:default=false
	// +optional
	Suspended bool `json:"suspended,omitempty"`

	// token configures the issued token.
	// +kubebuilder:default={}
	// +optional
	Token TokenSpec `json:"token,omitempty"`

	// displayName is a human-readable name for the user.
	// +kubebuilder:validation:MaxLength=256
	// +optional
	DisplayName string `json:"displayName,omitempty"`

	// contact is how to reach the user's owner, such as an email address.
	// +kubebuilder:validation:MaxLength=256
	// +optional
	Contact string `json:"contact,omitempty"`
}

// TokenStatus describes the token currently in the user's Secret.
type TokenStatus struct {
	// secretName is the Secret that holds the token.
	// +optional
	SecretName string `json:"secretName,omitempty"`

	// keyID is the kid of the signing key.
	// +optional
	KeyID string `json:"keyID,omitempty"`

	// issuedAt is when the current token was issued.
	// +optional
	IssuedAt *metav1.Time `json:"issuedAt,omitempty"`

	// expiresAt is when the current token stops working.
	// +optional
	ExpiresAt *metav1.Time `json:"expiresAt,omitempty"`

	// renewAt is when the operator will replace the token (between 80% and 90%
	// of its lifetime, fixed per user).
	// +optional
	RenewAt *metav1.Time `json:"renewAt,omitempty"`

	// generation is the token generation. Tokens of an older generation are
	// refused; it grows when the llm.userops.dev/rotate-token annotation changes.
	// +optional
	Generation int64 `json:"generation,omitempty"`

	// rotationRequest is the last value of the llm.userops.dev/rotate-token
	// annotation that was acted on.
	// +optional
	RotationRequest string `json:"rotationRequest,omitempty"`
}

// LLMUserStatus is the observed state of an LLMUser.
type LLMUserStatus struct {
	// conditions: Ready, TokenIssued, QuotaExceeded.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// observedGeneration is the spec generation the operator last acted on.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// token describes the issued token.
	// +optional
	Token *TokenStatus `json:"token,omitempty"`

	// usage is the user's usage in each window of its quota's limits, in the
	// order of the quota's spec.limits (kubectl get shows the first). Written
	// by the proxy in batches.
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

	// lifetime is the user's usage since it was created. Written by the proxy.
	// +optional
	Lifetime *UsageTotals `json:"lifetime,omitempty"`

	// lastRequestAt is when a request was last charged to this user. Written
	// by the proxy.
	// +optional
	LastRequestAt *metav1.Time `json:"lastRequestAt,omitempty"`
}

// LLMUser is one identity allowed to call the models behind the proxy. The
// operator issues it a token in a Secret of this namespace, ready for envFrom
// (OPENAI_API_KEY, OPENAI_BASE_URL); the proxy enforces its quota and records
// its usage here.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=llmu,categories=llm
// +kubebuilder:printcolumn:name="Quota",type=string,JSONPath=`.spec.quotaRef.name`
// +kubebuilder:printcolumn:name="Used",type=integer,JSONPath=`.status.usage[0].totalTokens`
// +kubebuilder:printcolumn:name="Remaining",type=integer,JSONPath=`.status.usage[0].remaining`
// +kubebuilder:printcolumn:name="Cost",type=string,JSONPath=`.status.usage[0].cost`
// +kubebuilder:printcolumn:name="Currency",type=string,JSONPath=`.status.usage[0].currency`
// +kubebuilder:printcolumn:name="Reset",type=string,JSONPath=`.status.usage[0].resetAt`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Suspended",type=boolean,JSONPath=`.spec.suspended`,priority=1
// +kubebuilder:printcolumn:name="Expires",type=string,JSONPath=`.status.token.expiresAt`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type LLMUser struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired user.
	// +required
	Spec LLMUserSpec `json:"spec"`

	// status has one writer per field: the operator writes conditions,
	// observedGeneration, token and alerts; the proxy writes usage, lifetime
	// and lastRequestAt.
	// +optional
	Status LLMUserStatus `json:"status,omitempty"`
}

// LLMUserList is a list of LLMUser.
//
// +kubebuilder:object:root=true
type LLMUserList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []LLMUser `json:"items"`
}
