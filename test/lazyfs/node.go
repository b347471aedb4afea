package lazyfs

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// node is go-fuse's loopback node with file data routed through the
// overlay: opens hand out handles that write into it, and every answer
// that carries a file's size carries the overlay's too. Whatever node does
// not override (directories, links, renames, xattrs) is the loopback's,
// straight to the backing directory.
type node struct {
	*gofs.LoopbackNode
	fs *FS
}

var (
	_ gofs.NodeWrapChilder    = (*node)(nil)
	_ gofs.NodeLookuper       = (*node)(nil)
	_ gofs.NodeOpener         = (*node)(nil)
	_ gofs.NodeCreater        = (*node)(nil)
	_ gofs.NodeTmpfiler       = (*node)(nil)
	_ gofs.NodeGetattrer      = (*node)(nil)
	_ gofs.NodeStatxer        = (*node)(nil)
	_ gofs.NodeSetattrer      = (*node)(nil)
	_ gofs.NodeLinker         = (*node)(nil)
	_ gofs.NodeUnlinker       = (*node)(nil)
	_ gofs.NodeRenamer        = (*node)(nil)
	_ gofs.NodeCopyFileRanger = (*node)(nil)
)

// WrapChild makes every node below the root a lazyfs node.
func (n *node) WrapChild(ctx context.Context, ops gofs.InodeEmbedder) gofs.InodeEmbedder {
	return &node{LoopbackNode: ops.(*gofs.LoopbackNode), fs: n.fs}
}

func (n *node) key() fileKey {
	a := n.StableAttr()
	return fileKey{ino: a.Ino, gen: a.Gen}
}

func (n *node) regular() bool { return n.StableAttr().Mode&syscall.S_IFMT == syscall.S_IFREG }

// backingPath is the node's path in the backing directory.
func (n *node) backingPath() string {
	return filepath.Join(n.RootData.Path, n.Path(n.Root()))
}

// sized runs stat, which sets *size to the backing file's size, and
// raises *size to the overlay's end. Both under the file's read lock: an
// fsync half done (data written to the backing file, not yet dropped from
// the overlay, or the other way round) is never seen.
func (n *node) sized(size *uint64, stat func() syscall.Errno) syscall.Errno {
	fl := n.fs.peek(n.key())
	if fl == nil {
		return stat()
	}
	fl.mu.RLock()
	defer fl.mu.RUnlock()
	if errno := stat(); errno != 0 {
		return errno
	}
	*size = max(*size, uint64(fl.ov.end()))
	return 0
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	ch, errno := n.LoopbackNode.Lookup(ctx, name, out)
	if errno != 0 {
		return nil, errno
	}
	return ch, childSized(ch, filepath.Join(n.backingPath(), name), &out.Attr)
}

// childSized gives a regular file's entry the size the overlay says,
// stat'ing it again by path under the file's lock.
func childSized(ch *gofs.Inode, path string, attr *fuse.Attr) syscall.Errno {
	cn, ok := ch.Operations().(*node)
	if !ok || !cn.regular() {
		return 0
	}
	return cn.sized(&attr.Size, func() syscall.Errno {
		var st syscall.Stat_t
		if err := syscall.Lstat(path, &st); err != nil {
			return gofs.ToErrno(err)
		}
		attr.Size = uint64(st.Size)
		return 0
	})
}

// rw opens with O_RDWR whatever the caller asked for, falling back to its
// own flags: fsync must be able to write a file's overlay through any
// handle, a read-only one included (the kernel checks the caller's
// access mode itself).
func rw(flags uint32, open func(uint32) syscall.Errno) syscall.Errno {
	errno := open(flags&^syscall.O_ACCMODE | syscall.O_RDWR)
	switch errno {
	case syscall.EACCES, syscall.EPERM, syscall.EROFS, syscall.ETXTBSY:
		return open(flags)
	}
	return errno
}

func (n *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if n.fs.crashed.Load() {
		return nil, 0, syscall.EIO
	}
	if !n.regular() {
		return n.LoopbackNode.Open(ctx, flags)
	}
	var fh gofs.FileHandle
	var fuseFlags uint32
	errno := rw(flags, func(fl uint32) (errno syscall.Errno) {
		fh, fuseFlags, errno = n.LoopbackNode.Open(ctx, fl)
		return errno
	})
	if errno != 0 {
		return nil, 0, errno
	}
	h, errno := n.handle(fh)
	if errno != 0 {
		return nil, 0, errno
	}
	if flags&syscall.O_TRUNC != 0 {
		// The open truncated the backing file. (The kernel truncates
		// with a setattr of its own before the open, as go-fuse does
		// not ask for atomic O_TRUNC; this is in case it ever does.)
		h.file.mu.Lock()
		h.file.ov.truncate(0)
		h.file.mu.Unlock()
	}
	return h, fuseFlags, 0
}

func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	if n.fs.crashed.Load() {
		return nil, nil, 0, syscall.EIO
	}
	p := filepath.Join(n.backingPath(), name)
	_, err := os.Lstat(p)
	fresh := errors.Is(err, fs.ErrNotExist)
	var ch *gofs.Inode
	var fh gofs.FileHandle
	var fuseFlags uint32
	errno := rw(flags, func(fl uint32) (errno syscall.Errno) {
		ch, fh, fuseFlags, errno = n.LoopbackNode.Create(ctx, name, fl, mode, out)
		return errno
	})
	if errno != 0 {
		return nil, nil, 0, errno
	}
	cn, ok := ch.Operations().(*node)
	if !ok {
		if r, ok := fh.(gofs.FileReleaser); ok {
			r.Release(ctx)
		}
		return nil, nil, 0, syscall.EIO
	}
	h, errno := cn.handle(fh)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	if fresh || flags&syscall.O_TRUNC != 0 {
		// A new file has no unsynced past, whatever an older file of
		// the same inode number left behind.
		h.file.mu.Lock()
		h.file.ov.truncate(0)
		h.file.mu.Unlock()
	}
	if errno := childSized(ch, p, &out.Attr); errno != 0 {
		h.Release(ctx)
		return nil, nil, 0, errno
	}
	return ch, h, fuseFlags, 0
}

