package usage

import (
	"fmt"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
)

func TestZZTiming(t *testing.T) {
	e := apiServer(t)
	ns := newNamespace(t, e.Client)
	createQuota(t, e.Client, ns, "q", llmv1alpha1.ScopePerUser)
	for i := range 100 {
		createUser(t, e.Client, ns, fmt.Sprint("u", i), "q")
	}
	var g, p time.Duration
	for i := range 100 {
		u := &llmv1alpha1.LLMUser{}
		s := time.Now()
		if err := e.Client.Get(t.Context(), client.ObjectKey{Namespace: ns, Name: fmt.Sprint("u", i)}, u); err != nil {
			t.Fatal(err)
		}
		g += time.Since(s)
		orig := u.DeepCopy()
		u.Status.Lifetime = &llmv1alpha1.UsageTotals{Requests: 1}
		s = time.Now()
		if err := e.Client.Status().Patch(t.Context(), u, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
			t.Fatal(err)
		}
		p += time.Since(s)
	}
	t.Logf("sequential: get %v, patch %v", g/100, p/100)
}
