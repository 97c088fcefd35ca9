// Package podtemplate turns a pod template's container into a local
// process's command line, for a machine with an API server but no kubelet
// (the end-to-end tests and `make run`). What it cannot do as a kubelet
// would, and does instead:
//
//   - The container's command is mapped to a local binary ([Options.Binaries]):
//     the image's /proxy to the proxy built from ./cmd/proxy.
//   - Volumes are materialized under a directory standing for the
//     container's root (ConfigMap keys as files, emptyDirs as directories),
//     and every argument naming a path under a mount is rewritten to the
//     same path under that root. [SyncVolumes] refreshes ConfigMap volumes,
//     as the kubelet does after a ConfigMap changes.
//   - Environment variables are resolved as the kubelet would: values,
//     downward API fields (metadata.namespace, metadata.name,
//     spec.serviceAccountName) and resource fields; references to ConfigMaps
//     and Secrets are refused.
//   - KUBECONFIG is added, naming a kubeconfig with the identity of the pod's
//     ServiceAccount, in place of the token the kubelet would mount: the
//     process has the RBAC permissions the pod would have.
//   - Every pod shares this machine's network namespace: with
//     [Options.RemapPort], the ports of another replica are moved to free
//     ones, substituted where an argument ends in :<containerPort>.
//   - securityContext, resources, probes other than the readiness one
//     (whose URL is returned), lifecycle hooks and scheduling fields are
//     not emulated.
package podtemplate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Options say how to run a pod of the template.
type Options struct {
	// Reader reads the ConfigMaps the pod mounts.
	Reader client.Reader
	// Namespace and PodName are what the downward API gives the pod.
	Namespace, PodName string
	// Root is the directory standing for the container's root.
	Root string
	// Binaries maps the image's commands to local binaries.
	Binaries map[string]string
	// Kubeconfig authenticates as the pod's ServiceAccount.
	Kubeconfig string
	// RemapPort, if set, gives a container port a free local port.
	RemapPort func() (int, error)
}

// Command is the local process standing in for the pod's container.
type Command struct {
	Path string
	Args []string
	// Env is the whole environment: PATH, HOME, KUBECONFIG and the
	// container's variables.
	Env []string
	// Ports maps the container's named ports to local host:port addresses.
	Ports map[string]string
	// ReadinessURL is the readiness probe's URL.
	ReadinessURL string
}

// Prepare materializes the volumes of tmpl's single container and returns
// its command line.
func Prepare(ctx context.Context, tmpl *corev1.PodTemplateSpec, o Options) (*Command, error) {
	if len(tmpl.Spec.Containers) != 1 || len(tmpl.Spec.InitContainers) != 0 {
		return nil, fmt.Errorf("pod template has %d containers and %d init containers; only one container can run here",
			len(tmpl.Spec.Containers), len(tmpl.Spec.InitContainers))
	}
	c := &tmpl.Spec.Containers[0]
	if len(c.Command) != 1 {
		return nil, fmt.Errorf("container %s: command %v, want one binary of the image", c.Name, c.Command)
	}
	cmd := &Command{Path: o.Binaries[c.Command[0]], Ports: map[string]string{}}
	if cmd.Path == "" {
		return nil, fmt.Errorf("container %s runs %s, which has no local binary", c.Name, c.Command[0])
	}
	if err := SyncVolumes(ctx, tmpl, o); err != nil {
		return nil, err
	}
	for _, a := range c.Args {
		cmd.Args = append(cmd.Args, rewritePaths(a, o.Root, c.VolumeMounts))
	}
	for _, p := range c.Ports {
		port := strconv.Itoa(int(p.ContainerPort))
		if o.RemapPort == nil {
			cmd.Ports[p.Name] = "127.0.0.1:" + port
			continue
		}
		free, err := o.RemapPort()
		if err != nil {
			return nil, err
		}
		cmd.Ports[p.Name] = "127.0.0.1:" + strconv.Itoa(free)
		for i, a := range cmd.Args {
			if strings.HasSuffix(a, ":"+port) {
				cmd.Args[i] = strings.TrimSuffix(a, ":"+port) + ":" + strconv.Itoa(free)
			}
		}
	}
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + o.Root, "KUBECONFIG=" + o.Kubeconfig}
	for _, v := range c.Env {
		val, err := resolveEnv(v, o, &tmpl.Spec, c)
		if err != nil {
			return nil, err
		}
		cmd.Env = append(cmd.Env, v.Name+"="+val)
	}
	if p := c.ReadinessProbe; p != nil && p.HTTPGet != nil {
		addr, err := cmd.address(p.HTTPGet.Port)
		if err != nil {
			return nil, fmt.Errorf("readiness probe: %w", err)
		}
		cmd.ReadinessURL = "http://" + addr + p.HTTPGet.Path
	}
	return cmd, nil
}

func (c *Command) address(port intstr.IntOrString) (string, error) {
	if port.Type == intstr.String {
		addr, ok := c.Ports[port.StrVal]
		if !ok {
			return "", fmt.Errorf("no container port named %s", port.StrVal)
		}
		return addr, nil
	}
	return "127.0.0.1:" + strconv.Itoa(port.IntValue()), nil
}

