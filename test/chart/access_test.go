package chart_test

import (
	"fmt"
	"path/filepath"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
	"github.com/llm-user-operator/llm-user-operator/test/harness"
)

// access is one question to the API server's authorizer and the answer the
// product's RBAC must give.
type access struct {
	verb, resource, subresource, namespace, name string
	allowed                                      bool
}

func (a access) String() string {
	r := a.resource
	if a.subresource != "" {
		r += "/" + a.subresource
	}
	if a.name != "" {
		r += " " + a.name
	}
	return fmt.Sprintf("%s %s in %q", a.verb, r, a.namespace)
}

// group returns the API group of the resources the tests ask about.
func group(resource string) string {
	switch resource {
	case "llmusers", "llmquotas":
		return "llm.userops.dev"
	}
	return ""
}

// checkAccess asks a SubjectAccessReview for each access as user (in groups)
// and fails t for every answer that differs from the expected one.
func checkAccess(t *testing.T, env *envtest.Env, user string, groups []string, checks []access) {
	t.Helper()
	for _, a := range checks {
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: user, Groups: groups,
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace: a.namespace, Verb: a.verb, Group: group(a.resource),
				Resource: a.resource, Subresource: a.subresource, Name: a.name,
			},
		}}
		if err := env.Client.Create(t.Context(), sar); err != nil {
			t.Fatal(err)
		}
		if sar.Status.Allowed != a.allowed {
			t.Errorf("%s may %s: %v, want %v (%s)", user, a, sar.Status.Allowed, a.allowed, sar.Status.Reason)
		}
	}
}

// testTenancy checks the aggregated tenant roles the chart installs
// (testDefaults applied them as release "llm"): bound directly, for exactly
// what they grant, and through the built-in admin/edit/view roles that
// namespace owners are really bound to, aggregated by kube-controller-manager's
// clusterrole-aggregation controller (envtest runs none, so the test starts one).
func testTenancy(t *testing.T, env *envtest.Env) {
	ctx := t.Context()
	editor, viewer := "llm-tenant-editor", "llm-tenant-viewer"

	t.Run("AggregationLabels", func(t *testing.T) {
		for builtin, ours := range map[string]string{"admin": editor, "edit": editor, "view": viewer} {
			var b, o rbacv1.ClusterRole
			if err := env.Client.Get(ctx, client.ObjectKey{Name: builtin}, &b); err != nil {
				t.Fatal(err)
			}
			if err := env.Client.Get(ctx, client.ObjectKey{Name: ours}, &o); err != nil {
				t.Fatal(err)
			}
			selected := false
			for _, sel := range b.AggregationRule.ClusterRoleSelectors {
				s, err := metav1.LabelSelectorAsSelector(&sel)
				if err != nil {
					t.Fatal(err)
				}
				selected = selected || s.Matches(labels.Set(o.Labels))
			}
			if !selected {
				t.Errorf("the built-in %s ClusterRole does not aggregate %s (labels %v)", builtin, ours, o.Labels)
			}
		}
		// view must not pick up the editor's rights.
		var view rbacv1.ClusterRole
		if err := env.Client.Get(ctx, client.ObjectKey{Name: "view"}, &view); err != nil {
			t.Fatal(err)
		}
		var ed rbacv1.ClusterRole
		if err := env.Client.Get(ctx, client.ObjectKey{Name: editor}, &ed); err != nil {
			t.Fatal(err)
		}
		for _, sel := range view.AggregationRule.ClusterRoleSelectors {
			s, _ := metav1.LabelSelectorAsSelector(&sel)
			if s.Matches(labels.Set(ed.Labels)) {
				t.Errorf("the built-in view ClusterRole aggregates %s, which can write LLMUsers", editor)
			}
		}
	})

	team := envtest.NewNamespace(t, env.Client, "team")
	other := envtest.NewNamespace(t, env.Client, "other")
	bind(t, env, team, "editor", "ClusterRole", editor, rbacv1.Subject{Kind: rbacv1.UserKind, Name: "erin"})
	bind(t, env, team, "viewer", "ClusterRole", viewer, rbacv1.Subject{Kind: rbacv1.UserKind, Name: "victor"})

	t.Run("Editor", func(t *testing.T) {
		checkAccess(t, env, "erin", nil, []access{
			{verb: "create", resource: "llmusers", namespace: team, allowed: true},
			{verb: "update", resource: "llmusers", namespace: team, allowed: true},
			{verb: "patch", resource: "llmusers", namespace: team, allowed: true},
			{verb: "delete", resource: "llmusers", namespace: team, allowed: true},
			{verb: "list", resource: "llmusers", namespace: team, allowed: true},
			{verb: "get", resource: "llmusers", subresource: "status", namespace: team, allowed: true},
			{verb: "get", resource: "llmquotas", namespace: team, allowed: true},
			{verb: "list", resource: "llmquotas", namespace: team, allowed: true},
			// Usage and budgets are the proxy's and the operator's to write.
			{verb: "update", resource: "llmusers", subresource: "status", namespace: team},
			{verb: "patch", resource: "llmusers", subresource: "status", namespace: team},
			// Quotas are the cluster admin's.
			{verb: "create", resource: "llmquotas", namespace: team},
			{verb: "update", resource: "llmquotas", namespace: team},
			{verb: "patch", resource: "llmquotas", namespace: team},
			{verb: "delete", resource: "llmquotas", namespace: team},
			{verb: "patch", resource: "llmquotas", subresource: "status", namespace: team},
			// The binding is the namespace's only.
			{verb: "create", resource: "llmusers", namespace: other},
			{verb: "get", resource: "llmquotas", namespace: other},
			// The roles grant nothing on Secrets.
			{verb: "get", resource: "secrets", namespace: team, name: "alice-llm-token"},
		})
	})

	t.Run("ThroughBuiltinRoles", func(t *testing.T) { testBuiltinRoles(t, env) })

	t.Run("Viewer", func(t *testing.T) {
		checkAccess(t, env, "victor", nil, []access{
			{verb: "get", resource: "llmusers", namespace: team, allowed: true},
			{verb: "list", resource: "llmusers", namespace: team, allowed: true},
			{verb: "watch", resource: "llmusers", namespace: team, allowed: true},
			{verb: "get", resource: "llmusers", subresource: "status", namespace: team, allowed: true},
			{verb: "get", resource: "llmquotas", namespace: team, allowed: true},
			{verb: "list", resource: "llmquotas", namespace: team, allowed: true},
			{verb: "create", resource: "llmusers", namespace: team},
			{verb: "delete", resource: "llmusers", namespace: team},
			{verb: "update", resource: "llmquotas", namespace: team},
			{verb: "get", resource: "secrets", namespace: team, name: "alice-llm-token"},
		})
	})
}

