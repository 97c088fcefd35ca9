// Package crd_test checks the generated CRDs against a real kube-apiserver:
// the samples in config/samples are accepted, invalid manifests are refused
// with messages a user can act on, defaults and the status subresource behave
// as documented, and kubectl shows the printer columns and field docs.
package crd_test

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
	"github.com/llm-user-operator/llm-user-operator/test/harness"
)

// TestCRDs starts one API server and runs every check against it: starting
// one per check would cost more than the checks themselves.
func TestCRDs(t *testing.T) {
	env := envtest.Start(t)

	t.Run("Samples", func(t *testing.T) { testSamples(t, env) })
	t.Run("Invalid", func(t *testing.T) { testInvalid(t, env) })
	t.Run("HardLimitCostAsNumbers", func(t *testing.T) { testHardLimitCost(t, env) })
	t.Run("Defaults", func(t *testing.T) { testDefaults(t, env) })
	t.Run("StatusSubresource", func(t *testing.T) { testStatusSubresource(t, env) })
	t.Run("Names", func(t *testing.T) { testNames(t, env) })
	t.Run("Kubectl", func(t *testing.T) { testKubectl(t, env) })
}

func samplesDir() string {
	return filepath.Join(envtest.RepoRoot(), "config", "samples")
}

// decode reads a YAML manifest into an unstructured object.
func decode(t *testing.T, data []byte) *unstructured.Unstructured {
	t.Helper()
	j, err := yaml.YAMLToJSON(data)
	if err != nil {
		t.Fatalf("YAML: %v", err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(j); err != nil {
		t.Fatalf("manifest: %v", err)
	}
	return u
}

// create sends a manifest as kubectl would, with strict field validation so
// that a misspelt field is an error rather than silently pruned.
func create(ctx context.Context, env *envtest.Env, u *unstructured.Unstructured, ns string) error {
	u.SetNamespace(ns)
	return env.Client.Create(ctx, u, client.FieldValidation(metav1.FieldValidationStrict))
}

// testSamples applies every LLMQuota and LLMUser sample, and checks that the
// Pod sample and kustomization.yaml agree with them.
func testSamples(t *testing.T, env *envtest.Env) {
	ns := envtest.NewNamespace(t, env.Client, "samples")
	files, err := filepath.Glob(filepath.Join(samplesDir(), "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no samples in %s: %v", samplesDir(), err)
	}

	var (
		crFiles   []string
		quotas    = map[string]bool{}
		secrets   = map[string]bool{} // Secrets the sample users receive
		quotaRefs = map[string]string{}
		podSecret []string
		kustomize []string
	)
	for _, file := range files {
		base := filepath.Base(file)
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(data, []byte("# ")) {
			t.Errorf("%s: begins with no comment saying what it shows", base)
		}
		u := decode(t, data)
		switch u.GetKind() {
		case "LLMQuota", "LLMUser":
			crFiles = append(crFiles, base)
			if u.GetNamespace() != "" {
				t.Errorf("%s: sets namespace %q; samples go to kubectl's namespace", base, u.GetNamespace())
			}
			if err := create(t.Context(), env, u, ns); err != nil {
				t.Errorf("%s: refused: %v", base, err)
				continue
			}
			if u.GetKind() == "LLMQuota" {
				quotas[u.GetName()] = true
				continue
			}
			var user llmv1alpha1.LLMUser
			if err := env.Client.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: u.GetName()}, &user); err != nil {
				t.Fatalf("%s: reading back: %v", base, err)
			}
			quotaRefs[base] = user.Spec.QuotaRef.Name
			secret := user.Spec.Token.SecretName
			if secret == "" {
				secret = user.Name + "-llm-token"
			}
			secrets[secret] = true
		case "Pod":
			var pod corev1.Pod
			if err := yaml.UnmarshalStrict(data, &pod); err != nil {
				t.Fatalf("%s: not a valid Pod: %v", base, err)
			}
			for _, c := range pod.Spec.Containers {
				for _, ef := range c.EnvFrom {
					if ef.SecretRef != nil {
						podSecret = append(podSecret, ef.SecretRef.Name)
					}
				}
			}
			if len(podSecret) == 0 {
				t.Errorf("%s: no container takes its environment from a Secret (envFrom.secretRef)", base)
			}
			pod.Namespace = ns
			if err := env.Client.Create(t.Context(), &pod, client.DryRunAll, client.FieldValidation(metav1.FieldValidationStrict)); err != nil {
				t.Errorf("%s: refused by the API server: %v", base, err)
			}
		case "Kustomization":
			var k struct {
				Resources []string `json:"resources"`
			}
			if err := yaml.Unmarshal(data, &k); err != nil {
				t.Fatalf("%s: %v", base, err)
			}
			kustomize = k.Resources
		default:
			t.Errorf("%s: kind %q is not checked here; teach testSamples what to check about it", base, u.GetKind())
		}
	}

	if len(quotas) == 0 || len(quotaRefs) == 0 {
		t.Errorf("samples hold %d LLMQuotas and %d LLMUsers; want at least one of each", len(quotas), len(quotaRefs))
	}
	for file, ref := range quotaRefs {
		if !quotas[ref] {
			t.Errorf("%s: quotaRef %q names no sample LLMQuota", file, ref)
		}
	}
	for _, s := range podSecret {
		if !secrets[s] {
			t.Errorf("pod sample reads Secret %q, which no sample LLMUser receives (they receive %v)", s, slices.Sorted(maps.Keys(secrets)))
		}
	}
	slices.Sort(kustomize)
	if !slices.Equal(kustomize, crFiles) {
		t.Errorf("kustomization.yaml resources = %v, want the LLMQuota and LLMUser samples %v", kustomize, crFiles)
	}
}

