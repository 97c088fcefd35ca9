package podtemplate

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
)

func template() *corev1.PodTemplateSpec {
	return &corev1.PodTemplateSpec{Spec: corev1.PodSpec{
		ServiceAccountName: "sa",
		Containers: []corev1.Container{{
			Name:    "proxy",
			Command: []string{"/proxy"},
			Args:    []string{"--listen-address=:8000", "--upstreams-file=/etc/up/list", "/etc/up", "--other=/etc/upper/x"},
			Env: []corev1.EnvVar{
				{Name: "PLAIN", Value: "v"},
				{Name: "NS", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
				{Name: "MEM", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.memory", Divisor: resource.MustParse("1Mi")}}},
			},
			Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: 8000}, {Name: "metrics", ContainerPort: 9090}},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromString("metrics")}}},
			Resources:      corev1.ResourceRequirements{Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("512Mi")}},
			VolumeMounts:   []corev1.VolumeMount{{Name: "up", MountPath: "/etc/up"}},
		}},
		Volumes: []corev1.Volume{{Name: "up", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: "cm"}}}}},
	}}
}

func options(t *testing.T, objs ...client.Object) Options {
	return Options{
		Reader:     fake.NewClientBuilder().WithObjects(objs...).Build(),
		Namespace:  "ops",
		PodName:    "p-1",
		Root:       t.TempDir(),
		Binaries:   map[string]string{"/proxy": "/bin/proxy"},
		Kubeconfig: "/kc",
	}
}

func TestPrepare(t *testing.T) {
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "ops", Name: "cm"}, Data: map[string]string{"list": "http://a\n"}}
	o := options(t, cm)
	cmd, err := Prepare(context.Background(), template(), o)
	if err != nil {
		t.Fatal(err)
	}
	wantArgs := []string{"--listen-address=:8000", "--upstreams-file=" + o.Root + "/etc/up/list", o.Root + "/etc/up", "--other=/etc/upper/x"}
	if cmd.Path != "/bin/proxy" || !slices.Equal(cmd.Args, wantArgs) {
		t.Errorf("command %s %v, want /bin/proxy %v", cmd.Path, cmd.Args, wantArgs)
	}
	for _, want := range []string{"KUBECONFIG=/kc", "PLAIN=v", "NS=ops", "MEM=512"} {
		if !slices.Contains(cmd.Env, want) {
			t.Errorf("env %v lacks %s", cmd.Env, want)
		}
	}
	if cmd.ReadinessURL != "http://127.0.0.1:9090/readyz" || cmd.Ports["http"] != "127.0.0.1:8000" {
		t.Errorf("readiness %s ports %v", cmd.ReadinessURL, cmd.Ports)
	}
	data, err := os.ReadFile(filepath.Join(o.Root, "etc", "up", "list"))
	if err != nil || string(data) != "http://a\n" {
		t.Errorf("materialized ConfigMap: %q %v", data, err)
	}

	// The kubelet's resync after the ConfigMap changed.
	cm.Data["list"] = "http://b\n"
	if err := o.Reader.(client.Client).Update(context.Background(), cm); err != nil {
		t.Fatal(err)
	}
	if err := SyncVolumes(context.Background(), template(), o); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(filepath.Join(o.Root, "etc", "up", "list")); string(data) != "http://b\n" {
		t.Errorf("after a sync: %q", data)
	}
}

func TestPrepareRemapsPortsOfAnotherReplica(t *testing.T) {
	o := options(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "ops", Name: "cm"}})
	next := 40000
	o.RemapPort = func() (int, error) { next++; return next, nil }
	cmd, err := Prepare(context.Background(), template(), o)
	if err != nil {
		t.Fatal(err)
	}
	if cmd.Args[0] != "--listen-address=:40001" || cmd.ReadinessURL != "http://127.0.0.1:40002/readyz" {
		t.Errorf("args %v readiness %s, want the http port on 40001 and metrics on 40002", cmd.Args, cmd.ReadinessURL)
	}
}

func TestPrepareRefuses(t *testing.T) {
	cases := []struct {
		name string
		edit func(p *corev1.PodTemplateSpec)
		want string
	}{
		{"unknown binary", func(p *corev1.PodTemplateSpec) { p.Spec.Containers[0].Command = []string{"/sh"} }, "/sh, which has no local binary"},
		{"two containers", func(p *corev1.PodTemplateSpec) { p.Spec.Containers = append(p.Spec.Containers, p.Spec.Containers[0]) }, "2 containers"},
		{"secret volume", func(p *corev1.PodTemplateSpec) {
			p.Spec.Volumes[0].VolumeSource = corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "s"}}
		}, "only configMap and emptyDir"},
		{"missing ConfigMap", func(p *corev1.PodTemplateSpec) { p.Spec.Volumes[0].ConfigMap.Name = "nope" }, `ConfigMap ops/nope`},
		{"secret env", func(p *corev1.PodTemplateSpec) {
			p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "S", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{Key: "k"}}}}
		}, "env S: only values"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tmpl := template()
			tc.edit(tmpl)
			_, err := Prepare(context.Background(), tmpl, options(t, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "ops", Name: "cm"}}))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
}