// testBuiltinRoles binds namespace owners to the built-in admin, edit and
// view ClusterRoles, runs the clusterrole-aggregation controller, and checks
// what the tenant roles' labels added to them.
func testBuiltinRoles(t *testing.T, env *envtest.Env) {
	harness.StartProcess(t, "kube-controller-manager", filepath.Join(harness.KubeTools(t), "kube-controller-manager"),
		"--kubeconfig", env.Kubeconfig,
		"--controllers", "clusterrole-aggregation-controller",
		"--leader-elect=false",
		"--bind-address", "127.0.0.1",
		"--secure-port", harness.Port(harness.FreeAddr(t)),
		"--cert-dir", t.TempDir(),
	)
	team := envtest.NewNamespace(t, env.Client, "owners")
	for user, role := range map[string]string{"ada": "admin", "eddie": "edit", "vera": "view"} {
		bind(t, env, team, user, "ClusterRole", role, rbacv1.Subject{Kind: rbacv1.UserKind, Name: user})
	}
	// The controller aggregates once it has synced: wait for its effect.
	poll.Until(t, harness.StartTimeout, func() error {
		sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
			User: "vera", ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace: team, Verb: "list", Group: group("llmquotas"), Resource: "llmquotas"}}}
		if err := env.Client.Create(t.Context(), sar); err != nil {
			return err
		}
		return poll.Check(sar.Status.Allowed, "view does not aggregate the tenant viewer role yet")
	})
	for _, user := range []string{"ada", "eddie"} {
		checkAccess(t, env, user, nil, []access{
			{verb: "create", resource: "llmusers", namespace: team, allowed: true},
			{verb: "delete", resource: "llmusers", namespace: team, allowed: true},
			{verb: "get", resource: "llmquotas", namespace: team, allowed: true},
			{verb: "create", resource: "llmquotas", namespace: team},
			{verb: "update", resource: "llmquotas", namespace: team},
			{verb: "patch", resource: "llmusers", subresource: "status", namespace: team},
		})
	}
	checkAccess(t, env, "vera", nil, []access{
		{verb: "get", resource: "llmusers", namespace: team, allowed: true},
		{verb: "watch", resource: "llmquotas", namespace: team, allowed: true},
		{verb: "create", resource: "llmusers", namespace: team},
		{verb: "delete", resource: "llmquotas", namespace: team},
	})
}

