package manager_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/manager"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
	"github.com/llm-user-operator/llm-user-operator/internal/token"
)

const (
	opNamespace = "llm-system"
	keysSecret  = "llm-user-operator-signing-keys"
	issuer      = "https://operator.test"
	audience    = "llm-user-proxy"
)

// replica is one running operator process, in-process.
type replica struct {
	url  string
	stop func()
}

func startReplica(t *testing.T, env *envtest.Env, clk *clocktesting.FakeClock) replica {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- manager.Run(ctx, manager.Options{
			RestConfig: env.Config, MetricsAddr: "0", ProbeAddr: "0", RefreshAddr: addr,
			LeaderElection: true, LeaderElectionID: "replicas-test",
			Namespace: opNamespace, Issuer: issuer, Audience: audience,
			// Longer than the fake clock travels: the only rotation is the forced one.
			KeyRotationPeriod: 90 * 24 * time.Hour,
			Clock:             clk, SkipNameValidation: true,
		})
	}()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("operator: %v", err)
		}
	}
	t.Cleanup(stop)
	return replica{url: "http://" + addr + "/auth/refresh", stop: stop}
}

// refreshResult is what a refresh answered: the status, and the kid of the
// new token or the refusal's message.
type refreshResult struct {
	status  int
	kid     string
	message string
}

func (r replica) refresh(raw string) (refreshResult, error) {
	req, _ := http.NewRequest(http.MethodPost, r.url, nil)
	req.Header.Set("Authorization", "Bearer "+raw)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return refreshResult{}, err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return refreshResult{}, err
	}
	var body struct {
		AccessToken string `json:"access_token"`
		Error       struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(b, &body); err != nil {
		return refreshResult{}, fmt.Errorf("refresh answered %d %s: %w", resp.StatusCode, b, err)
	}
	res := refreshResult{status: resp.StatusCode, message: body.Error.Message}
	if resp.StatusCode == http.StatusOK {
		res.kid = kidOf(body.AccessToken)
	}
	return res, nil
}

func kidOf(raw string) string {
	header, _, _ := strings.Cut(raw, ".")
	b, err := base64.RawURLEncoding.DecodeString(header)
	if err != nil {
		return "undecodable header"
	}
	var h struct {
		Kid string `json:"kid"`
	}
	_ = json.Unmarshal(b, &h)
	return h.Kid
}

// wantRefresh waits until a refresh through r answers as want.
func wantRefresh(t *testing.T, name string, r replica, raw string, want refreshResult) {
	t.Helper()
	poll.Until(t, 30*time.Second, func() error {
		got, err := r.refresh(raw)
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("refresh through %s: %+v, want %+v", name, got, want)
		}
		return nil
	})
}

