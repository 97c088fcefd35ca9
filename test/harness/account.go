package harness

import (
	"errors"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
)

// Account is an LLMUser with its quota, as the operator left it: the token
// Secret's keys and an SDK client built from them.
type Account struct {
	Namespace, Name string
	// Env is the Secret's data, as envFrom would put it in a pod.
	Env map[string]string
	// Client is the SDK client a pod would build from Env: it reaches a
	// proxy only if the operator writes OPENAI_BASE_URL
	// ([ManagerConfig.ProxyBaseURL]).
	Client openai.Client
}

// Key names the LLMUser.
func (a *Account) Key() types.NamespacedName {
	return types.NamespacedName{Namespace: a.Namespace, Name: a.Name}
}

// APIKey is the token from the user's Secret (OPENAI_API_KEY).
func (a *Account) APIKey() string {
	return a.Env["OPENAI_API_KEY"]
}

// NewAccount creates a namespace named after t, an LLMQuota "quota" with
// spec q and an LLMUser referencing it, then waits for the operator to issue
// the token Secret.
func (e *Env) NewAccount(t testing.TB, q llmv1alpha1.LLMQuotaSpec) *Account {
	t.Helper()
	ctx := t.Context()
	ns := envtest.NewNamespace(t, e.Client, e.namespacePrefix(t))
	e.MustCreate(t, &llmv1alpha1.LLMQuota{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "quota"}, Spec: q})
	e.MustCreate(t, &llmv1alpha1.LLMUser{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: UserName},
		Spec:       llmv1alpha1.LLMUserSpec{QuotaRef: llmv1alpha1.QuotaReference{Name: "quota"}},
	})

	a := &Account{Namespace: ns, Name: UserName}
	var sec corev1.Secret
	poll.Until(t, 30*time.Second, func() error {
		var cur llmv1alpha1.LLMUser
		if err := e.Client.Get(ctx, a.Key(), &cur); err != nil {
			return err
		}
		if !meta.IsStatusConditionTrue(cur.Status.Conditions, llmv1alpha1.ConditionReady) {
			return errors.New("LLMUser not Ready: " + ToJSON(cur.Status.Conditions))
		}
		// The default Secret name, which pods' envFrom refer to.
		if err := e.Client.Get(ctx, types.NamespacedName{Namespace: ns, Name: UserName + "-llm-token"}, &sec); err != nil {
			return err
		}
		return poll.Check(len(sec.Data["OPENAI_API_KEY"]) > 0, "Secret has no OPENAI_API_KEY yet")
	})
	a.Env = map[string]string{}
	for k, v := range sec.Data {
		a.Env[k] = string(v)
	}
	a.Client = NewClient(a.Env["OPENAI_BASE_URL"], a.APIKey())
	return a
}

// NewClient is the SDK client a pod would build from OPENAI_BASE_URL and
// OPENAI_API_KEY. Retries are off: a retried request is charged again, and
// the tests count requests exactly. Each client has its own connection
// pool, so that no connection to a proxy that was stopped is reused for the
// next one.
func NewClient(baseURL, apiKey string) openai.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	return openai.NewClient(
		option.WithBaseURL(baseURL),
		option.WithAPIKey(apiKey),
		option.WithMaxRetries(0),
		option.WithRequestTimeout(30*time.Second),
		option.WithHTTPClient(&http.Client{Transport: tr}),
	)
}

var notDNS = regexp.MustCompile(`[^a-z0-9]+`)

// namespacePrefix names an account's namespace after the subtest, so that a
// failure's objects are easy to find in the logs: with the prefix "e2e",
// TestE2E/Models/Allowed uses e2e-models-allowed-<n>-<digits>.
func (e *Env) namespacePrefix(t testing.TB) string {
	_, name, _ := strings.Cut(t.Name(), "/")
	name = strings.Trim(notDNS.ReplaceAllString(strings.ToLower(name), "-"), "-")
	return e.NamespacePrefix + "-" + strings.Trim(name[:min(len(name), 40)], "-")
}

// MustCreate creates obj, failing t if it cannot.
func (e *Env) MustCreate(t testing.TB, obj client.Object) {
	t.Helper()
	if err := e.Client.Create(t.Context(), obj); err != nil {
		t.Fatalf("creating %T %s/%s: %v", obj, obj.GetNamespace(), obj.GetName(), err)
	}
}
