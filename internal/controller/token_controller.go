package controller

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/token"
)

// Keys of the user's token Secret.
const (
	SecretKeyToken   = "token"
	SecretKeyAPIKey  = "OPENAI_API_KEY"
	SecretKeyBaseURL = "OPENAI_BASE_URL"
	// SecretKeyAPIBase carries the same URL under the name older SDKs and LangChain read.
	SecretKeyAPIBase   = "OPENAI_API_BASE"
	SecretKeyExpiresAt = "expiresAt"
)

// secretNameIndex indexes LLMUsers by the name of the Secret they want (spec.token.secretName or its default).
const secretNameIndex = "token.secretName"

type workqueueRL = workqueue.TypedRateLimitingInterface[reconcile.Request]

// TokenReconciler issues each LLMUser its token: a JWT in a Secret of the
// user's namespace, renewed between 80% and 90% of its lifetime (see
// [RenewAt]), re-issued with a new generation when the rotate-token
// annotation changes, restored when edited or deleted. It owns the Ready and
// TokenIssued conditions and status.token.
type TokenReconciler struct {
	Client client.Client
	// APIReader reads what the cache cannot see: the cache holds only Secrets
	// labelled as ours, so a foreign Secret under the wanted name shows up
	// only as AlreadyExists on create and is then read live to say whose it is.
	APIReader client.Reader
	Clock     clock.Clock
	Keys      *token.KeyStore
	// BaseURL is the proxy's OpenAI base URL, ending in /v1.
	BaseURL  string
	Recorder events.EventRecorder
	// ReservedSecrets are Secrets no user may name, whether they exist yet or
	// not: the signing keys (a user in the operator's namespace could
	// otherwise create that Secret first and hold the operator's keys hostage).
	ReservedSecrets []types.NamespacedName
}

// SecretConflictRecheck is how often a user whose spec.token.secretName
// collides with a foreign Secret looks again. Renaming secretName or deleting
// a foreign Secret that carries our managed-by label triggers a pass at once
// (watches), but the cache holds only labelled Secrets, so the deletion of an
// unlabelled one produces no event this operator can receive. The recheck
// bounds how long such a user waits after the admin cleared the name, at the
// cost of one failed create per conflicting user per period (a conflict is a
// misconfiguration, so there are few).
const SecretConflictRecheck = time.Minute

