// Package lazyfs is a FUSE filesystem for tests that loses the writes a
// program did not fsync, as a power loss would. It is the idea of LazyFS
// (github.com/dsrhaslab/lazyfs), which etcd's robustness tests put under
// a member's data directory.
//
// Mount shows a backing directory at a mount point and passes every
// operation through to it at once, except file data. A write to a file
// goes into an in-memory overlay of dirty ranges for that file (one per
// inode, shared by every descriptor and hard link); a read sees the
// overlay over the backing file; the file is as long as the longer of
// the two. Only fsync or fdatasync of the file writes its dirty ranges to
// the backing file (and fsyncs that). close does not: as the page cache
// of a machine that has not crashed, the overlay outlives the process
// that wrote it, and a process killed and started again reads its
// unsynced writes back. Crash is the power loss: every overlay is thrown
// away, and the backing directory holds exactly what was fsynced, plus
// every metadata operation.
//
// Metadata operations are not cached (LazyFS's default too): create,
// mkdir, mknod, symlink, link, rename, unlink, rmdir, setattr (mode,
// owner, times, and size: truncate and ftruncate cut the backing file and
// the overlay alike), fallocate (only modes that change no data) and
// xattrs reach the backing directory at once and survive Crash. A file
// created and written without fsync is therefore there after a crash,
// with the length a truncate or fallocate gave it and none of the data;
// a rename of a file whose data was not synced keeps the new name and
// loses the data, which is what ext4 without auto_da_alloc can do.
//
// The kernel's page cache stays on (there is no writeback cache: every
// write reaches the overlay at once). A read the cache cannot serve,
// through read(2) or a page fault of an mmap, comes to the overlay; what
// the cache holds was written through it or read from it. The cache dies
// with the mount, so after Crash and Mount again a reader sees the
// backing files only. This keeps bbolt's shared read-only mmap working.
//
// Limits: open with O_TMPFILE fails with EOPNOTSUPP; copy_file_range
// answers EOPNOTSUPP, and the kernel falls back to reading and writing;
// fallocate that punches, zeroes, collapses or inserts fails with
// EOPNOTSUPP. Reordering or tearing of synced writes is not simulated,
// nor a crash in the middle of an fsync. Mounting needs root, /dev/fuse
// and fusermount3 (the tests skip without them, see Available).
package lazyfs

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// FS is one mounted lazyfs. Its methods are safe for concurrent use.
type FS struct {
	backing, mountpoint string
	server              *fuse.Server
	served              chan struct{} // closed once the server's loop has ended

	// crashed is set first thing by Crash: every file operation that
	// takes a file's lock afterwards fails with EIO, so no write or sync
	// lands once Crash has begun.
	crashed atomic.Bool
	synced  atomic.Int64

	mu        sync.Mutex // guards the fields below; taken before any file's mu
	files     map[fileKey]*file
	dropped   int64
	unmounted bool
}

// fileKey is a backing inode: go-fuse's inode number and generation (the
// backing file's birth time), so a reused inode number is another key.
type fileKey struct{ ino, gen uint64 }

// file is the state of one backing inode with an open or dirty past.
type file struct {
	mu    sync.RWMutex // guards ov, and the backing file's size and data against a sync half done
	ov    overlay
	opens int // handles open on it; guarded by FS.mu
}

// Stats are an FS's counts of file data.
type Stats struct {
	Dirty   int64 // bytes written and not synced, now
	Synced  int64 // bytes written to backing files by fsync since Mount
	Dropped int64 // bytes Crash threw away (0 before Crash)
}

// ErrUnavailable says the machine cannot mount a lazyfs: not root, no
// /dev/fuse, no fusermount3, or the mount refused. Tests skip on it.
var ErrUnavailable = errors.New("lazyfs: FUSE unavailable")

// Available returns an error wrapping ErrUnavailable if lazyfs cannot
// mount on this machine, else nil: it needs root, /dev/fuse and
// fusermount3.
func Available() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: needs root (euid is %d)", ErrUnavailable, os.Geteuid())
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if _, err := exec.LookPath("fusermount3"); err != nil {
		return fmt.Errorf("%w: no fusermount3 (apt-get install fuse3): %v", ErrUnavailable, err)
	}
	return nil
}

// Mount mounts a lazyfs of backing at mountpoint, creating both
// directories if they are missing. Unmount or Crash it, also when a test
// fails. An error wrapping ErrUnavailable says the machine cannot.
func Mount(backing, mountpoint string) (*FS, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	for _, d := range []string{backing, mountpoint} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	root, err := fs.NewLoopbackRoot(backing)
	if err != nil {
		return nil, err
	}
	f := &FS{backing: backing, mountpoint: mountpoint, served: make(chan struct{}), files: map[fileKey]*file{}}
	lb := root.(*fs.LoopbackNode)
	rn := &node{LoopbackNode: lb, fs: f}
	lb.RootData.RootNode = rn
	opts := &fs.Options{MountOptions: fuse.MountOptions{
		FsName: backing,
		Name:   "lazyfs",
		// Passthrough would hand the kernel the backing file's
		// descriptor, and its reads and writes would bypass the
		// overlay. (lazyfs's handles do not offer one; this says so
		// twice.)
		DisabledCapabilities: fuse.CAP_PASSTHROUGH | fuse.CAP_WRITEBACK_CACHE,
	}}
	server, err := fuse.NewServer(fs.NewNodeFS(rn, opts), mountpoint, &opts.MountOptions)
	if err != nil {
		return nil, fmt.Errorf("%w: mount %s: %v", ErrUnavailable, mountpoint, err)
	}
	f.server = server
	go func() {
		server.Serve()
		close(f.served)
	}()
	if err := server.WaitMount(); err != nil {
		f.unmount(true)
		return nil, fmt.Errorf("lazyfs: mount %s: %w", mountpoint, err)
	}
	return f, nil
}

