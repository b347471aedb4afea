package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/quorumq/quorumq/fsm"
	"github.com/quorumq/quorumq/storage"
)

// StorageConfig sizes the node's state engine (every partition replica's
// messages live there, on disk; see storage/DESIGN.md) and sets the free
// space below which enqueues are refused.
type StorageConfig struct {
	// CacheBytes is the engine's block cache; MemTableBytes one of its
	// memtables (at most storage.EngineMemTables are held). Defaults:
	// storage.DefaultEngineCacheBytes, storage.DefaultEngineMemTableBytes.
	CacheBytes, MemTableBytes int64
	// MinFreeBytes: while the filesystem of the data directory has less
	// free space than this, enqueues into partitions with a replica on
	// this node are refused (RESOURCE_EXHAUSTED) before they reach Raft;
	// receives, acks and deletes go on, so consumers can drain. Default
	// DefaultMinFreeBytes; negative: never refuse.
	MinFreeBytes int64
}

// DefaultMinFreeBytes is StorageConfig.MinFreeBytes's default: room for a
// Raft log segment, a memtable flush and a compaction, with margin.
const DefaultMinFreeBytes int64 = 1 << 30

// diskCheckEvery is how often the free space is measured.
const diskCheckEvery = time.Second

func (c *StorageConfig) validate() error {
	if c.CacheBytes == 0 {
		c.CacheBytes = storage.DefaultEngineCacheBytes
	}
	if c.MemTableBytes == 0 {
		c.MemTableBytes = storage.DefaultEngineMemTableBytes
	}
	if c.MinFreeBytes == 0 {
		c.MinFreeBytes = DefaultMinFreeBytes
	}
	if c.CacheBytes < 0 || c.MemTableBytes < 1<<20 || c.MemTableBytes > 1<<30 {
		return fmt.Errorf("config: state cache %d bytes, memtable %d bytes: want a cache ≥ 0 and a memtable of 1 MiB to 1 GiB", c.CacheBytes, c.MemTableBytes)
	}
	return nil
}

// openEngine opens the state engine in the data directory, moves into it
// the Raft logs of a release that kept them in partitions.db
// (storage.Dir.MigrateSharedLog), binds the node's instance to it
// (bindInstance), and drops the logs and state of groups that have no
// directory (a removal that crashed between deleting the directory and
// the rest).
//
// An engine that is gone takes the partition groups' logs with it:
// bindInstance then finds no partition state and the node takes a new
// instance. Across a migration the logs come from partitions.db, so a new
// engine there is checked apart: if its groups' snapshots have marks
// (their state was in an engine, which is gone) the partition state is
// lost and the node takes a new instance; without marks nothing is lost —
// a directory of the release before the engine keeps its state in
// snapshots and logs (replicas restore them, RestoreLatest), and a group
// that never took a snapshot replays its whole log.
func (n *Node) openEngine() error {
	stateDir := filepath.Join(n.cfg.DataDir, storage.StateDir)
	_, statErr := os.Stat(stateDir)
	isNew := errors.Is(statErr, os.ErrNotExist)
	e, err := storage.OpenEngine(stateDir, storage.EngineOptions{
		CacheBytes:    n.cfg.Storage.CacheBytes,
		MemTableBytes: n.cfg.Storage.MemTableBytes,
		Logger:        n.log.With("component", "state"),
	})
	if err != nil {
		return err
	}
	n.engine = e
	mig, err := n.dir.MigrateSharedLog(e, isNew, n.log)
	if err != nil {
		return err
	}
	if n.instance, n.ids, err = bindInstance(n.dir, e, n.log); err != nil {
		return err
	}
	onDisk, err := n.dir.Groups()
	if err != nil {
		return err
	}
	if mig.Pending {
		if mig.EngineWasNew {
			if err := n.checkStateNotLost(onDisk); err != nil {
				return err
			}
		}
		if err := n.dir.FinishSharedLogMigration(e); err != nil {
			return err
		}
	}
	if dropped, err := n.dir.PruneEngineLogs(e); err != nil {
		return err
	} else if len(dropped) > 0 {
		n.log.Info("dropped the Raft logs of removed groups", "groups", len(dropped))
	}
	keep := make(map[string]bool, len(onDisk))
	for _, g := range onDisk {
		keep[g.String()] = true
	}
	groups, err := e.Groups()
	if err != nil {
		return err
	}
	dropped := 0
	for _, g := range groups {
		if !keep[g] {
			if err := e.DropGroup(g); err != nil {
				return err
			}
			dropped++
		}
	}
	if dropped > 0 {
		n.log.Info("dropped the state of removed groups", "groups", dropped)
	}
	return nil
}

// checkStateNotLost looks for snapshot marks in the groups of a directory
// whose engine was new when its shared log was migrated (see openEngine).
func (n *Node) checkStateNotLost(groups []storage.GroupName) error {
	for _, g := range groups {
		store, err := raft.NewFileSnapshotStoreWithLogger(filepath.Join(n.cfg.DataDir, g.Path()), storage.SnapshotsRetained, hclog.NewNullLogger())
		if err != nil {
			return err
		}
		marked, err := fsm.HoldsMark(store)
		if err != nil {
			return fmt.Errorf("snapshots of %s: %w", g, err)
		}
		if !marked {
			continue
		}
		n.log.Warn("the partition state engine is gone but its groups' snapshots point into it: taking a new instance; the cluster replaces this node's replicas",
			"group", g.String())
		inst, err := n.dir.RotateInstance()
		if err != nil {
			return err
		}
		if err := n.ids.setInstance(inst); err != nil {
			return err
		}
		n.instance = inst
		return nil
	}
	return nil
}

