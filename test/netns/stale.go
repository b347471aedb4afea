package netns

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// lockDir holds one lock file per live run, "<name>.lock", flock-ed by the
// process that owns the run: the kernel drops the lock when that process
// dies, however it dies, which is how CleanupStale tells a crashed run from
// a live one (in this process or another). ".global" serializes New and
// CleanupStale.
const lockDir = "/run/quorumq-netns"

// lockGlobal takes the global lock; closing the file releases it.
func lockGlobal() (*os.File, error) {
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(lockDir, ".global"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// newRun picks an unused run name and takes its lock. The caller holds the
// global lock.
func newRun(ctx context.Context) (string, *os.File, error) {
	existing, err := existingRuns(ctx)
	if err != nil {
		return "", nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	for range 100 {
		name := fmt.Sprintf("qq%06x", rand.IntN(1<<24))
		if existing[name] {
			continue
		}
		f, err := os.OpenFile(filepath.Join(lockDir, name+".lock"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return "", nil, err
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			return "", nil, err
		}
		fmt.Fprintf(f, "%d\n", os.Getpid())
		return name, f, nil
	}
	return "", nil, errors.New("netns: no free run name")
}

// existingRuns lists the run names that own a namespace or a root link.
func existingRuns(ctx context.Context) (map[string]bool, error) {
	runs := map[string]bool{}
	out, err := ipRun(ctx, "", "netns", "list")
	if err != nil {
		return nil, err
	}
	for line := range strings.Lines(string(out)) {
		if f := strings.Fields(line); len(f) > 0 {
			if m := runName.FindStringSubmatch(f[0]); m != nil {
				runs[m[1]] = true
			}
		}
	}
	out, err = ipRun(ctx, "", "-o", "link", "show")
	if err != nil {
		return nil, err
	}
	for line := range strings.Lines(string(out)) {
		// "7: qq1a2b3c@if2: <BROADCAST,..."
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if m := runName.FindStringSubmatch(name); m != nil && m[2] == "" {
			runs[m[1]] = true
		}
	}
	return runs, nil
}

// CleanupStale removes what earlier runs left behind when their process
// died without Close: namespaces (and the processes in them), root links
// and lock files of runs whose lock no process holds. Live runs, in this
// process or another, are left alone. New calls it; a CI script may too.
func CleanupStale(ctx context.Context, log io.Writer) error {
	if log == nil {
		log = io.Discard
	}
	global, err := lockGlobal()
	if err != nil {
		return err
	}
	defer global.Close()
	return cleanupStale(ctx, log)
}

// cleanupStale is CleanupStale with the global lock held.
func cleanupStale(ctx context.Context, log io.Writer) error {
	runs, err := existingRuns(ctx)
	if err != nil {
		return err
	}
	// Lock files of runs that never got (or already lost) their links.
	if ents, err := os.ReadDir(lockDir); err == nil {
		for _, e := range ents {
			if name, ok := strings.CutSuffix(e.Name(), ".lock"); ok && runName.MatchString(name) {
				runs[name] = true
			}
		}
	}
	var errs []error
	for name := range runs {
		f, err := os.OpenFile(filepath.Join(lockDir, name+".lock"), os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close() // live: its owner holds the lock
			continue
		}
		if err := removeRun(ctx, name); err != nil {
			errs = append(errs, err)
		} else {
			fmt.Fprintf(log, "netns: removed stale run %s\n", name)
			os.Remove(f.Name())
		}
		f.Close()
	}
	return errors.Join(errs...)
}

// runNamespaces lists the namespaces of run name.
func runNamespaces(ctx context.Context, name string) ([]string, error) {
	out, err := ipRun(ctx, "", "netns", "list")
	if err != nil {
		return nil, err
	}
	var ns []string
	for line := range strings.Lines(string(out)) {
		if f := strings.Fields(line); len(f) > 0 {
			if m := runName.FindStringSubmatch(f[0]); m != nil && m[1] == name && m[2] != "" {
				ns = append(ns, f[0])
			}
		}
	}
	return ns, nil
}

// removeRun kills whatever still runs in run name's namespaces, then
// deletes its root link (the peer, in the switch namespace, goes with it)
// and its namespaces; the host veths and the bridge die with their
// namespaces. Whatever is already gone is no error.
func removeRun(ctx context.Context, name string) error {
	namespaces, err := runNamespaces(ctx, name)
	if err != nil {
		return err
	}
	var errs []error
	for _, ns := range namespaces {
		out, err := ipRun(ctx, "", "netns", "pids", ns)
		if err != nil {
			continue // no such namespace
		}
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if _, err := ipRun(ctx, "", "link", "show", "dev", name); err == nil {
		if _, err := ipRun(ctx, "", "link", "del", "dev", name); err != nil {
			errs = append(errs, err)
		}
	}
	for _, ns := range namespaces {
		if _, err := ipRun(ctx, "", "netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