func storedKeys(t *testing.T, env *envtest.Env) []token.Key {
	t.Helper()
	s := &corev1.Secret{}
	if err := env.Client.Get(context.Background(), types.NamespacedName{Namespace: opNamespace, Name: keysSecret}, s); err != nil {
		t.Fatal(err)
	}
	keys, err := token.DecodePrivateKeys(s.Data)
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

func annotateKeys(t *testing.T, env *envtest.Env, k, v string) {
	t.Helper()
	s := &corev1.Secret{}
	if err := env.Client.Get(context.Background(), types.NamespacedName{Namespace: opNamespace, Name: keysSecret}, s); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(s.DeepCopy())
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	s.Annotations[k] = v
	if err := env.Client.Patch(context.Background(), s, patch); err != nil {
		t.Fatal(err)
	}
}

// TestEveryReplicaServesRefresh runs two operators with leader election on
// one API server. The follower serves /auth/refresh from the keys it reads
// through its cache; when the leader stops, the other takes over and acts on
// a forced rotation; after the activation delay both replicas sign with the
// new key, and once the retired key is dropped neither accepts it.
func TestEveryReplicaServesRefresh(t *testing.T) {
	ctrl.SetLogger(zap.New(zap.WriteTo(io.Discard)))
	env := envtest.Start(t)
	ctx := context.Background()
	envtest.EnsureNamespace(t, env.Client, opNamespace)
	clk := clocktesting.NewFakeClock(time.Now().UTC().Truncate(time.Second))

	// a starts alone, so it is the leader: it writes the first key.
	a := startReplica(t, env, clk)
	poll.Until(t, 30*time.Second, func() error {
		return env.Client.Get(ctx, types.NamespacedName{Namespace: opNamespace, Name: keysSecret}, &corev1.Secret{})
	})
	b := startReplica(t, env, clk)

	ns := envtest.NewNamespace(t, env.Client, "replicas")
	q := &llmv1alpha1.LLMQuota{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "q"}}
	if err := env.Client.Create(ctx, q); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(ctx, &llmv1alpha1.LLMUser{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "alice"},
		Spec:       llmv1alpha1.LLMUserSpec{QuotaRef: llmv1alpha1.QuotaReference{Name: "q"}},
	}); err != nil {
		t.Fatal(err)
	}
	var userToken string
	poll.Until(t, 30*time.Second, func() error {
		s := &corev1.Secret{}
		if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "alice-llm-token"}, s); err != nil {
			return err
		}
		userToken = string(s.Data["token"])
		return nil
	})
	user := &llmv1alpha1.LLMUser{}
	if err := env.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: "alice"}, user); err != nil {
		t.Fatal(err)
	}
	keys := storedKeys(t, env)
	if len(keys) != 1 {
		t.Fatalf("%d keys at start", len(keys))
	}
	first := keys[0]

	// Either replica refreshes.
	wantRefresh(t, "the leader", a, userToken, refreshResult{status: 200, kid: first.ID})
	wantRefresh(t, "the follower", b, userToken, refreshResult{status: 200, kid: first.ID})

	// The leader goes; b takes over and acts on a forced rotation.
	a.stop()
	clk.Step(time.Second)
	annotateKeys(t, env, "llm.userops.dev/rotate-keys", "after-failover")
	var second token.Key
	poll.Until(t, 30*time.Second, func() error {
		keys := storedKeys(t, env)
		if len(keys) != 2 {
			return fmt.Errorf("%d keys, want the rotated pair", len(keys))
		}
		second = keys[0]
		return nil
	})
	if second.ID == first.ID || !second.CreatedAt.Equal(clk.Now()) {
		t.Fatalf("rotation: newest key %s created %v, want a new one created now", second.ID, second.CreatedAt)
	}
	// A new key signs only after it has been published for the activation delay.
	wantRefresh(t, "the new leader, before the activation delay", b, userToken, refreshResult{status: 200, kid: first.ID})

	clk.Step(token.ActivationDelay + time.Second)
	a = startReplica(t, env, clk) // back, now as a follower
	wantRefresh(t, "the new leader", b, userToken, refreshResult{status: 200, kid: second.ID})
	wantRefresh(t, "the restarted follower", a, userToken, refreshResult{status: 200, kid: second.ID})

	// Far enough ahead that no token of the first key can still be valid:
	// the leader drops it on its next pass (nudged here by an edit, since its
	// timer runs on the real clock) and both replicas refuse it.
	clk.Step(721 * time.Hour)
	annotateKeys(t, env, "test/nudge", "1")
	poll.Until(t, 30*time.Second, func() error {
		return poll.Check(len(storedKeys(t, env)) == 1, "the first key is still stored")
	})
	sign := func(k token.Key) string {
		t.Helper()
		raw, _, err := (&token.Issuer{Key: k, Issuer: issuer, Audience: audience, Now: clk.Now}).Issue(token.IssueRequest{
			Namespace: ns, Name: "alice", UID: string(user.UID), Generation: 1, TTL: time.Hour,
		})
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	retired := refreshResult{status: 401, message: fmt.Sprintf("token signed with unknown key %q", first.ID)}
	wantRefresh(t, "the leader", b, sign(first), retired)
	wantRefresh(t, "the follower", a, sign(first), retired)
	wantRefresh(t, "the leader", b, sign(second), refreshResult{status: 200, kid: second.ID})
	wantRefresh(t, "the follower", a, sign(second), refreshResult{status: 200, kid: second.ID})
}
