package harness

import (
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"

	"github.com/llm-user-operator/llm-user-operator/internal/testutil/poll"
	"github.com/llm-user-operator/llm-user-operator/test/harness/podtemplate"
)

// Pod is a pod template's container run as a local process, standing in
// for what a kubelet would run; [podtemplate] says what differs. The first
// pod of a template keeps its container ports and, with
// kube-controller-manager, is reported ready on a pod of the template's
// ReplicaSet; later ones (more replicas) get free ports and no pod object.
type Pod struct {
	*Process
	// Ports maps the container's named ports to local addresses.
	Ports map[string]string
	// Name is the pod of the Deployment's ReplicaSet reported ready in
	// this process's place ("" without kube-controller-manager).
	Name string

	template *appsv1.Deployment
	opts     podtemplate.Options
}

var podSeq atomic.Int64

// StartPod runs the single container of a Deployment's pod template until t
// ends, with the identity of its ServiceAccount, and waits until its
// readiness probe passes.
func (e *Env) StartPod(t testing.TB, name string, d *appsv1.Deployment) *Pod {
	t.Helper()
	// A Deployment's generation names its template.
	key := fmt.Sprintf("%s/%s/%d", d.Namespace, d.Name, d.Generation)
	e.podsMu.Lock()
	first := !e.templatesRun[key]
	e.templatesRun[key] = true
	e.podsMu.Unlock()

	o := podtemplate.Options{
		Reader:     e.Client,
		Namespace:  d.Namespace,
		PodName:    fmt.Sprintf("%s-%d", d.Name, podSeq.Add(1)),
		Root:       t.TempDir(),
		Binaries:   map[string]string{"/proxy": e.ProxyBin, "/manager": e.ManagerBin},
		Kubeconfig: e.ServiceAccountKubeconfig(t, d.Namespace, d.Spec.Template.Spec.ServiceAccountName),
	}
	if !first {
		o.RemapPort = func() (int, error) { return freePort() }
	}
	cmd, err := podtemplate.Prepare(t.Context(), &d.Spec.Template, o)
	if err != nil {
		t.Fatalf("running the pod template of %s: %v", d.Name, err)
	}
	if cmd.ReadinessURL == "" {
		t.Fatalf("the pod template of %s has no HTTP readiness probe: nothing says when it is ready", d.Name)
	}
	p := StartProcessEnv(t, name, cmd.Path, cmd.Env, cmd.Args...)
	p.WaitHTTP(t, cmd.ReadinessURL)
	pod := &Pod{Process: p, Ports: cmd.Ports, template: d, opts: o}
	if e.ControllerManager && first {
		// Report it ready as the kubelet would, on a pod the ReplicaSet made.
		poll.Until(t, StartTimeout, func() error {
			name, err := podtemplate.MarkReady(t.Context(), e.Client, d, time.Now())
			if err != nil {
				return err
			}
			pod.Name = name
			return poll.Check(name != "", "no pending pod of "+d.Name+"'s current ReplicaSet to report ready")
		})
	}
	return pod
}

// SyncVolumes rewrites the pod's ConfigMap volumes from the API server, as
// the kubelet does after a ConfigMap changes.
func (p *Pod) SyncVolumes(t testing.TB) {
	t.Helper()
	if err := podtemplate.SyncVolumes(t.Context(), &p.template.Spec.Template, p.opts); err != nil {
		t.Fatal(err)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}
