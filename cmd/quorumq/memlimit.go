package main

import (
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// defaultMemoryLimit is the Go memory limit a server sets when neither
// --memory-limit nor GOMEMLIMIT says otherwise and no cgroup limit is
// found. A node's live memory does not grow with its backlog (the state
// engine's cache and memtables, overlays, in-flight batches: about 250 MiB
// under load with the defaults), but without a limit the garbage collector
// lets the heap reach twice the live memory before it runs, and a node
// under load stood at 600 MiB RSS with 160 MiB in use.
const defaultMemoryLimit = 448 << 20

// cgroupShare is the part of a cgroup's memory limit the Go runtime may
// use; the rest is for what it does not count (the binary, stacks' slack).
const cgroupShare = 0.8

// setMemoryLimit applies --memory-limit (bytes; 0: automatic; negative:
// none) and returns the limit set (0 for none).
func setMemoryLimit(flag int64) int64 {
	switch {
	case flag < 0:
		return 0
	case flag > 0:
		debug.SetMemoryLimit(flag)
		return flag
	}
	if os.Getenv("GOMEMLIMIT") != "" {
		return debug.SetMemoryLimit(-1) // the runtime read it
	}
	limit := int64(defaultMemoryLimit)
	if c := cgroupMemoryLimit(); c > 0 {
		limit = int64(float64(c) * cgroupShare)
	}
	debug.SetMemoryLimit(limit)
	return limit
}

// cgroupMemoryLimit is this process's cgroup memory limit in bytes (v2,
// then v1), or 0 if there is none.
func cgroupMemoryLimit() int64 {
	for _, p := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil || v <= 0 || v >= 1<<60 { // "max", or v1's "unlimited"
			return 0
		}
		return v
	}
	return 0
}
