package storage

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Instance returns the random id of this data directory, creating it the
// first time. It changes only when the directory is wiped: a node that
// comes back under its old node id with another instance has lost its
// data, and the cluster must not count it as a replica it was.
func (d *Dir) Instance() (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lock == nil {
		return "", ErrClosed
	}
	p := filepath.Join(d.path, instanceFile)
	b, err := os.ReadFile(p)
	switch {
	case err == nil:
		id := strings.TrimSpace(string(b))
		if len(id) != 32 {
			return "", fmt.Errorf("storage: %s is corrupt: %q", p, b)
		}
		return id, nil
	case errors.Is(err, os.ErrNotExist):
		var r [16]byte
		_, _ = rand.Read(r[:])
		id := hex.EncodeToString(r[:])
		if err := writeFileAtomic(p, []byte(id+"\n")); err != nil {
			return "", fmt.Errorf("storage: persist instance: %w", err)
		}
		return id, nil
	default:
		return "", fmt.Errorf("storage: read instance: %w", err)
	}
}
