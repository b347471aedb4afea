package lazyfs

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	bolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// The tests need root, /dev/fuse and fusermount3; without them they skip,
// unless QUORUMQ_FUSE_REQUIRED=1 (CI) makes that a failure.

func TestMain(m *testing.M) {
	if h := os.Getenv(helperEnv); h != "" {
		os.Exit(helper(h, os.Getenv(helperDirEnv)))
	}
	goleak.VerifyTestMain(m)
}

func requireFUSE(t *testing.T, err error) {
	t.Helper()
	if os.Getenv("QUORUMQ_FUSE_REQUIRED") == "1" {
		t.Fatalf("FUSE required (QUORUMQ_FUSE_REQUIRED=1): %v", err)
	}
	t.Skip(err)
}

// mount mounts a lazyfs over a fresh backing directory; it is unmounted
// when the test ends, also when it fails.
func mount(t *testing.T) (f *FS, backing, mnt string) {
	t.Helper()
	if err := Available(); err != nil {
		requireFUSE(t, err)
	}
	dir := t.TempDir()
	backing, mnt = filepath.Join(dir, "backing"), filepath.Join(dir, "mnt")
	return remount(t, backing, mnt), backing, mnt
}

// remount mounts a lazyfs of backing at mnt again (after Crash).
func remount(t *testing.T, backing, mnt string) *FS {
	t.Helper()
	f, err := Mount(backing, mnt)
	if errors.Is(err, ErrUnavailable) {
		requireFUSE(t, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Unmount(); err != nil {
			t.Error(err)
		}
	})
	return f
}

func crash(t *testing.T, f *FS) Stats {
	t.Helper()
	if err := f.Crash(); err != nil {
		t.Fatal(err)
	}
	return f.Stats()
}

func writeFile(t *testing.T, path string, data []byte, off int64, sync bool) {
	t.Helper()
	fd, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	if _, err := fd.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
	if sync {
		if err := fd.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	if err := fd.Close(); err != nil {
		t.Fatal(err)
	}
}

func wantFile(t *testing.T, path, want string) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("%s: %q, want %q", path, got, want)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != int64(len(want)) {
		t.Fatalf("%s: size %d, want %d", path, st.Size(), len(want))
	}
}

// TestUnsyncedWriteLost: a write closed without fsync is read back
// (through the mount, by a later open) but is gone after Crash; the file,
// created by a metadata operation, is there, empty.
func TestUnsyncedWriteLost(t *testing.T) {
	f, backing, mnt := mount(t)
	writeFile(t, filepath.Join(mnt, "a"), []byte("hello"), 0, false)
	wantFile(t, filepath.Join(mnt, "a"), "hello")
	wantFile(t, filepath.Join(backing, "a"), "")
	if s := f.Stats(); s.Dirty != 5 || s.Synced != 0 {
		t.Fatalf("stats %+v, want 5 dirty, none synced", s)
	}
	if s := crash(t, f); s.Dropped != 5 {
		t.Fatalf("stats %+v, want 5 dropped", s)
	}
	wantFile(t, filepath.Join(backing, "a"), "")
	// The mount is gone: the mount point is an empty directory again.
	if ents, err := os.ReadDir(mnt); err != nil || len(ents) != 0 {
		t.Fatalf("mount point after Crash: %v, %v", ents, err)
	}
}

// TestSyncedWriteKept: fsync makes a write survive Crash; what was written
// after the fsync does not.
func TestSyncedWriteKept(t *testing.T) {
	f, backing, mnt := mount(t)
	p := filepath.Join(mnt, "a")
	writeFile(t, p, []byte("synced"), 0, true)
	wantFile(t, filepath.Join(backing, "a"), "synced")
	writeFile(t, p, []byte("+more"), 6, false)
	wantFile(t, p, "synced+more")
	if s := crash(t, f); s.Synced != 6 || s.Dropped != 5 {
		t.Fatalf("stats %+v, want 6 synced, 5 dropped", s)
	}
	wantFile(t, filepath.Join(backing, "a"), "synced")
	remount(t, backing, mnt)
	wantFile(t, p, "synced")
}

// TestOverwriteLost: an unsynced overwrite of synced data is undone by
// Crash.
func TestOverwriteLost(t *testing.T) {
	f, backing, mnt := mount(t)
	p := filepath.Join(mnt, "a")
	writeFile(t, p, []byte("AAAAAAAA"), 0, true)
	writeFile(t, p, []byte("bb"), 2, false)
	wantFile(t, p, "AAbbAAAA")
	crash(t, f)
	wantFile(t, filepath.Join(backing, "a"), "AAAAAAAA")
}