// fieldPathPrefix matches the start of a field error, such as "spec.limits[0]: ".
var fieldPathPrefix = regexp.MustCompile(`^[A-Za-z][\w.\[\]]*: `)

// testInvalid sends each manifest in testdata/invalid and expects it refused
// with the message fragment its first line names, field path included: the
// message is what a user reads in kubectl's output, so it is the contract.
func testInvalid(t *testing.T, env *envtest.Env) {
	ns := envtest.NewNamespace(t, env.Client, "invalid")
	files, err := filepath.Glob(filepath.Join("testdata", "invalid", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures in testdata/invalid: %v", err)
	}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".yaml")
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			first, _, _ := bytes.Cut(data, []byte("\n"))
			want, ok := strings.CutPrefix(string(first), "# expect: ")
			if !ok || !fieldPathPrefix.MatchString(want) {
				t.Fatalf("first line must be `# expect: <field path>: <message>`, as the API server prints it; got %q", first)
			}
			err = create(t.Context(), env, decode(t, data), ns)
			if err == nil {
				t.Fatalf("accepted; want refused with %q", want)
			}
			if !apierrors.IsInvalid(err) {
				t.Errorf("refused as %v, want Invalid (422)", apierrors.ReasonForError(err))
			}
			if !strings.Contains(err.Error(), want) {
				t.Errorf("message does not contain the expected fragment\n got: %s\nwant: %s", err, want)
			}
		})
	}
}

// testHardLimitCost: a hard cost ceiling is compared with the soft one as a
// number: "10" is above "9" (as strings it would sort below), and an equal
// ceiling written differently is accepted. Refusals are in testdata/invalid.
func testHardLimitCost(t *testing.T, env *envtest.Env) {
	ns := envtest.NewNamespace(t, env.Client, "hardcost")
	for i, tc := range [][2]string{{"9", "10"}, {"7.5", "7.50"}, {"0.000001", "0.000002"}} {
		manifest := fmt.Sprintf(`apiVersion: llm.userops.dev/v1alpha1
kind: LLMQuota
metadata:
  name: hard-cost-%d
spec:
  pricing:
    currency: USD
    models:
    - {model: "*", input: "1", output: "2"}
  limits:
  - window: Month
    cost: %q
    overage: Demote
    hardLimit:
      cost: %q
`, i, tc[0], tc[1])
		if err := create(t.Context(), env, decode(t, []byte(manifest)), ns); err != nil {
			t.Errorf("soft cost %s, hard %s: %v", tc[0], tc[1], err)
		}
	}
}

