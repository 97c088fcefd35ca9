package harness

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/llm-user-operator/llm-user-operator/internal/testutil/envtest"
	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
)

// EnvKubeTools names the directory holding the pinned kube-controller-manager
// and kubectl; unset, hack/kube-tools.sh builds (or finds) them.
const EnvKubeTools = "KUBE_TOOLS_DIR"

// KubeTools returns the directory of the pinned kube-controller-manager and
// kubectl (v1.37.2, as kube-apiserver), failing t loudly when they cannot be
// had: a test that needs them never falls back to another kubectl (Debian's
// is 1.20, far outside the supported skew) nor skips.
func KubeTools(t testing.TB) string {
	t.Helper()
	if dir := os.Getenv(EnvKubeTools); dir != "" {
		for _, b := range []string{"kubectl", "kube-controller-manager"} {
			if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
				t.Fatalf("%s=%s has no %s: run hack/kube-tools.sh", EnvKubeTools, dir, b)
			}
		}
		return dir
	}
	cmd := exec.Command(filepath.Join(envtest.RepoRoot(), "hack", "kube-tools.sh"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("the pinned kube-controller-manager and kubectl are unavailable (run hack/kube-tools.sh, or set %s): %v\n%s",
			EnvKubeTools, err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// Kubectl runs the pinned kubectl with the admin kubeconfig and returns its
// standard output, failing t on a non-zero exit.
func (e *Env) Kubectl(t testing.TB, args ...string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(KubeTools(t), "kubectl"), append([]string{"--kubeconfig", e.Kubeconfig}, args...)...)
	cmd.Dir = envtest.RepoRoot()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// StartControllerManager runs kube-controller-manager beside the API server
// until t ends, with the controllers whose behaviour the tests rely on and
// envtest lacks: the garbage collector (owner references are really
// collected) and the deployment and replicaset controllers (a Deployment
// really rolls out ReplicaSets). With no scheduler and no kubelet, their
// pods stay Pending: the harness runs a pod template's process itself
// ([Env.StartReconciledProxy]).
func (e *Env) StartControllerManager(t testing.TB) *Process {
	t.Helper()
	addr := FreeAddr(t)
	certs := t.TempDir()
	p := StartProcess(t, "kube-controller-manager", filepath.Join(KubeTools(t), "kube-controller-manager"),
		"--kubeconfig", e.Kubeconfig,
		"--controllers", "garbage-collector-controller,deployment-controller,replicaset-controller",
		"--leader-elect=false",
		"--bind-address", "127.0.0.1",
		"--secure-port", Port(addr),
		"--cert-dir", certs,
		// The tests wait for the collector; its default pace is for clusters.
		"--concurrent-gc-syncs", "5",
	)
	// /healthz is always allowed; the serving certificate is self-signed.
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // a loopback probe of a self-signed test server
	poll.Until(t, StartTimeout, func() error {
		select {
		case <-p.done:
			return fmt.Errorf("kube-controller-manager exited: %w\n%s", p.err, p.out.String())
		default:
		}
		resp, err := hc.Get("https://" + addr + "/healthz")
		if err != nil {
			return err
		}
		_ = resp.Body.Close()
		return poll.Check(resp.StatusCode == http.StatusOK, "kube-controller-manager /healthz: "+resp.Status)
	})
	return p
}

// kustomize renders dir (relative to the repository) with the pinned kubectl
// into its objects.
func (e *Env) kustomize(t testing.TB, dir string) []*unstructured.Unstructured {
	t.Helper()
	out := e.Kubectl(t, "kustomize", dir)
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(out), 4096)
	var objs []*unstructured.Unstructured
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
			return objs
		} else if err != nil {
			t.Fatalf("decoding kubectl kustomize %s: %v", dir, err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
}

// create creates obj with full rights, failing t if it cannot.
func (e *Env) create(t testing.TB, obj client.Object) {
	t.Helper()
	if err := e.Client.Create(t.Context(), obj); err != nil {
		t.Fatalf("creating %s %s: %v", obj.GetObjectKind().GroupVersionKind().Kind, obj.GetName(), err)
	}
}