// TestSyncThroughOtherHandle: fsync of any descriptor of the file, a
// read-only one included, persists every handle's writes.
func TestSyncThroughOtherHandle(t *testing.T) {
	f, backing, mnt := mount(t)
	p := filepath.Join(mnt, "a")
	writeFile(t, p, []byte("data"), 0, false)
	ro, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if err := ro.Sync(); err != nil {
		t.Fatal(err)
	}
	ro.Close()
	crash(t, f)
	wantFile(t, filepath.Join(backing, "a"), "data")
}

// TestTruncate: truncation cuts the overlay and the backing file alike,
// sizes agree for readers, and the gap a write leaves past the end reads
// as zeros.
func TestTruncate(t *testing.T) {
	f, backing, mnt := mount(t)
	p := filepath.Join(mnt, "a")
	writeFile(t, p, bytes.Repeat([]byte("s"), 100), 0, true)
	writeFile(t, p, bytes.Repeat([]byte("u"), 100), 100, false)
	if err := os.Truncate(p, 150); err != nil {
		t.Fatal(err)
	}
	wantFile(t, p, strings.Repeat("s", 100)+strings.Repeat("u", 50))
	fd, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	if err := fd.Truncate(50); err != nil {
		t.Fatal(err)
	}
	if _, err := fd.WriteAt([]byte("tail"), 80); err != nil {
		t.Fatal(err)
	}
	fd.Close()
	want := strings.Repeat("s", 50) + strings.Repeat("\x00", 30) + "tail"
	wantFile(t, p, want)
	// The truncation is metadata, through at once; the tail is not.
	crash(t, f)
	wantFile(t, filepath.Join(backing, "a"), strings.Repeat("s", 50))
}

// TestRenameWithoutSync: a file renamed into place without fsync keeps
// its name after Crash and loses its data; with fsync before the rename
// it keeps both.
func TestRenameWithoutSync(t *testing.T) {
	f, backing, mnt := mount(t)
	writeFile(t, filepath.Join(mnt, "tmp1"), []byte("lost"), 0, false)
	writeFile(t, filepath.Join(mnt, "tmp2"), []byte("kept"), 0, true)
	for _, r := range [][2]string{{"tmp1", "one"}, {"tmp2", "two"}} {
		if err := os.Rename(filepath.Join(mnt, r[0]), filepath.Join(mnt, r[1])); err != nil {
			t.Fatal(err)
		}
	}
	wantFile(t, filepath.Join(mnt, "one"), "lost")
	crash(t, f)
	wantFile(t, filepath.Join(backing, "one"), "")
	wantFile(t, filepath.Join(backing, "two"), "kept")
}

// TestUnlinkForgets: a removed file's unsynced data goes with it; a new
// file, whatever inode number it gets, starts empty.
func TestUnlinkForgets(t *testing.T) {
	f, _, mnt := mount(t)
	for i := range 20 {
		p := filepath.Join(mnt, fmt.Sprintf("f%d", i))
		writeFile(t, p, []byte("old data"), 0, false)
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		fd, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		fd.Close()
		wantFile(t, p, "")
		os.Remove(p)
	}
	// A handle's release reaches the server after close(2) returns:
	// the last removed file's data may take a moment to go.
	for deadline := time.Now().Add(5 * time.Second); f.Stats().Dirty != 0; {
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v: removed files still dirty", f.Stats())
		}
		time.Sleep(10 * time.Millisecond) // polling the server's state
	}
}

