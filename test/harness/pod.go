package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Pod is a pod template's container run as a local process, standing in
// for what a kubelet would run. What it cannot do as a kubelet would, and
// does instead:
//
//   - The container's command is mapped to a binary built from ./cmd: the
//     image's /proxy is [Env.ProxyBin], /manager is [Env.ManagerBin].
//   - Volumes are materialized under a directory standing for the
//     container's root (ConfigMap keys as files, emptyDirs as directories),
//     and every argument naming a path under a mount is rewritten to the
//     same path under that root. [Pod.SyncVolumes] refreshes ConfigMap
//     volumes, as the kubelet does after a ConfigMap changes.
//   - Environment variables are resolved as the kubelet would: values,
//     downward API fields (metadata.namespace, metadata.name, spec.serviceAccountName)
//     and resource fields; ConfigMap and Secret references fail the test.
//   - KUBECONFIG is added, with the identity of the pod's ServiceAccount
//     ([Env.ServiceAccountKubeconfig]), in place of the token the kubelet
//     would mount: the process has the RBAC permissions the pod would have.
//   - Every pod shares this machine's network namespace: the first pod of a
//     template keeps its container ports; later ones (another replica) get
//     free ports, substituted where an argument ends in :<containerPort>.
//   - The readiness probe is run once, until it passes, to say when the pod
//     is ready; securityContext, resources, lifecycle hooks and scheduling
//     fields are not emulated.
type Pod struct {
	*Process
	// Ports maps the container's named ports to local addresses.
	Ports map[string]string

	env      *Env
	root     string
	template corev1.PodTemplateSpec
}

var podSeq atomic.Int64

// StartPod runs the single container of a Deployment's pod template until t
// ends and waits until its readiness probe passes.
func (e *Env) StartPod(t testing.TB, name string, d *appsv1.Deployment) *Pod {
	t.Helper()
	tmpl := d.Spec.Template
	if len(tmpl.Spec.Containers) != 1 || len(tmpl.Spec.InitContainers) != 0 {
		t.Fatalf("pod template of %s has %d containers and %d init containers; the harness runs exactly one container",
			d.Name, len(tmpl.Spec.Containers), len(tmpl.Spec.InitContainers))
	}
	c := tmpl.Spec.Containers[0]
	podName := fmt.Sprintf("%s-%d", d.Name, podSeq.Add(1))
	pod := &Pod{env: e, root: t.TempDir(), template: tmpl, Ports: map[string]string{}}

	if len(c.Command) != 1 {
		t.Fatalf("container %s: command %v, want one binary of the image", c.Name, c.Command)
	}
	bin := map[string]string{"/proxy": e.ProxyBin, "/manager": e.ManagerBin}[c.Command[0]]
	if bin == "" {
		t.Fatalf("container %s runs %s, which is not a binary of the operator's image", c.Name, c.Command[0])
	}

	pod.SyncVolumes(t)
	args := make([]string, len(c.Args))
	for i, a := range c.Args {
		args[i] = pod.rewritePaths(a, c.VolumeMounts)
	}

	// The first pod of a template keeps its ports; another replica cannot
	// bind the same ones on one machine.
	e.podsMu.Lock()
	first := !e.templatesRun[d.Namespace+"/"+d.Name]
	e.templatesRun[d.Namespace+"/"+d.Name] = true
	e.podsMu.Unlock()
	for _, p := range c.Ports {
		port := strconv.Itoa(int(p.ContainerPort))
		if first {
			pod.Ports[p.Name] = "127.0.0.1:" + port
			continue
		}
		addr := FreeAddr(t)
		pod.Ports[p.Name] = addr
		for i, a := range args {
			if strings.HasSuffix(a, ":"+port) {
				args[i] = strings.TrimSuffix(a, ":"+port) + ":" + Port(addr)
			}
		}
	}

	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + pod.root,
		"KUBECONFIG=" + e.ServiceAccountKubeconfig(t, d.Namespace, tmpl.Spec.ServiceAccountName)}
	for _, v := range c.Env {
		env = append(env, v.Name+"="+e.resolveEnv(t, v, d.Namespace, podName, &tmpl.Spec, &c))
	}
	pod.Process = StartProcessEnv(t, name, bin, env, args...)

	probe := c.ReadinessProbe
	if probe == nil || probe.HTTPGet == nil {
		t.Fatalf("container %s has no HTTP readiness probe: nothing says when it is ready", c.Name)
	}
	pod.WaitHTTP(t, pod.URL(t, probe.HTTPGet.Port, probe.HTTPGet.Path))
	return pod
}

