package chaos

import (
	"sync"

	"github.com/quorumq/quorumq/test/lazyfs"
	"github.com/quorumq/quorumq/test/netns"
)

// lazyMount is the lazyfs under one host's data directory: mounted before
// the node first starts, crashed and mounted again by each lose-unsynced
// fault, unmounted after the cluster is closed. The FUSE server runs in
// the test process, which outlives every node.
type lazyMount struct {
	host             int
	backing, mountAt string

	mu sync.Mutex
	fs *lazyfs.FS // the current mount
}

// mountLazy puts host's data directory on a lazyfs whose backing
// directory is beside it (<data dir>.backing): what the node fsynced, and
// what a post-mortem reads once the run is over.
func mountLazy(c *netns.Cluster, host int) (*lazyMount, error) {
	dir := c.DataDir(host)
	m := &lazyMount{host: host, backing: dir + ".backing", mountAt: dir}
	f, err := lazyfs.Mount(m.backing, m.mountAt)
	if err != nil {
		return nil, err
	}
	m.fs = f
	return m, nil
}

// crash throws away the unsynced writes of the (dead) node and mounts the
// backing directory again, as the machine's disk after a reboot.
func (m *lazyMount) crash(logf func(string, ...any)) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	err := m.fs.Crash()
	st := m.fs.Stats()
	logf("lose-unsynced n%d: %d unsynced bytes lost (%d bytes fsynced through this mount)", m.host, st.Dropped, st.Synced)
	if err != nil {
		return err
	}
	f, err := lazyfs.Mount(m.backing, m.mountAt)
	if err != nil {
		return err
	}
	m.fs = f
	return nil
}

// unmount unmounts the current mount; the cluster must be closed (its
// nodes dead) first.
func (m *lazyMount) unmount() error {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.fs.Unmount()
}
