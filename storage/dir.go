// Package storage owns a node's data directory: its layout, the exclusive
// lock, the node id, and for every Raft group the log and stable store
// (raft-boltdb/v2) and the snapshot store. See DESIGN.md for the layout and
// the durability promise.
package storage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// Sentinel errors. Callers match them with errors.Is; the returned errors
// wrap them with the path or names involved.
var (
	// ErrLocked means another process (or another Dir in this process) holds
	// the data directory's lock.
	ErrLocked = errors.New("storage: data directory is locked by another process")
	// ErrNodeIDMismatch means the data directory belongs to a different node id.
	ErrNodeIDMismatch = errors.New("storage: data directory belongs to another node id")
	// ErrNoNodeID means no node id is on disk and no fallback was given.
	ErrNoNodeID = errors.New("storage: no node id on disk and none given")
	// ErrGroupMismatch means a group's directory holds a different group,
	// typically a queue deleted and re-created under the same name with a new
	// id. The caller removes the old group (RemoveGroup) and opens again.
	ErrGroupMismatch = errors.New("storage: group directory holds another group")
	// ErrGroupOpen means the group is already open in this Dir (OpenGroup) or
	// is still open (RemoveGroup).
	ErrGroupOpen = errors.New("storage: group is open")
	// ErrInvalidGroup means a GroupName is malformed: a queue name that is
	// empty, ".", "..", contains a path separator or NUL, or is too long.
	ErrInvalidGroup = errors.New("storage: invalid group name")
	// ErrClosed means the Dir has been closed.
	ErrClosed = errors.New("storage: data directory is closed")
)

// Names of the entries at the top of a data directory.
const (
	lockFile      = "LOCK"
	nodeIDFile    = "node-id"
	instanceFile  = "instance"
	probeFile     = ".probe"
	trashDir      = ".trash"
	controllerDir = "controller"
	partitionsDir = "partitions"
)

// Dir is an opened data directory. It holds an exclusive flock on
// <dir>/LOCK from Open until Close, so two processes never share a data
// directory. A Dir is safe for concurrent use.
type Dir struct {
	path string

	mu     sync.Mutex // guards the fields below and serialises directory changes
	lock   *os.File   // nil once closed
	groups map[GroupName]struct{}
}

// Open opens the data directory at path, creating it (mode 0700) if missing.
// It takes an exclusive lock (a second Open of the same directory, from any
// process, fails with an error wrapping ErrLocked until Close), checks that
// the directory is writable by writing, fsyncing and removing a probe file,
// and empties the trash left by a RemoveGroup that crashed midway.
func Open(path string) (*Dir, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("storage: data directory %q: %w", path, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("storage: create data directory: %w", err)
	}
	lf, err := os.OpenFile(filepath.Join(abs, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("storage: open lock file: %w", err)
	}
	if err := lockExclusive(lf); err != nil {
		holder := readLockHolder(lf)
		_ = lf.Close()
		if errors.Is(err, errWouldBlock) {
			return nil, fmt.Errorf("%w: %s%s", ErrLocked, abs, holder)
		}
		return nil, fmt.Errorf("storage: lock %s: %w", abs, err)
	}
	// The pid is only a hint for the operator reading a "locked" error; the
	// flock is what excludes.
	if err := lf.Truncate(0); err == nil {
		_, _ = lf.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	d := &Dir{path: abs, lock: lf, groups: make(map[GroupName]struct{})}
	if err := d.probe(); err != nil {
		_ = d.Close()
		return nil, err
	}
	if err := os.RemoveAll(filepath.Join(abs, trashDir)); err != nil {
		_ = d.Close()
		return nil, fmt.Errorf("storage: empty trash: %w", err)
	}
	return d, nil
}

// readLockHolder returns ", held by pid N" from the lock file, or "".
func readLockHolder(lf *os.File) string {
	buf := make([]byte, 32)
	n, _ := lf.ReadAt(buf, 0)
	if pid := strings.TrimSpace(string(buf[:n])); pid != "" {
		return " (held by pid " + pid + ")"
	}
	return ""
}

// probe proves the directory is writable and fsync works: a read-only
// mount or a full disk fails here at start-up instead of at the first
// Raft append.
func (d *Dir) probe() error {
	p := filepath.Join(d.path, probeFile)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("storage: data directory not writable: %w", err)
	}
	_, werr := f.Write([]byte("quorumq write probe\n"))
	serr := f.Sync()
	cerr := f.Close()
	rerr := os.Remove(p)
	if err := errors.Join(werr, serr, cerr, rerr); err != nil {
		return fmt.Errorf("storage: data directory not writable: %w", err)
	}
	return nil
}

// Path returns the absolute path of the data directory.
func (d *Dir) Path() string { return d.path }

// Close releases the lock. Close every GroupStore first: Close still
// releases the lock when groups are open, but reports them as an error
// wrapping ErrGroupOpen. Closing a closed Dir returns nil.
func (d *Dir) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lock == nil {
		return nil
	}
	var errs []error
	if n := len(d.groups); n > 0 {
		errs = append(errs, fmt.Errorf("%w: %d group(s) still open at Close", ErrGroupOpen, n))
	}
	// Closing the descriptor releases the flock.
	errs = append(errs, d.lock.Close())
	d.lock = nil
	return errors.Join(errs...)
}

