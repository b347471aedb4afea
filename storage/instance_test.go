package storage

import (
	"os"
	"path/filepath"
	"testing"
)

// The instance survives a reopen and changes when the directory is wiped.
func TestInstance(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data")
	d := mustOpen(t, path)
	a, err := d.Instance()
	if err != nil || len(a) != 32 {
		t.Fatalf("Instance() = %q, %v", a, err)
	}
	d.Close()
	d = mustOpen(t, path)
	if b, err := d.Instance(); err != nil || b != a {
		t.Fatalf("after reopen Instance() = %q, %v; want %q", b, err, a)
	}
	d.Close()
	if err := os.RemoveAll(path); err != nil {
		t.Fatal(err)
	}
	d = mustOpen(t, path)
	defer d.Close()
	if c, err := d.Instance(); err != nil || c == a {
		t.Fatalf("after a wipe Instance() = %q, %v; want a new one", c, err)
	}
	if err := os.WriteFile(filepath.Join(path, instanceFile), []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Instance(); err == nil {
		t.Fatal("a corrupt instance file was accepted")
	}
}