// TestMmapSeesOverlay: a shared read-only mapping, as bbolt makes, sees
// unsynced writes made with pwrite before and after it was mapped.
func TestMmapSeesOverlay(t *testing.T) {
	_, _, mnt := mount(t)
	p := filepath.Join(mnt, "a")
	fd, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	page := os.Getpagesize()
	if _, err := fd.WriteAt(bytes.Repeat([]byte("a"), 2*page), 0); err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(int(fd.Fd()), 0, 2*page, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	if m[0] != 'a' || m[2*page-1] != 'a' {
		t.Fatalf("mapping reads %q...%q, want a", m[0], m[2*page-1])
	}
	if _, err := fd.WriteAt([]byte("bb"), int64(page)-1); err != nil {
		t.Fatal(err)
	}
	if string(m[page-1:page+1]) != "bb" {
		t.Fatalf("mapping reads %q after pwrite, want bb", m[page-1:page+1])
	}
}

// TestBolt: a bbolt database on the mount, its process killed and the
// machine crashed: every transaction committed with fsync is there, the
// ones committed with NoSync are not, and the file is consistent.
func TestBolt(t *testing.T) {
	f, backing, _ := mount(t)
	runHelper(t, "bolt", f)
	s := crash(t, f)
	if s.Dropped == 0 {
		t.Fatalf("stats %+v: nothing unsynced dropped", s)
	}
	db, err := bolt.Open(filepath.Join(backing, "bolt.db"), 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() { // drained: its goroutine ends with the channel
			errs = append(errs, err)
		}
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
		b := tx.Bucket([]byte("b"))
		if b == nil {
			return errors.New("bucket missing")
		}
		for i := range helperKeys {
			if v := b.Get(fmt.Appendf(nil, "synced-%d", i)); string(v) != "v" {
				return fmt.Errorf("synced-%d: %q, want v", i, v)
			}
			if v := b.Get(fmt.Appendf(nil, "unsynced-%d", i)); v != nil {
				return fmt.Errorf("unsynced-%d survived the crash", i)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestPebble: a Pebble database on the mount, its process killed after
// synced and NoSync writes, the machine crashed: it opens again (on a new
// mount) and every synced write is there.
func TestPebble(t *testing.T) {
	f, backing, mnt := mount(t)
	runHelper(t, "pebble", f)
	s := crash(t, f)
	if s.Dropped == 0 {
		t.Fatalf("stats %+v: nothing unsynced dropped", s)
	}
	remount(t, backing, mnt)
	db, err := pebble.Open(filepath.Join(mnt, "pebble"), &pebble.Options{Logger: quiet{}})
	if err != nil {
		t.Fatal(err)
	}
	unsynced := 0
	for i := range helperKeys {
		v, closer, err := db.Get(fmt.Appendf(nil, "synced-%d", i))
		if err != nil {
			db.Close()
			t.Fatalf("synced-%d: %v", i, err)
		}
		closer.Close()
		if string(v) != "v" {
			t.Errorf("synced-%d: %q, want v", i, v)
		}
		if _, closer, err := db.Get(fmt.Appendf(nil, "unsynced-%d", i)); err == nil {
			unsynced++
			closer.Close()
		}
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if unsynced > 0 {
		t.Fatalf("%d of %d NoSync writes survived the crash", unsynced, helperKeys)
	}
}

type quiet struct{}

func (quiet) Infof(string, ...any)  {}
func (quiet) Errorf(string, ...any) {}
func (quiet) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf(format, args...))
}

// The helper process: the test binary again, run with helperEnv set. It
// writes a database in helperDirEnv, says "ready" and waits to be
// killed, as a node would be.
const (
	helperEnv    = "LAZYFS_TEST_HELPER"
	helperDirEnv = "LAZYFS_TEST_DIR"
	helperKeys   = 100
)

// runHelper runs helper kind on f's mount, waits until it is ready and
// some of its writes are in f unsynced, and kills it with SIGKILL.
func runHelper(t *testing.T, kind string, f *FS) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+kind, helperDirEnv+"="+f.Mountpoint())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if line != "ready\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("helper %s: %q, %v; stderr:\n%s", kind, line, err, stderr.String())
	}
	// Pebble writes its WAL from a goroutine of its own.
	for deadline := time.Now().Add(10 * time.Second); f.Stats().Dirty == 0; {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("helper %s: no unsynced write reached the mount in 10s", kind)
		}
		time.Sleep(10 * time.Millisecond) // polling the server's state
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
}

func helper(kind, dir string) int {
	var err error
	switch kind {
	case "bolt":
		err = helperBolt(dir)
	case "pebble":
		err = helperPebble(dir)
	default:
		err = fmt.Errorf("unknown helper %q", kind)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	time.Sleep(time.Hour) // until killed
	return 1
}

// helperBolt commits helperKeys transactions (bbolt fsyncs each), then as
// many without any fsync.
func helperBolt(dir string) error {
	db, err := bolt.Open(filepath.Join(dir, "bolt.db"), 0o600, nil)
	if err != nil {
		return err
	}
	put := func(prefix string) error {
		for i := range helperKeys {
			err := db.Update(func(tx *bolt.Tx) error {
				b, err := tx.CreateBucketIfNotExists([]byte("b"))
				if err != nil {
					return err
				}
				return b.Put(fmt.Appendf(nil, "%s-%d", prefix, i), []byte("v"))
			})
			if err != nil {
				return err
			}
		}
		return nil
	}
	if err := put("synced"); err != nil {
		return err
	}
	db.NoSync, db.NoGrowSync = true, true
	return put("unsynced")
}

// helperPebble sets helperKeys keys with pebble.Sync, then as many with
// pebble.NoSync, large enough to fill WAL blocks: pebble writes a full
// block to the file at once, and keeps a partial one in memory until a
// sync.
func helperPebble(dir string) error {
	db, err := pebble.Open(filepath.Join(dir, "pebble"), &pebble.Options{Logger: quiet{}})
	if err != nil {
		return err
	}
	for i := range helperKeys {
		if err := db.Set(fmt.Appendf(nil, "synced-%d", i), []byte("v"), pebble.Sync); err != nil {
			return err
		}
	}
	for i := range helperKeys {
		if err := db.Set(fmt.Appendf(nil, "unsynced-%d", i), bytes.Repeat([]byte("v"), 1024), pebble.NoSync); err != nil {
			return err
		}
	}
	return nil
}