// NodeID returns the node id stored in <dir>/node-id. If there is none, it
// stores fallback (atomically: temp file, fsync, rename, fsync directory)
// and returns it; with no file and an empty fallback it returns ErrNoNodeID.
// A data directory belongs to one node forever: if the file exists and
// fallback is non-empty and different, NodeID returns an error wrapping
// ErrNodeIDMismatch. fallback must not contain whitespace.
func (d *Dir) NodeID(fallback string) (string, error) {
	if strings.ContainsFunc(fallback, isSpaceOrControl) {
		return "", fmt.Errorf("storage: node id %q contains whitespace or control characters", fallback)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lock == nil {
		return "", ErrClosed
	}
	p := filepath.Join(d.path, nodeIDFile)
	b, err := os.ReadFile(p)
	switch {
	case err == nil:
		id := strings.TrimSpace(string(b))
		if id == "" || strings.ContainsFunc(id, isSpaceOrControl) {
			return "", fmt.Errorf("storage: %s is corrupt: %q", p, b)
		}
		if fallback != "" && fallback != id {
			return "", fmt.Errorf("%w: %s holds %q, configured %q", ErrNodeIDMismatch, p, id, fallback)
		}
		return id, nil
	case errors.Is(err, os.ErrNotExist):
		if fallback == "" {
			return "", ErrNoNodeID
		}
		if err := writeFileAtomic(p, []byte(fallback+"\n")); err != nil {
			return "", fmt.Errorf("storage: persist node id: %w", err)
		}
		return fallback, nil
	default:
		return "", fmt.Errorf("storage: read node id: %w", err)
	}
}

func isSpaceOrControl(r rune) bool {
	return r <= ' ' || r == 0x7f || r == '\u0085' || r == '\u00a0' || r == '\u2028' || r == '\u2029'
}

// FreeBytes returns the bytes available to this (unprivileged) process on
// the file system that holds the data directory.
func (d *Dir) FreeBytes() (uint64, error) {
	n, err := freeBytes(d.path)
	if err != nil {
		return 0, fmt.Errorf("storage: statfs %s: %w", d.path, err)
	}
	return n, nil
}

// writeFileAtomic replaces path with data so that a crash leaves either the
// old or the new content, never a mix: write <path>.tmp, fsync it, rename it
// over path, fsync the directory. Callers hold d.mu, so the fixed temp name
// has no concurrent writer (the flock excludes other processes); a temp file
// left by a crash is simply overwritten next time.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, werr := f.Write(data)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(path))
}

// syncDir fsyncs a directory so that entries created, renamed or removed in
// it survive a crash.
func syncDir(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	serr := f.Sync()
	return errors.Join(serr, f.Close())
}

// mkdirAllSync is os.MkdirAll (mode 0700) that also fsyncs the parent of
// every directory it creates, so a new group's directory cannot vanish in a
// crash after Raft has written into it. It reports whether path was created.
func mkdirAllSync(path string) (bool, error) {
	fi, err := os.Stat(path)
	if err == nil {
		if !fi.IsDir() {
			return false, fmt.Errorf("%s exists and is not a directory", path)
		}
		return false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	parent := filepath.Dir(path)
	if parent != path {
		if _, err := mkdirAllSync(parent); err != nil {
			return false, err
		}
	}
	if err := os.Mkdir(path, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return false, nil
		}
		return false, err
	}
	return true, syncDir(parent)
}
