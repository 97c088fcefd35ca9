package token

import (
	"slices"
	"time"
)

// DefaultClockSkew is the clock skew allowance a [Verifier] applies to exp and
// nbf unless configured otherwise. [PlanRotation] adds it to a retired key's
// publication window, which also absorbs the short delay between a key's
// CreatedAt and the moment the issuer actually switches to it.
const DefaultClockSkew = 30 * time.Second

// RotationPlan is the outcome of [PlanRotation].
type RotationPlan struct {
	// Keep holds the keys that must stay published, newest first. Keep[0],
	// when present, is the active signing key.
	Keep []Key
	// NeedNew is true when no key exists, the active key is at least period
	// old, or rotation was forced. The caller generates a key, adds it to
	// Keep, stores the set, and plans again.
	NeedNew bool
	// NextCheck is the earliest future moment at which the plan changes by
	// itself (the active key becoming due for rotation, or a retired key
	// becoming droppable); zero when nothing is scheduled. A controller
	// requeues for exactly NextCheck.Sub(now).
	NextCheck time.Time
}

// PlanRotation decides which keys to keep and whether a new one is needed.
//
// keys may be in any order. The newest key is the active signing key. A key
// stops signing when the next newer key activates ([ActivationDelay] after it
// is created), so the last token it can have signed expires at most maxTTL
// later; it therefore stays in Keep until next.CreatedAt + ActivationDelay +
// maxTTL + [DefaultClockSkew] and is dropped at that moment.
// maxTTL must be the longest TTL the issuer uses. period <= 0 disables
// age-based rotation; force requests a new key regardless of age.
func PlanRotation(keys []Key, now time.Time, period, maxTTL time.Duration, force bool) RotationPlan {
	if len(keys) == 0 {
		return RotationPlan{NeedNew: true}
	}
	sorted := slices.Clone(keys)
	SortNewestFirst(sorted)

	plan := RotationPlan{Keep: []Key{sorted[0]}, NeedNew: force}
	if period > 0 {
		due := sorted[0].CreatedAt.Add(period)
		if now.Before(due) {
			plan.NextCheck = due
		} else {
			plan.NeedNew = true
		}
	}
	for i := 1; i < len(sorted); i++ {
		// The older key signs until the newer one activates.
		drop := sorted[i-1].CreatedAt.Add(ActivationDelay + maxTTL + DefaultClockSkew)
		if !now.Before(drop) {
			continue
		}
		plan.Keep = append(plan.Keep, sorted[i])
		if plan.NextCheck.IsZero() || drop.Before(plan.NextCheck) {
			plan.NextCheck = drop
		}
	}
	return plan
}
