package redisserver

import "syscall"

// sysProcAttr has the kernel kill redis-server when the test binary dies, so
// a test killed by its timeout leaves no server behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