// Reconcile brings one user's Secret and status in line.
func (r *TokenReconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	log := logf.FromContext(ctx)
	user := &llmv1alpha1.LLMUser{}
	if err := r.Client.Get(ctx, req.NamespacedName, user); err != nil {
		// A deleted user's Secret goes with it (owner reference); the proxy
		// refuses its tokens because it no longer knows the uid.
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	orig := user.DeepCopy()
	now := r.Clock.Now()

	ts := user.Status.Token
	if ts == nil {
		ts = &llmv1alpha1.TokenStatus{}
	}
	if ts.Generation == 0 {
		ts.Generation = 1
	}
	if want := user.Annotations[llmv1alpha1.AnnotationRotateToken]; want != "" && want != ts.RotationRequest {
		if ts.RotationRequest != "" || user.Status.Token != nil {
			ts.Generation++
		}
		ts.RotationRequest = want
	}
	user.Status.Token = ts

	var result reconcile.Result
	quota := &llmv1alpha1.LLMQuota{}
	quotaErr := r.Client.Get(ctx, types.NamespacedName{Namespace: user.Namespace, Name: user.Spec.QuotaRef.Name}, quota)
	if quotaErr != nil && !apierrors.IsNotFound(quotaErr) {
		return reconcile.Result{}, quotaErr
	}
	signer, haveKey := r.Keys.Signer()

	switch {
	case user.Spec.Suspended:
		msg := "spec.suspended is true: every token of this user is refused; the Secret is kept"
		if r.setCondition(user, llmv1alpha1.ConditionTokenIssued, metav1.ConditionFalse, llmv1alpha1.ReasonSuspended, msg) {
			r.Recorder.Eventf(user, nil, corev1.EventTypeNormal, "Revoked", "Suspend", "tokens revoked: user suspended")
		}
		r.setCondition(user, llmv1alpha1.ConditionReady, metav1.ConditionFalse, llmv1alpha1.ReasonSuspended, msg)
	case apierrors.IsNotFound(quotaErr):
		msg := fmt.Sprintf("LLMQuota %q not found in namespace %q: create it or fix spec.quotaRef.name", user.Spec.QuotaRef.Name, user.Namespace)
		if meta.FindStatusCondition(user.Status.Conditions, llmv1alpha1.ConditionTokenIssued) == nil {
			r.setCondition(user, llmv1alpha1.ConditionTokenIssued, metav1.ConditionFalse, llmv1alpha1.ReasonQuotaNotFound, msg)
		}
		r.setCondition(user, llmv1alpha1.ConditionReady, metav1.ConditionFalse, llmv1alpha1.ReasonQuotaNotFound, msg)
	case !haveKey:
		// Keys not loaded yet: right after a start or a failover, before the
		// cache delivered the keys Secret. Every user is enqueued again once
		// they arrive (SetupWithManager); writing a transient state now would
		// cost every user two status writes at each restart and flap Ready.
		return reconcile.Result{}, nil
	default:
		renewAt, conflict, err := r.ensureToken(ctx, user, signer, now)
		if err != nil {
			return reconcile.Result{}, err
		}
		if conflict != "" {
			r.refuseSecret(user, conflict)
			result.RequeueAfter = SecretConflictRecheck
		} else {
			result.RequeueAfter = max(renewAt.Sub(now), time.Second)
		}
	}
	user.Status.ObservedGeneration = user.Generation

	if equality.Semantic.DeepEqual(orig.Status, user.Status) {
		return result, nil
	}
	if err := r.Client.Status().Patch(ctx, user, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		if apierrors.IsConflict(err) {
			log.V(1).Info("status conflict, requeueing")
			return reconcile.Result{Requeue: true}, nil //nolint:staticcheck // an immediate, rate-limited retry is what a conflict needs
		}
		return reconcile.Result{}, err
	}
	return result, nil
}

// ensureToken keeps a valid token in the user's Secret and returns when it
// is due for renewal. conflict is non-empty, and nothing was written, when
// the Secret under the wanted name is not this user's to write; it says why
// and what to rename.
func (r *TokenReconciler) ensureToken(ctx context.Context, user *llmv1alpha1.LLMUser, signer *token.Issuer, now time.Time) (renewAt time.Time, conflict string, err error) {
	ts := user.Status.Token
	key := types.NamespacedName{Namespace: user.Namespace, Name: SecretName(user)}
	if slices.Contains(r.ReservedSecrets, key) {
		return time.Time{}, fmt.Sprintf("Secret %s is the operator's signing-keys Secret: set spec.token.secretName to another name", key.Name), nil
	}
	secret := &corev1.Secret{}
	err = r.Client.Get(ctx, key, secret)
	if err != nil && !apierrors.IsNotFound(err) {
		return time.Time{}, "", err
	}
	exists := err == nil
	if exists {
		if conflict := secretConflict(user, secret); conflict != "" {
			return time.Time{}, conflict, nil
		}
	}

	var claims *token.Claims
	raw := string(secret.Data[SecretKeyToken])
	if raw != "" {
		if c, verr := r.Keys.Verifier().Verify(raw); verr == nil {
			claims = c
		}
	}
	reason := reissueReason(now, user, ts.Generation, claims)
	if reason != "" {
		var err error
		raw, claims, err = signer.Issue(token.IssueRequest{
			Namespace: user.Namespace, Name: user.Name, UID: string(user.UID),
			Generation: ts.Generation, TTL: TokenTTL(user),
		})
		if err != nil {
			return time.Time{}, "", err
		}
	}
	iat, exp := claims.IssuedAt.Time, claims.ExpiresAt.Time
	renewAt = RenewAt(user.UID, iat, exp)

	desired := map[string][]byte{
		SecretKeyToken:     []byte(raw),
		SecretKeyAPIKey:    []byte(raw),
		SecretKeyBaseURL:   []byte(r.BaseURL),
		SecretKeyAPIBase:   []byte(r.BaseURL),
		SecretKeyExpiresAt: []byte(exp.UTC().Format(time.RFC3339)),
	}
	if !exists {
		secret = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name}}
	}
	before := secret.DeepCopy()
	if secret.Labels == nil {
		secret.Labels = map[string]string{}
	}
	secret.Labels[llmv1alpha1.LabelUser] = user.Name
	secret.Labels[llmv1alpha1.LabelManagedBy] = llmv1alpha1.ManagedByValue
	secret.Type = corev1.SecretTypeOpaque
	secret.Data = desired
	if err := controllerutil.SetControllerReference(user, secret, r.Client.Scheme()); err != nil {
		return time.Time{}, "", fmt.Errorf("secret %s: %w", key, err)
	}
	switch {
	case !exists:
		err := r.Client.Create(ctx, secret)
		if apierrors.IsAlreadyExists(err) {
			conflict, err := r.foreignSecret(ctx, user, key)
			return time.Time{}, conflict, err
		}
		if err != nil {
			return time.Time{}, "", err
		}
	case !equality.Semantic.DeepEqual(before, secret):
		if err := r.Client.Update(ctx, secret); err != nil {
			return time.Time{}, "", err
		}
	}
	if reason != "" {
		r.recordIssue(user, reason, key.Name, exp)
		ts.KeyID = signer.Key.ID
	} else if ts.KeyID == "" {
		ts.KeyID = signer.Key.ID
	}
	// Only a user whose token last went elsewhere can have left a Secret
	// behind: the others skip a scan of the namespace's Secrets.
	if ts.SecretName != "" && ts.SecretName != key.Name {
		if err := r.deleteStaleSecrets(ctx, user, key.Name); err != nil {
			return time.Time{}, "", err
		}
	}
	ts.SecretName = key.Name
	ts.IssuedAt, ts.ExpiresAt, ts.RenewAt = ptrTime(iat), ptrTime(exp), ptrTime(renewAt)
	msg := fmt.Sprintf("token generation %d in Secret %s, valid until %s", ts.Generation, key.Name, exp.UTC().Format(time.RFC3339))
	r.setCondition(user, llmv1alpha1.ConditionTokenIssued, metav1.ConditionTrue, llmv1alpha1.ReasonIssued, msg)
	r.setCondition(user, llmv1alpha1.ConditionReady, metav1.ConditionTrue, llmv1alpha1.ReasonIssued, "token issued and quota "+user.Spec.QuotaRef.Name+" found")
	return renewAt, "", nil
}

