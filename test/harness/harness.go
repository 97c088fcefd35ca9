// Package harness runs the product as shipped, for the tests under test/
// that drive it from outside: it builds the manager and proxy binaries from
// ./cmd, starts a real kube-apiserver and etcd (internal/testutil/envtest),
// optionally kube-controller-manager beside them, llm-d-inference-sim
// standing in for vLLM, the operator and proxies as separate processes, and
// gives the tests accounts (an LLMQuota and an LLMUser with its token
// Secret) to reach them with the official OpenAI Go SDK. Everything it
// starts is stopped when the test that started it ends.
//
// The processes run with the identities they would have in a cluster, not
// the admin one: the operator as its ServiceAccount with what config/rbac
// grants it, the proxies as theirs with the RBAC the operator reconciled
// ([Env.ServiceAccountKubeconfig] stands in for the mounted token, passed as
// --kubeconfig or KUBECONFIG). A proxy is either started from the operator's
// reconciled Deployment ([Env.StartReconciledProxy], see package podtemplate
// for what the harness does in the kubelet's place) or with flags of the
// test's choosing ([Env.StartProxy]).
//
// It holds no assertions about the product beyond the few shared checkers
// ([CheckCharged], [ErrorShape], [RequireAPIError]); those belong to the
// test packages.
package harness

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
)

const (
	// OperatorNamespace is where the operator and the proxies run, and
	// keep their signing keys.
	OperatorNamespace = "llm-system"
	// Audience is the audience of the tokens the operator issues.
	Audience = "llm-user-proxy"
	// UserName is the LLMUser every [Env.NewAccount] creates in its own
	// namespace.
	UserName = "alice"
)

// Options are what differs between the suites sharing the harness.
type Options struct {
	// Issuer is the issuer of the tokens the operator issues.
	Issuer string
	// Model is what the simulators serve.
	Model string
	// NamespacePrefix starts the name of every account's namespace, before
	// a dash and the subtest's name.
	NamespacePrefix string
	// FlushWait bounds how long usage takes to reach status once a proxy
	// can write it: its flush interval, API-server latency, and slack for
	// a loaded machine.
	FlushWait time.Duration
	// ControllerManager runs kube-controller-manager beside the API server
	// ([Env.StartControllerManager]).
	ControllerManager bool
}

// Env is a running API server with the operator's namespace, and the
// freshly built binaries to run against it.
type Env struct {
	Options
	// Client reaches the API server directly, with full rights.
	Client     client.Client
	RestConfig *rest.Config
	// Kubeconfig is a kubeconfig file for the API server.
	Kubeconfig string
	// ManagerBin and ProxyBin are the binaries built from ./cmd.
	ManagerBin, ProxyBin string

	api          *envtest.Env
	managerOnce  sync.Once
	managerKC    string
	podsMu       sync.Mutex
	simulators   []string        // base URLs of the simulators started
	proxyRBAC    bool            // a manager reconciled the proxy's RBAC
	templatesRun map[string]bool // templates (namespace/name/generation) a pod was started from
}

// Start builds the manager and the proxy while it starts an API server,
// then creates the operator's namespace. All of it is removed when t ends.
func Start(t testing.TB, o Options) *Env {
	t.Helper()
	bin := t.TempDir()
	var buildErr error
	built := make(chan struct{})
	go func() { // compile while the API server starts
		defer close(built)
		buildErr = Build(bin)
	}()
	t.Cleanup(func() { <-built }) // before bin is removed
	env := envtest.Start(t)
	<-built
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: OperatorNamespace}}
	if err := env.Client.Create(t.Context(), ns); err != nil {
		t.Fatalf("creating namespace %s: %v", OperatorNamespace, err)
	}
	e := &Env{
		Options:      o,
		Client:       env.Client,
		RestConfig:   env.Config,
		Kubeconfig:   env.Kubeconfig,
		ManagerBin:   filepath.Join(bin, "manager"),
		ProxyBin:     filepath.Join(bin, "proxy"),
		api:          env,
		templatesRun: map[string]bool{},
	}
	if o.ControllerManager {
		e.StartControllerManager(t)
	}
	return e
}

// Build compiles the manager and the proxy exactly as shipped into dir, as
// dir/manager and dir/proxy. It takes no testing.TB so that it can run
// beside the API server's start.
func Build(dir string) error {
	cmd := exec.Command("go", "build", "-buildvcs=false", "-o", dir+string(filepath.Separator), "./cmd/manager", "./cmd/proxy")
	cmd.Dir = envtest.RepoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building ./cmd/manager and ./cmd/proxy: %w\n%s", err, out)
	}
	return nil
}