// testProxyIdentity binds a ServiceAccount to the proxy's generated rules
// (config/rbac/proxy/role.yaml) and the JWKS-only Role the operator grants it
// in its namespace, and checks it can do its job and nothing near the keys.
func testProxyIdentity(t *testing.T, env *envtest.Env) {
	const (
		opNS   = "llm"
		sa     = "llm-user-proxy"
		jwks   = "llm-user-operator-jwks"
		signer = "llm-user-operator-signing-keys"
	)
	ctx := t.Context()
	team := envtest.NewNamespace(t, env.Client, "tenant")
	if err := env.Client.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: opNS, Name: sa}}); err != nil {
		t.Fatal(err)
	}
	subject := rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Name: sa, Namespace: opNS}

	var generated []*unstructured.Unstructured
	for _, u := range decodeAll(t, readRepoFile(t, filepath.Join("config", "rbac", "proxy", "role.yaml"))) {
		if u.GetKind() == "ClusterRole" {
			u.SetName("test-" + u.GetName())
			generated = append(generated, u)
		}
	}
	if len(generated) != 1 {
		t.Fatalf("config/rbac/proxy/role.yaml holds %d ClusterRoles, want 1", len(generated))
	}
	apply(t, env, generated)
	mustCreate(t, env, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "test-proxy"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: generated[0].GetName()},
		Subjects:   []rbacv1.Subject{subject},
	})
	mustCreate(t, env, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Namespace: opNS, Name: "test-proxy-jwks"},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{""}, Resources: []string{"configmaps"},
			ResourceNames: []string{jwks}, Verbs: []string{"get", "list", "watch"},
		}},
	})
	bind(t, env, opNS, "test-proxy-jwks", "Role", "test-proxy-jwks", subject)

	user := "system:serviceaccount:" + opNS + ":" + sa
	groups := []string{"system:serviceaccounts", "system:serviceaccounts:" + opNS, "system:authenticated"}
	checkAccess(t, env, user, groups, []access{
		{verb: "list", resource: "llmusers", allowed: true},
		{verb: "watch", resource: "llmquotas", allowed: true},
		{verb: "get", resource: "llmusers", namespace: team, allowed: true},
		{verb: "patch", resource: "llmusers", subresource: "status", namespace: team, allowed: true},
		{verb: "patch", resource: "llmquotas", subresource: "status", namespace: team, allowed: true},
		{verb: "get", resource: "configmaps", namespace: opNS, name: jwks, allowed: true},
		{verb: "watch", resource: "configmaps", namespace: opNS, name: jwks, allowed: true},
		// Never a user's token, never the signing keys, by any verb.
		{verb: "get", resource: "secrets", namespace: team, name: "alice-llm-token"},
		{verb: "list", resource: "secrets", namespace: team},
		{verb: "watch", resource: "secrets"},
		{verb: "get", resource: "secrets", namespace: opNS, name: signer},
		{verb: "list", resource: "secrets", namespace: opNS},
		// Only the JWKS ConfigMap, and the users' specs stay the admins'.
		{verb: "get", resource: "configmaps", namespace: opNS, name: "something-else"},
		{verb: "update", resource: "llmusers", namespace: team},
		{verb: "update", resource: "llmquotas", namespace: team},
	})
}

// bind creates a RoleBinding in namespace from the role to subject.
func bind(t *testing.T, env *envtest.Env, namespace, name, kind, role string, subject rbacv1.Subject) {
	t.Helper()
	mustCreate(t, env, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: kind, Name: role},
		Subjects:   []rbacv1.Subject{subject},
	})
}

func mustCreate(t *testing.T, env *envtest.Env, obj client.Object) {
	t.Helper()
	if err := env.Client.Create(t.Context(), obj); err != nil {
		t.Fatalf("creating %T %s: %v", obj, obj.GetName(), err)
	}
}
