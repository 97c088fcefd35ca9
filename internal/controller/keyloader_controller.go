package controller

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/llm-user-operator/llm-user-operator/internal/token"
)

// SigningKeyLoader fills the key store from the signing-keys Secret through
// the informer cache, on every replica, leader or not, the way cert-manager's
// controllers read through listers: a follower serves /auth/refresh with
// exactly the keys the leader wrote, and when the leader retires or drops a
// key every replica follows from the same watch event. It never writes.
type SigningKeyLoader struct {
	Client client.Client
	Secret types.NamespacedName
	Store  *token.KeyStore
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

// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch

// SetupWithManager watches the keys Secret on every replica.
func (l *SigningKeyLoader) SetupWithManager(mgr ctrl.Manager) error {
	const name = "signingkeys-loader"
	err := ctrl.NewControllerManagedBy(mgr).
		Named(name).
		For(&corev1.Secret{}, builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool {
			return o.GetNamespace() == l.Secret.Namespace && o.GetName() == l.Secret.Name
		}))).
		WithOptions(controller.Options{NeedLeaderElection: ptr.To(false)}).
		Complete(l)
	if err != nil {
		return fmt.Errorf("setting up the %s controller: %w", name, err)
	}
	return nil
}
