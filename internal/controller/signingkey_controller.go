package controller

import (
	"bytes"
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
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
		}, Data: map[string]string{token.JWKSKey: string(jwks)}}
		return r.Client.Create(ctx, cm)
	case err != nil:
		return err
	case cm.Data[token.JWKSKey] == string(jwks):
		return nil
	}
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[token.JWKSKey] = string(jwks)
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

// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;update;patch
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get;list;watch;create;update;patch

// SetupWithManager watches the keys Secret and the JWKS ConfigMap (so edits and
// deletions are repaired) and enqueues one request at start, when neither exists yet.
func (r *SigningKeyReconciler) SetupWithManager(mgr ctrl.Manager) error {
	const name = "signingkeys"
	req := reconcile.Request{NamespacedName: r.key()}
	toKeys := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{req}
	})
	inNamespace := func(name string) predicate.Predicate {
		return predicate.NewPredicateFuncs(func(o client.Object) bool {
			return o.GetNamespace() == r.Namespace && o.GetName() == name
		})
	}
	err := ctrl.NewControllerManagedBy(mgr).
		Named(name).
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
	if err != nil {
		return fmt.Errorf("setting up the %s controller: %w", name, err)
	}
	return nil
}
