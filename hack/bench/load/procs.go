package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

// proc is a child process: an upstream, a simulator or a proxy arm.
type proc struct {
	name string
	cmd  *exec.Cmd
	pid  int
	// ready is the first line the child printed on stdout.
	ready  string
	exited chan struct{}
}

// pinner starts children on one CPU. taskset (util-linux) is used when
// present; without it the generator pins the OS thread it forks from, which
// the child inherits (sched_setaffinity applies to one thread, and a forked
// process starts with the mask of the thread that forked it).
type pinner struct {
	taskset string
	cpus    int // CPUs online; pinning needs two
}

func newPinner() pinner {
	p := pinner{cpus: onlineCPUs()}
	if path, err := exec.LookPath("taskset"); err == nil && os.Getenv("BENCH_PIN") != "syscall" {
		p.taskset = path
	}
	return p
}

func (p pinner) enabled() bool { return p.cpus >= 2 }

func (p pinner) method() string {
	switch {
	case !p.enabled():
		return "none (fewer than 2 CPUs)"
	case p.taskset != "":
		return "taskset"
	default:
		return "sched_setaffinity on the forking thread (no taskset)"
	}
}

// start runs bin with args on cpu (no pinning when cpu < 0 or pinning is
// unavailable), its output going to logDir/name.log. When waitLine is set it
// waits up to 30s for the child's first line of stdout, its ready signal.
func (p pinner) start(name string, cpu int, waitLine bool, logDir, bin string, args ...string) (*proc, error) {
	argv := append([]string{bin}, args...)
	if cpu >= 0 && p.enabled() && p.taskset != "" {
		argv = append([]string{p.taskset, "-c", strconv.Itoa(cpu)}, argv...)
	}
	logf, err := os.Create(filepath.Join(logDir, name+".log"))
	if err != nil {
		return nil, err
	}
	first := &firstLine{line: make(chan string, 1), rest: logf}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = first, logf
	// A child must not outlive the generator, even one killed by SIGKILL.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if cpu >= 0 && p.enabled() && p.taskset == "" {
		err = startOnCPU(cmd, cpu)
	} else {
		err = cmd.Start()
	}
	if err != nil {
		_ = logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	pr := &proc{name: name, cmd: cmd, pid: cmd.Process.Pid, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		_ = logf.Close()
		close(pr.exited)
	}()
	if !waitLine {
		return pr, nil
	}
	select {
	case pr.ready = <-first.line:
		return pr, nil
	case <-pr.exited:
		return nil, fmt.Errorf("%s exited before it was ready; see %s", name, logf.Name())
	case <-time.After(30 * time.Second):
	}
	pr.stop()
	return nil, fmt.Errorf("%s was not ready within 30s; see %s", name, logf.Name())
}

// firstLine hands the first line written to it over a channel and passes
// everything after it on to rest. exec.Cmd writes to it from one goroutine.
type firstLine struct {
	buf  []byte
	sent bool
	line chan string
	rest io.Writer
}

func (f *firstLine) Write(p []byte) (int, error) {
	if f.sent {
		return f.rest.Write(p)
	}
	f.buf = append(f.buf, p...)
	if i := bytes.IndexByte(f.buf, '\n'); i >= 0 {
		f.sent = true
		f.line <- strings.TrimSpace(string(f.buf[:i]))
		if _, err := f.rest.Write(f.buf[i+1:]); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// stop asks the child to end and kills it after 3s.
func (pr *proc) stop() {
	if pr == nil {
		return
	}
	_ = pr.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-pr.exited:
	case <-time.After(3 * time.Second):
		_ = pr.cmd.Process.Kill()
		<-pr.exited
	}
}

// startOnCPU starts cmd from an OS thread pinned to cpu, then restores the
// thread's mask.
func startOnCPU(cmd *exec.Cmd, cpu int) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var old, mask [16]uint64
	if _, _, e := syscall.RawSyscall(syscall.SYS_SCHED_GETAFFINITY, 0, unsafe.Sizeof(old), uintptr(unsafe.Pointer(&old))); e != 0 {
		return e
	}
	mask[cpu/64] = 1 << (cpu % 64)
	if _, _, e := syscall.RawSyscall(syscall.SYS_SCHED_SETAFFINITY, 0, unsafe.Sizeof(mask), uintptr(unsafe.Pointer(&mask))); e != 0 {
		return e
	}
	err := cmd.Start()
	if _, _, e := syscall.RawSyscall(syscall.SYS_SCHED_SETAFFINITY, 0, unsafe.Sizeof(old), uintptr(unsafe.Pointer(&old))); e != 0 && err == nil {
		err = e
	}
	return err
}

// onlineCPUs counts the CPUs in /sys/devices/system/cpu/online ("0-1,3").
func onlineCPUs() int {
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return runtime.NumCPU()
	}
	n := 0
	for r := range strings.SplitSeq(strings.TrimSpace(string(b)), ",") {
		lo, hi, ok := strings.Cut(r, "-")
		a, _ := strconv.Atoi(lo)
		z := a
		if ok {
			z, _ = strconv.Atoi(hi)
		}
		n += z - a + 1
	}
	return n
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat:
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// cpuTime is the CPU time (user + system) a process has used so far.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces and parentheses: fields start after
	// the last ')'. utime and stime are fields 14 and 15, counting from 1.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("unreadable /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// memStatus returns VmRSS and VmHWM (peak RSS) of a process, in bytes.
func memStatus(pid int) (rss, hwm int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return 0, 0, err
		}
		if k == "VmRSS" {
			rss = kb << 10
		} else {
			hwm = kb << 10
		}
	}
	if rss == 0 {
		return 0, 0, fmt.Errorf("no VmRSS for pid %d", pid)
	}
	return rss, hwm, nil
}

// cpusAllowed is the affinity list of a process, as /proc shows it.
func cpusAllowed(pid string) string {
	b, _ := os.ReadFile("/proc/" + pid + "/status")
	for line := range strings.SplitSeq(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == "Cpus_allowed_list" {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

// freePort asks the kernel for a free loopback port. Another process could
// take it before the child binds it; the child then fails to start and the
// run says so.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitHTTP polls url until it answers 200, for up to 30s.
func waitHTTP(url string) error {
	c := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := c.Get(url); err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s did not answer 200 within 30s", url)
}

// cpuTicks is, per CPU, the busy and total jiffies from /proc/stat.
type cpuTicks struct{ busy, total []int64 }

func cpuBusy() cpuTicks {
	var t cpuTicks
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return t
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || !strings.HasPrefix(f[0], "cpu") || f[0] == "cpu" {
			continue
		}
		var total, idle int64
		for i, v := range f[1:] {
			n, _ := strconv.ParseInt(v, 10, 64)
			if i >= 8 { // guest time is already counted in user
				break
			}
			total += n
			if i == 3 || i == 4 { // idle, iowait
				idle += n
			}
		}
		t.busy = append(t.busy, total-idle)
		t.total = append(t.total, total)
	}
	return t
}

// busySince is the busy fraction of each CPU between two readings.
func busySince(a, b cpuTicks) []float64 {
	var out []float64
	for i := range min(len(a.busy), len(b.busy)) {
		if d := b.total[i] - a.total[i]; d > 0 {
			out = append(out, float64(b.busy[i]-a.busy[i])/float64(d))
		} else {
			out = append(out, 0)
		}
	}
	return out
}
