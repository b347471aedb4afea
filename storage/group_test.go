package storage

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func mustOpenGroup(t testing.TB, d *Dir, name GroupName) *GroupStore {
	t.Helper()
	g, err := d.OpenGroup(name, quiet)
	if err != nil {
		t.Fatalf("OpenGroup(%s): %v", name, err)
	}
	t.Cleanup(func() { _ = g.Close() })
	return g
}

func TestGroupNames(t *testing.T) {
	tests := []struct {
		name GroupName
		str  string
		path string
	}{
		{ControllerGroup(), "controller", "controller"},
		{PartitionGroup("orders", 17, 3), "q/orders/17/3", filepath.Join("partitions", "orders", "3")},
		{PartitionGroup("a.b-c_d", 0, 4294967295), "q/a.b-c_d/0/4294967295", filepath.Join("partitions", "a.b-c_d", "4294967295")},
	}
	for _, tt := range tests {
		if err := tt.name.Validate(); err != nil {
			t.Errorf("%v.Validate() = %v", tt.name, err)
		}
		if got := tt.name.String(); got != tt.str {
			t.Errorf("String() = %q, want %q", got, tt.str)
		}
		if got := tt.name.Path(); got != tt.path {
			t.Errorf("%s: Path() = %q, want %q", tt.str, got, tt.path)
		}
		back, err := ParseGroupName(tt.str)
		if err != nil || back != tt.name {
			t.Errorf("ParseGroupName(%q) = %v, %v; want %v", tt.str, back, err, tt.name)
		}
	}
	for _, s := range []string{"", "q", "q/orders/17", "q/orders/17/3/4", "x/orders/17/3", "q//1/2", "q/../1/2",
		"q/o/01/2", "q/o/1/+2", "q/o/-1/2", "q/o/1/4294967296", "Controller"} {
		if g, err := ParseGroupName(s); !errors.Is(err, ErrInvalidGroup) {
			t.Errorf("ParseGroupName(%q) = %v, %v; want ErrInvalidGroup", s, g, err)
		}
	}
}

