package controller_test

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/controller"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
	"github.com/llm-user-operator/llm-user-operator/internal/token"
)

// foreignSecret creates a Secret the operator did not write.
func foreignSecret(t *testing.T, ns, name string, lbls map[string]string, owner *metav1.OwnerReference) *corev1.Secret {
	t.Helper()
	env := apiServer(t)
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls},
		Data:       map[string][]byte{"password": []byte("hunter2")},
	}
	if owner != nil {
		s.OwnerReferences = []metav1.OwnerReference{*owner}
	}
	if err := env.Client.Create(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	return s
}

// wantUntouched fails unless the Secret still holds exactly what its owner
// wrote: no data, label or owner reference of ours.
func wantUntouched(t *testing.T, want *corev1.Secret) {
	t.Helper()
	env := apiServer(t)
	got := &corev1.Secret{}
	if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(want), got); err != nil {
		t.Fatal(err)
	}
	if !maps.EqualFunc(got.Data, want.Data, func(a, b []byte) bool { return string(a) == string(b) }) {
		t.Errorf("secret %s data overwritten: %v", want.Name, got.Data)
	}
	if !maps.Equal(got.Labels, want.Labels) {
		t.Errorf("secret %s labels = %v, want %v", want.Name, got.Labels, want.Labels)
	}
	if len(got.OwnerReferences) != len(want.OwnerReferences) || (len(want.OwnerReferences) == 1 && got.OwnerReferences[0].UID != want.OwnerReferences[0].UID) {
		t.Errorf("secret %s owners = %+v, want %+v", want.Name, got.OwnerReferences, want.OwnerReferences)
	}
}

// wantConflict waits for the user to be refused its Secret with msg.
func wantConflict(t *testing.T, ns, name, msg string) {
	t.Helper()
	poll.Until(t, 30*time.Second, func() error {
		u := getUser(t, ns, name)
		for _, typ := range []string{llmv1alpha1.ConditionTokenIssued, llmv1alpha1.ConditionReady} {
			if err := wantCondition(u, typ, metav1.ConditionFalse, llmv1alpha1.ReasonSecretConflict); err != nil {
				return err
			}
			if c := condition(u, typ); c.Message != msg {
				return fmt.Errorf("%s message %q, want %q", typ, c.Message, msg)
			}
		}
		return nil
	})
}

// wantWarning waits for a SecretConflict warning Event on the user.
func wantWarning(t *testing.T, ns, name, msg string) {
	t.Helper()
	env := apiServer(t)
	poll.Until(t, 30*time.Second, func() error {
		var list eventsv1.EventList
		if err := env.Client.List(context.Background(), &list, client.InNamespace(ns)); err != nil {
			return err
		}
		for _, e := range list.Items {
			if e.Regarding.Name == name && e.Reason == "SecretConflict" && e.Type == corev1.EventTypeWarning && e.Note == msg {
				return nil
			}
		}
		return fmt.Errorf("no SecretConflict warning on %s yet", name)
	})
}

func wantIssued(t *testing.T, ns, name, secret string) {
	t.Helper()
	env := apiServer(t)
	poll.Until(t, 30*time.Second, func() error {
		u := getUser(t, ns, name)
		if err := wantCondition(u, llmv1alpha1.ConditionReady, metav1.ConditionTrue, llmv1alpha1.ReasonIssued); err != nil {
			return err
		}
		if u.Status.Token == nil || u.Status.Token.SecretName != secret {
			return fmt.Errorf("status.token = %+v, want secret %s", u.Status.Token, secret)
		}
		s := &corev1.Secret{}
		if err := env.Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: secret}, s); err != nil {
			return err
		}
		if ref := metav1.GetControllerOf(s); ref == nil || ref.UID != u.UID {
			return fmt.Errorf("secret %s controller = %+v, want user uid %s", secret, ref, u.UID)
		}
		_, err := publishedVerifier(t).Verify(string(s.Data["token"]))
		return err
	})
}