// SyncVolumes writes the ConfigMap volumes of tmpl's container under
// o.Root, each file replaced atomically, as the kubelet does.
func SyncVolumes(ctx context.Context, tmpl *corev1.PodTemplateSpec, o Options) error {
	c := &tmpl.Spec.Containers[0]
	for _, m := range c.VolumeMounts {
		var vol *corev1.Volume
		for i := range tmpl.Spec.Volumes {
			if tmpl.Spec.Volumes[i].Name == m.Name {
				vol = &tmpl.Spec.Volumes[i]
			}
		}
		if vol == nil {
			return fmt.Errorf("volume mount %s names no volume", m.Name)
		}
		dir := filepath.Join(o.Root, m.MountPath)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		switch {
		case vol.EmptyDir != nil:
		case vol.ConfigMap != nil:
			var cm corev1.ConfigMap
			key := types.NamespacedName{Namespace: o.Namespace, Name: vol.ConfigMap.Name}
			if err := o.Reader.Get(ctx, key, &cm); err != nil {
				return fmt.Errorf("volume %s: ConfigMap %s: %w", m.Name, key, err)
			}
			files := cm.Data
			if len(vol.ConfigMap.Items) > 0 {
				files = map[string]string{}
				for _, it := range vol.ConfigMap.Items {
					files[it.Path] = cm.Data[it.Key]
				}
			}
			for name, data := range files {
				tmp := filepath.Join(dir, "."+name+".tmp")
				if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil { //nolint:gosec // a ConfigMap volume is world-readable, as the kubelet writes it
					return err
				}
				if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
					return err
				}
			}
		default:
			return fmt.Errorf("volume %s: only configMap and emptyDir volumes can be materialized", vol.Name)
		}
	}
	return nil
}

// rewritePaths moves a path under a volume mount (the whole argument, or
// after an =) to the same path under root.
func rewritePaths(arg, root string, mounts []corev1.VolumeMount) string {
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
			return arg[:at+len(prefix)] + filepath.Join(root, m.MountPath) + rest
		}
	}
	return arg
}

// resolveEnv gives an environment variable the value the kubelet would.
func resolveEnv(v corev1.EnvVar, o Options, spec *corev1.PodSpec, c *corev1.Container) (string, error) {
	from := v.ValueFrom
	switch {
	case from == nil:
		return v.Value, nil
	case from.FieldRef != nil:
		switch from.FieldRef.FieldPath {
		case "metadata.namespace":
			return o.Namespace, nil
		case "metadata.name":
			return o.PodName, nil
		case "spec.serviceAccountName":
			return spec.ServiceAccountName, nil
		}
		return "", fmt.Errorf("env %s: fieldRef %s cannot be resolved here", v.Name, from.FieldRef.FieldPath)
	case from.ResourceFieldRef != nil:
		r := from.ResourceFieldRef
		list := c.Resources.Limits
		kind, name, ok := strings.Cut(r.Resource, ".")
		if !ok {
			return "", fmt.Errorf("env %s: resource %s is not limits.<name> or requests.<name>", v.Name, r.Resource)
		}
		if kind == "requests" {
			list = c.Resources.Requests
		}
		q, ok := list[corev1.ResourceName(name)]
		if !ok {
			return "", fmt.Errorf("env %s: the container sets no %s", v.Name, r.Resource)
		}
		div := int64(1)
		if !r.Divisor.IsZero() {
			div = r.Divisor.Value()
		}
		return strconv.FormatInt((q.Value()+div-1)/div, 10), nil
	}
	return "", errors.New("env " + v.Name + ": only values, fieldRef and resourceFieldRef can be resolved here")
}

// MarkReady does what the kubelet reports once a pod's readiness probe
// passes: it sets Running and Ready on one not-yet-ready pod of d's current
// ReplicaSet (created by kube-controller-manager's replicaset controller;
// with no scheduler it is unscheduled), so that the Deployment's Available
// condition and kubectl's READY column tell the truth about the process
// running in its place. It returns the pod's name, or "" when there is no
// such pod (no kube-controller-manager).
func MarkReady(ctx context.Context, c client.Client, d *appsv1.Deployment, now time.Time) (string, error) {
	var pods corev1.PodList
	if err := c.List(ctx, &pods, client.InNamespace(d.Namespace), client.MatchingLabels(d.Spec.Selector.MatchLabels)); err != nil {
		return "", err
	}
	hash, err := templateHash(ctx, c, d)
	if err != nil || hash == "" {
		return "", err
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Labels[appsv1.DefaultDeploymentUniqueLabelKey] != hash || p.DeletionTimestamp != nil || isReady(p) {
			continue
		}
		t := metav1.NewTime(now)
		p.Status.Phase = corev1.PodRunning
		p.Status.StartTime = &t
		p.Status.PodIP, p.Status.PodIPs = "127.0.0.1", []corev1.PodIP{{IP: "127.0.0.1"}}
		p.Status.Conditions = nil
		for _, typ := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
			p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: typ, Status: corev1.ConditionTrue, LastTransitionTime: t})
		}
		p.Status.ContainerStatuses = nil
		for _, ctr := range p.Spec.Containers {
			p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{
				Name: ctr.Name, Image: ctr.Image, ImageID: ctr.Image, Ready: true, Started: ptr.To(true),
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: t}},
			})
		}
		if err := c.Status().Update(ctx, p); err != nil {
			return "", err
		}
		return p.Name, nil
	}
	return "", nil
}

// templateHash is the pod-template-hash of the ReplicaSet the deployment
// controller made for d's current template, "" if it has made none yet.
func templateHash(ctx context.Context, c client.Client, d *appsv1.Deployment) (string, error) {
	var sets appsv1.ReplicaSetList
	if err := c.List(ctx, &sets, client.InNamespace(d.Namespace), client.MatchingLabels(d.Spec.Selector.MatchLabels)); err != nil {
		return "", err
	}
	for _, rs := range sets.Items {
		hash := rs.Labels[appsv1.DefaultDeploymentUniqueLabelKey]
		tmpl := rs.Spec.Template.DeepCopy()
		delete(tmpl.Labels, appsv1.DefaultDeploymentUniqueLabelKey)
		if equality.Semantic.DeepEqual(*tmpl, d.Spec.Template) {
			return hash, nil
		}
	}
	return "", nil
}

func isReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
