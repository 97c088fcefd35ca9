package proxy

import "github.com/llm-user-operator/llm-user-operator/internal/quota"

// modelAllowed applies the quota's allowlist and then the user's narrowing.
func modelAllowed(u *User, model string) bool {
	return quota.MatchAny(u.Models, model) && quota.MatchAny(u.UserModels, model)
}