// TestSecretNameConflicts runs the operator against users whose
// spec.token.secretName collides with a Secret that is not theirs: each is
// refused with a condition and an Event that say what to rename, the
// foreign Secret is left exactly as it was (so deleting the user can never
// garbage-collect it), and each recovers through a watch once the name is
// free or changed.
func TestSecretNameConflicts(t *testing.T) {
	env := apiServer(t)
	envtest.EnsureNamespace(t, env.Client, opNamespace)
	startOperator(t)
	ctx := context.Background()
	c := env.Client
	ns := envtest.NewNamespace(t, c, "conflict")
	if err := c.Create(ctx, newQuota(ns, "q")); err != nil {
		t.Fatal(err)
	}
	managed := map[string]string{llmv1alpha1.LabelManagedBy: llmv1alpha1.ManagedByValue}

	// An unlabelled Secret under the default name: the cache cannot see it,
	// the create answers AlreadyExists.
	plain := foreignSecret(t, ns, "alice-llm-token", nil, nil)
	if err := c.Create(ctx, newUser(ns, "alice", "q")); err != nil {
		t.Fatal(err)
	}
	const aliceMsg = "Secret alice-llm-token already exists and is not managed by this LLMUser: set spec.token.secretName to an unused name, or delete that Secret if nothing needs it"
	wantConflict(t, ns, "alice", aliceMsg)
	wantWarning(t, ns, "alice", aliceMsg)

	// A Secret carrying our label but owned by nothing.
	labelled := foreignSecret(t, ns, "shared-creds", managed, nil)
	bob := newUser(ns, "bob", "q")
	bob.Spec.Token.SecretName = "shared-creds"
	if err := c.Create(ctx, bob); err != nil {
		t.Fatal(err)
	}
	const bobMsg = "Secret shared-creds already exists and is not managed by this LLMUser: set spec.token.secretName to an unused name, or delete that Secret if nothing needs it"
	wantConflict(t, ns, "bob", bobMsg)
	wantWarning(t, ns, "bob", bobMsg)

	// A Secret controlled by something else entirely.
	other := foreignSecret(t, ns, "app-config", nil, &metav1.OwnerReference{
		APIVersion: "apps/v1", Kind: "Deployment", Name: "web", UID: "0b5e2c43-0000-4000-8000-000000000001", Controller: new(true),
	})
	carol := newUser(ns, "carol", "q")
	carol.Spec.Token.SecretName = "app-config"
	if err := c.Create(ctx, carol); err != nil {
		t.Fatal(err)
	}
	wantConflict(t, ns, "carol", "Secret app-config belongs to Deployment web: set spec.token.secretName to an unused name")

	// Another user's token Secret: dave keeps it, eve is refused.
	if err := c.Create(ctx, newUser(ns, "dave", "q")); err != nil {
		t.Fatal(err)
	}
	wantIssued(t, ns, "dave", "dave-llm-token")
	daveSecret := &corev1.Secret{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: "dave-llm-token"}, daveSecret); err != nil {
		t.Fatal(err)
	}
	eve := newUser(ns, "eve", "q")
	eve.Spec.Token.SecretName = "dave-llm-token"
	if err := c.Create(ctx, eve); err != nil {
		t.Fatal(err)
	}
	wantConflict(t, ns, "eve", "Secret dave-llm-token belongs to LLMUser dave: set spec.token.secretName to an unused name")
	wantUntouched(t, daveSecret)

	// The signing keys, named by a user in the operator's own namespace.
	keys := &corev1.Secret{}
	poll.Until(t, 30*time.Second, func() error {
		return c.Get(ctx, types.NamespacedName{Namespace: opNamespace, Name: "llm-user-operator-signing-keys"}, keys)
	})
	mallory := newUser(opNamespace, "mallory-"+ns, "q")
	mallory.Spec.Token.SecretName = "llm-user-operator-signing-keys"
	if err := c.Create(ctx, mallory); err != nil {
		t.Fatal(err)
	}
	if err := c.Create(ctx, newQuota(opNamespace, "q")); client.IgnoreAlreadyExists(err) != nil {
		t.Fatal(err)
	}
	const malloryMsg = "Secret llm-user-operator-signing-keys is the operator's signing-keys Secret: set spec.token.secretName to another name"
	wantConflict(t, opNamespace, mallory.Name, malloryMsg)
	wantWarning(t, opNamespace, mallory.Name, malloryMsg)
	wantUntouched(t, keys)

	// Nothing foreign was written to.
	for _, s := range []*corev1.Secret{plain, labelled, other} {
		wantUntouched(t, s)
	}

	// Recovery. Renaming secretName is a spec change: issued at once.
	alice := getUser(t, ns, "alice")
	patch := client.MergeFrom(alice.DeepCopy())
	alice.Spec.Token.SecretName = "alice-openai"
	if err := c.Patch(ctx, alice, patch); err != nil {
		t.Fatal(err)
	}
	wantIssued(t, ns, "alice", "alice-openai")
	wantUntouched(t, plain)

	// The Secret of a deleted user (envtest runs no garbage collector: the
	// test deletes it as the collector would) goes to the user that wanted
	// it, through the watch on labelled Secrets.
	if err := c.Delete(ctx, getUser(t, ns, "dave")); err != nil {
		t.Fatal(err)
	}
	wantUntouched(t, daveSecret)
	if err := c.Delete(ctx, daveSecret); err != nil {
		t.Fatal(err)
	}
	wantIssued(t, ns, "eve", "dave-llm-token")

	// A user recreated under the same name waits for its predecessor's Secret.
	if err := c.Create(ctx, newUser(ns, "frank", "q")); err != nil {
		t.Fatal(err)
	}
	wantIssued(t, ns, "frank", "frank-llm-token")
	oldFrank := getUser(t, ns, "frank")
	if err := c.Delete(ctx, oldFrank); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, func() error {
		if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: "frank"}, &llmv1alpha1.LLMUser{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("frank not deleted yet: %w", err)
		}
		return nil
	})
	if err := c.Create(ctx, newUser(ns, "frank", "q")); err != nil {
		t.Fatal(err)
	}
	wantConflict(t, ns, "frank", fmt.Sprintf("Secret frank-llm-token still belongs to a deleted LLMUser of the same name (uid %s); it is issued as soon as the garbage collector removes it, or set spec.token.secretName to an unused name", oldFrank.UID))
	if err := c.Delete(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "frank-llm-token"}}); err != nil {
		t.Fatal(err)
	}
	wantIssued(t, ns, "frank", "frank-llm-token")
}

