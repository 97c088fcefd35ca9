package controller_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/controller"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
	"github.com/llm-user-operator/llm-user-operator/internal/token"
)

// publishedVerifier verifies against the JWKS the operator published, the way the proxy does.
func publishedVerifier(t *testing.T) *token.Verifier {
	t.Helper()
	env := apiServer(t)
	cm := &corev1.ConfigMap{}
	if err := env.Client.Get(context.Background(), types.NamespacedName{Namespace: opNamespace, Name: "llm-user-operator-jwks"}, cm); err != nil {
		t.Fatal(err)
	}
	keys, err := token.ParseJWKS([]byte(cm.Data[token.JWKSKey]))
	if err != nil {
		t.Fatal(err)
	}
	v := token.NewVerifier(token.VerifierOptions{Issuer: issuer, Audience: audience, CacheSize: -1})
	v.SetKeys(keys)
	return v
}

func condition(u *llmv1alpha1.LLMUser, typ string) *metav1.Condition {
	return meta.FindStatusCondition(u.Status.Conditions, typ)
}

func wantCondition(u *llmv1alpha1.LLMUser, typ string, status metav1.ConditionStatus, reason string) error {
	c := condition(u, typ)
	if c == nil {
		return fmt.Errorf("no %s condition yet", typ)
	}
	if c.Status != status || c.Reason != reason {
		return fmt.Errorf("%s = %s/%s (%s), want %s/%s", typ, c.Status, c.Reason, c.Message, status, reason)
	}
	if c.ObservedGeneration != u.Generation {
		return fmt.Errorf("%s observedGeneration %d, want %d", typ, c.ObservedGeneration, u.Generation)
	}
	return nil
}

