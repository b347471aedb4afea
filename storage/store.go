package storage

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
)

const (
	boltFile     = "raft.db"
	snapshotsDir = "snapshots" // created by raft.FileSnapshotStore under the group dir

	// LogCacheSize is how many recent entries each group keeps in memory in
	// front of its log store, so the leader's replication reads the tail
	// without a bolt read transaction. Entries are up to 100 messages
	// (pipelined producers' batches of 100 KiB at 1 KiB each), so this is
	// a few MiB per busy group: with 512 it was 50 MiB per group, the
	// largest part of a node's memory under load (a heap profile while
	// enqueueing 1 KiB messages into 6 partitions: 343 MiB of entries).
	LogCacheSize = 32
	// SnapshotsRetained is how many snapshots each group keeps on disk.
	SnapshotsRetained = 2
	// boltLockTimeout bounds the wait for bolt's own flock on raft.db. Our
	// LOCK already excludes other processes and OpenGroup refuses a second
	// open of a group in this process, so this only turns a bug into an error
	// instead of a hang.
	boltLockTimeout = time.Second
)

// boltOptions are the bbolt options of every group's raft.db.
//
// NoSync stays false: every commit fsyncs (see GroupStore). NoFreelistSync
// skips writing the freelist on each commit, fewer pages per fsync; the price
// is a scan of the file to rebuild the freelist on open, which is cheap for
// a Raft log that is truncated after every snapshot. The hashmap freelist is
// the faster one (etcd's default).
func boltOptions() *bbolt.Options {
	return &bbolt.Options{
		Timeout:        boltLockTimeout,
		NoFreelistSync: true,
		FreelistType:   bbolt.FreelistMapType,
	}
}

// GroupStore holds one Raft group's stores, ready for raft.NewRaft.
//
// Durability: Log and Stable are the same bbolt file, <group>/raft.db,
// opened with fsync on. Raft appends a whole batch of entries with one
// StoreLogs call, which is one bolt read-write transaction and so one
// durable commit (bolt writes the dirty pages, fdatasyncs, writes the meta
// page, fdatasyncs): entries proposed together share the cost (group
// commit). When StoreLogs or Set returns nil, the data survives a crash or
// power loss (given a disk that honours flushes). Snapshots are written by
// raft.FileSnapshotStore, which fsyncs the state, the metadata and the
// directory rename before a snapshot is visible.
type GroupStore struct {
	// Log is the Raft log: the BoltStore behind a raft.LogCache of
	// LogCacheSize entries.
	Log raft.LogStore
	// Stable holds Raft's term and vote: the same BoltStore.
	Stable raft.StableStore
	// Snapshots is a raft.FileSnapshotStore in <group>/snapshots, keeping
	// SnapshotsRetained snapshots.
	Snapshots raft.SnapshotStore

	name GroupName
	path string
	bolt *raftboltdb.BoltStore // nil when the group lives in a SharedLog
	dir  *Dir

	closeOnce sync.Once
	closeErr  error
}

// Compile-time checks of what GroupStore hands to raft.
var (
	_ raft.LogStore      = (*raft.LogCache)(nil)
	_ raft.StableStore   = (*raftboltdb.BoltStore)(nil)
	_ raft.SnapshotStore = (*raft.FileSnapshotStore)(nil)
)

// Name returns the group's name.
func (g *GroupStore) Name() GroupName { return g.name }

// Path returns the group's absolute directory.
func (g *GroupStore) Path() string { return g.path }

// HasState reports whether the group has any Raft state (a term, a log
// entry or a snapshot): raft.HasExistingState. A node bootstraps a group
// only when this is false.
func (g *GroupStore) HasState() (bool, error) {
	return raft.HasExistingState(g.Log, g.Stable, g.Snapshots)
}

// Close closes the BoltStore. The Raft instance using the stores must be
// shut down first. Calling Close again returns the first result.
func (g *GroupStore) Close() error {
	g.closeOnce.Do(func() {
		if g.bolt != nil {
			g.closeErr = g.bolt.Close()
		}
		g.dir.mu.Lock()
		delete(g.dir.groups, g.name)
		g.dir.mu.Unlock()
	})
	return g.closeErr
}