// handle wraps the loopback's handle of an open regular file.
func (n *node) handle(fh gofs.FileHandle) (*handle, syscall.Errno) {
	lf, ok := fh.(*gofs.LoopbackFile)
	if !ok {
		return nil, syscall.EIO
	}
	// The loopback file's descriptor, for pread and pwrite: it lives
	// until lf.Release, which the kernel sends after the handle's last
	// operation. (PassthroughFd is the one way go-fuse gives it out;
	// passthrough itself is off.)
	fd, ok := lf.PassthroughFd()
	if !ok {
		lf.Release(context.Background())
		return nil, syscall.EBADF
	}
	return &handle{lf: lf, fd: fd, node: n, key: n.key(), file: n.fs.open(n.key())}, 0
}

// Tmpfile is refused: an O_TMPFILE file has no name the loopback could
// reopen, and nothing under test needs one.
func (n *node) Tmpfile(ctx context.Context, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EOPNOTSUPP
}

// CopyFileRange is refused, so the kernel copies by reading and writing,
// through the overlay.
func (n *node) CopyFileRange(ctx context.Context, fhIn gofs.FileHandle, offIn uint64, out *gofs.Inode, fhOut gofs.FileHandle, offOut uint64, len uint64, flags uint64) (uint32, syscall.Errno) {
	return 0, syscall.EOPNOTSUPP
}

func (n *node) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if !n.regular() {
		return n.LoopbackNode.Getattr(ctx, f, out)
	}
	return n.sized(&out.Size, func() syscall.Errno {
		if h, ok := f.(*handle); ok {
			return h.lf.Getattr(ctx, out)
		}
		return n.LoopbackNode.Getattr(ctx, nil, out)
	})
}

func (n *node) Statx(ctx context.Context, f gofs.FileHandle, flags uint32, mask uint32, out *fuse.StatxOut) syscall.Errno {
	if !n.regular() {
		return n.LoopbackNode.Statx(ctx, f, flags, mask, out)
	}
	return n.sized(&out.Size, func() syscall.Errno {
		if h, ok := f.(*handle); ok {
			return h.lf.Statx(ctx, flags, mask, out)
		}
		return n.LoopbackNode.Statx(ctx, nil, flags, mask, out)
	})
}

// Setattr truncates the backing file and the overlay together, then
// passes the rest (mode, owner, times) through.
func (n *node) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	h, _ := f.(*handle)
	if sz, ok := in.GetSize(); ok && n.regular() {
		fl := n.fs.file(n.key())
		fl.mu.Lock()
		var err error
		switch {
		case n.fs.crashed.Load():
			err = syscall.EIO
		case h != nil:
			err = unix.Ftruncate(h.fd, int64(sz))
		default:
			err = unix.Truncate(n.backingPath(), int64(sz))
		}
		if err == nil {
			fl.ov.truncate(int64(sz))
		}
		fl.mu.Unlock()
		if err != nil {
			return gofs.ToErrno(err)
		}
		rest := *in
		rest.Valid &^= fuse.FATTR_SIZE
		in = &rest
	}
	var errno syscall.Errno
	if h != nil {
		errno = h.lf.Setattr(ctx, in, out)
	} else {
		errno = n.LoopbackNode.Setattr(ctx, f, in, out)
	}
	if errno != 0 || !n.regular() {
		return errno
	}
	return n.Getattr(ctx, f, out)
}

func (n *node) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	ch, errno := n.LoopbackNode.Link(ctx, target, name, out)
	if errno != 0 {
		return nil, errno
	}
	return ch, childSized(ch, filepath.Join(n.backingPath(), name), &out.Attr)
}

// lastName returns the key of the regular file that name in n's backing
// directory is the last name of, if go-fuse knows it.
func (n *node) lastName(name string) (fileKey, bool) {
	ch := n.GetChild(name)
	if ch == nil {
		return fileKey{}, false
	}
	cn, ok := ch.Operations().(*node)
	if !ok || !cn.regular() {
		return fileKey{}, false
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(filepath.Join(n.backingPath(), name), &st); err != nil || st.Nlink > 1 {
		return fileKey{}, false
	}
	return cn.key(), true
}

// Unlink forgets the overlay of a file that loses its last name (a
// handle still open keeps it until released).
func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	key, last := n.lastName(name)
	errno := n.LoopbackNode.Unlink(ctx, name)
	if errno == 0 && last {
		n.fs.removed(key)
	}
	return errno
}

// Rename forgets the overlay of a file replaced by the rename, as
// Unlink does.
func (n *node) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	var key fileKey
	var last bool
	if np, ok := newParent.(*node); ok && flags&unix.RENAME_EXCHANGE == 0 {
		key, last = np.lastName(newName)
		if src := n.GetChild(name); src != nil && last {
			if sn, ok := src.Operations().(*node); ok && sn.key() == key {
				last = false // a rename onto another name of itself
			}
		}
	}
	errno := n.LoopbackNode.Rename(ctx, name, newParent, newName, flags)
	if errno == 0 && last {
		n.fs.removed(key)
	}
	return errno
}