func TestPathEscapeRefused(t *testing.T) {
	root := t.TempDir()
	dataDir := filepath.Join(root, "data")
	d := mustOpen(t, dataDir)
	bad := []GroupName{
		{},
		PartitionGroup("", 1, 0),
		PartitionGroup(".", 1, 0),
		PartitionGroup("..", 1, 0),
		PartitionGroup("../../etc", 1, 0),
		PartitionGroup("a/b", 1, 0),
		PartitionGroup("/abs", 1, 0),
		PartitionGroup(`..\x`, 1, 0),
		PartitionGroup("nul\x00", 1, 0),
		PartitionGroup(strings.Repeat("x", 256), 1, 0),
	}
	for _, name := range bad {
		if name.Path() != "" {
			t.Errorf("%q: Path() = %q, want \"\"", name.Queue(), name.Path())
		}
		if g, err := d.OpenGroup(name, quiet); !errors.Is(err, ErrInvalidGroup) {
			if g != nil {
				_ = g.Close()
			}
			t.Errorf("OpenGroup(%q): err = %v, want ErrInvalidGroup", name.Queue(), err)
		}
		if err := d.RemoveGroup(name); !errors.Is(err, ErrInvalidGroup) {
			t.Errorf("RemoveGroup(%q): err = %v, want ErrInvalidGroup", name.Queue(), err)
		}
	}
	// Nothing was created beside the data directory or inside it.
	if entries, _ := os.ReadDir(root); len(entries) != 1 {
		t.Errorf("entries next to the data dir: %v", entries)
	}
	if _, err := os.Stat(filepath.Join(dataDir, partitionsDir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("partitions/ created by refused names: %v", err)
	}
}

func TestGroupPersists(t *testing.T) {
	path := t.TempDir()
	d := mustOpen(t, path)
	name := PartitionGroup("orders", 17, 3)
	g := mustOpenGroup(t, d, name)

	if has, err := g.HasState(); err != nil || has {
		t.Fatalf("fresh group HasState = %v, %v", has, err)
	}
	logs := []*raft.Log{
		{Index: 1, Term: 1, Type: raft.LogCommand, Data: []byte("one")},
		{Index: 2, Term: 1, Type: raft.LogCommand, Data: []byte("two")},
		{Index: 3, Term: 2, Type: raft.LogCommand, Data: []byte("three")},
	}
	if err := g.Log.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	if err := g.Stable.SetUint64([]byte("CurrentTerm"), 2); err != nil {
		t.Fatal(err)
	}
	if err := g.Stable.Set([]byte("LastVoteCand"), []byte("node-2")); err != nil {
		t.Fatal(err)
	}
	sink, err := g.Snapshots.Create(raft.SnapshotVersionMax, 2, 1, raft.Configuration{}, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sink.Write([]byte("state")); err != nil {
		t.Fatal(err)
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	d = mustOpen(t, path)
	g = mustOpenGroup(t, d, name)
	if has, err := g.HasState(); err != nil || !has {
		t.Fatalf("reopened group HasState = %v, %v", has, err)
	}
	first, _ := g.Log.FirstIndex()
	last, _ := g.Log.LastIndex()
	if first != 1 || last != 3 {
		t.Errorf("indexes = [%d, %d], want [1, 3]", first, last)
	}
	for _, want := range logs {
		var got raft.Log
		if err := g.Log.GetLog(want.Index, &got); err != nil {
			t.Fatalf("GetLog(%d): %v", want.Index, err)
		}
		if got.Term != want.Term || got.Type != want.Type || !bytes.Equal(got.Data, want.Data) {
			t.Errorf("GetLog(%d) = %+v, want %+v", want.Index, got, *want)
		}
	}
	if term, err := g.Stable.GetUint64([]byte("CurrentTerm")); err != nil || term != 2 {
		t.Errorf("CurrentTerm = %d, %v; want 2", term, err)
	}
	if cand, err := g.Stable.Get([]byte("LastVoteCand")); err != nil || string(cand) != "node-2" {
		t.Errorf("LastVoteCand = %q, %v; want node-2", cand, err)
	}
	snaps, err := g.Snapshots.List()
	if err != nil || len(snaps) != 1 || snaps[0].Index != 2 {
		t.Errorf("snapshots after reopen = %v, %v; want one at index 2", snaps, err)
	}
	if g.Name() != name || g.Path() != filepath.Join(path, "partitions", "orders", "3") {
		t.Errorf("Name() = %v, Path() = %q", g.Name(), g.Path())
	}
}

func TestOpenGroupTwiceRefused(t *testing.T) {
	d := mustOpen(t, t.TempDir())
	name := ControllerGroup()
	g := mustOpenGroup(t, d, name)
	if _, err := d.OpenGroup(name, quiet); !errors.Is(err, ErrGroupOpen) {
		t.Errorf("second OpenGroup: err = %v, want ErrGroupOpen", err)
	}
	if err := d.RemoveGroup(name); !errors.Is(err, ErrGroupOpen) {
		t.Errorf("RemoveGroup of an open group: err = %v, want ErrGroupOpen", err)
	}
	if err := d.Close(); !errors.Is(err, ErrGroupOpen) {
		t.Errorf("Dir.Close with an open group: err = %v, want ErrGroupOpen", err)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil {
		t.Errorf("second GroupStore.Close: %v", err)
	}
}

func TestRecreatedQueueMismatch(t *testing.T) {
	d := mustOpen(t, t.TempDir())
	old := PartitionGroup("orders", 1, 0)
	g := mustOpenGroup(t, d, old)
	if err := g.Log.StoreLog(&raft.Log{Index: 1, Term: 1, Data: []byte("old")}); err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}

	recreated := PartitionGroup("orders", 2, 0)
	if _, err := d.OpenGroup(recreated, quiet); !errors.Is(err, ErrGroupMismatch) {
		t.Fatalf("OpenGroup of a re-created queue: err = %v, want ErrGroupMismatch", err)
	}
	// The caller's flow: remove what is there, open again, start empty.
	if err := d.RemoveGroup(recreated); err != nil {
		t.Fatal(err)
	}
	g = mustOpenGroup(t, d, recreated)
	if has, err := g.HasState(); err != nil || has {
		t.Errorf("re-created group HasState = %v, %v; want false", has, err)
	}
}

func TestStateWithoutMarkerRefused(t *testing.T) {
	path := t.TempDir()
	d := mustOpen(t, path)
	gdir := filepath.Join(path, "partitions", "orders", "0")
	if err := os.MkdirAll(gdir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(gdir, boltFile), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := d.OpenGroup(PartitionGroup("orders", 1, 0), quiet); !errors.Is(err, ErrGroupMismatch) {
		t.Errorf("OpenGroup over a markerless raft.db: err = %v, want ErrGroupMismatch", err)
	}
}

func TestRemoveGroup(t *testing.T) {
	path := t.TempDir()
	d := mustOpen(t, path)
	p0, p1 := PartitionGroup("orders", 1, 0), PartitionGroup("orders", 1, 1)
	for _, name := range []GroupName{p0, p1} {
		g := mustOpenGroup(t, d, name)
		if err := g.Log.StoreLog(&raft.Log{Index: 1, Term: 1}); err != nil {
			t.Fatal(err)
		}
		if err := g.Close(); err != nil {
			t.Fatal(err)
		}
	}

	if err := d.RemoveGroup(p0); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(path, p0.Path())); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("group dir still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(path, p1.Path())); err != nil {
		t.Errorf("sibling partition gone: %v", err)
	}
	if err := d.RemoveGroup(p1); err != nil {
		t.Fatal(err)
	}
	if err := d.RemoveGroup(p1); err != nil {
		t.Errorf("removing an absent group: %v", err)
	}
	// Nothing is left: no queue directory, nothing in the trash.
	if entries, _ := os.ReadDir(filepath.Join(path, partitionsDir)); len(entries) != 0 {
		t.Errorf("partitions/ not empty: %v", entries)
	}
	if entries, _ := os.ReadDir(filepath.Join(path, trashDir)); len(entries) != 0 {
		t.Errorf("trash not empty: %v", entries)
	}
	if groups, err := d.Groups(); err != nil || len(groups) != 0 {
		t.Errorf("Groups() = %v, %v; want none", groups, err)
	}
}

func TestGroupsListsWhatIsOnDisk(t *testing.T) {
	path := t.TempDir()
	d := mustOpen(t, path)
	if groups, err := d.Groups(); err != nil || len(groups) != 0 {
		t.Fatalf("Groups() on a new dir = %v, %v", groups, err)
	}
	want := []GroupName{
		PartitionGroup("a", 9, 0),
		PartitionGroup("a", 9, 2),
		PartitionGroup("a", 9, 10),
		PartitionGroup("b", 3, 1),
	}
	for _, name := range []GroupName{want[3], want[2], ControllerGroup(), want[0], want[1]} {
		if err := mustOpenGroup(t, d, name).Close(); err != nil {
			t.Fatal(err)
		}
	}
	// A directory from a crash before its marker was written holds no state.
	if err := os.MkdirAll(filepath.Join(path, "partitions", "c", "0"), 0o700); err != nil {
		t.Fatal(err)
	}
	got, err := d.Groups()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("Groups() = %v, want %v", got, want)
	}

	// A damaged marker is reported, not skipped.
	if err := os.WriteFile(filepath.Join(path, want[3].Path(), markerFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Groups(); err == nil {
		t.Error("Groups() accepted a corrupt marker")
	}
}
