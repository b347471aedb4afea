package storage

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func mustOpen(t testing.TB, path string) *Dir {
	t.Helper()
	d, err := Open(path)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

func TestOpenCreatesPrivateDir(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a", "data")
	d := mustOpen(t, path)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o700 {
		t.Errorf("mode = %o, want 700", got)
	}
	if d.Path() != path {
		t.Errorf("Path() = %q, want %q", d.Path(), path)
	}
	if _, err := os.Stat(filepath.Join(path, probeFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("probe file left behind: %v", err)
	}
}

func TestOpenLockIsExclusive(t *testing.T) {
	path := t.TempDir()
	d, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Open(path)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: err = %v, want ErrLocked", err)
	}
	if !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Errorf("locked error %q does not name the holder's pid", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	d2, err := Open(path)
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	if err := d2.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestOpenRefusesReadOnlyDir(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root can write to a read-only directory")
	}
	path := t.TempDir()
	if err := os.Chmod(path, 0o500); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chmod(path, 0o700) })
	if d, err := Open(path); err == nil {
		_ = d.Close()
		t.Fatal("Open of a read-only directory succeeded")
	}
}

func TestOpenRefusesAFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if d, err := Open(path); err == nil {
		_ = d.Close()
		t.Fatal("Open of a regular file succeeded")
	}
}

func TestOpenEmptiesTrash(t *testing.T) {
	path := t.TempDir()
	left := filepath.Join(path, trashDir, "group-1", "g", "raft.db")
	if err := os.MkdirAll(filepath.Dir(left), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(left, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	mustOpen(t, path)
	if _, err := os.Stat(filepath.Join(path, trashDir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("trash not emptied: %v", err)
	}
}

func TestNodeID(t *testing.T) {
	path := t.TempDir()
	d := mustOpen(t, path)

	if _, err := d.NodeID(""); !errors.Is(err, ErrNoNodeID) {
		t.Fatalf("NodeID(\"\") on empty dir: err = %v, want ErrNoNodeID", err)
	}
	if _, err := d.NodeID("bad id"); err == nil {
		t.Error("NodeID accepted an id with a space")
	}
	id, err := d.NodeID("node-1")
	if err != nil || id != "node-1" {
		t.Fatalf("NodeID(node-1) = %q, %v", id, err)
	}
	for _, fallback := range []string{"", "node-1"} {
		if id, err := d.NodeID(fallback); err != nil || id != "node-1" {
			t.Errorf("NodeID(%q) = %q, %v; want node-1", fallback, id, err)
		}
	}
	if _, err := d.NodeID("node-2"); !errors.Is(err, ErrNodeIDMismatch) {
		t.Errorf("NodeID(node-2): err = %v, want ErrNodeIDMismatch", err)
	}
	if _, err := os.Stat(filepath.Join(path, nodeIDFile+".tmp")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temp file left behind: %v", err)
	}

	// It survives a restart.
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d = mustOpen(t, path)
	if id, err := d.NodeID(""); err != nil || id != "node-1" {
		t.Errorf("after reopen NodeID(\"\") = %q, %v; want node-1", id, err)
	}
	if _, err := d.NodeID("node-2"); !errors.Is(err, ErrNodeIDMismatch) {
		t.Errorf("after reopen NodeID(node-2): err = %v, want ErrNodeIDMismatch", err)
	}
}

func TestNodeIDCorrupt(t *testing.T) {
	path := t.TempDir()
	if err := os.WriteFile(filepath.Join(path, nodeIDFile), []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := mustOpen(t, path)
	if _, err := d.NodeID("node-1"); err == nil {
		t.Error("NodeID accepted an empty node-id file")
	}
}

func TestFreeBytes(t *testing.T) {
	d := mustOpen(t, t.TempDir())
	n, err := d.FreeBytes()
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Error("FreeBytes = 0")
	}
}

func TestClosedDir(t *testing.T) {
	d, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.OpenGroup(ControllerGroup(), nil); !errors.Is(err, ErrClosed) {
		t.Errorf("OpenGroup after Close: err = %v, want ErrClosed", err)
	}
	if _, err := d.NodeID("n"); !errors.Is(err, ErrClosed) {
		t.Errorf("NodeID after Close: err = %v, want ErrClosed", err)
	}
	if _, err := d.Groups(); !errors.Is(err, ErrClosed) {
		t.Errorf("Groups after Close: err = %v, want ErrClosed", err)
	}
}

func TestHCLoggerBridge(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	var h hclog.Logger = newHCLogger(l, "raft")
	h = h.Named("snap").With("k", 1)
	h.Debug("hidden")
	h.Info("shown", "x", 2)
	out := buf.String()
	for _, want := range []string{"msg=shown", "logger=raft.snap", "k=1", "x=2"} {
		if !strings.Contains(out, want) {
			t.Errorf("log %q lacks %q", out, want)
		}
	}
	if strings.Contains(out, "hidden") {
		t.Errorf("debug record passed an info handler: %q", out)
	}
	if h.IsDebug() || !h.IsInfo() || h.GetLevel() != hclog.Info {
		t.Errorf("levels: IsDebug=%v IsInfo=%v GetLevel=%v", h.IsDebug(), h.IsInfo(), h.GetLevel())
	}
	if h.Name() != "raft.snap" || len(h.ImpliedArgs()) != 2 {
		t.Errorf("Name=%q ImpliedArgs=%v", h.Name(), h.ImpliedArgs())
	}
}