// recordIssue leaves an Event for a token issued for a reason someone may
// want to trace: a rotation or ttl change an admin asked for, a Secret
// restored after it was edited or deleted. The first token and the scheduled
// renewals are routine, shown by the Ready condition and status.token: an
// Event for each would be two API writes per user a day at 10,000 users,
// and a third write (after the Secret and the status) for every user
// onboarded.
func (r *TokenReconciler) recordIssue(user *llmv1alpha1.LLMUser, reason, secret string, exp time.Time) {
	var event string
	switch {
	case reason == "Rotated":
		event = "TokenRotated"
	case reason == "TTLChanged":
		event = "TokenRenewed"
	case reason == "Renewal", user.Status.Token.IssuedAt == nil:
		return
	default: // NoValidToken, WrongSubject after a token was issued: restored
		event = "TokenIssued"
	}
	r.Recorder.Eventf(user, nil, corev1.EventTypeNormal, event, "IssueToken",
		"token generation %d issued into Secret %s (%s), expires %s", user.Status.Token.Generation, secret, reissueMessages[reason], exp.UTC().Format(time.RFC3339))
}

// reissueMessages explain the reasons of [reissueReason] in Events.
var reissueMessages = map[string]string{
	"NoValidToken": "the Secret held no valid token",
	"WrongSubject": "the Secret held another user's token",
	"Rotated":      "rotation requested",
	"TTLChanged":   "spec.token.ttl changed",
}

// foreignSecret explains a create that found the name taken by a Secret the
// cache cannot see (it lacks our label), reading it live. A Secret that is
// ours after all (created by an earlier pass the cache has not caught up
// with) is an error: the rate-limited retry finds it in the cache.
func (r *TokenReconciler) foreignSecret(ctx context.Context, user *llmv1alpha1.LLMUser, key types.NamespacedName) (string, error) {
	live := &corev1.Secret{}
	if err := r.APIReader.Get(ctx, key, live); err != nil {
		return "", fmt.Errorf("secret %s exists but cannot be read: %w", key, err)
	}
	if conflict := secretConflict(user, live); conflict != "" {
		return conflict, nil
	}
	return "", fmt.Errorf("secret %s is this user's but not in the cache yet", key)
}

