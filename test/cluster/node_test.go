//go:build cluster

package cluster

import (
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The test runs in the node's network namespace but the host's PID and mount
// namespaces, so it sees the containers' processes and cgroups as the
// kubelet does: /proc/<pid> of a container's process is the truth about its
// user, capabilities, root filesystem and memory limit.

func running(p corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning }

func ready(p corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func intstrName(n string) intstr.IntOrString { return intstr.FromString(n) }

func labelsSet(m map[string]string) labels.Set { return labels.Set(m) }

func labelsParse(s string) (labels.Selector, error) { return labels.Parse(s) }

// containerProcess is /proc/<pid> of the first process of the pod's first
// container, found by the container's ID in the processes' cgroups.
func containerProcess(t *testing.T, pod corev1.Pod) string {
	t.Helper()
	if len(pod.Status.ContainerStatuses) == 0 || pod.Status.ContainerStatuses[0].ContainerID == "" {
		t.Fatalf("%s: no container ID yet", pod.Name)
	}
	_, id, _ := strings.Cut(pod.Status.ContainerStatuses[0].ContainerID, "://")
	dirs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "cgroup"))
		if err != nil || !strings.Contains(string(b), id) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(d)); err == nil {
			pids = append(pids, pid)
		}
	}
	if len(pids) == 0 {
		t.Fatalf("%s: no process in a cgroup of container %s", pod.Name, id)
	}
	sort.Ints(pids)
	return "/proc/" + strconv.Itoa(pids[0])
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func grepLine(s, prefix string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

// rootMountOptions are the mount options of the process's /.
func rootMountOptions(t *testing.T, proc string) string {
	t.Helper()
	for _, l := range strings.Split(readFile(t, filepath.Join(proc, "mountinfo")), "\n") {
		f := strings.Fields(l)
		if len(f) > 5 && f[4] == "/" {
			return f[5]
		}
	}
	t.Fatalf("%s: no / in mountinfo", proc)
	return ""
}

// cgroupMemoryLimit is the memory limit of the process's cgroup (v1 or v2),
// read from the host's cgroup filesystem.
func cgroupMemoryLimit(t *testing.T, proc string) int64 {
	t.Helper()
	for _, l := range strings.Split(readFile(t, filepath.Join(proc, "cgroup")), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 {
			continue
		}
		var file string
		switch {
		case f[1] == "memory" || strings.Contains(","+f[1]+",", ",memory,"):
			file = filepath.Join("/sys/fs/cgroup/memory", f[2], "memory.limit_in_bytes")
		case f[0] == "0" && f[1] == "":
			file = filepath.Join("/sys/fs/cgroup", f[2], "memory.max")
		default:
			continue
		}
		if b, err := os.ReadFile(file); err == nil {
			v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			if err != nil {
				t.Fatalf("%s: %q", file, b)
			}
			return v
		}
	}
	t.Fatalf("%s: no memory cgroup found", proc)
	return 0
}

// column is the value in a kubectl table of the column headed col on the
// row whose first column is row; kubectl aligns a value under its heading.
func column(table, row, col string) string {
	lines := strings.Split(table, "\n")
	if len(lines) == 0 {
		return ""
	}
	at := strings.Index(lines[0], col)
	if at < 0 {
		return ""
	}
	for _, l := range lines[1:] {
		if f := strings.Fields(l); len(f) > 0 && f[0] == row && len(l) > at {
			v := strings.Fields(l[at:])
			if len(v) > 0 && !strings.HasPrefix(l[at:], " ") {
				return v[0]
			}
			return ""
		}
	}
	return ""
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
