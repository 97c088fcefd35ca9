package harness

import "syscall"

// sysProcAttr puts the child in its own process group, so that stopping it
// stops anything it forked, and has the kernel kill it if the test binary
// dies (a test timeout) so that nothing is left behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
