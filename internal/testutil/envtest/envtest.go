// Package envtest starts a real kube-apiserver and etcd for tests, with the
// project's CRDs installed. The binaries come from KUBEBUILDER_ASSETS or, when
// that is unset, from hack/envtest-assets.sh (which builds them once and caches
// them in ./bin).
package envtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/llm-user-operator/llm-user-operator/api/scheme"
)

// Env is a running API server.
type Env struct {
	Config *rest.Config
	Client client.Client
	env    *envtest.Environment
	// Kubeconfig is a kubeconfig file for kubectl against this server.
	Kubeconfig string
	dir        string
}

// RepoRoot is the repository's top directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..")
}

// Assets returns the directory holding kube-apiserver and etcd.
func Assets() (string, error) {
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		return dir, nil
	}
	cmd := exec.Command(filepath.Join(RepoRoot(), "hack", "envtest-assets.sh"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("envtest assets unavailable (run hack/envtest-assets.sh): %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// Start starts an API server with the CRDs from config/crd/bases and stops it
// when the test ends.
func Start(t testing.TB) *Env {
	t.Helper()
	e, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Stop)
	return e
}

// New starts an API server with the CRDs from config/crd/bases, for TestMain;
// call Stop when done.
func New() (*Env, error) {
	assets, err := Assets()
	if err != nil {
		return nil, err
	}
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(RepoRoot(), "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("starting envtest: %w", err)
	}
	e := &Env{Config: cfg, env: env}
	fail := func(err error) (*Env, error) {
		e.Stop()
		return nil, err
	}
	if e.Client, err = client.New(cfg, client.Options{Scheme: scheme.New()}); err != nil {
		return fail(err)
	}
	user, err := env.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fail(err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return fail(err)
	}
	dir, err := os.MkdirTemp("", "envtest-kubeconfig")
	if err != nil {
		return fail(err)
	}
	e.dir = dir
	e.Kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(e.Kubeconfig, kc, 0o600); err != nil {
		return fail(err)
	}
	return e, nil
}

// AddUser writes a kubeconfig for a user of the API server with the given
// name and groups, authorized only by RBAC (unlike the admin one), and
// returns its path. A ServiceAccount's identity is the user
// system:serviceaccount:<namespace>:<name> in the groups
// system:serviceaccounts and system:serviceaccounts:<namespace>.
func (e *Env) AddUser(name string, groups ...string) (string, error) {
	user, err := e.env.AddUser(envtest.User{Name: name, Groups: groups}, nil)
	if err != nil {
		return "", err
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return "", err
	}
	f, err := os.CreateTemp(e.dir, "kubeconfig-*")
	if err != nil {
		return "", err
	}
	if _, err := f.Write(kc); err != nil {
		_ = f.Close()
		return "", err
	}
	return f.Name(), f.Close()
}

// Stop stops the API server and etcd.
func (e *Env) Stop() {
	_ = e.env.Stop()
	if e.dir != "" {
		_ = os.RemoveAll(e.dir)
	}
}

var nsSeq atomic.Int64

// NewNamespace creates a namespace of its own for one test, named prefix, a
// sequence number and a few digits of the clock (so that suites sharing an
// API server never collide), and returns its name. envtest runs no namespace
// controller, so it is never deleted: tests must not rely on that.
func NewNamespace(t testing.TB, c client.Client, prefix string) string {
	t.Helper()
	name := fmt.Sprintf("%s-%d-%d", prefix, nsSeq.Add(1), time.Now().UnixNano()%100000)
	if err := c.Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatalf("creating namespace %s: %v", name, err)
	}
	return name
}

// EnsureNamespace creates the namespace name unless it exists.
func EnsureNamespace(t testing.TB, c client.Client, name string) {
	t.Helper()
	err := c.Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
	if client.IgnoreAlreadyExists(err) != nil {
		t.Fatalf("creating namespace %s: %v", name, err)
	}
}