// testDefaults creates the smallest valid objects and reads back the defaults
// the API documents, and checks that values a user sets are not overwritten.
func testDefaults(t *testing.T, env *envtest.Env) {
	ns := envtest.NewNamespace(t, env.Client, "defaults")
	ctx := t.Context()

	t.Run("LLMQuota", func(t *testing.T) {
		if err := create(ctx, env, decode(t, []byte(`
apiVersion: llm.userops.dev/v1alpha1
kind: LLMQuota
metadata: {name: minimal}
spec: {}
`)), ns); err != nil {
			t.Fatal(err)
		}
		var q llmv1alpha1.LLMQuota
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "minimal"}, &q); err != nil {
			t.Fatal(err)
		}
		if q.Spec.Scope != llmv1alpha1.ScopePerUser {
			t.Errorf("spec.scope = %q, want %q", q.Spec.Scope, llmv1alpha1.ScopePerUser)
		}
		if q.Spec.Enforcement != llmv1alpha1.EnforcementEnforce {
			t.Errorf("spec.enforcement = %q, want %q", q.Spec.Enforcement, llmv1alpha1.EnforcementEnforce)
		}
		if want := []int32{80, 95}; !slices.Equal(q.Spec.AlertThresholds, want) {
			t.Errorf("spec.alertThresholds = %v, want %v", q.Spec.AlertThresholds, want)
		}
		if q.Spec.CacheIsolation != llmv1alpha1.CacheIsolationUser {
			t.Errorf("spec.cacheIsolation = %q, want %q", q.Spec.CacheIsolation, llmv1alpha1.CacheIsolationUser)
		}
	})

	t.Run("LLMQuotaExplicit", func(t *testing.T) {
		if err := create(ctx, env, decode(t, []byte(`
apiVersion: llm.userops.dev/v1alpha1
kind: LLMQuota
metadata: {name: explicit}
spec: {scope: Shared, enforcement: DryRun, alertThresholds: [50]}
`)), ns); err != nil {
			t.Fatal(err)
		}
		var q llmv1alpha1.LLMQuota
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "explicit"}, &q); err != nil {
			t.Fatal(err)
		}
		if q.Spec.Scope != llmv1alpha1.ScopeShared || q.Spec.Enforcement != llmv1alpha1.EnforcementDryRun ||
			!slices.Equal(q.Spec.AlertThresholds, []int32{50}) {
			t.Errorf("spec = %+v; the user's scope, enforcement and alertThresholds were overwritten", q.Spec)
		}
	})

	for _, tc := range []struct {
		name, token string
	}{
		{"LLMUserNoToken", ""},
		{"LLMUserPartialToken", "  token: {secretName: other}\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := strings.ToLower(tc.name)
			u := decode(t, []byte(`
apiVersion: llm.userops.dev/v1alpha1
kind: LLMUser
metadata: {name: `+name+`}
spec:
  quotaRef: {name: minimal}
`+tc.token))
			if err := create(ctx, env, u, ns); err != nil {
				t.Fatal(err)
			}
			// The raw value is what kubectl shows and what the CEL rule parses.
			raw := &unstructured.Unstructured{}
			raw.SetGroupVersionKind(llmv1alpha1.GroupVersion.WithKind("LLMUser"))
			if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, raw); err != nil {
				t.Fatal(err)
			}
			if ttl, _, _ := unstructured.NestedString(raw.Object, "spec", "token", "ttl"); ttl != "24h" {
				t.Errorf("spec.token.ttl = %q, want %q", ttl, "24h")
			}
			var user llmv1alpha1.LLMUser
			if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &user); err != nil {
				t.Fatal(err)
			}
			if user.Spec.Token.TTL == nil || user.Spec.Token.TTL.Duration != 24*time.Hour {
				t.Errorf("spec.token.ttl = %v, want 24h", user.Spec.Token.TTL)
			}
			if user.Spec.Token.AllowRefresh == nil || !*user.Spec.Token.AllowRefresh {
				t.Errorf("spec.token.allowRefresh = %v, want true", ptrString(user.Spec.Token.AllowRefresh))
			}
		})
	}
}

func ptrString[T any](p *T) string {
	if p == nil {
		return "unset"
	}
	return fmt.Sprint(*p)
}

