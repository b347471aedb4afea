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
	a, created, err := d.Instance()
	if err != nil || len(a) != 32 || !created {
		t.Fatalf("Instance() = %q, %v, %v", a, created, err)
	}
	d.Close()
	d = mustOpen(t, path)
	if b, created, err := d.Instance(); err != nil || b != a || created {
		t.Fatalf("after reopen Instance() = %q, %v, %v; want %q, not created", b, created, err, a)
	}
	r, err := d.RotateInstance()
	if err != nil || r == a || len(r) != 32 {
		t.Fatalf("RotateInstance() = %q, %v", r, err)
	}
	if b, created, err := d.Instance(); err != nil || b != r || created {
		t.Fatalf("after a rotation Instance() = %q, %v, %v; want %q", b, created, err, r)
	}
	d.Close()
	if err := os.RemoveAll(path); err != nil {
		t.Fatal(err)
	}
	d = mustOpen(t, path)
	defer d.Close()
	if c, _, err := d.Instance(); err != nil || c == a || c == r {
		t.Fatalf("after a wipe Instance() = %q, %v; want a new one", c, err)
	}
	if err := os.WriteFile(filepath.Join(path, instanceFile), []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := d.Instance(); err == nil {
		t.Fatal("a corrupt instance file was accepted")
	}
}
