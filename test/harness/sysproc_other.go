//go:build !linux

package harness

import "syscall"

// sysProcAttr puts the child in its own process group, so that stopping it
// stops anything it forked. Only Linux can also tie its life to ours.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