// OpenGroup opens the stores of group name, creating its directory and
// files if needed. log receives the snapshot store's messages (nil means
// slog.Default()); records carry a "group" attribute.
//
// It returns an error wrapping ErrInvalidGroup for a name that fails
// Validate, ErrGroupOpen if the group is already open in this Dir, and
// ErrGroupMismatch if the directory holds another incarnation of the queue
// (same name, different queue id): the caller removes it with RemoveGroup
// and opens again.
//
// WithEngineLog (or WithSharedLog) keeps a partition group's log and
// stable store in the node's state engine (or shared log) instead of
// <group>/raft.db.
func (d *Dir) OpenGroup(name GroupName, log *slog.Logger, opts ...GroupOption) (*GroupStore, error) {
	if err := name.Validate(); err != nil {
		return nil, err
	}
	o := newGroupOptions(opts)
	if o.logs != nil && name.IsController() {
		return nil, fmt.Errorf("%w: the controller keeps its own %s, not a store of many groups", ErrInvalidGroup, boltFile)
	}
	if log == nil {
		log = slog.Default()
	}
	log = log.With("group", name.String())
	gdir := filepath.Join(d.path, name.Path())

	// Reserve the name and prepare the directory under d.mu: RemoveGroup
	// deletes empty queue directories under the same lock.
	d.mu.Lock()
	if d.lock == nil {
		d.mu.Unlock()
		return nil, ErrClosed
	}
	if _, ok := d.groups[name]; ok {
		d.mu.Unlock()
		return nil, fmt.Errorf("%w: %s", ErrGroupOpen, name)
	}
	freshDir := !hasMarker(gdir)
	err := prepareGroupDir(gdir, name)
	if err == nil {
		d.groups[name] = struct{}{}
	}
	d.mu.Unlock()
	if err != nil {
		return nil, err
	}

	var g *GroupStore
	if o.logs != nil {
		g, err = openSharedStores(gdir, name, o.logs, freshDir, log)
	} else {
		g, err = openStores(gdir, name, log)
	}
	if err != nil {
		d.mu.Lock()
		delete(d.groups, name)
		d.mu.Unlock()
		return nil, fmt.Errorf("storage: open group %s: %w", name, err)
	}
	g.dir = d
	return g, nil
}

func prepareGroupDir(gdir string, name GroupName) error {
	if _, err := mkdirAllSync(gdir); err != nil {
		return fmt.Errorf("storage: create group %s: %w", name, err)
	}
	if err := checkMarker(gdir, name); err != nil {
		if errors.Is(err, ErrGroupMismatch) {
			return err
		}
		return fmt.Errorf("storage: group %s marker: %w", name, err)
	}
	return nil
}

