package lazyfs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// fsyncDatasync is FUSE_FSYNC_FDATASYNC: the fsync is an fdatasync.
const fsyncDatasync = 1

// handle is an open regular file. It offers only what it does itself:
// no passthrough descriptor, no Lseek (the kernel's own, which takes the
// whole file for data), no locks (the kernel keeps them, for this mount).
// Getattr, Statx and Setattr are the node's, which uses lf.
type handle struct {
	lf   *gofs.LoopbackFile // the backing file, opened by the loopback
	fd   int                // lf's descriptor
	node *node
	key  fileKey
	file *file
}

var (
	_ gofs.FileReader    = (*handle)(nil)
	_ gofs.FileWriter    = (*handle)(nil)
	_ gofs.FileWritever  = (*handle)(nil)
	_ gofs.FileFsyncer   = (*handle)(nil)
	_ gofs.FileFlusher   = (*handle)(nil)
	_ gofs.FileReleaser  = (*handle)(nil)
	_ gofs.FileAllocater = (*handle)(nil)
)

// Read reads the backing file and lays the overlay over it; past the
// backing file's end, up to the overlay's, the file reads as zeros.
func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h.file.mu.RLock()
	defer h.file.mu.RUnlock()
	if h.node.fs.crashed.Load() {
		return nil, syscall.EIO
	}
	var st unix.Stat_t
	if err := unix.Fstat(h.fd, &st); err != nil {
		return nil, gofs.ToErrno(err)
	}
	size := max(st.Size, h.file.ov.end())
	if off >= size {
		return fuse.ReadResultData(nil), 0
	}
	buf := dest[:min(int64(len(dest)), size-off)]
	got := 0
	for got < len(buf) {
		n, err := unix.Pread(h.fd, buf[got:], off+int64(got))
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, gofs.ToErrno(err)
		}
		if n == 0 {
			break
		}
		got += n
	}
	clear(buf[got:])
	h.file.ov.readAt(buf, off)
	return fuse.ReadResultData(buf), 0
}

// Write puts data in the overlay; nothing reaches the backing file.
func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	h.file.mu.Lock()
	defer h.file.mu.Unlock()
	if h.node.fs.crashed.Load() {
		return 0, syscall.EIO
	}
	h.file.ov.write(off, data)
	return uint32(len(data)), 0
}

func (h *handle) Writev(ctx context.Context, data [][]byte, off int64) (uint32, syscall.Errno) {
	var n uint32
	for _, p := range data {
		w, errno := h.Write(ctx, p, off+int64(n))
		n += w
		if errno != 0 {
			return n, errno
		}
	}
	return n, 0
}

// Fsync writes the file's dirty ranges (whichever handle wrote them) to
// the backing file and fsyncs it (fdatasync for an fdatasync). Only then
// does the overlay let go of them.
func (h *handle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	h.file.mu.Lock()
	defer h.file.mu.Unlock()
	if h.node.fs.crashed.Load() {
		return syscall.EIO
	}
	for _, e := range h.file.ov.ext {
		for p, off := e.data, e.off; len(p) > 0; {
			n, err := unix.Pwrite(h.fd, p, off)
			if err == syscall.EINTR {
				continue
			}
			if err != nil {
				return gofs.ToErrno(err)
			}
			p, off = p[n:], off+int64(n)
		}
	}
	var err error
	if flags&fsyncDatasync != 0 {
		err = unix.Fdatasync(h.fd)
	} else {
		err = unix.Fsync(h.fd)
	}
	if err != nil {
		return gofs.ToErrno(err)
	}
	h.node.fs.synced.Add(h.file.ov.bytes())
	h.file.ov.reset()
	return 0
}

// Flush (every close(2)) persists nothing: the overlay outlives the
// descriptor, as the page cache does.
func (h *handle) Flush(ctx context.Context) syscall.Errno { return 0 }

func (h *handle) Release(ctx context.Context) syscall.Errno {
	h.node.fs.release(h.key, h.file, func() bool {
		var st unix.Stat_t
		return unix.Fstat(h.fd, &st) == nil && st.Nlink == 0
	})
	return h.lf.Release(ctx)
}

// Allocate passes through the modes that change no data (0 and
// KEEP_SIZE): they reserve blocks, and mode 0 may lengthen the backing
// file, which the overlay reads as zeros anyway. The others would change
// data under the overlay.
func (h *handle) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	if mode&^unix.FALLOC_FL_KEEP_SIZE != 0 {
		return syscall.EOPNOTSUPP
	}
	h.file.mu.Lock()
	defer h.file.mu.Unlock()
	if h.node.fs.crashed.Load() {
		return syscall.EIO
	}
	return h.lf.Allocate(ctx, off, size, mode)
}
