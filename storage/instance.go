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
// first time (created is then true). It changes only when the directory is
// wiped, or by RotateInstance: a node that comes back under its old node id
// with another instance has lost its data, and the cluster must not count
// it as a replica it was.
func (d *Dir) Instance() (id string, created bool, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lock == nil {
		return "", false, ErrClosed
	}
	p := filepath.Join(d.path, instanceFile)
	b, err := os.ReadFile(p)
	switch {
	case err == nil:
		id := strings.TrimSpace(string(b))
		if len(id) != 32 {
			return "", false, fmt.Errorf("storage: %s is corrupt: %q", p, b)
		}
		return id, false, nil
	case errors.Is(err, os.ErrNotExist):
		id, err := d.newInstance()
		return id, err == nil, err
	default:
		return "", false, fmt.Errorf("storage: read instance: %w", err)
	}
}

// RotateInstance gives the directory a new instance id, for a node that
// found part of its state gone: the cluster then treats all of it as lost
// and replaces every replica the node held.
func (d *Dir) RotateInstance() (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lock == nil {
		return "", ErrClosed
	}
	return d.newInstance()
}

// newInstance writes a new random instance id; d.mu is held.
func (d *Dir) newInstance() (string, error) {
	var r [16]byte
	_, _ = rand.Read(r[:])
	id := hex.EncodeToString(r[:])
	if err := writeFileAtomic(filepath.Join(d.path, instanceFile), []byte(id+"\n")); err != nil {
		return "", fmt.Errorf("storage: persist instance: %w", err)
	}
	return id, nil
}