// testStatusSubresource checks that status and spec are written through
// separate endpoints: the operator's status writes cannot undo a user's spec
// edit, and a user's kubectl edit cannot forge usage.
func testStatusSubresource(t *testing.T, env *envtest.Env) {
	ns := envtest.NewNamespace(t, env.Client, "status")
	now := time.Now().UTC().Truncate(time.Second)
	for _, tc := range []struct {
		kind, manifest string
		status         map[string]any
		statusProbe    []string // a field of status, present once status is stored
		specProbe      []string // a spec field the status update tries to change
		specValue      any
	}{
		{
			kind: "LLMQuota",
			manifest: `
apiVersion: llm.userops.dev/v1alpha1
kind: LLMQuota
metadata: {name: pool}
spec:
  scope: Shared
  limits: [{window: Day, tokens: 1000}]
`,
			status:      map[string]any{"users": int64(3), "lifetime": map[string]any{"requests": int64(2), "totalTokens": int64(40)}},
			statusProbe: []string{"status", "lifetime"},
			specProbe:   []string{"spec", "maxTokensPerRequest"},
			specValue:   int64(7),
		},
		{
			kind: "LLMUser",
			manifest: `
apiVersion: llm.userops.dev/v1alpha1
kind: LLMUser
metadata: {name: carol}
spec:
  quotaRef: {name: pool}
`,
			status: map[string]any{
				"conditions": []any{map[string]any{
					"type": "Ready", "status": "True", "reason": "Issued", "message": "token issued",
					"lastTransitionTime": now.Format(time.RFC3339), "observedGeneration": int64(1),
				}},
				"usage": []any{map[string]any{
					"window": "Day", "windowStart": now.Format(time.RFC3339), "resetAt": now.Add(time.Hour).Format(time.RFC3339),
					"requests": int64(3), "totalTokens": int64(10), "remaining": int64(990),
				}},
			},
			statusProbe: []string{"status", "usage"},
			specProbe:   []string{"spec", "displayName"},
			specValue:   "changed",
		},
	} {
		t.Run(tc.kind, func(t *testing.T) {
			ctx := t.Context()
			obj := decode(t, []byte(tc.manifest))
			if err := create(ctx, env, obj, ns); err != nil {
				t.Fatal(err)
			}
			read := func() *unstructured.Unstructured {
				t.Helper()
				got := &unstructured.Unstructured{}
				got.SetGroupVersionKind(obj.GroupVersionKind())
				if err := env.Client.Get(ctx, client.ObjectKeyFromObject(obj), got); err != nil {
					t.Fatal(err)
				}
				return got
			}
			hasStatus := func(u *unstructured.Unstructured) bool {
				_, found, _ := unstructured.NestedFieldNoCopy(u.Object, tc.statusProbe...)
				return found
			}

			obj.Object["status"] = runtime.DeepCopyJSONValue(tc.status)
			if err := env.Client.Update(ctx, obj); err != nil {
				t.Fatalf("update: %v", err)
			}
			if got := read(); hasStatus(got) {
				t.Errorf("an update of the main resource stored status %v; want it ignored", got.Object["status"])
			}

			obj.Object["status"] = runtime.DeepCopyJSONValue(tc.status)
			before, _, _ := unstructured.NestedFieldCopy(obj.Object, tc.specProbe...)
			if err := unstructured.SetNestedField(obj.Object, tc.specValue, tc.specProbe...); err != nil {
				t.Fatal(err)
			}
			if err := env.Client.Status().Update(ctx, obj); err != nil {
				t.Fatalf("status update: %v", err)
			}
			got := read()
			if !hasStatus(got) {
				t.Errorf("a status update was not stored: status = %v", got.Object["status"])
			}
			if after, _, _ := unstructured.NestedFieldCopy(got.Object, tc.specProbe...); !reflect.DeepEqual(after, before) {
				t.Errorf("a status update changed %s from %v to %v; want spec ignored", strings.Join(tc.specProbe, "."), before, after)
			}
		})
	}
}

