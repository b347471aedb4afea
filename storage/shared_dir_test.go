package storage

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func mustOpenSharedIn(t *testing.T, d *Dir) *SharedLog {
	t.Helper()
	s, err := d.OpenSharedLog(quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestOpenGroupWithSharedLog(t *testing.T) {
	path := t.TempDir()
	d := mustOpen(t, path)
	s := mustOpenSharedIn(t, d)
	if s.Path() != filepath.Join(path, SharedLogFile) {
		t.Errorf("shared log at %s", s.Path())
	}
	name := PartitionGroup("orders", 7, 1)

	g, err := d.OpenGroup(name, quiet, WithSharedLog(s))
	if err != nil {
		t.Fatal(err)
	}
	if has, err := g.HasState(); err != nil || has {
		t.Fatalf("fresh group HasState = %v, %v", has, err)
	}
	if err := g.Log.StoreLogs([]*raft.Log{testLog(1, "a"), testLog(2, "b")}); err != nil {
		t.Fatal(err)
	}
	if err := g.Stable.SetUint64([]byte("CurrentTerm"), 4); err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	// The group directory holds the marker and snapshots, not a raft.db.
	if _, err := os.Stat(filepath.Join(path, name.Path(), boltFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s exists for a shared group: %v", boltFile, err)
	}

	g, err = d.OpenGroup(name, quiet, WithSharedLog(s))
	if err != nil {
		t.Fatal(err)
	}
	if has, err := g.HasState(); err != nil || !has {
		t.Fatalf("reopened group HasState = %v, %v", has, err)
	}
	wantIndexes(t, g.Log, 1, 2)
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}

	if err := d.RemoveGroup(name, WithSharedLog(s)); err != nil {
		t.Fatal(err)
	}
	if ids, err := s.Groups(); err != nil || len(ids) != 0 {
		t.Errorf("shared groups after RemoveGroup = %v, %v; want none", ids, err)
	}

	if _, err := d.OpenGroup(ControllerGroup(), quiet, WithSharedLog(s)); !errors.Is(err, ErrInvalidGroup) {
		t.Errorf("controller with the shared log: %v, want ErrInvalidGroup", err)
	}
}

// A RemoveGroup that crashed after the directory was gone leaves buckets
// behind; re-creating the group must not adopt them.
func TestSharedGroupStaleStateDropped(t *testing.T) {
	d := mustOpen(t, t.TempDir())
	s := mustOpenSharedIn(t, d)
	name := PartitionGroup("orders", 7, 1)
	stale := mustGroup(t, s, name.String())
	if err := stale.SetUint64([]byte("CurrentTerm"), 9); err != nil {
		t.Fatal(err)
	}
	if err := stale.StoreLog(testLog(5, "old")); err != nil {
		t.Fatal(err)
	}
	g := mustOpenSharedGroup(t, d, s, name)
	if has, err := g.HasState(); err != nil || has {
		t.Fatalf("group over stale buckets HasState = %v, %v; want false", has, err)
	}
	if err := stale.StoreLog(testLog(6, "late")); !errors.Is(err, ErrGroupDropped) {
		t.Errorf("write through the stale handle: %v, want ErrGroupDropped", err)
	}
}

func mustOpenSharedGroup(t *testing.T, d *Dir, s *SharedLog, name GroupName) *GroupStore {
	t.Helper()
	g, err := d.OpenGroup(name, quiet, WithSharedLog(s))
	if err != nil {
		t.Fatalf("OpenGroup(%s): %v", name, err)
	}
	t.Cleanup(func() { _ = g.Close() })
	return g
}

// A queue deleted and re-created under its name: RemoveGroup of the new
// name drops the old incarnation's buckets too.
func TestSharedRecreatedQueue(t *testing.T) {
	d := mustOpen(t, t.TempDir())
	s := mustOpenSharedIn(t, d)
	old, cur := PartitionGroup("orders", 1, 0), PartitionGroup("orders", 2, 0)
	g := mustOpenSharedGroup(t, d, s, old)
	if err := g.Stable.SetUint64([]byte("CurrentTerm"), 3); err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.OpenGroup(cur, quiet, WithSharedLog(s)); !errors.Is(err, ErrGroupMismatch) {
		t.Fatalf("OpenGroup of the new incarnation: %v, want ErrGroupMismatch", err)
	}
	if err := d.RemoveGroup(cur, WithSharedLog(s)); err != nil {
		t.Fatal(err)
	}
	if ids, err := s.Groups(); err != nil || len(ids) != 0 {
		t.Errorf("shared groups = %v, %v; want none", ids, err)
	}
	mustOpenSharedGroup(t, d, s, cur)
}

func TestPruneSharedLog(t *testing.T) {
	d := mustOpen(t, t.TempDir())
	s := mustOpenSharedIn(t, d)
	write := func(g raft.StableStore) {
		t.Helper()
		if err := g.SetUint64([]byte("CurrentTerm"), 1); err != nil {
			t.Fatal(err)
		}
	}
	open := mustOpenSharedGroup(t, d, s, PartitionGroup("a", 1, 0))
	write(open.Stable)
	closed := mustOpenSharedGroup(t, d, s, PartitionGroup("a", 1, 1))
	write(closed.Stable)
	if err := closed.Close(); err != nil {
		t.Fatal(err)
	}
	write(mustGroup(t, s, PartitionGroup("gone", 3, 0).String())) // no directory
	write(mustGroup(t, s, "not-a-group-name"))                    // not ours to judge

	dropped, err := d.PruneSharedLog(s)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"q/gone/3/0"}; !slices.Equal(dropped, want) {
		t.Errorf("PruneSharedLog dropped %v, want %v", dropped, want)
	}
	ids, err := s.Groups()
	if want := []string{"not-a-group-name", "q/a/1/0", "q/a/1/1"}; err != nil || !slices.Equal(ids, want) {
		t.Errorf("Groups() = %v, %v; want %v", ids, err, want)
	}
}

func FuzzDecodeLog(f *testing.F) {
	for _, l := range []*raft.Log{
		{},
		{Index: 1, Term: 2, Type: raft.LogCommand, Data: []byte("data")},
		{Index: 3, Term: 1 << 62, Type: raft.LogConfiguration, Data: []byte("c"), Extensions: []byte("ext"), AppendedAt: time.Unix(1700000000, 123)},
	} {
		f.Add(appendLog(nil, l))
	}
	f.Fuzz(func(t *testing.T, val []byte) {
		var l raft.Log
		if err := decodeLog(9, val, &l); err != nil {
			return
		}
		var back raft.Log
		if err := decodeLog(9, appendLog(nil, &l), &back); err != nil {
			t.Fatalf("re-encoded %+v does not decode: %v", l, err)
		}
		if !sameLog(&l, &back) {
			t.Fatalf("round trip changed %+v into %+v", l, back)
		}
	})
}
