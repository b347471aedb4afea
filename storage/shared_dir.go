package storage

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/hashicorp/raft"
)

// GroupOption changes how OpenGroup and RemoveGroup store a group.
type GroupOption func(*groupOptions)

type groupOptions struct {
	logs logBackend // nil: the group's own raft.db
}

// logBackend is a store of many groups' Raft logs and stable stores: the
// node's state engine (WithEngineLog) or the shared log partitions.db of
// the releases before it (WithSharedLog).
type logBackend interface {
	logGroup(id string) (logStable, error)
	dropLogGroup(id string) error
	logGroups() ([]string, error)
}

// logStable is one group's Raft log and stable store.
type logStable interface {
	raft.LogStore
	raft.StableStore
}

func (s *SharedLog) logGroup(id string) (logStable, error) { return s.Group(id) }
func (s *SharedLog) dropLogGroup(id string) error          { return s.DropGroup(id) }
func (s *SharedLog) logGroups() ([]string, error)          { return s.Groups() }

func (e *Engine) logGroup(id string) (logStable, error) { return e.LogGroup(id) }
func (e *Engine) dropLogGroup(id string) error          { return e.DropLogGroup(id) }
func (e *Engine) logGroups() ([]string, error)          { return e.LogGroups() }

func newGroupOptions(opts []GroupOption) groupOptions {
	var o groupOptions
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// WithSharedLog keeps a partition group's Raft log and stable store in s
// (the node's partitions.db) instead of its own <group>/raft.db; the
// snapshots stay in the group's directory. Pass it to OpenGroup and to
// RemoveGroup of the same group. The controller always keeps its own
// raft.db (OpenGroup refuses this option for it): its elections and
// catalogue writes then never wait behind a commit of partition traffic.
func WithSharedLog(s *SharedLog) GroupOption {
	return func(o *groupOptions) { o.logs = s }
}

// WithEngineLog keeps a partition group's Raft log and stable store in the
// node's state engine e (Engine.LogGroup), beside the partitions' state;
// the snapshots stay in the group's directory. It is WithSharedLog's
// successor (storage/DESIGN.md, "Raft logs in the engine"), with the same
// rules: pass it to OpenGroup and RemoveGroup of the same group; the
// controller keeps its own raft.db.
func WithEngineLog(e *Engine) GroupOption {
	return func(o *groupOptions) { o.logs = e }
}

// OpenSharedLog opens the node's shared log, <dir>/partitions.db. Close it
// after the Raft instances using it and before the Dir.
func (d *Dir) OpenSharedLog(log *slog.Logger) (*SharedLog, error) {
	d.mu.Lock()
	closed := d.lock == nil
	d.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	return OpenSharedLog(filepath.Join(d.path, SharedLogFile), log)
}

// hasMarker reports whether groupDir has a marker file.
func hasMarker(groupDir string) bool {
	_, err := os.Lstat(filepath.Join(groupDir, markerFile))
	return err == nil
}

// openSharedStores builds the GroupStore of a partition group kept in s.
// freshDir means the group directory had no marker before this open: any
// state s holds under the group's id is then left from a RemoveGroup that
// crashed after the directory was gone and before its buckets were
// dropped, and is dropped now, so a re-created group starts empty.
func openSharedStores(gdir string, name GroupName, s logBackend, freshDir bool, log *slog.Logger) (*GroupStore, error) {
	if freshDir {
		if err := s.dropLogGroup(name.String()); err != nil {
			return nil, err
		}
	}
	sg, err := s.logGroup(name.String())
	if err != nil {
		return nil, err
	}
	cache, err := raft.NewLogCache(LogCacheSize, sg)
	if err != nil {
		return nil, err
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(gdir, SnapshotsRetained, newHCLogger(log, "snapshots"))
	if err != nil {
		return nil, err
	}
	if freshDir {
		if err := syncDir(gdir); err != nil {
			return nil, err
		}
	}
	return &GroupStore{
		Log:       cache,
		Stable:    sg,
		Snapshots: snaps,
		name:      name,
		path:      gdir,
	}, nil
}

// dropSharedAfterRemove drops from s the state of the group name and of the
// incarnation whose marker was at its path (old, if valid), after
// RemoveGroup made the directory's removal durable. In that order a crash
// leaves buckets without a directory (dropped by the next OpenGroup of that
// id or by PruneSharedLog), never a directory with snapshots whose term and
// vote are gone.
func dropSharedAfterRemove(s logBackend, name, old GroupName) error {
	err := s.dropLogGroup(name.String())
	if old.Validate() == nil && old != name {
		err = errors.Join(err, s.dropLogGroup(old.String()))
	}
	if err != nil {
		return fmt.Errorf("storage: remove group %s: %w", name, err)
	}
	return nil
}

// PruneSharedLog drops from s every partition group that has state there
// but no directory (with a matching marker) in d and is not open: the
// leftovers of a RemoveGroup that crashed midway, or of a queue re-created
// with a new id. Ids that are not partition group names are left alone. It
// returns the ids dropped. Run it at start-up, after listing Groups.
func (d *Dir) PruneSharedLog(s *SharedLog) ([]string, error) { return d.pruneLogs(s) }

// PruneEngineLogs is PruneSharedLog for the Raft logs in the state engine
// (WithEngineLog).
func (d *Dir) PruneEngineLogs(e *Engine) ([]string, error) { return d.pruneLogs(e) }

func (d *Dir) pruneLogs(s logBackend) ([]string, error) {
	ids, err := s.logGroups()
	if err != nil {
		return nil, err
	}
	var dropped []string
	for _, id := range ids {
		name, err := ParseGroupName(id)
		if err != nil || name.IsController() {
			continue
		}
		drop, err := d.pruneOne(s, name)
		if err != nil {
			return dropped, err
		}
		if drop {
			dropped = append(dropped, id)
		}
	}
	return dropped, nil
}

// pruneOne drops name from s unless it is open or on disk. It holds d.mu
// so that OpenGroup cannot reserve and write the group meanwhile.
func (d *Dir) pruneOne(s logBackend, name GroupName) (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lock == nil {
		return false, ErrClosed
	}
	if _, open := d.groups[name]; open {
		return false, nil
	}
	have, err := readMarker(filepath.Join(d.path, name.Path()))
	switch {
	case err == nil && have == name:
		return false, nil
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return false, err
	}
	if err := s.dropLogGroup(name.String()); err != nil {
		return false, err
	}
	return true, nil
}