func TestTokenLifecycle(t *testing.T) {
	env := apiServer(t)
	envtest.EnsureNamespace(t, env.Client, opNamespace)
	refreshAddr := startOperator(t)
	ctx := context.Background()
	ns := envtest.NewNamespace(t, env.Client, "ctrl")
	c := env.Client

	// A user whose quota does not exist yet gets no token and says why.
	if err := c.Create(ctx, newUser(ns, "alice", "team")); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, func() error {
		return wantCondition(getUser(t, ns, "alice"), llmv1alpha1.ConditionReady, metav1.ConditionFalse, llmv1alpha1.ReasonQuotaNotFound)
	})
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: "alice-llm-token"}, &corev1.Secret{}); !apierrors.IsNotFound(err) {
		t.Fatalf("secret exists before the quota does: %v", err)
	}

	// Creating the quota issues the token.
	if err := c.Create(ctx, newQuota(ns, "team")); err != nil {
		t.Fatal(err)
	}
	var user *llmv1alpha1.LLMUser
	poll.Until(t, 30*time.Second, func() error {
		user = getUser(t, ns, "alice")
		return wantCondition(user, llmv1alpha1.ConditionReady, metav1.ConditionTrue, llmv1alpha1.ReasonIssued)
	})
	if err := wantCondition(user, llmv1alpha1.ConditionTokenIssued, metav1.ConditionTrue, llmv1alpha1.ReasonIssued); err != nil {
		t.Fatal(err)
	}
	secret := &corev1.Secret{}
	key := types.NamespacedName{Namespace: ns, Name: "alice-llm-token"}
	if err := c.Get(ctx, key, secret); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"token", "OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE", "expiresAt"} {
		if len(secret.Data[k]) == 0 {
			t.Errorf("secret key %s missing", k)
		}
	}
	if string(secret.Data["OPENAI_BASE_URL"]) != baseURL || !bytes.Equal(secret.Data["token"], secret.Data["OPENAI_API_KEY"]) {
		t.Errorf("secret data inconsistent: base %q", secret.Data["OPENAI_BASE_URL"])
	}
	if secret.Labels[llmv1alpha1.LabelUser] != "alice" {
		t.Errorf("labels = %v", secret.Labels)
	}
	if ref := metav1.GetControllerOf(secret); ref == nil || ref.UID != user.UID || ref.BlockOwnerDeletion == nil || !*ref.BlockOwnerDeletion {
		// The garbage collector (not part of envtest) deletes the Secret with its user through this reference.
		t.Errorf("secret owner = %+v, want controller reference to user %s", ref, user.UID)
	}
	claims, err := publishedVerifier(t).Verify(string(secret.Data["token"]))
	if err != nil {
		t.Fatalf("token does not verify against the published JWKS: %v", err)
	}
	if claims.UID != string(user.UID) || claims.Generation != 1 || claims.Subject != ns+"/alice" {
		t.Errorf("claims = %+v", claims)
	}
	if ttl := claims.ExpiresAt.Sub(claims.IssuedAt.Time); ttl != 24*time.Hour {
		t.Errorf("ttl = %v, want default 24h", ttl)
	}
	ts := user.Status.Token
	if ts == nil || ts.SecretName != "alice-llm-token" || ts.Generation != 1 || ts.KeyID == "" || ts.ExpiresAt == nil || ts.RenewAt == nil {
		t.Fatalf("status.token = %+v", ts)
	}
	if d := ts.RenewAt.Sub(claims.IssuedAt.Time); d < 19*time.Hour+12*time.Minute || d >= 21*time.Hour+36*time.Minute {
		t.Errorf("renewAt %v after issue, want between 80%% and 90%% of 24h", d)
	}
	original := string(secret.Data["token"])

	// Someone edits the Secret: the operator restores it.
	secret.Data["OPENAI_API_KEY"] = []byte("tampered")
	secret.Data["token"] = []byte("tampered")
	if err := c.Update(ctx, secret); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, func() error {
		s := &corev1.Secret{}
		if err := c.Get(ctx, key, s); err != nil {
			return err
		}
		if _, err := publishedVerifier(t).Verify(string(s.Data["OPENAI_API_KEY"])); err != nil {
			return fmt.Errorf("not restored yet: %w", err)
		}
		return nil
	})

	// Someone deletes it: the operator recreates it.
	if err := c.Delete(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "alice-llm-token"}}); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, func() error {
		s := &corev1.Secret{}
		if err := c.Get(ctx, key, s); err != nil {
			return err
		}
		if s.DeletionTimestamp != nil {
			return fmt.Errorf("still deleting")
		}
		_, err := publishedVerifier(t).Verify(string(s.Data["token"]))
		return err
	})

	// A new secretName moves the token; the old Secret goes with its token.
	user = getUser(t, ns, "alice")
	patch0 := client.MergeFrom(user.DeepCopy())
	user.Spec.Token.SecretName = "alice-openai"
	if err := c.Patch(ctx, user, patch0); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, func() error {
		if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: "alice-openai"}, &corev1.Secret{}); err != nil {
			return err
		}
		if err := c.Get(ctx, key, &corev1.Secret{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("old secret still there: %w", err)
		}
		return nil
	})
	key = types.NamespacedName{Namespace: ns, Name: "alice-openai"}

	// Refresh: a valid token buys a fresh one of the same generation.
	fresh := refresh(t, refreshAddr, original, http.StatusOK)
	fc, err := publishedVerifier(t).Verify(fresh)
	if err != nil || fc.UID != string(user.UID) || fc.Generation != 1 {
		t.Fatalf("refreshed token: %v %+v", err, fc)
	}

	// Forced re-issue: generation 2; older tokens are revoked (refresh refuses them).
	patch := client.MergeFrom(user.DeepCopy())
	user.Annotations = map[string]string{llmv1alpha1.AnnotationRotateToken: "now"}
	if err := c.Patch(ctx, user, patch); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, func() error {
		u := getUser(t, ns, "alice")
		if u.Status.Token == nil || u.Status.Token.Generation != 2 {
			return fmt.Errorf("status.token = %+v", u.Status.Token)
		}
		s := &corev1.Secret{}
		if err := c.Get(ctx, key, s); err != nil {
			return err
		}
		cl, err := publishedVerifier(t).Verify(string(s.Data["token"]))
		if err != nil {
			return err
		}
		if cl.Generation != 2 {
			return fmt.Errorf("secret token generation %d", cl.Generation)
		}
		return nil
	})
	refresh(t, refreshAddr, original, http.StatusUnauthorized)

	// Suspension: conditions flip, the Secret stays, refresh is refused.
	user = getUser(t, ns, "alice")
	patch = client.MergeFrom(user.DeepCopy())
	user.Spec.Suspended = true
	if err := c.Patch(ctx, user, patch); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, func() error {
		u := getUser(t, ns, "alice")
		if err := wantCondition(u, llmv1alpha1.ConditionReady, metav1.ConditionFalse, llmv1alpha1.ReasonSuspended); err != nil {
			return err
		}
		return wantCondition(u, llmv1alpha1.ConditionTokenIssued, metav1.ConditionFalse, llmv1alpha1.ReasonSuspended)
	})
	if err := c.Get(ctx, key, secret); err != nil {
		t.Fatalf("secret must be kept while suspended: %v", err)
	}
	refresh(t, refreshAddr, string(secret.Data["token"]), http.StatusUnauthorized)

	// Every step left an Event on the user.
	poll.Until(t, 30*time.Second, func() error {
		var list eventsv1.EventList
		if err := c.List(ctx, &list, client.InNamespace(ns)); err != nil {
			return err
		}
		seen := map[string]int{}
		for _, e := range list.Items {
			if e.Regarding.Name == "alice" && e.Regarding.Kind == "LLMUser" {
				seen[e.Reason]++
			}
		}
		for _, r := range []string{"TokenIssued", "TokenRotated", "Revoked"} {
			if seen[r] == 0 {
				return fmt.Errorf("no %s event yet; have %v", r, seen)
			}
		}
		return nil
	})

	// Deleted user: refresh refuses (the proxy likewise knows no such uid).
	if err := c.Delete(ctx, user); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, func() error {
		err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: "alice"}, &llmv1alpha1.LLMUser{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there: %w", err)
	})
	refresh(t, refreshAddr, string(secret.Data["token"]), http.StatusUnauthorized)
}

