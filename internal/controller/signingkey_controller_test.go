package controller_test

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/controller"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
	"github.com/llm-user-operator/llm-user-operator/internal/token"
)

// TestSigningKeyRotation drives the key reconciler with a fake clock: first key
// on an empty namespace, rotation after the period with the old key still
// published, the old key dropped once its tokens can no longer be valid, and
// the manual trigger.
func TestSigningKeyRotation(t *testing.T) {
	env := apiServer(t)
	ctx := context.Background()
	ns := envtest.NewNamespace(t, env.Client, "ctrl")
	clk := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	store := token.NewKeyStore(issuer, audience, clk.Now)
	// Longer than the longest token ttl, so the drop of a retired key comes before the next rotation.
	period := 60 * 24 * time.Hour
	r := &controller.SigningKeyReconciler{
		Client: env.Client, APIReader: env.Client, Namespace: ns, SecretName: "keys", ConfigMapName: "jwks",
		RotationPeriod: period, Clock: clk,
	}
	loader := &controller.SigningKeyLoader{Client: env.Client, Secret: types.NamespacedName{Namespace: ns, Name: "keys"}, Store: store}
	published := func() []token.Key {
		t.Helper()
		cm := &corev1.ConfigMap{}
		if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "jwks"}, cm); err != nil {
			t.Fatal(err)
		}
		keys, err := token.ParseJWKS([]byte(cm.Data[token.JWKSKey]))
		if err != nil {
			t.Fatal(err)
		}
		return keys
	}
	reconcileOnce := func() reconcile.Result {
		t.Helper()
		res, err := r.Reconcile(ctx, reconcile.Request{})
		if err != nil {
			t.Fatal(err)
		}
		// What every replica does with the Secret the leader wrote.
		if _, err := loader.Reconcile(ctx, reconcile.Request{}); err != nil {
			t.Fatal(err)
		}
		return res
	}

	res := reconcileOnce()
	keys := published()
	if len(keys) != 1 || res.RequeueAfter != period {
		t.Fatalf("first pass: %d keys, requeue %v", len(keys), res.RequeueAfter)
	}
	first := keys[0].ID
	iss, _ := store.Signer()
	if iss == nil || iss.Key.ID != first || iss.Key.Private == nil {
		t.Fatalf("store signs with %+v, want %q with its private half", iss, first)
	}
	// A token signed just before the rotation must keep verifying through it.
	clk.Step(period - time.Hour)
	tok, _, err := iss.Issue(token.IssueRequest{Namespace: "n", Name: "u", UID: "uid", Generation: 1, TTL: controller.MaxTokenTTL})
	if err != nil {
		t.Fatal(err)
	}

	clk.Step(time.Hour)
	res = reconcileOnce()
	keys = published()
	if len(keys) != 2 || keys[0].ID == first || keys[1].ID != first {
		t.Fatalf("after the period: %d keys %v", len(keys), ids(keys))
	}
	if _, err := store.Verifier().Verify(tok); err != nil {
		t.Fatalf("token of the previous key refused during the overlap: %v", err)
	}
	// The next event is the old key's drop: max ttl + skew after it stopped signing.
	if res.RequeueAfter > controller.MaxTokenTTL+time.Minute || res.RequeueAfter < controller.MaxTokenTTL {
		t.Errorf("requeue after %v, want the previous key's drop (~%v)", res.RequeueAfter, controller.MaxTokenTTL)
	}
	clk.Step(res.RequeueAfter)
	reconcileOnce()
	if keys = published(); len(keys) != 1 || keys[0].ID == first {
		t.Fatalf("previous key not dropped: %v", ids(keys))
	}

	// Manual rotation through the annotation.
	s := &corev1.Secret{}
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "keys"}, s); err != nil {
		t.Fatal(err)
	}
	s.Annotations = map[string]string{controller.AnnotationRotateKeys: "incident-42"}
	if err := env.Client.Update(ctx, s); err != nil {
		t.Fatal(err)
	}
	before := keys[0].ID
	reconcileOnce()
	if keys = published(); len(keys) != 2 || keys[1].ID != before {
		t.Fatalf("manual rotation: %v", ids(keys))
	}
	reconcileOnce() // handled once, not on every pass
	if keys = published(); len(keys) != 2 {
		t.Fatalf("manual rotation repeated: %v", ids(keys))
	}
	if s.Labels[llmv1alpha1.LabelManagedBy] != llmv1alpha1.ManagedByValue {
		t.Errorf("keys secret labels %v", s.Labels)
	}
}

func ids(keys []token.Key) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.ID
	}
	return out
}
