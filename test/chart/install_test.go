// Package chart_test installs the two install paths, the Helm chart
// (charts/llm-user-operator) and kustomize (config/default), into a real
// kube-apiserver with server-side apply, and checks what they grant with
// SubjectAccessReviews: tenants manage their LLMUsers but not their quotas,
// and the proxy's identity can read neither token Secrets nor signing keys.
package chart_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
)

// kubeVersion is the API server envtest runs, which the chart's kubeVersion
// constraint is checked against.
const kubeVersion = "1.37.2"

func chartDir() string { return filepath.Join(envtest.RepoRoot(), "charts", "llm-user-operator") }

// TestInstall starts one API server for every check: starting one per check
// would cost more than the checks.
func TestInstall(t *testing.T) {
	env := envtest.Start(t)
	applyFiles(t, env, filepath.Join(envtest.RepoRoot(), "hack", "tools", "monitoring-crds", "crds"))
	for _, kind := range []string{"ServiceMonitorList", "PrometheusRuleList"} {
		poll.Until(t, 30*time.Second, func() error {
			l := &unstructured.UnstructuredList{}
			l.SetGroupVersionKind(schema.GroupVersionKind{Group: "monitoring.coreos.com", Version: "v1", Kind: kind})
			return env.Client.List(t.Context(), l)
		})
	}

	t.Run("Lint", testLint)
	t.Run("Schema", testSchema)
	t.Run("Defaults", func(t *testing.T) { testDefaults(t, env) })
	t.Run("HighAvailability", func(t *testing.T) { testHighAvailability(t, env) })
	t.Run("RedisCluster", testRedisCluster)
	t.Run("Notes", func(t *testing.T) { testNotes(t, env) })
	t.Run("HelmInstallUninstall", func(t *testing.T) { testHelmInstallUninstall(t, env) })
	t.Run("Kustomize", func(t *testing.T) { testKustomize(t, env) })
	t.Run("Release", func(t *testing.T) { testRelease(t, env) })
	t.Run("Tenancy", func(t *testing.T) { testTenancy(t, env) })
	t.Run("ProxyIdentity", func(t *testing.T) { testProxyIdentity(t, env) })
}

// helmBinary is the pinned helm that `make test` builds (HELM), or ./bin/helm.
func helmBinary(t *testing.T) string {
	t.Helper()
	h := os.Getenv("HELM")
	if h == "" {
		h = filepath.Join(envtest.RepoRoot(), "bin", "helm")
	}
	if _, err := os.Stat(h); err != nil {
		t.Fatalf("helm not found at %s: run `make test` (it builds the pinned helm into ./bin) or set HELM", h)
	}
	return h
}

// helm runs the pinned helm with a home of its own, so no user's
// repositories or plugins leak in.
func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	home := t.TempDir()
	cmd := exec.CommandContext(t.Context(), helmBinary(t), args...)
	cmd.Env = append(os.Environ(), "HELM_CONFIG_HOME="+home, "HELM_CACHE_HOME="+home, "HELM_DATA_HOME="+home)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("helm %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// render is `helm template` of the chart as release in namespace, CRDs
// included, with the values files from testdata and --set pairs.
func render(t *testing.T, release, namespace string, valuesFiles []string, set ...string) (string, error) {
	t.Helper()
	args := []string{"template", release, chartDir(), "--namespace", namespace, "--include-crds", "--kube-version", kubeVersion}
	for _, f := range valuesFiles {
		args = append(args, "--values", filepath.Join("testdata", f))
	}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	return helm(t, args...)
}

func mustRender(t *testing.T, release, namespace string, valuesFiles []string, set ...string) []*unstructured.Unstructured {
	t.Helper()
	out, err := render(t, release, namespace, valuesFiles, set...)
	if err != nil {
		t.Fatal(err)
	}
	return decodeAll(t, out)
}

// decodeAll splits a multi-document YAML stream into objects.
func decodeAll(t *testing.T, manifests string) []*unstructured.Unstructured {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(manifests), 4096)
	var objs []*unstructured.Unstructured
	for {
		u := &unstructured.Unstructured{}
		err := dec.Decode(&u.Object)
		if errors.Is(err, io.EOF) {
			return objs
		}
		if err != nil {
			t.Fatalf("decoding manifests: %v", err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
}

// apply server-side applies objs as one field manager, CRDs and Namespaces
// first, the way `kubectl apply --server-side` does, so the API server
// validates every field (strictly: an unknown field is an error).
func apply(t *testing.T, env *envtest.Env, objs []*unstructured.Unstructured) {
	t.Helper()
	first := func(u *unstructured.Unstructured) bool {
		return u.GetKind() == "CustomResourceDefinition" || u.GetKind() == "Namespace"
	}
	for _, pass := range []bool{true, false} {
		for _, u := range objs {
			if first(u) != pass {
				continue
			}
			err := env.Client.Apply(t.Context(), client.ApplyConfigurationFromUnstructured(u),
				client.FieldOwner("chart-test"), client.ForceOwnership)
			if err != nil {
				t.Errorf("the API server refused %s %s/%s: %v", u.GetKind(), u.GetNamespace(), u.GetName(), err)
			}
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

func applyFiles(t *testing.T, env *envtest.Env, dir string) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in %s: %v", dir, err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		apply(t, env, decodeAll(t, string(data)))
	}
}

// find returns the one object of kind and name, failing t if there is not
// exactly one.
func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	var found []*unstructured.Unstructured
	for _, u := range objs {
		if u.GetKind() == kind && u.GetName() == name {
			found = append(found, u)
		}
	}
	if len(found) != 1 {
		t.Fatalf("found %d %s named %q, want 1; rendered: %s", len(found), kind, name, names(objs))
	}
	return found[0]
}

// names lists objs as Kind/name, for failure messages.
func names(objs []*unstructured.Unstructured) string {
	var s []string
	for _, u := range objs {
		s = append(s, u.GetKind()+"/"+u.GetName())
	}
	return strings.Join(s, " ")
}

// count returns how many objects of kind objs holds.
func count(objs []*unstructured.Unstructured, kind string) int {
	n := 0
	for _, u := range objs {
		if u.GetKind() == kind {
			n++
		}
	}
	return n
}

// mustExist reads u back from the API server: the apply really created it.
func mustExist(t *testing.T, env *envtest.Env, u *unstructured.Unstructured) {
	t.Helper()
	got := &unstructured.Unstructured{}
	got.SetGroupVersionKind(u.GroupVersionKind())
	if err := env.Client.Get(t.Context(), client.ObjectKeyFromObject(u), got); err != nil {
		if apierrors.IsNotFound(err) {
			t.Errorf("%s %s/%s was applied but is not there", u.GetKind(), u.GetNamespace(), u.GetName())
			return
		}
		t.Error(err)
	}
}

// readRepoFile reads a file of the repository by its path from the top.
func readRepoFile(t *testing.T, rel string) string {
	t.Helper()
	return readFile(t, filepath.Join(envtest.RepoRoot(), rel))
}
