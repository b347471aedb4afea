//go:build unix

package storage

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

var errWouldBlock = errors.New("would block")

// lockExclusive takes a non-blocking exclusive flock on f. flock locks
// belong to the open file description, so a second Open in the same process
// is refused too, and the kernel releases the lock when the process dies.
func lockExclusive(f *os.File) error {
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EWOULDBLOCK):
			return errWouldBlock
		default:
			return err
		}
	}
}

func freeBytes(path string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, err
	}
	// The field types differ between OSes, hence the conversions.
	return uint64(st.Bavail) * uint64(st.Bsize), nil
}
