package controller

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/token"
)

const (
	// JWKSKey is the ConfigMap key that holds the published JWKS document.
	JWKSKey = "jwks.json"
	// AnnotationRotateKeys on the signing-keys Secret forces a new signing key
	// when its value differs from the last value acted on.
	AnnotationRotateKeys = "llm.userops.dev/rotate-keys"
	// annotationRotatedKeys records the last AnnotationRotateKeys value acted on.
	annotationRotatedKeys = "llm.userops.dev/rotated-keys"
	// MaxTokenTTL is the longest spec.token.ttl the API accepts; a retired key
	// stays published this long (plus skew) so no token it signed stops working early.
	MaxTokenTTL = 720 * time.Hour
	keySkew     = time.Minute
)

// KeyStore holds the signing keys the operator loaded, for the token
// reconciler and the refresh endpoint. It is safe for concurrent use.
type KeyStore struct {
	mu       sync.RWMutex
	keys     []token.Key
	now      func() time.Time
	verifier *token.Verifier
	ready    chan struct{}
	once     sync.Once
}

// NewKeyStore returns an empty store whose verifier checks iss and aud.
func NewKeyStore(issuer, audience string, now func() time.Time) *KeyStore {
	return &KeyStore{
		now:      now,
		verifier: token.NewVerifier(token.VerifierOptions{Issuer: issuer, Audience: audience, Now: now}),
		ready:    make(chan struct{}),
	}
}

// Set replaces the keys (newest first).
func (s *KeyStore) Set(keys []token.Key) {
	s.mu.Lock()
	s.keys = keys
	s.mu.Unlock()
	s.verifier.SetKeys(keys)
	if len(keys) > 0 {
		s.once.Do(func() { close(s.ready) })
	}
}

// Active returns the key that signs new tokens now: a new key only once it
// has been published for [token.ActivationDelay].
func (s *KeyStore) Active() (token.Key, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return token.SigningKey(s.keys, s.now())
}

// Verifier verifies tokens against every published key.
func (s *KeyStore) Verifier() *token.Verifier { return s.verifier }

// Ready is closed once the first key is loaded.
func (s *KeyStore) Ready() <-chan struct{} { return s.ready }

// SigningKeyReconciler keeps the signing keys in a Secret of the operator's
// namespace (created if missing), publishes their public halves as a JWKS in a
// ConfigMap the proxy reads, and rotates them: a new key every RotationPeriod
// or when AnnotationRotateKeys changes; a retired key is dropped only once
// every token it signed has expired. It runs on the leader only: the one
// writer of the keys. Every replica reads them through [SigningKeyLoader].
type SigningKeyReconciler struct {
	Client client.Client
	// APIReader reads the Secret and the ConfigMap live: they may exist
	// without our label (created by hand or by an older release), and then
	// the label-filtered cache cannot see them, while overwriting them blindly
	// would lose every key.
	APIReader      client.Reader
	Namespace      string
	SecretName     string
	ConfigMapName  string
	RotationPeriod time.Duration
	Clock          clock.Clock
}

func (r *SigningKeyReconciler) key() types.NamespacedName {
	return types.NamespacedName{Namespace: r.Namespace, Name: r.SecretName}
}

// Reconcile ensures the keys and the JWKS, and requeues at the next rotation
// or key-drop deadline.
func (r *SigningKeyReconciler) Reconcile(ctx context.Context, _ reconcile.Request) (reconcile.Result, error) {
	log := logf.FromContext(ctx)
	now := r.Clock.Now()

	secret := &corev1.Secret{}
	err := r.APIReader.Get(ctx, r.key(), secret)
	exists := err == nil
	if err != nil && !apierrors.IsNotFound(err) {
		return reconcile.Result{}, err
	}
	var keys []token.Key
	if exists {
		if keys, err = token.DecodePrivateKeys(secret.Data); err != nil {
			// Never overwrite key material we cannot read: an admin must fix or delete it.
			return reconcile.Result{}, reconcile.TerminalError(fmt.Errorf("secret %s holds unreadable signing keys (delete it to start over): %w", r.key(), err))
		}
	}
	request := secret.Annotations[AnnotationRotateKeys]
	force := request != "" && request != secret.Annotations[annotationRotatedKeys]

	plan := token.PlanRotation(keys, now, r.RotationPeriod, MaxTokenTTL, force)
	keys = plan.Keep
	if plan.NeedNew {
		k, err := token.GenerateKey(now)
		if err != nil {
			return reconcile.Result{}, err
		}
		keys = append([]token.Key{k}, keys...)
		plan = token.PlanRotation(keys, now, r.RotationPeriod, MaxTokenTTL, false)
		log.Info("new signing key", "kid", k.ID, "published", len(keys))
	}
	data, err := token.EncodePrivateKeys(keys)
	if err != nil {
		return reconcile.Result{}, err
	}

	// Publish first: a verifier must know a key before any token signed by it exists.
	jwks, err := token.MarshalJWKS(keys)
	if err != nil {
		return reconcile.Result{}, err
	}
	if err := r.publish(ctx, jwks); err != nil {
		return reconcile.Result{}, err
	}

	if !exists {
		secret = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{
			Namespace: r.Namespace, Name: r.SecretName,
			Labels: map[string]string{llmv1alpha1.LabelManagedBy: llmv1alpha1.ManagedByValue},
		}, Data: data}
		if err := r.Client.Create(ctx, secret); err != nil {
			return reconcile.Result{}, err
		}
	} else if !equalData(secret.Data, data) || force || secret.Labels[llmv1alpha1.LabelManagedBy] != llmv1alpha1.ManagedByValue {
		secret.Data = data
		if secret.Labels == nil {
			secret.Labels = map[string]string{}
		}
		secret.Labels[llmv1alpha1.LabelManagedBy] = llmv1alpha1.ManagedByValue
		if force {
			secret.Annotations[annotationRotatedKeys] = request
		}
		if err := r.Client.Update(ctx, secret); err != nil {
			return reconcile.Result{}, err
		}
	}

	if plan.NextCheck.IsZero() {
		return reconcile.Result{}, nil
	}
	return reconcile.Result{RequeueAfter: max(plan.NextCheck.Sub(now), time.Second)}, nil
}