// Backing is the backing directory.
func (f *FS) Backing() string { return f.backing }

// Mountpoint is where the FS is mounted.
func (f *FS) Mountpoint() string { return f.mountpoint }

// Stats returns the FS's counts.
func (f *FS) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := Stats{Synced: f.synced.Load(), Dropped: f.dropped}
	for _, fl := range f.files {
		fl.mu.RLock()
		s.Dirty += fl.ov.bytes()
		fl.mu.RUnlock()
	}
	return s
}

// Crash is a power loss: it throws away every byte not fsynced and
// unmounts at once, busy or not. A process that still has a file open
// there gets ENOTCONN from then on (it is meant to be dead already: kill
// it first). The backing directory is then what a machine would find on
// its disk when it boots again; Mount it again to go on.
func (f *FS) Crash() error {
	f.crashed.Store(true)
	f.mu.Lock()
	var dropped int64
	for _, fl := range f.files {
		fl.mu.Lock()
		dropped += fl.ov.bytes()
		fl.ov.reset()
		fl.mu.Unlock()
	}
	f.dropped = dropped
	f.files = map[fileKey]*file{}
	f.mu.Unlock()
	return f.unmount(true)
}

// Unmount unmounts the FS. It flushes nothing: a test layer, it drops
// unsynced data as Crash does (a test that wants it kept syncs it). A
// mount still in use is detached anyway, its open files cut off, and
// Unmount reports that as an error. Unmounting twice, or after Crash, is
// a no-op.
func (f *FS) Unmount() error { return f.unmount(false) }

// unmount aborts the FUSE connection and unmounts, then waits for the
// server's loop to end. MNT_FORCE is what aborts the connection (FUSE's
// umount_begin), also when the mount is busy, and that is why it is used
// for a clean unmount too: the mount point may have been copied into
// another mount namespace (every `ip netns exec` copies the whole tree),
// and a plain unmount would leave that copy, and the server, alive.
func (f *FS) unmount(crash bool) error {
	f.mu.Lock()
	if f.unmounted {
		f.mu.Unlock()
		return nil
	}
	f.unmounted = true
	f.mu.Unlock()
	var busy error
	flags := unix.MNT_FORCE
	if crash {
		flags |= unix.MNT_DETACH
	}
	err := unix.Unmount(f.mountpoint, flags)
	if errors.Is(err, unix.EBUSY) {
		busy = err
		err = unix.Unmount(f.mountpoint, unix.MNT_DETACH)
	}
	if err != nil {
		return fmt.Errorf("lazyfs: unmount %s: %w", f.mountpoint, err)
	}
	select {
	case <-f.served:
	case <-time.After(30 * time.Second):
		return fmt.Errorf("lazyfs: %s unmounted, but its server did not stop in 30s", f.mountpoint)
	}
	if busy != nil {
		return fmt.Errorf("lazyfs: %s was busy (%v): detached, its open files cut off", f.mountpoint, busy)
	}
	return nil
}

// file returns key's state, creating it.
func (f *FS) file(key fileKey) *file {
	f.mu.Lock()
	defer f.mu.Unlock()
	fl := f.files[key]
	if fl == nil {
		fl = &file{}
		f.files[key] = fl
	}
	return fl
}

// peek returns key's state, or nil.
func (f *FS) peek(key fileKey) *file {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.files[key]
}

// open counts a handle opened on key.
func (f *FS) open(key fileKey) *file {
	f.mu.Lock()
	defer f.mu.Unlock()
	fl := f.files[key]
	if fl == nil {
		fl = &file{}
		f.files[key] = fl
	}
	fl.opens++
	return fl
}

// release counts a handle closed. With the last one, the file's state
// goes if gone says the backing file has no name left. gone runs under
// f.mu, as removed does: an unlink is then seen by one of the two, the
// unlink's own removed or the release that follows it.
func (f *FS) release(key fileKey, fl *file, gone func() bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fl.opens--
	if fl.opens == 0 && f.files[key] == fl && gone() {
		delete(f.files, key)
	}
}

// removed forgets key's state when a backing file lost its last name,
// unless a handle still has it open (release forgets it then).
func (f *FS) removed(key fileKey) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fl := f.files[key]; fl != nil && fl.opens == 0 {
		delete(f.files, key)
	}
}