// TestUnlabelledSecretRecheck drives the token reconciler through a cache
// filtered like the operator's (managed Secrets only): an unlabelled Secret
// is invisible to it, so its deletion sends no event. The user is refused
// with a recheck one minute later, which issues the token once the name is
// free.
func TestUnlabelledSecretRecheck(t *testing.T) {
	env := apiServer(t)
	ctx := t.Context()
	ns := envtest.NewNamespace(t, env.Client, "recheck")
	managed := labels.SelectorFromSet(labels.Set{llmv1alpha1.LabelManagedBy: llmv1alpha1.ManagedByValue})
	cch, err := cache.New(env.Config, cache.Options{Scheme: env.Client.Scheme(), ByObject: map[client.Object]cache.ByObject{
		&corev1.Secret{}: {Label: managed},
	}})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = cch.Start(ctx) }()
	cached, err := client.New(env.Config, client.Options{Scheme: env.Client.Scheme(), Cache: &client.CacheOptions{Reader: cch}})
	if err != nil {
		t.Fatal(err)
	}
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC))
	keys := token.NewKeyStore(issuer, audience, clk.Now)
	k, err := token.GenerateKey(clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	keys.Set([]token.Key{k})
	rec := events.NewFakeRecorder(10)
	r := &controller.TokenReconciler{
		Client: cached, APIReader: env.Client, Clock: clk, Keys: keys,
		BaseURL: baseURL, Recorder: rec,
	}
	if err := env.Client.Create(ctx, newQuota(ns, "q")); err != nil {
		t.Fatal(err)
	}
	plain := foreignSecret(t, ns, "gina-llm-token", nil, nil)
	if err := env.Client.Create(ctx, newUser(ns, "gina", "q")); err != nil {
		t.Fatal(err)
	}
	req := reconcile.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "gina"}}
	pass := func() reconcile.Result {
		t.Helper()
		// Reconcile what the API server holds, as the controller would
		// once the cache has caught up with the last status write.
		poll.Until(t, 10*time.Second, func() error {
			u := &llmv1alpha1.LLMUser{}
			if err := cached.Get(ctx, req.NamespacedName, u); err != nil {
				return err
			}
			return poll.Check(u.ResourceVersion == getUser(t, ns, "gina").ResourceVersion, "cache behind")
		})
		res, err := r.Reconcile(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}

	res := pass()
	if res.RequeueAfter != time.Minute {
		t.Errorf("requeue after %v, want the 1m recheck", res.RequeueAfter)
	}
	if err := wantCondition(getUser(t, ns, "gina"), llmv1alpha1.ConditionTokenIssued, metav1.ConditionFalse, llmv1alpha1.ReasonSecretConflict); err != nil {
		t.Fatal(err)
	}
	wantUntouched(t, plain)
	if ev := <-rec.Events; !strings.HasPrefix(ev, "Warning SecretConflict Secret gina-llm-token already exists") {
		t.Errorf("event %q", ev)
	}
	// The same conflict again: no new Event, no status write.
	rv := getUser(t, ns, "gina").ResourceVersion
	if res = pass(); res.RequeueAfter != time.Minute || getUser(t, ns, "gina").ResourceVersion != rv || len(rec.Events) != 0 {
		t.Errorf("second pass: requeue %v, status rewritten %v, %d events", res.RequeueAfter, getUser(t, ns, "gina").ResourceVersion != rv, len(rec.Events))
	}

	// The admin deletes the foreign Secret: the recheck issues the token.
	if err := env.Client.Delete(ctx, plain); err != nil {
		t.Fatal(err)
	}
	res = pass()
	u := getUser(t, ns, "gina")
	if err := wantCondition(u, llmv1alpha1.ConditionTokenIssued, metav1.ConditionTrue, llmv1alpha1.ReasonIssued); err != nil {
		t.Fatal(err)
	}
	if res.RequeueAfter < 19*time.Hour {
		t.Errorf("requeue after %v, want the renewal, hours away", res.RequeueAfter)
	}
	s := &corev1.Secret{}
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "gina-llm-token"}, s); err != nil {
		t.Fatal(err)
	}
	if ref := metav1.GetControllerOf(s); ref == nil || ref.UID != u.UID {
		t.Errorf("new secret controller %+v", ref)
	}
}
