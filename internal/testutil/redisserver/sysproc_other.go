//go:build !linux

package redisserver

import "syscall"

// sysProcAttr is empty where the kernel cannot tie the server's life to ours;
// test cleanup still stops it.
func sysProcAttr() *syscall.SysProcAttr { return nil }