func openStores(gdir string, name GroupName, log *slog.Logger) (*GroupStore, error) {
	dbPath := filepath.Join(gdir, boltFile)
	_, statErr := os.Stat(dbPath)
	fresh := errors.Is(statErr, os.ErrNotExist)

	bolt, err := raftboltdb.New(raftboltdb.Options{
		Path:        dbPath,
		BoltOptions: boltOptions(),
		NoSync:      false, // never: acknowledged entries must be on disk
	})
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dbPath, err)
	}
	fail := func(err error) (*GroupStore, error) {
		return nil, errors.Join(err, bolt.Close())
	}
	cache, err := raft.NewLogCache(LogCacheSize, bolt)
	if err != nil {
		return fail(err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(gdir, SnapshotsRetained, newHCLogger(log, "snapshots"))
	if err != nil {
		return fail(err)
	}
	// Make the new raft.db and snapshots/ entries durable before Raft
	// records a vote in them.
	if fresh {
		if err := syncDir(gdir); err != nil {
			return fail(err)
		}
	}
	return &GroupStore{
		Log:       cache,
		Stable:    bolt,
		Snapshots: snaps,
		name:      name,
		path:      gdir,
		bolt:      bolt,
	}, nil
}

// RemoveGroup deletes the directory of group name, whatever incarnation of
// the queue it holds (the queue id is not checked, so the ErrGroupMismatch
// flow can remove the old one). The group must be closed (ErrGroupOpen
// otherwise). Removing a group that is not on disk returns nil.
//
// The directory is first renamed into <dir>/.trash and the rename made
// durable, then deleted: a crash midway leaves either the whole group or
// nothing at its path, never a half-deleted group that looks valid. Open
// empties the trash.
//
// With WithEngineLog or WithSharedLog, the group's state in that store (and that of the
// incarnation found at its path) is dropped once the directory is gone.
func (d *Dir) RemoveGroup(name GroupName, opts ...GroupOption) error {
	if err := name.Validate(); err != nil {
		return err
	}
	o := newGroupOptions(opts)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lock == nil {
		return ErrClosed
	}
	if _, ok := d.groups[name]; ok {
		return fmt.Errorf("%w: close %s before removing it", ErrGroupOpen, name)
	}
	gdir := filepath.Join(d.path, name.Path())
	if _, err := os.Lstat(gdir); errors.Is(err, os.ErrNotExist) {
		if o.logs != nil {
			return dropSharedAfterRemove(o.logs, name, GroupName{})
		}
		return nil
	}
	old, _ := readMarker(gdir) // the incarnation at the path, if any
	trash := filepath.Join(d.path, trashDir)
	if _, err := mkdirAllSync(trash); err != nil {
		return fmt.Errorf("storage: remove group %s: %w", name, err)
	}
	// A fresh, unique slot in the trash; the group goes inside it.
	slot, err := os.MkdirTemp(trash, "group-")
	if err != nil {
		return fmt.Errorf("storage: remove group %s: %w", name, err)
	}
	dst := filepath.Join(slot, "g")
	if err := os.Rename(gdir, dst); err != nil {
		return fmt.Errorf("storage: remove group %s: %w", name, err)
	}
	if err := errors.Join(syncDir(filepath.Dir(gdir)), syncDir(slot)); err != nil {
		return fmt.Errorf("storage: remove group %s: sync: %w", name, err)
	}
	if err := os.RemoveAll(slot); err != nil {
		return fmt.Errorf("storage: remove group %s: %w", name, err)
	}
	if !name.IsController() {
		// Drop the queue's directory once its last partition is gone. Remove
		// fails (harmlessly) while other partitions remain.
		qdir := filepath.Dir(gdir)
		if os.Remove(qdir) == nil {
			_ = syncDir(filepath.Dir(qdir))
		}
	}
	if o.logs != nil {
		return dropSharedAfterRemove(o.logs, name, old)
	}
	return nil
}

// Groups returns the partition groups on disk, sorted by queue, partition
// and queue id, so a restarting node can find the replicas it hosted. The
// controller is not listed (open ControllerGroup and use HasState).
// Directories without a marker hold no Raft state (OpenGroup writes the
// marker first) and are skipped; a marker that is corrupt or disagrees with
// its path is an error, as that is disk damage or tampering.
func (d *Dir) Groups() ([]GroupName, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lock == nil {
		return nil, ErrClosed
	}
	root := filepath.Join(d.path, partitionsDir)
	queues, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("storage: list groups: %w", err)
	}
	var out []GroupName
	for _, q := range queues {
		if !q.IsDir() {
			continue
		}
		parts, err := os.ReadDir(filepath.Join(root, q.Name()))
		if err != nil {
			return nil, fmt.Errorf("storage: list groups: %w", err)
		}
		for _, p := range parts {
			if !p.IsDir() {
				continue
			}
			gdir := filepath.Join(root, q.Name(), p.Name())
			g, err := readMarker(gdir)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return nil, err
			}
			if g.IsController() || g.Path() != filepath.Join(partitionsDir, q.Name(), p.Name()) {
				return nil, fmt.Errorf("storage: %s holds %s, which belongs elsewhere", gdir, g)
			}
			out = append(out, g)
		}
	}
	slices.SortFunc(out, func(a, b GroupName) int {
		return cmp.Or(cmp.Compare(a.queue, b.queue), cmp.Compare(a.partition, b.partition), cmp.Compare(a.queueID, b.queueID))
	})
	return out, nil
}