// secretConflict says why the user may not write the existing Secret s, or
// "" when s is its own: only a Secret whose controller is this very LLMUser
// (same uid) is ever written. Adopting anything else would overwrite
// someone's data and, through the owner reference, have the garbage
// collector delete it with the user.
func secretConflict(u *llmv1alpha1.LLMUser, s *corev1.Secret) string {
	ref := metav1.GetControllerOf(s)
	const rename = "set spec.token.secretName to an unused name"
	switch {
	case ref == nil:
		return fmt.Sprintf("Secret %s already exists and is not managed by this LLMUser: %s, or delete that Secret if nothing needs it", s.Name, rename)
	case ref.UID == u.UID:
		return ""
	case ref.Kind == "LLMUser" && ref.Name == u.Name && strings.HasPrefix(ref.APIVersion, llmv1alpha1.GroupVersion.Group+"/"):
		return fmt.Sprintf("Secret %s still belongs to a deleted LLMUser of the same name (uid %s); it is issued as soon as the garbage collector removes it, or %s", s.Name, ref.UID, rename)
	default:
		return fmt.Sprintf("Secret %s belongs to %s %s: %s", s.Name, ref.Kind, ref.Name, rename)
	}
}

// refuseSecret records a secretName conflict: TokenIssued and Ready false,
// and a warning Event whenever the explanation changes.
func (r *TokenReconciler) refuseSecret(user *llmv1alpha1.LLMUser, msg string) {
	prev := meta.FindStatusCondition(user.Status.Conditions, llmv1alpha1.ConditionTokenIssued)
	if prev == nil || prev.Reason != llmv1alpha1.ReasonSecretConflict || prev.Message != msg {
		r.Recorder.Eventf(user, nil, corev1.EventTypeWarning, llmv1alpha1.ReasonSecretConflict, "IssueToken", "%s", msg)
	}
	r.setCondition(user, llmv1alpha1.ConditionTokenIssued, metav1.ConditionFalse, llmv1alpha1.ReasonSecretConflict, msg)
	r.setCondition(user, llmv1alpha1.ConditionReady, metav1.ConditionFalse, llmv1alpha1.ReasonSecretConflict, msg)
}

// deleteStaleSecrets removes token Secrets this user owns under another name
// (spec.token.secretName changed): a token left behind would keep working.
func (r *TokenReconciler) deleteStaleSecrets(ctx context.Context, user *llmv1alpha1.LLMUser, current string) error {
	var list corev1.SecretList
	if err := r.Client.List(ctx, &list, client.InNamespace(user.Namespace), client.MatchingLabels{llmv1alpha1.LabelUser: user.Name}); err != nil {
		return err
	}
	for i := range list.Items {
		s := &list.Items[i]
		if ref := metav1.GetControllerOf(s); s.Name == current || ref == nil || ref.UID != user.UID {
			continue
		}
		if err := r.Client.Delete(ctx, s); client.IgnoreNotFound(err) != nil {
			return err
		}
	}
	return nil
}

// setCondition sets a condition, keeping its transition time when the status
// does not change, and reports whether the status changed.
func (r *TokenReconciler) setCondition(u *llmv1alpha1.LLMUser, typ string, status metav1.ConditionStatus, reason, msg string) bool {
	prev := meta.FindStatusCondition(u.Status.Conditions, typ)
	changed := prev == nil || prev.Status != status
	meta.SetStatusCondition(&u.Status.Conditions, metav1.Condition{
		Type: typ, Status: status, Reason: reason, Message: msg, ObservedGeneration: u.Generation,
		LastTransitionTime: metav1.NewTime(r.Clock.Now()),
	})
	return changed
}

func ptrTime(t time.Time) *metav1.Time {
	mt := metav1.NewTime(t.UTC().Truncate(time.Second))
	return &mt
}

