package e2e_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
	"github.com/llm-user-operator/llm-user-operator/test/harness"
)

// gcWait bounds the garbage collector and the deployment controller on a
// loaded two-core machine.
const gcWait = 60 * time.Second

// testProxyCannotReadSecrets: with its own identity and the RBAC the
// operator reconciled, the proxy reads users, quotas and the published keys,
// and no Secret: not a user's token, not the signing keys.
func (s *suite) testProxyCannotReadSecrets(t *testing.T) {
	t.Parallel()
	a := s.NewAccount(t, harness.DayTokens(1000))
	cfg, err := clientcmd.BuildConfigFromFlags("", s.ServiceAccountKubeconfig(t, harness.OperatorNamespace, harness.ProxyServiceAccount))
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := client.New(cfg, client.Options{Scheme: s.Client.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	// What it must be able to do, or the forbidden reads below prove nothing.
	if err := proxy.List(ctx, &llmv1alpha1.LLMUserList{}); err != nil {
		t.Errorf("the proxy cannot list LLMUsers: %v", err)
	}
	if err := proxy.Get(ctx, types.NamespacedName{Namespace: harness.OperatorNamespace, Name: "llm-user-operator-jwks"}, &corev1.ConfigMap{}); err != nil {
		t.Errorf("the proxy cannot read the JWKS ConfigMap: %v", err)
	}

	for _, read := range []struct {
		what string
		do   func() error
	}{
		{"the user's token Secret", func() error {
			return proxy.Get(ctx, types.NamespacedName{Namespace: a.Namespace, Name: harness.UserName + "-llm-token"}, &corev1.Secret{})
		}},
		{"the signing keys", func() error {
			return proxy.Get(ctx, types.NamespacedName{Namespace: harness.OperatorNamespace, Name: "llm-user-operator-signing-keys"}, &corev1.Secret{})
		}},
		{"Secrets of the operator's namespace", func() error {
			return proxy.List(ctx, &corev1.SecretList{}, client.InNamespace(harness.OperatorNamespace))
		}},
		{"every Secret", func() error { return proxy.List(ctx, &corev1.SecretList{}) }},
		{"another ConfigMap of the operator's namespace", func() error {
			return proxy.List(ctx, &corev1.ConfigMapList{}, client.InNamespace(harness.OperatorNamespace))
		}},
	} {
		if err := read.do(); !apierrors.IsForbidden(err) {
			t.Errorf("reading %s as the proxy: %v, want Forbidden", read.what, err)
		}
	}
}

// testDeletedUserSecretCollected: the token Secret is owned by its LLMUser,
// so deleting the user has the garbage collector delete the Secret.
func (s *suite) testDeletedUserSecretCollected(t *testing.T) {
	t.Parallel()
	a := s.NewAccount(t, harness.DayTokens(1000))
	key := types.NamespacedName{Namespace: a.Namespace, Name: harness.UserName + "-llm-token"}
	var sec corev1.Secret
	if err := s.Client.Get(t.Context(), key, &sec); err != nil {
		t.Fatal(err)
	}
	if err := s.Client.Delete(t.Context(), &llmv1alpha1.LLMUser{ObjectMeta: metav1.ObjectMeta{Namespace: a.Namespace, Name: a.Name}}); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, gcWait, func() error {
		err := s.Client.Get(t.Context(), key, &corev1.Secret{})
		return poll.Check(apierrors.IsNotFound(err), fmt.Sprintf("Secret %s still there after its LLMUser was deleted (%v)", key, err))
	})
}

// testConfigChangeRollsOutProxy: an operator restarted with a new flush
// interval changes the proxy's pod template, and the deployment controller
// rolls out a new ReplicaSet with it, from which a proxy starts and serves.
func (s *suite) testConfigChangeRollsOutProxy(t *testing.T) {
	before := s.ProxyDeployment(t, s.manager)
	rs := s.waitReplicaSets(t, before, 1)
	if args := rs[0].Spec.Template.Spec.Containers[0].Args; !slices.Contains(args, "--flush-interval=1s") {
		t.Fatalf("the first ReplicaSet runs %v, want --flush-interval=1s", args)
	}
	if err := s.manager.Terminate(t, 30*time.Second); err != nil {
		t.Fatalf("stopping the operator: %v", err)
	}

	mgr := s.StartManager(t, harness.ManagerConfig{Proxy: proxySettings(s.simURL, 2*time.Second)})
	after := &appsv1.Deployment{}
	poll.Until(t, gcWait, func() error {
		if err := s.Client.Get(t.Context(), client.ObjectKeyFromObject(before), after); err != nil {
			return err
		}
		return poll.Check(after.Generation > before.Generation, fmt.Sprintf("generation %d, want above %d: the new configuration is not applied", after.Generation, before.Generation))
	})
	rs = s.waitReplicaSets(t, after, 2)
	newest := rs[len(rs)-1]
	if args := newest.Spec.Template.Spec.Containers[0].Args; !slices.Contains(args, "--flush-interval=2s") {
		t.Errorf("the new ReplicaSet runs %v, want --flush-interval=2s", args)
	}
	if newest.Spec.Replicas == nil || *newest.Spec.Replicas != 1 {
		t.Errorf("the new ReplicaSet wants %v pods, want 1 (maxSurge 1)", newest.Spec.Replicas)
	}

	p := s.StartReconciledProxy(t, "proxy-rolled", mgr)
	a := s.NewAccount(t, harness.DayTokens(1000))
	c := harness.NewClient(p.BaseURL, a.APIKey())
	if _, err := c.Chat.Completions.New(t.Context(), chatParams("Hello")); err != nil {
		t.Fatalf("a request through the proxy of the new template: %v", err)
	}
	// Its pod reported ready, the rollout completes: the old ReplicaSet is
	// scaled down and the Deployment is available on the new one.
	poll.Until(t, gcWait, func() error {
		var old appsv1.ReplicaSet
		if err := s.Client.Get(t.Context(), client.ObjectKeyFromObject(&rs[0]), &old); err != nil {
			return err
		}
		return poll.Check(old.Spec.Replicas != nil && *old.Spec.Replicas == 0, fmt.Sprintf("the old ReplicaSet still wants %v pods", old.Spec.Replicas))
	})
	out := s.Kubectl(t, "rollout", "status", "deployment/"+after.Name, "-n", after.Namespace, "--timeout=60s")
	if !strings.Contains(out, "successfully rolled out") {
		t.Errorf("kubectl rollout status: %s", out)
	}
}

// testKubectlShowsProxyStatus: an admin sees with kubectl whether the proxy
// is available (the deployment controller's condition, from the pod the
// harness reported ready) and whether the operator applied its
// configuration as given (the operator's condition, with the reason).
func (s *suite) testKubectlShowsProxyStatus(t *testing.T) {
	t.Parallel()
	out := s.Kubectl(t, "get", "deployment", "llm-user-proxy", "-n", harness.OperatorNamespace, "-o",
		`jsonpath={range .status.conditions[*]}{.type}={.status}/{.reason}{"\n"}{end}`)
	for _, want := range []string{"Available=True/MinimumReplicasAvailable", "Reconciled=True/Applied"} {
		if !strings.Contains(out, want) {
			t.Errorf("kubectl shows the conditions\n%s\nwithout %s", out, want)
		}
	}
	if out := s.Kubectl(t, "get", "deployment", "llm-user-proxy", "-n", harness.OperatorNamespace); !strings.Contains(out, "1/1") {
		t.Errorf("kubectl get deployment:\n%s\nwant 1/1 ready", out)
	}
}

// waitReplicaSets waits until the deployment controller has rolled d out to
// n ReplicaSets, the newest for d's current template, and returns them
// oldest first.
func (s *suite) waitReplicaSets(t *testing.T, d *appsv1.Deployment, n int) []appsv1.ReplicaSet {
	t.Helper()
	var list appsv1.ReplicaSetList
	poll.Until(t, gcWait, func() error {
		if err := s.Client.List(t.Context(), &list, client.InNamespace(d.Namespace), client.MatchingLabels(d.Spec.Selector.MatchLabels)); err != nil {
			return err
		}
		var cur appsv1.Deployment
		if err := s.Client.Get(t.Context(), client.ObjectKeyFromObject(d), &cur); err != nil {
			return err
		}
		if cur.Status.ObservedGeneration < d.Generation {
			return fmt.Errorf("the deployment controller has observed generation %d of %d", cur.Status.ObservedGeneration, d.Generation)
		}
		return poll.Check(len(list.Items) == n, fmt.Sprintf("%d ReplicaSets, want %d", len(list.Items), n))
	})
	slices.SortFunc(list.Items, func(a, b appsv1.ReplicaSet) int {
		return compareRevision(a.Annotations["deployment.kubernetes.io/revision"], b.Annotations["deployment.kubernetes.io/revision"])
	})
	return list.Items
}

func compareRevision(a, b string) int {
	if len(a) != len(b) {
		return len(a) - len(b)
	}
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