func TestQuotaCountsUsers(t *testing.T) {
	env := apiServer(t)
	envtest.EnsureNamespace(t, env.Client, opNamespace)
	startOperator(t)
	ctx := context.Background()
	ns := envtest.NewNamespace(t, env.Client, "ctrl")
	if err := env.Client.Create(ctx, newQuota(ns, "q")); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b", "c"} {
		if err := env.Client.Create(ctx, newUser(ns, n, "q")); err != nil {
			t.Fatal(err)
		}
	}
	wantUsers := func(n int32) func() error {
		return func() error {
			q := &llmv1alpha1.LLMQuota{}
			if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "q"}, q); err != nil {
				return err
			}
			if q.Status.Users != n || q.Status.ObservedGeneration != q.Generation {
				return fmt.Errorf("users = %d (observed %d/%d), want %d", q.Status.Users, q.Status.ObservedGeneration, q.Generation, n)
			}
			if c := meta.FindStatusCondition(q.Status.Conditions, llmv1alpha1.ConditionReady); c == nil || c.Status != metav1.ConditionTrue {
				return fmt.Errorf("ready condition %+v", c)
			}
			return nil
		}
	}
	poll.Until(t, 30*time.Second, wantUsers(3))
	if err := env.Client.Delete(ctx, newUser(ns, "b", "q")); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, wantUsers(2))
}