// watchDisk measures the free space under the data directory every
// diskCheckEvery until ctx ends, and says so in gossip (Meta.DiskLow) and
// the log when it crosses the watermark.
func (n *Node) watchDisk(ctx context.Context) {
	t := time.NewTicker(diskCheckEvery)
	defer t.Stop()
	for {
		n.checkDisk()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (n *Node) checkDisk() {
	free, err := n.dir.FreeBytes()
	if err != nil {
		n.log.Warn("free disk space", "err", err)
		return
	}
	n.diskFree.Store(free)
	min := n.minFree.Load()
	low := min >= 0 && free < uint64(min)
	if n.diskLow.Swap(low) == low {
		return
	}
	if low {
		n.log.Warn("disk almost full: refusing enqueues until space is freed", "free_bytes", free, "min_free_bytes", min)
	} else {
		n.log.Info("disk space back above the watermark: enqueues accepted again", "free_bytes", free)
	}
	if g := n.gossipReady.Load(); g != nil {
		g.setDiskLow(low)
	}
}

// diskFullError says why an enqueue into a partition is refused, or nil:
// this node, or another node holding one of its replicas, is below the
// free-space watermark.
func (n *Node) diskFullError(replicaNodes []string) error {
	low := func(id string) bool {
		if id == n.id {
			return n.diskLow.Load()
		}
		if g := n.gossipReady.Load(); g != nil {
			for _, m := range g.members() {
				if m.ID == id {
					return m.DiskLow && m.State == "alive"
				}
			}
		}
		return false
	}
	for _, id := range replicaNodes {
		if low(id) {
			n.metrics.diskRefused.Add(1)
			return &LimitError{Flag: "--min-free-disk", Exhausted: true,
				Detail: fmt.Sprintf("node %s is low on disk space: enqueues are refused until space is freed (consumers can still drain)", id)}
		}
	}
	return nil
}

// removeGroup deletes a stopped replica's data: its directory and Raft
// log first (durably), then its state. A crash in between leaves state
// without a directory, which openEngine drops at the next start.
func (n *Node) removeGroup(name storage.GroupName) error {
	if err := n.dir.RemoveGroup(name, storage.WithEngineLog(n.engine)); err != nil {
		return err
	}
	return n.engine.DropGroup(name.String())
}

// writeStorageMetrics writes the state engine's and the disk's metrics.
func (n *Node) writeStorageMetrics(w io.Writer) {
	low := 0
	if n.diskLow.Load() {
		low = 1
	}
	fmt.Fprintf(w, "# TYPE quorumq_disk_free_bytes gauge\nquorumq_disk_free_bytes %d\n", n.diskFree.Load())
	fmt.Fprintf(w, "# TYPE quorumq_disk_min_free_bytes gauge\nquorumq_disk_min_free_bytes %d\n", n.minFree.Load())
	fmt.Fprintf(w, "# TYPE quorumq_disk_low gauge\nquorumq_disk_low %d\n", low)
	fmt.Fprintf(w, "# TYPE quorumq_enqueues_refused_disk_low_total counter\nquorumq_enqueues_refused_disk_low_total %d\n", n.metrics.diskRefused.Load())
	es := n.engine.Stats()
	for _, g := range []struct {
		name, typ string
		v         any
	}{
		{"quorumq_state_disk_bytes", "gauge", es.DiskBytes},
		{"quorumq_state_live_bytes", "gauge", es.LiveBytes},
		{"quorumq_state_cache_bytes", "gauge", es.CacheBytes},
		{"quorumq_state_cache_hits_total", "counter", es.CacheHits},
		{"quorumq_state_cache_misses_total", "counter", es.CacheMisses},
		{"quorumq_state_memtable_bytes", "gauge", es.MemTableBytes},
		{"quorumq_state_flushes_total", "counter", es.Flushes},
		{"quorumq_state_compactions_total", "counter", es.Compactions},
		{"quorumq_state_compaction_debt_bytes", "gauge", es.CompactionDebt},
		{"quorumq_state_read_amplification", "gauge", es.ReadAmp},
		{"quorumq_state_wal_written_bytes_total", "counter", es.WALBytesWritten},
		{"quorumq_state_write_stalls_total", "counter", es.WriteStalls},
		{"quorumq_state_write_stall_seconds_total", "counter", float64(es.WriteStallNanos) / 1e9},
		{"quorumq_state_open_views", "gauge", es.OpenViews},
		{"quorumq_state_wal_fsyncs_total", "counter", es.WALFsyncs},
		{"quorumq_state_wal_fsync_seconds_total", "counter", es.WALFsyncSeconds},
	} {
		fmt.Fprintf(w, "# TYPE %s %s\n%s %v\n", g.name, g.typ, g.name, g.v)
	}
}
