package harness

import (
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// ManagerServiceAccount is the operator's ServiceAccount in config/rbac,
// whose bindings the harness grants the manager process.
const ManagerServiceAccount = "controller-manager"

// ProxyServiceAccount is the proxy's ServiceAccount, as the operator names
// it by default.
const ProxyServiceAccount = "llm-user-proxy"

// ServiceAccountKubeconfig returns a kubeconfig authenticating as the
// ServiceAccount namespace/name: the user and groups a pod's token would
// give it, authorized by RBAC alone. It stands in for the token the kubelet
// mounts into a pod.
func (e *Env) ServiceAccountKubeconfig(t testing.TB, namespace, name string) string {
	t.Helper()
	path, err := e.api.AddUser("system:serviceaccount:"+namespace+":"+name,
		"system:serviceaccounts", "system:serviceaccounts:"+namespace, "system:authenticated")
	if err != nil {
		t.Fatalf("adding the identity of ServiceAccount %s/%s: %v", namespace, name, err)
	}
	return path
}

// managerKubeconfig grants the manager's ServiceAccount what config/rbac
// grants it (rendered by the pinned kubectl's kustomize, the namespace
// "system" being the operator's) and returns a kubeconfig with that
// identity, once per Env. A permission the operator lacks in config/rbac
// fails the tests as it would fail in a cluster.
func (e *Env) managerKubeconfig(t testing.TB) string {
	t.Helper()
	e.managerOnce.Do(func() {
		objs := e.kustomize(t, "config/rbac")
		roles := map[string]*unstructured.Unstructured{}
		for _, o := range objs {
			if k := o.GetKind(); k == "Role" || k == "ClusterRole" {
				roles[k+"/"+o.GetName()] = o
			}
		}
		for _, b := range objs {
			if k := b.GetKind(); k != "RoleBinding" && k != "ClusterRoleBinding" {
				continue
			}
			subjects, _, _ := unstructured.NestedSlice(b.Object, "subjects")
			bound := false
			for i, s := range subjects {
				sm := s.(map[string]any)
				if sm["kind"] == "ServiceAccount" && sm["name"] == ManagerServiceAccount {
					bound = true
					sm["namespace"] = OperatorNamespace
					subjects[i] = sm
				}
			}
			if !bound {
				continue
			}
			_ = unstructured.SetNestedSlice(b.Object, subjects, "subjects")
			roleKind, _, _ := unstructured.NestedString(b.Object, "roleRef", "kind")
			roleName, _, _ := unstructured.NestedString(b.Object, "roleRef", "name")
			role := roles[roleKind+"/"+roleName]
			if role == nil {
				t.Fatalf("config/rbac: %s %s binds %s %s, which it does not define", b.GetKind(), b.GetName(), roleKind, roleName)
			}
			for _, o := range []*unstructured.Unstructured{role, b} {
				if o.GetNamespace() != "" {
					o.SetNamespace(OperatorNamespace)
				}
				if o.GetResourceVersion() == "" { // a role bound twice is created once
					e.create(t, o)
				}
			}
		}
		e.managerKC = e.ServiceAccountKubeconfig(t, OperatorNamespace, ManagerServiceAccount)
	})
	if e.managerKC == "" {
		t.Fatal("the manager's identity could not be set up (see the first failure)")
	}
	return e.managerKC
}
