package storage

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/raft"
)

// writeOldRelease fills a data directory as a release with partitions.db
// left it: two partition groups (one log with a gap, as a snapshot's
// compaction leaves none but the format allows) and the node's records.
func writeOldRelease(t *testing.T, d *Dir) (a, b GroupName) {
	t.Helper()
	s, err := d.OpenSharedLog(quiet)
	if err != nil {
		t.Fatal(err)
	}
	a, b = PartitionGroup("orders", 3, 0), PartitionGroup("orders", 3, 1)
	for i, name := range []GroupName{a, b} {
		g, err := d.OpenGroup(name, quiet, WithSharedLog(s))
		if err != nil {
			t.Fatal(err)
		}
		var logs []*raft.Log
		for idx := uint64(5); idx < 3000; idx++ {
			if i == 1 && idx == 100 {
				continue
			}
			logs = append(logs, testLog(idx, "entry"))
		}
		if err := g.Log.StoreLogs(logs); err != nil {
			t.Fatal(err)
		}
		if err := g.Stable.SetUint64([]byte("CurrentTerm"), uint64(7+i)); err != nil {
			t.Fatal(err)
		}
		if err := g.Stable.Set([]byte("LastVoteCand"), []byte(name.String())); err != nil {
			t.Fatal(err)
		}
		if err := g.Close(); err != nil {
			t.Fatal(err)
		}
	}
	node, err := s.Group("node")
	if err != nil {
		t.Fatal(err)
	}
	if err := node.Set([]byte("instance"), []byte("abc")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return a, b
}

func checkMigrated(t *testing.T, e *Engine, a, b GroupName) {
	t.Helper()
	for i, name := range []GroupName{a, b} {
		l := mustLogGroup(t, e, name.String())
		if f, _ := l.FirstIndex(); f != 5 {
			t.Fatalf("%s: first index %d, want 5", name, f)
		}
		if last, _ := l.LastIndex(); last != 2999 {
			t.Fatalf("%s: last index %d, want 2999", name, last)
		}
		for _, idx := range []uint64{5, 99, 100, 101, 2999} {
			got := new(raft.Log)
			err := l.GetLog(idx, got)
			if i == 1 && idx == 100 {
				if !errors.Is(err, raft.ErrLogNotFound) {
					t.Fatalf("%s: the gap at 100 reads %v", name, err)
				}
				continue
			}
			if err != nil || !sameLog(got, testLog(idx, "entry")) {
				t.Fatalf("%s: entry %d: %+v, %v", name, idx, got, err)
			}
		}
		if term, err := l.GetUint64([]byte("CurrentTerm")); err != nil || term != uint64(7+i) {
			t.Fatalf("%s: term %d, %v", name, term, err)
		}
		if v, err := l.Get([]byte("LastVoteCand")); err != nil || string(v) != name.String() {
			t.Fatalf("%s: vote %q, %v", name, v, err)
		}
	}
	if v, err := mustLogGroup(t, e, "node").Get([]byte("instance")); err != nil || string(v) != "abc" {
		t.Fatalf("node records: %q, %v", v, err)
	}
}

// The Raft logs of partitions.db move into the engine whole; a migration
// cut short by a crash is redone (what it copied is replaced, not added
// to), and remembers across the crash that the engine was new when it
// began; the file goes only at FinishSharedLogMigration, and then the
// groups open from the engine.
func TestMigrateSharedLog(t *testing.T) {
	path := t.TempDir()
	d := mustOpen(t, path)
	a, b := writeOldRelease(t, d)
	stateDir := filepath.Join(path, StateDir)

	e := openTestEngine(t, stateDir, nil)
	m, err := d.MigrateSharedLog(e, true, quiet)
	if err != nil || m != (Migration{Groups: 3, Pending: true, EngineWasNew: true}) {
		t.Fatalf("first migration: %+v, %v", m, err)
	}
	checkMigrated(t, e, a, b)
	// A crash before the finish, with an entry written after the copy that
	// the source does not have.
	if err := mustLogGroup(t, e, a.String()).StoreLogs([]*raft.Log{testLog(3000, "extra")}); err != nil {
		t.Fatal(err)
	}
	closeEngine(t, e)

	e = openTestEngine(t, stateDir, nil)
	m, err = d.MigrateSharedLog(e, false, quiet)
	if err != nil || m != (Migration{Groups: 3, Pending: true, EngineWasNew: true}) {
		t.Fatalf("redone migration: %+v, %v", m, err)
	}
	checkMigrated(t, e, a, b)
	if err := d.FinishSharedLogMigration(e); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(path, SharedLogFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s after the migration: %v", SharedLogFile, err)
	}
	if groups, _ := e.LogGroups(); len(groups) != 3 {
		t.Fatalf("log groups after the migration: %q (the migration's record left?)", groups)
	}
	if m, err := d.MigrateSharedLog(e, false, quiet); err != nil || m != (Migration{}) {
		t.Fatalf("migration with nothing to migrate: %+v, %v", m, err)
	}
	g, err := d.OpenGroup(a, quiet, WithEngineLog(e))
	if err != nil {
		t.Fatal(err)
	}
	if has, err := g.HasState(); err != nil || !has {
		t.Fatalf("the migrated group has no state: %v, %v", has, err)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	closeEngine(t, e)
}

// An engine that existed before the migration began is reported as such.
func TestMigrateSharedLogIntoExistingEngine(t *testing.T) {
	path := t.TempDir()
	d := mustOpen(t, path)
	a, b := writeOldRelease(t, d)
	e := openTestEngine(t, filepath.Join(path, StateDir), nil)
	defer closeEngine(t, e)
	m, err := d.MigrateSharedLog(e, false, quiet)
	if err != nil || m != (Migration{Groups: 3, Pending: true}) {
		t.Fatalf("migration: %+v, %v", m, err)
	}
	checkMigrated(t, e, a, b)
}