// URL is the local http URL of port (a name or a number) and path.
func (p *Pod) URL(t testing.TB, port intstr.IntOrString, path string) string {
	t.Helper()
	if port.Type == intstr.String {
		addr, ok := p.Ports[port.StrVal]
		if !ok {
			t.Fatalf("no container port named %s", port.StrVal)
		}
		return "http://" + addr + path
	}
	return "http://127.0.0.1:" + strconv.Itoa(port.IntValue()) + path
}

// SyncVolumes writes the pod's ConfigMap volumes from the API server, as
// the kubelet does periodically. Each file is replaced atomically.
func (p *Pod) SyncVolumes(t testing.TB) {
	t.Helper()
	c := p.template.Spec.Containers[0]
	for _, m := range c.VolumeMounts {
		var vol *corev1.Volume
		for i := range p.template.Spec.Volumes {
			if p.template.Spec.Volumes[i].Name == m.Name {
				vol = &p.template.Spec.Volumes[i]
			}
		}
		if vol == nil {
			t.Fatalf("volume mount %s names no volume", m.Name)
		}
		dir := filepath.Join(p.root, m.MountPath)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		switch {
		case vol.EmptyDir != nil:
		case vol.ConfigMap != nil:
			var cm corev1.ConfigMap
			key := types.NamespacedName{Namespace: OperatorNamespace, Name: vol.ConfigMap.Name}
			if err := p.env.Client.Get(t.Context(), key, &cm); err != nil {
				t.Fatalf("volume %s: ConfigMap %s: %v", m.Name, key, err)
			}
			files := map[string]string{}
			for k, v := range cm.Data {
				files[k] = v
			}
			if len(vol.ConfigMap.Items) > 0 {
				files = map[string]string{}
				for _, it := range vol.ConfigMap.Items {
					files[it.Path] = cm.Data[it.Key]
				}
			}
			for name, data := range files {
				tmp := filepath.Join(dir, "."+name+".tmp")
				if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil { //nolint:gosec // a ConfigMap volume is world-readable, as the kubelet writes it
					t.Fatal(err)
				}
				if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
					t.Fatal(err)
				}
			}
		default:
			t.Fatalf("volume %s: only configMap and emptyDir volumes can be materialized", vol.Name)
		}
	}
}

// rewritePaths moves a path under a volume mount (alone or after an =) to
// the same path under the pod's root.
func (p *Pod) rewritePaths(arg string, mounts []corev1.VolumeMount) string {
	for _, m := range mounts {
		for _, prefix := range []string{"", "="} {
			at := strings.Index(arg, prefix+m.MountPath)
			if at < 0 || (prefix == "" && at != 0) {
				continue
			}
			rest := arg[at+len(prefix)+len(m.MountPath):]
			if rest != "" && !strings.HasPrefix(rest, "/") {
				continue
			}
			return arg[:at+len(prefix)] + filepath.Join(p.root, m.MountPath) + rest
		}
	}
	return arg
}

// resolveEnv gives an environment variable the value the kubelet would.
func (e *Env) resolveEnv(t testing.TB, v corev1.EnvVar, namespace, podName string, spec *corev1.PodSpec, c *corev1.Container) string {
	t.Helper()
	switch from := v.ValueFrom; {
	case from == nil:
		return v.Value
	case from.FieldRef != nil:
		switch from.FieldRef.FieldPath {
		case "metadata.namespace":
			return namespace
		case "metadata.name":
			return podName
		case "spec.serviceAccountName":
			return spec.ServiceAccountName
		}
		t.Fatalf("env %s: the harness cannot resolve fieldRef %s", v.Name, from.FieldRef.FieldPath)
	case from.ResourceFieldRef != nil:
		r := from.ResourceFieldRef
		var q = c.Resources.Limits
		if strings.HasPrefix(r.Resource, "requests.") {
			q = c.Resources.Requests
		}
		val, ok := q[corev1.ResourceName(r.Resource[strings.Index(r.Resource, ".")+1:])]
		if !ok {
			t.Fatalf("env %s: container sets no %s", v.Name, r.Resource)
		}
		div := int64(1)
		if !r.Divisor.IsZero() {
			div = r.Divisor.Value()
		}
		return strconv.FormatInt((val.Value()+div-1)/div, 10)
	}
	t.Fatalf("env %s: the harness resolves only values, fieldRef and resourceFieldRef", v.Name)
	return ""
}
