package controller

import (
	"time"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/token"
)

const (
	// DefaultTokenTTL applies when spec.token.ttl is unset (the API defaults it too).
	DefaultTokenTTL = 24 * time.Hour
	// renewFraction of a token's lifetime passes before it is replaced.
	renewFraction = 0.8
)

// SecretName is the Secret that receives the user's token.
func SecretName(u *llmv1alpha1.LLMUser) string {
	if u.Spec.Token.SecretName != "" {
		return u.Spec.Token.SecretName
	}
	return u.Name + "-llm-token"
}

// TokenTTL is the lifetime of the user's tokens.
func TokenTTL(u *llmv1alpha1.LLMUser) time.Duration {
	if u.Spec.Token.TTL != nil && u.Spec.Token.TTL.Duration > 0 {
		return u.Spec.Token.TTL.Duration
	}
	return DefaultTokenTTL
}

// RenewAt is when a token issued at iat and expiring at exp is replaced.
func RenewAt(iat, exp time.Time) time.Time {
	return iat.Add(time.Duration(float64(exp.Sub(iat)) * renewFraction))
}

// reissueReason says why the token in the Secret cannot stay, or "" when it can.
// claims are the verified claims of the current token, nil when it is missing
// or does not verify against the published keys.
func reissueReason(now time.Time, u *llmv1alpha1.LLMUser, generation int64, claims *token.Claims) string {
	switch {
	case claims == nil:
		return "NoValidToken"
	case claims.UID != string(u.UID) || claims.Namespace != u.Namespace || claims.Name != u.Name:
		return "WrongSubject"
	case claims.Generation != generation:
		return "Rotated"
	case claims.ExpiresAt == nil || claims.IssuedAt == nil:
		return "NoValidToken"
	case claims.ExpiresAt.Sub(claims.IssuedAt.Time) != TokenTTL(u):
		return "TTLChanged"
	case !now.Before(RenewAt(claims.IssuedAt.Time, claims.ExpiresAt.Time)):
		return "Renewal"
	}
	return ""
}