// testNames reads the installed CRDs back and checks what `kubectl get`
// relies on: printer columns, short names and the category.
func testNames(t *testing.T, env *envtest.Env) {
	scheme := runtime.NewScheme()
	if err := apiextensionsv1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(env.Config, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		crd                 string
		shortName           string
		columns, wideColumn []string
	}{
		{
			crd: "llmusers.llm.userops.dev", shortName: "llmu",
			columns:    []string{"Quota", "Used", "Remaining", "Cost", "Currency", "Reset", "Ready", "Age"},
			wideColumn: []string{"Suspended", "Expires"},
		},
		{
			crd: "llmquotas.llm.userops.dev", shortName: "llmq",
			columns:    []string{"Scope", "Window", "Tokens", "Users", "Age"},
			wideColumn: []string{"Enforcement", "Concurrency", "Used", "Cost", "Currency", "Priority"},
		},
	} {
		t.Run(tc.crd, func(t *testing.T) {
			var crd apiextensionsv1.CustomResourceDefinition
			if err := c.Get(t.Context(), client.ObjectKey{Name: tc.crd}, &crd); err != nil {
				t.Fatal(err)
			}
			if got := crd.Spec.Names.ShortNames; !slices.Equal(got, []string{tc.shortName}) {
				t.Errorf("shortNames = %v, want [%s]", got, tc.shortName)
			}
			if got := crd.Spec.Names.Categories; !slices.Equal(got, []string{"llm"}) {
				t.Errorf("categories = %v, want [llm]", got)
			}
			if len(crd.Spec.Versions) != 1 {
				t.Fatalf("%d versions, want 1", len(crd.Spec.Versions))
			}
			var columns, wide []string
			for _, col := range crd.Spec.Versions[0].AdditionalPrinterColumns {
				if col.Priority == 0 {
					columns = append(columns, col.Name)
				} else {
					wide = append(wide, col.Name)
				}
			}
			if !slices.Equal(columns, tc.columns) {
				t.Errorf("printer columns = %v, want %v", columns, tc.columns)
			}
			if !slices.Equal(wide, tc.wideColumn) {
				t.Errorf("-o wide printer columns = %v, want %v", wide, tc.wideColumn)
			}
		})
	}
}

// testKubectl applies the samples the way their kustomization.yaml says and
// reads them back through kubectl, as a user would.
func testKubectl(t *testing.T, env *envtest.Env) {
	bin := filepath.Join(harness.KubeTools(t), "kubectl")
	ns := envtest.NewNamespace(t, env.Client, "kubectl")
	cacheDir := t.TempDir()
	kubectl := func(t *testing.T, args ...string) string {
		t.Helper()
		out, err := runKubectl(t.Context(), bin, env.Kubeconfig, cacheDir, args...)
		if err != nil {
			t.Fatalf("kubectl %s: %v", strings.Join(args, " "), err)
		}
		return out
	}
	kubectl(t, "apply", "-k", samplesDir(), "-n", ns)

	// Usage as the proxy would write it, so the columns have values to show.
	var alice llmv1alpha1.LLMUser
	if err := env.Client.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: "alice"}, &alice); err != nil {
		t.Fatal(err)
	}
	start := metav1.NewTime(time.Now().UTC().Truncate(24 * time.Hour))
	alice.Status.Usage = []llmv1alpha1.WindowUsage{{
		Window: llmv1alpha1.WindowDay, WindowStart: start, ResetAt: metav1.NewTime(start.Add(24 * time.Hour)),
		Requests: 3, InputTokens: 1200, OutputTokens: 34, TotalTokens: 1234, Remaining: ptr.To[int64](98766),
		Cost: "0.0004764", Currency: "USD",
	}}
	alice.Status.Conditions = []metav1.Condition{{
		Type: llmv1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: llmv1alpha1.ReasonIssued,
		Message: "token issued", LastTransitionTime: start, ObservedGeneration: alice.Generation,
	}}
	if err := env.Client.Status().Update(t.Context(), &alice); err != nil {
		t.Fatal(err)
	}

	t.Run("Get", func(t *testing.T) {
		out := kubectl(t, "get", "llmusers,llmquotas", "-n", ns)
		t.Logf("kubectl get llmusers,llmquotas:\n%s", out)
		headers := tableHeaders(out)
		want := [][]string{
			{"NAME", "QUOTA", "USED", "REMAINING", "COST", "CURRENCY", "RESET", "READY", "AGE"},
			{"NAME", "SCOPE", "WINDOW", "TOKENS", "USERS", "AGE"},
		}
		if !slices.EqualFunc(headers, want, slices.Equal) {
			t.Errorf("headers = %q, want %q", headers, want)
		}
		row := tableRow(out, "llmuser.llm.userops.dev/alice")
		if len(row) < 8 || row[1] != "team-default" || row[2] != "1234" || row[3] != "98766" || row[4] != "0.0004764" || row[5] != "USD" || row[7] != "True" {
			t.Errorf("alice's row = %q, want quota team-default, used 1234, remaining 98766, cost 0.0004764 USD, ready True", row)
		}
	})

	t.Run("GetWide", func(t *testing.T) {
		out := kubectl(t, "get", "llmusers", "-n", ns, "-o", "wide")
		want := []string{"NAME", "QUOTA", "USED", "REMAINING", "COST", "CURRENCY", "RESET", "READY", "SUSPENDED", "EXPIRES", "AGE"}
		if headers := tableHeaders(out); len(headers) != 1 || !slices.Equal(headers[0], want) {
			t.Errorf("headers = %q, want %q", headers, want)
		}
	})

	t.Run("ShortNamesAndCategory", func(t *testing.T) {
		for _, args := range [][]string{{"llmu,llmq"}, {"llm"}} {
			out := kubectl(t, append([]string{"get", "-n", ns, "-o", "name"}, args...)...)
			for _, want := range []string{
				"llmuser.llm.userops.dev/alice", "llmuser.llm.userops.dev/bob",
				"llmquota.llm.userops.dev/team-default", "llmquota.llm.userops.dev/research-team",
			} {
				if !slices.Contains(strings.Fields(out), want) {
					t.Errorf("kubectl get %s: %s missing from\n%s", args[0], want, out)
				}
			}
		}
	})

	t.Run("Explain", func(t *testing.T) {
		for _, tc := range []struct {
			path   string
			fields []string
		}{
			{"llmuser.spec", []string{"quotaRef", "models", "suspended", "token", "displayName", "contact"}},
			{"llmuser.status.usage", []string{"windowStart", "resetAt"}},
			{"llmquota.spec", []string{"limits", "maxTokensPerRequest", "models", "scope", "enforcement", "alertThresholds", "cacheIsolation"}},
		} {
			out := explain(t, bin, env.Kubeconfig, cacheDir, tc.path)
			listed := explainFields(out)
			for _, f := range tc.fields {
				if !slices.Contains(listed, f) {
					t.Errorf("kubectl explain %s lists fields %v; %s missing. Output:\n%s", tc.path, listed, f, out)
				}
			}
		}
	})
}

