package proxyserver

import (
	"context"
	"sync"
	"sync/atomic"

	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/proxy"
	"github.com/llm-user-operator/llm-user-operator/internal/quota"
)

// Directory answers the proxy's per-request question "who is this?" from
// informers on LLMUsers and LLMQuotas. Events precompute each user's
// [proxy.User], so a lookup is one map read under a read lock, with no copy
// of API objects on the hot path.
type Directory struct {
	mu     sync.RWMutex
	users  map[string]*llmv1alpha1.LLMUser
	quotas map[string]*llmv1alpha1.LLMQuota
	views  map[string]proxy.User
	synced atomic.Bool
	// onDelete is told of deleted users (metrics series, counters).
	onDelete func(namespace, name string)
}

// NewDirectory returns an empty directory; Watch fills it.
func NewDirectory(onDelete func(namespace, name string)) *Directory {
	return &Directory{
		users: map[string]*llmv1alpha1.LLMUser{}, quotas: map[string]*llmv1alpha1.LLMQuota{},
		views: map[string]proxy.User{}, onDelete: onDelete,
	}
}

// User implements [proxy.Directory].
func (d *Directory) User(namespace, name string) (proxy.User, bool) {
	d.mu.RLock()
	u, ok := d.views[namespace+"/"+name]
	d.mu.RUnlock()
	return u, ok
}

// Ready implements [proxy.Directory]: true once both informers have synced.
func (d *Directory) Ready() bool { return d.synced.Load() }

// Users returns every known user (for scrape-time gauges).
func (d *Directory) Users() []proxy.User {
	d.mu.RLock()
	defer d.mu.RUnlock()
	out := make([]proxy.User, 0, len(d.views))
	for _, u := range d.views {
		out = append(out, u)
	}
	return out
}

// Watch registers the informer handlers and marks the directory ready once
// they have synced.
func (d *Directory) Watch(ctx context.Context, c cache.Cache) error {
	ui, err := c.GetInformer(ctx, &llmv1alpha1.LLMUser{})
	if err != nil {
		return err
	}
	qi, err := c.GetInformer(ctx, &llmv1alpha1.LLMQuota{})
	if err != nil {
		return err
	}
	uh, err := ui.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { d.setUser(o) },
		UpdateFunc: func(_, o any) { d.setUser(o) },
		DeleteFunc: d.deleteUser,
	})
	if err != nil {
		return err
	}
	qh, err := qi.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { d.setQuota(o) },
		UpdateFunc: func(_, o any) { d.setQuota(o) },
		DeleteFunc: d.deleteQuota,
	})
	if err != nil {
		return err
	}
	go func() {
		if toolscache.WaitForCacheSync(ctx.Done(), uh.HasSynced, qh.HasSynced) {
			d.synced.Store(true)
		}
	}()
	return nil
}

func unwrap(o any) any {
	if t, ok := o.(toolscache.DeletedFinalStateUnknown); ok {
		return t.Obj
	}
	return o
}

func (d *Directory) setUser(o any) {
	u, ok := unwrap(o).(*llmv1alpha1.LLMUser)
	if !ok {
		return
	}
	k := u.Namespace + "/" + u.Name
	d.mu.Lock()
	d.users[k] = u
	d.views[k] = d.view(u)
	d.mu.Unlock()
}

func (d *Directory) deleteUser(o any) {
	u, ok := unwrap(o).(*llmv1alpha1.LLMUser)
	if !ok {
		return
	}
	k := u.Namespace + "/" + u.Name
	d.mu.Lock()
	delete(d.users, k)
	delete(d.views, k)
	d.mu.Unlock()
	if d.onDelete != nil {
		d.onDelete(u.Namespace, u.Name)
	}
}

func (d *Directory) setQuota(o any) {
	q, ok := unwrap(o).(*llmv1alpha1.LLMQuota)
	if !ok {
		return
	}
	d.mu.Lock()
	d.quotas[q.Namespace+"/"+q.Name] = q
	d.refreshQuotaUsers(q.Namespace, q.Name)
	d.mu.Unlock()
}

func (d *Directory) deleteQuota(o any) {
	q, ok := unwrap(o).(*llmv1alpha1.LLMQuota)
	if !ok {
		return
	}
	d.mu.Lock()
	delete(d.quotas, q.Namespace+"/"+q.Name)
	d.refreshQuotaUsers(q.Namespace, q.Name)
	d.mu.Unlock()
}

// refreshQuotaUsers recomputes the views of a quota's users; d.mu is held.
func (d *Directory) refreshQuotaUsers(namespace, quotaName string) {
	for k, u := range d.users {
		if u.Namespace == namespace && u.Spec.QuotaRef.Name == quotaName {
			d.views[k] = d.view(u)
		}
	}
}

// view derives what the proxy needs; d.mu is held.
func (d *Directory) view(u *llmv1alpha1.LLMUser) proxy.User {
	v := proxy.User{
		Namespace: u.Namespace, Name: u.Name, UID: string(u.UID),
		Suspended: u.Spec.Suspended, QuotaName: u.Spec.QuotaRef.Name, UserModels: u.Spec.Models,
		AllowRefresh: u.Spec.Token.AllowRefresh == nil || *u.Spec.Token.AllowRefresh,
	}
	if u.Status.Token != nil {
		v.TokenGeneration = u.Status.Token.Generation
	}
	q, ok := d.quotas[u.Namespace+"/"+u.Spec.QuotaRef.Name]
	if !ok {
		return v
	}
	v.QuotaFound = true
	v.QuotaUID = string(q.UID)
	v.Models = q.Spec.Models
	v.MaxTokensPerRequest = q.Spec.MaxTokensPerRequest
	v.MaxConcurrentRequests = q.Spec.MaxConcurrentRequests
	v.DryRun = q.Spec.Enforcement == llmv1alpha1.EnforcementDryRun
	v.Budgets = quota.BudgetsFor(u, q)
	v.Pricing = quota.PricingFromSpec(q.Spec.Pricing)
	v.Priority = q.Spec.Priority
	v.FairShareWeight = q.Spec.FairShareWeight
	v.FairnessID = proxy.FairnessID(u.Namespace, u.Name, q.Name, q.Spec.Scope == llmv1alpha1.ScopeShared)
	v.CacheSalt = proxy.CacheSalt(string(q.Spec.CacheIsolation), u.Namespace, u.Name, string(u.UID), q.Name, string(q.UID))
	return v
}