func refresh(t *testing.T, addr, tok string, wantStatus int) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/auth/refresh", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	var resp *http.Response
	poll.Until(t, 30*time.Second, func() error {
		var err error
		resp, err = http.DefaultClient.Do(req)
		return err
	})
	defer func() { _ = resp.Body.Close() }()
	var body struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		ExpiresIn   int64  `json:"expires_in"`
		Error       *struct {
			Message, Type, Code string
		} `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("refresh body: %v", err)
	}
	if resp.StatusCode != wantStatus {
		t.Fatalf("refresh status %d, want %d (%+v)", resp.StatusCode, wantStatus, body.Error)
	}
	if wantStatus == http.StatusOK {
		if body.TokenType != "bearer" || body.ExpiresIn != int64((24*time.Hour).Seconds()) || body.AccessToken == "" {
			t.Fatalf("refresh body %+v", body)
		}
	} else if body.Error == nil || body.Error.Code != "invalid_api_key" || body.Error.Message == "" {
		t.Fatalf("refusal body %+v", body.Error)
	}
	return body.AccessToken
}

// TestRenewalScheduledExactly drives the token reconciler with a fake clock:
// the requeue lands exactly at the user's renewal point (between 80% and 90%
// of the lifetime, the one status.token.renewAt shows), nothing changes
// before it, at that moment the token is replaced under the same Secret
// name, and the next renewal falls at the same point of the new lifetime.
func TestRenewalScheduledExactly(t *testing.T) {
	env := apiServer(t)
	ctx := context.Background()
	ns := envtest.NewNamespace(t, env.Client, "ctrl")
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC))
	keys := token.NewKeyStore(issuer, audience, clk.Now)
	k, err := token.GenerateKey(clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	keys.Set([]token.Key{k})
	r := &controller.TokenReconciler{
		Client: env.Client, Clock: clk, Keys: keys,
		BaseURL: baseURL, Recorder: events.NewFakeRecorder(100),
	}
	if err := env.Client.Create(ctx, newQuota(ns, "q")); err != nil {
		t.Fatal(err)
	}
	u := newUser(ns, "bob", "q")
	u.Spec.Token.TTL = &metav1.Duration{Duration: time.Hour}
	if err := env.Client.Create(ctx, u); err != nil {
		t.Fatal(err)
	}
	req := reconcile.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "bob"}}
	secretKey := types.NamespacedName{Namespace: ns, Name: "bob-llm-token"}

	res, err := r.Reconcile(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	due := res.RequeueAfter
	if due < 48*time.Minute || due >= 54*time.Minute {
		t.Fatalf("first requeue after %v, want between 48m and 54m (80%% and 90%% of 1h)", due)
	}
	if st := getUser(t, ns, "bob").Status.Token; !st.RenewAt.Time.Equal(clk.Now().Add(due)) {
		t.Errorf("status.token.renewAt %v, the requeue says %v", st.RenewAt, clk.Now().Add(due))
	}
	first := secretToken(t, secretKey)
	rv := getUser(t, ns, "bob").ResourceVersion

	// Before the deadline, a pass changes nothing and writes nothing.
	clk.Step(due - time.Second)
	res, err = r.Reconcile(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if res.RequeueAfter != time.Second {
		t.Errorf("requeue after %v, want the remaining 1s", res.RequeueAfter)
	}
	if secretToken(t, secretKey) != first || getUser(t, ns, "bob").ResourceVersion != rv {
		t.Error("token or status rewritten before renewal was due")
	}

	// At the deadline the token is renewed in place.
	clk.Step(time.Second)
	res, err = r.Reconcile(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	second := secretToken(t, secretKey)
	if second == first {
		t.Fatal("token not renewed at its renewal point")
	}
	if res.RequeueAfter != due {
		t.Errorf("next requeue after %v, want the same point of the lifetime, %v", res.RequeueAfter, due)
	}
	st := getUser(t, ns, "bob").Status.Token
	if !st.IssuedAt.Time.Equal(clk.Now()) || !st.ExpiresAt.Time.Equal(clk.Now().Add(time.Hour)) || st.Generation != 1 {
		t.Errorf("status.token after renewal = %+v", st)
	}

	// A changed ttl re-issues at once with the new lifetime.
	user := getUser(t, ns, "bob")
	user.Spec.Token.TTL = &metav1.Duration{Duration: 2 * time.Hour}
	if err := env.Client.Update(ctx, user); err != nil {
		t.Fatal(err)
	}
	if res, err = r.Reconcile(ctx, req); err != nil {
		t.Fatal(err)
	}
	if res.RequeueAfter < 96*time.Minute || res.RequeueAfter >= 108*time.Minute || secretToken(t, secretKey) == second {
		t.Errorf("ttl change: requeue %v, token replaced=%v", res.RequeueAfter, secretToken(t, secretKey) != second)
	}
}

func secretToken(t *testing.T, key types.NamespacedName) string {
	t.Helper()
	env := apiServer(t)
	s := &corev1.Secret{}
	if err := env.Client.Get(context.Background(), key, s); err != nil {
		t.Fatal(err)
	}
	return string(s.Data["token"])
}

// TestNoKeyNoWrite: before the signing keys are loaded (a start, a failover)
// a pass writes nothing, whatever the user's state; the keys' arrival
// enqueues every user again.
func TestNoKeyNoWrite(t *testing.T) {
	env := apiServer(t)
	ctx := context.Background()
	ns := envtest.NewNamespace(t, env.Client, "ctrl")
	clk := clocktesting.NewFakeClock(time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC))
	r := &controller.TokenReconciler{
		Client: env.Client, Clock: clk, Keys: token.NewKeyStore(issuer, audience, clk.Now),
		BaseURL: baseURL, Recorder: events.NewFakeRecorder(10),
	}
	if err := env.Client.Create(ctx, newQuota(ns, "q")); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(ctx, newUser(ns, "carl", "q")); err != nil {
		t.Fatal(err)
	}
	rv := getUser(t, ns, "carl").ResourceVersion
	res, err := r.Reconcile(ctx, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: ns, Name: "carl"}})
	if err != nil || res.RequeueAfter != 0 {
		t.Fatalf("result %+v, %v", res, err)
	}
	if u := getUser(t, ns, "carl"); u.ResourceVersion != rv || len(u.Status.Conditions) != 0 {
		t.Errorf("status written without a key: %+v", u.Status)
	}
}