// runKubectl runs the pinned kubectl (hack/kube-tools.sh, the API server's
// version), never whatever kubectl is on PATH.
func runKubectl(ctx context.Context, bin, kubeconfig, cacheDir string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--kubeconfig", kubeconfig, "--cache-dir", cacheDir}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w: %s", err, stderr.String())
	}
	return stdout.String(), nil
}

// explain runs kubectl explain, retrying while the CRD's OpenAPI document is
// not yet published: the API server builds it asynchronously after the CRD is
// established.
func explain(t *testing.T, bin, kubeconfig, cacheDir, path string) string {
	t.Helper()
	var lastErr error
	for range 60 {
		out, err := runKubectl(t.Context(), bin, kubeconfig, cacheDir, "explain", path)
		if err == nil {
			return out
		}
		lastErr = err
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("kubectl explain %s: %v", path, lastErr)
	return ""
}

// explainFields returns the field names under FIELDS: in kubectl explain's
// output, each the first word of a line indented by two spaces.
func explainFields(out string) []string {
	_, fields, ok := strings.Cut(out, "\nFIELDS:\n")
	if !ok {
		return nil
	}
	var names []string
	for line := range strings.SplitSeq(fields, "\n") {
		if rest, ok := strings.CutPrefix(line, "  "); ok && rest != "" && rest[0] != ' ' && rest[0] != '\t' {
			names = append(names, strings.Fields(rest)[0])
		}
	}
	return names
}

// tableHeaders returns the header row of each table kubectl printed.
func tableHeaders(out string) [][]string {
	var headers [][]string
	for line := range strings.SplitSeq(out, "\n") {
		if strings.HasPrefix(line, "NAME ") {
			headers = append(headers, strings.Fields(line))
		}
	}
	return headers
}

// tableRow returns the fields of the row whose first column is name.
func tableRow(out, name string) []string {
	for line := range strings.SplitSeq(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == name {
			return f
		}
	}
	return nil
}
