package proxyserver

import (
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// memoryLimitShare is the share of the container's memory limit the Go
// runtime aims to stay under: the rest is for what it does not count (the
// kernel's buffers of the process, stacks of goroutines starting up).
const memoryLimitShare = 0.85

// applyMemoryLimit gives the Go runtime a soft limit below the container's,
// so that it collects garbage before the kernel kills the process (which
// would lose every stream in flight and the usage not yet flushed). An
// explicit GOMEMLIMIT wins. limit is the container's limit in bytes; 0 reads
// it from the cgroup. It returns the soft limit set, or 0.
func applyMemoryLimit(limit int64) int64 {
	if os.Getenv("GOMEMLIMIT") != "" {
		return 0
	}
	if limit <= 0 {
		limit = cgroupMemoryLimit()
	}
	if limit <= 0 {
		return 0
	}
	soft := int64(float64(limit) * memoryLimitShare)
	debug.SetMemoryLimit(soft)
	return soft
}

// cgroupMemoryLimit reads the process's memory limit from cgroup v2 or v1;
// 0 when there is none.
func cgroupMemoryLimit() int64 {
	for _, path := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		if b, err := os.ReadFile(path); err == nil {
			if v, ok := parseCgroupLimit(string(b)); ok {
				return v
			}
		}
	}
	return 0
}

// parseCgroupLimit reads a cgroup memory limit file: a number of bytes, or
// "max" (v2) or a huge number (v1) for no limit.
func parseCgroupLimit(s string) (int64, bool) {
	s = strings.TrimSpace(s)
	if s == "" || s == "max" {
		return 0, false
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v <= 0 || v >= 1<<60 {
		return 0, false
	}
	return v, true
}
