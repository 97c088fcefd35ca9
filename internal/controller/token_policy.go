package controller

import (
	"crypto/sha256"
	"encoding/binary"
	"time"

	"k8s.io/apimachinery/pkg/types"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/token"
)

const (
	// DefaultTokenTTL applies when spec.token.ttl is unset (the API defaults it too).
	DefaultTokenTTL = 24 * time.Hour
	// A token is replaced once renewFrom plus up to renewBand of its lifetime
	// has passed.
	renewFrom = 0.80
	renewBand = 0.10
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

// RenewAt is when the token of the user with uid, issued at iat and
// expiring at exp, is replaced: at the point of the 80–90 % band of its
// lifetime that a hash of the uid picks, the same for every token of that
// user, at whole seconds (what status shows). Users created together, a
// team onboarded at once, would otherwise all renew in the same second
// forever after; spread over a tenth of the lifetime (2h24m for 24h tokens)
// the renewals of 10,000 users take about 70 writes a minute, and each
// user's renewal time stays predictable from its status.
func RenewAt(uid types.UID, iat, exp time.Time) time.Time {
	// SHA-256 because uids that differ in one character (sequential ones)
	// must land far apart; a few hundred nanoseconds per reconcile.
	sum := sha256.Sum256([]byte(uid))
	frac := renewFrom + renewBand*float64(binary.BigEndian.Uint64(sum[:8])>>11)/(1<<53) // [0.80, 0.90)
	return iat.Add(time.Duration(float64(exp.Sub(iat)) * frac)).Truncate(time.Second)
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
	case !now.Before(RenewAt(u.UID, claims.IssuedAt.Time, claims.ExpiresAt.Time)):
		return "Renewal"
	}
	return ""
}