// userRequests lists users of a namespace, from the cache without copying
// them (read only), that match, as reconcile requests.
func userRequests(ctx context.Context, c client.Client, namespace string, match func(*llmv1alpha1.LLMUser) bool, opts ...client.ListOption) []reconcile.Request {
	var users llmv1alpha1.LLMUserList
	if err := c.List(ctx, &users, append(opts, client.InNamespace(namespace), client.UnsafeDisableDeepCopy)...); err != nil {
		logf.FromContext(ctx).Error(err, "listing users", "namespace", namespace)
		return nil
	}
	var reqs []reconcile.Request
	for i := range users.Items {
		if u := &users.Items[i]; match(u) {
			reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: u.Namespace, Name: u.Name}})
		}
	}
	return reqs
}

// +kubebuilder:rbac:groups=llm.userops.dev,resources=llmusers,verbs=get;list;watch
// +kubebuilder:rbac:groups=llm.userops.dev,resources=llmusers/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=llm.userops.dev,resources=llmquotas,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// SetupWithManager watches LLMUsers (spec and annotation changes only: status
// writes, the proxy's usage among them, never trigger a pass), their Secrets,
// the deletion of a Secret a refused user wants, the existence of their
// quotas, and the arrival of the first signing key.
func (r *TokenReconciler) SetupWithManager(mgr ctrl.Manager) error {
	const name = "llmuser-token"
	c := mgr.GetClient()
	keysReady := source.Func(func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
		go func() {
			select {
			case <-ctx.Done():
				return
			case <-r.Keys.Ready():
			}
			var users llmv1alpha1.LLMUserList
			if err := c.List(ctx, &users, client.UnsafeDisableDeepCopy); err != nil {
				logf.FromContext(ctx).Error(err, "listing users after the first signing key")
				return
			}
			for _, u := range users.Items {
				q.Add(reconcile.Request{NamespacedName: types.NamespacedName{Namespace: u.Namespace, Name: u.Name}})
			}
		}()
		return nil
	})
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &llmv1alpha1.LLMUser{}, secretNameIndex, func(o client.Object) []string {
		return []string{SecretName(o.(*llmv1alpha1.LLMUser))}
	}); err != nil {
		return fmt.Errorf("setting up the %s controller: indexing users by Secret name: %w", name, err)
	}
	// A deleted Secret frees its name for a user that was refused it (one
	// that wanted another user's or a stale Secret).
	claimants := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
		return userRequests(ctx, c, o.GetNamespace(), func(*llmv1alpha1.LLMUser) bool { return true }, client.MatchingFields{secretNameIndex: o.GetName()})
	})
	onlyDeletes := predicate.Funcs{
		CreateFunc:  func(event.CreateEvent) bool { return false },
		UpdateFunc:  func(event.UpdateEvent) bool { return false },
		GenericFunc: func(event.GenericEvent) bool { return false },
	}
	// A quota appearing or going changes its users' tokens. Rare enough (an
	// admin's act) to scan the namespace's users instead of keeping an index.
	usersOfQuota := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
		return userRequests(ctx, c, o.GetNamespace(), func(u *llmv1alpha1.LLMUser) bool { return u.Spec.QuotaRef.Name == o.GetName() })
	})
	err := ctrl.NewControllerManagedBy(mgr).
		Named(name).
		For(&llmv1alpha1.LLMUser{}, builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		// Edits and deletions of a token Secret are repaired; its creation is
		// our own write, and reacting to it would reconcile every new user
		// twice (the second time, often, from a cache that has not seen the
		// first status write yet: a conflict).
		Owns(&corev1.Secret{}, builder.WithPredicates(predicate.Funcs{CreateFunc: func(event.CreateEvent) bool { return false }})).
		Watches(&corev1.Secret{}, claimants, builder.WithPredicates(onlyDeletes)).
		Watches(&llmv1alpha1.LLMQuota{}, usersOfQuota, builder.WithPredicates(predicate.Funcs{
			// Only a quota's existence matters to a token.
			UpdateFunc: func(event.UpdateEvent) bool { return false },
		})).
		WatchesRawSource(keysReady).
		Complete(r)
	if err != nil {
		return fmt.Errorf("setting up the %s controller: %w", name, err)
	}
	return nil
}
