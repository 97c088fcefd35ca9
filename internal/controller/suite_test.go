package controller_test

import (
	"context"
	"io"
	"net"
	"os"
	"sync"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	llmv1alpha1 "github.com/llm-user-operator/llm-user-operator/api/v1alpha1"
	"github.com/llm-user-operator/llm-user-operator/internal/manager"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
)

const (
	opNamespace = "llm-system"
	issuer      = "https://operator.test"
	audience    = "llm-user-proxy"
	baseURL     = "http://proxy.test:8000/v1"
)

// The API server is shared by the package's tests and started by the first
// that needs it, so that the pure policy and render tests run without one.
var (
	envOnce   sync.Once
	sharedEnv *envtest.Env
	envErr    error
)

func TestMain(m *testing.M) {
	ctrl.SetLogger(zap.New(zap.UseDevMode(true), zap.WriteTo(io.Discard)))
	code := m.Run()
	if sharedEnv != nil {
		sharedEnv.Stop()
	}
	os.Exit(code)
}

// apiServer returns the package's API server, starting it on first use; a
// test that needs one fails when it cannot start.
func apiServer(t testing.TB) *envtest.Env {
	t.Helper()
	envOnce.Do(func() { sharedEnv, envErr = envtest.New() })
	if envErr != nil {
		t.Fatal(envErr)
	}
	return sharedEnv
}

// startOperator runs the whole operator against the API server until the
// test ends and returns the address of its refresh endpoint.
func startOperator(t *testing.T) string {
	addr, _ := runOperator(t, apiServer(t).Config)
	return addr
}

// runOperator runs the whole operator against cfg until stop is called or
// the test ends, and returns the address of its refresh endpoint.
func runOperator(t *testing.T, cfg *rest.Config) (addr string, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addr = freeAddr(t)
	done := make(chan error, 1)
	go func() {
		done <- manager.Run(ctx, manager.Options{
			RestConfig: cfg, MetricsAddr: "0", ProbeAddr: "0", RefreshAddr: addr,
			Namespace: opNamespace, Issuer: issuer, Audience: audience, ProxyBaseURL: baseURL,
			SkipNameValidation: true,
		})
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("operator: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return addr, stop
}

func freeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String()
}

func int64p(v int64) *int64 { return &v }

func newQuota(ns, name string) *llmv1alpha1.LLMQuota {
	return &llmv1alpha1.LLMQuota{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       llmv1alpha1.LLMQuotaSpec{Limits: []llmv1alpha1.QuotaLimit{{Window: llmv1alpha1.WindowDay, Tokens: int64p(1000)}}},
	}
}

func newUser(ns, name, quota string) *llmv1alpha1.LLMUser {
	return &llmv1alpha1.LLMUser{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       llmv1alpha1.LLMUserSpec{QuotaRef: llmv1alpha1.QuotaReference{Name: quota}},
	}
}

func getUser(t *testing.T, ns, name string) *llmv1alpha1.LLMUser {
	t.Helper()
	u := &llmv1alpha1.LLMUser{}
	if err := apiServer(t).Client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, u); err != nil {
		t.Fatal(err)
	}
	return u
}
