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
	shared *SharedLog
}

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
	return func(o *groupOptions) { o.shared = s }
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
func openSharedStores(gdir string, name GroupName, s *SharedLog, freshDir bool, log *slog.Logger) (*GroupStore, error) {
	if freshDir {
		if err := s.DropGroup(name.String()); err != nil {
			return nil, err
		}
	}
	sg, err := s.Group(name.String())
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
func dropSharedAfterRemove(s *SharedLog, name, old GroupName) error {
	err := s.DropGroup(name.String())
	if old.Validate() == nil && old != name {
		err = errors.Join(err, s.DropGroup(old.String()))
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
func (d *Dir) PruneSharedLog(s *SharedLog) ([]string, error) {
	ids, err := s.Groups()
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
func (d *Dir) pruneOne(s *SharedLog, name GroupName) (bool, error) {
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
	if err := s.DropGroup(name.String()); err != nil {
		return false, err
	}
	return true, nil
}