func (r *SigningKeyReconciler) publish(ctx context.Context, jwks []byte) error {
	cm := &corev1.ConfigMap{}
	err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: r.Namespace, Name: r.ConfigMapName}, cm)
	switch {
	case apierrors.IsNotFound(err):
		cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{
			Namespace: r.Namespace, Name: r.ConfigMapName,
			Labels: map[string]string{llmv1alpha1.LabelManagedBy: llmv1alpha1.ManagedByValue},
		}, Data: map[string]string{JWKSKey: string(jwks)}}
		return r.Client.Create(ctx, cm)
	case err != nil:
		return err
	case cm.Data[JWKSKey] == string(jwks):
		return nil
	}
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[JWKSKey] = string(jwks)
	return r.Client.Update(ctx, cm)
}

func equalData(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || !bytes.Equal(v, w) {
			return false
		}
	}
	return true
}

// SetupWithManager watches the keys Secret and the JWKS ConfigMap (so edits and
// deletions are repaired) and enqueues one request at start, when neither exists yet.
func (r *SigningKeyReconciler) SetupWithManager(mgr ctrl.Manager) error {
	req := reconcile.Request{NamespacedName: r.key()}
	toKeys := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{req}
	})
	inNamespace := func(name string) predicate.Predicate {
		return predicate.NewPredicateFuncs(func(o client.Object) bool {
			return o.GetNamespace() == r.Namespace && o.GetName() == name
		})
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("signingkeys").
		WatchesRawSource(source.Func(func(_ context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
			q.Add(req)
			return nil
		})).
		Watches(&corev1.Secret{}, toKeys, builder.WithPredicates(inNamespace(r.SecretName))).
		Watches(&corev1.ConfigMap{}, toKeys, builder.WithPredicates(inNamespace(r.ConfigMapName), predicate.Funcs{
			// Our own writes come back as updates; only a deletion or an edit by someone else matters,
			// and the reconcile is a no-op when the content is already right.
			CreateFunc: func(event.CreateEvent) bool { return false },
		})).
		Complete(r)
}

// SigningKeyLoader fills the key store from the signing-keys Secret through
// the informer cache, on every replica, leader or not, the way cert-manager's
// controllers read through listers: a follower serves /auth/refresh with
// exactly the keys the leader wrote, and when the leader retires or drops a
// key every replica follows from the same watch event. It never writes.
type SigningKeyLoader struct {
	Client client.Client
	Secret types.NamespacedName
	Store  *KeyStore
}

// Reconcile loads the keys the Secret holds now.
func (l *SigningKeyLoader) Reconcile(ctx context.Context, _ reconcile.Request) (reconcile.Result, error) {
	secret := &corev1.Secret{}
	if err := l.Client.Get(ctx, l.Secret, secret); err != nil {
		// Gone: the leader writes a new set, which arrives as an event. Until
		// then the keys already loaded keep verifying what they signed.
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	keys, err := token.DecodePrivateKeys(secret.Data)
	if err != nil {
		// The leader refuses to overwrite it too; an admin must fix it. Keep
		// serving with the keys already loaded.
		return reconcile.Result{}, reconcile.TerminalError(fmt.Errorf("secret %s holds unreadable signing keys: %w", l.Secret, err))
	}
	if len(keys) > 0 {
		l.Store.Set(keys)
	}
	return reconcile.Result{}, nil
}

// SetupWithManager watches the keys Secret on every replica.
func (l *SigningKeyLoader) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("signingkeys-loader").
		For(&corev1.Secret{}, builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool {
			return o.GetNamespace() == l.Secret.Namespace && o.GetName() == l.Secret.Name
		}))).
		WithOptions(controller.Options{NeedLeaderElection: ptr.To(false)}).
		Complete(l)
}
