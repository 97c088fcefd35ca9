package usage

import (
	"context"
	"fmt"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
)

// SeedFromStatus restores counter from recorded usage: for every LLMUser, and
// every Shared LLMQuota's pool, the lifetime, and each status.usage entry of
// a window still current at now, is seeded into the user's (quota.UserKey) or the pool's
// (quota.PoolKey) counter, named by the object's uid, with [quota.Counter.Seed]. A replica that restarts
// therefore refuses what the budget already spent, up to the last flush
// before it stopped. Entries of ended windows are skipped. opts narrow both
// lists (client.InNamespace for a namespaced proxy). A user's budget is the
// one its quota gives it ([quota.BudgetsFor]), so that the counters seeded
// are the ones its requests draw on, hash tag included.
func SeedFromStatus(ctx context.Context, counter quota.Counter, c client.Reader, now time.Time, opts ...client.ListOption) error {
	var quotas llmv1alpha1.LLMQuotaList
	if err := c.List(ctx, &quotas, opts...); err != nil {
		return fmt.Errorf("usage: listing LLMQuotas to seed counters: %w", err)
	}
	var users llmv1alpha1.LLMUserList
	if err := c.List(ctx, &users, opts...); err != nil {
		return fmt.Errorf("usage: listing LLMUsers to seed counters: %w", err)
	}
	byName := make(map[client.ObjectKey]*llmv1alpha1.LLMQuota, len(quotas.Items))
	for i := range quotas.Items {
		byName[client.ObjectKeyFromObject(&quotas.Items[i])] = &quotas.Items[i]
	}
	for i := range users.Items {
		u := &users.Items[i]
		b := quota.UserBudget(u.Namespace, u.Name, string(u.UID), nil, false)
		if q := byName[client.ObjectKey{Namespace: u.Namespace, Name: u.Spec.QuotaRef.Name}]; q != nil {
			b = quota.BudgetsFor(u, q)[0]
		}
		if err := seed(ctx, counter, b, u.Status.Usage, u.Status.Lifetime, now); err != nil {
			return err
		}
	}
	for i := range quotas.Items {
		q := &quotas.Items[i]
		if q.Spec.Scope != llmv1alpha1.ScopeShared {
			continue
		}
		if err := seed(ctx, counter, quota.PoolBudget(q.Namespace, q.Name, string(q.UID), nil, false), q.Status.Usage, q.Status.Lifetime, now); err != nil {
			return err
		}
	}
	return nil
}

func seed(ctx context.Context, counter quota.Counter, b quota.Budget, entries []llmv1alpha1.WindowUsage, lt *llmv1alpha1.UsageTotals, now time.Time) error {
	if lt != nil {
		if err := counter.SeedLifetime(ctx, b, totalsAmount(lt)); err != nil {
			return fmt.Errorf("usage: seeding the lifetime of %s: %w", b.Key, err)
		}
	}
	for _, e := range entries {
		if !quota.ValidWindow(e.Window) {
			continue
		}
		start := quota.WindowStart(e.Window, now)
		if !e.WindowStart.Time.Equal(start) {
			continue
		}
		used := entryAmount(&e)
		if used.IsZero() {
			continue
		}
		models := make([]quota.ModelAmount, 0, len(e.Models))
		for _, m := range e.Models {
			models = append(models, quota.ModelAmount{Model: m.Model, Amount: modelAmount(m)})
		}
		if err := counter.Seed(ctx, b, e.Window, start, used, models); err != nil {
			return fmt.Errorf("usage: seeding %s %s window: %w", b.Key, e.Window, err)
		}
		if e.Overflow != nil {
			if err := counter.Seed(ctx, quota.OverflowBudget(b), e.Window, start, totalsAmount(e.Overflow), nil); err != nil {
				return fmt.Errorf("usage: seeding the overflow of %s %s window: %w", b.Key, e.Window, err)
			}
		}
	}
	return nil
}
