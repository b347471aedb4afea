package storage

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
)

func mustOpenShared(t testing.TB, path string) *SharedLog {
	t.Helper()
	s, err := OpenSharedLog(path, quiet)
	if err != nil {
		t.Fatalf("OpenSharedLog(%s): %v", path, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func mustGroup(t testing.TB, s *SharedLog, id string) *SharedGroup {
	t.Helper()
	g, err := s.Group(id)
	if err != nil {
		t.Fatalf("Group(%s): %v", id, err)
	}
	return g
}

func testLog(idx uint64, data string) *raft.Log {
	return &raft.Log{Index: idx, Term: 1, Type: raft.LogCommand, Data: []byte(data)}
}

// sameLog compares two entries field by field (AppendedAt with Equal: the
// stored time has no monotonic reading).
func sameLog(a, b *raft.Log) bool {
	return a.Index == b.Index && a.Term == b.Term && a.Type == b.Type &&
		bytes.Equal(a.Data, b.Data) && bytes.Equal(a.Extensions, b.Extensions) &&
		a.AppendedAt.Equal(b.AppendedAt)
}

func wantIndexes(t *testing.T, g raft.LogStore, first, last uint64) {
	t.Helper()
	f, err1 := g.FirstIndex()
	l, err2 := g.LastIndex()
	if err1 != nil || err2 != nil || f != first || l != last {
		t.Fatalf("FirstIndex, LastIndex = %d, %d (%v, %v); want %d, %d", f, l, err1, err2, first, last)
	}
}

// TestSharedGroupContract mirrors raft-boltdb/v2's bolt_store_test.go, run
// against both stores so that any difference shows.
func TestSharedGroupContract(t *testing.T) {
	type store interface {
		raft.LogStore
		raft.StableStore
	}
	stores := map[string]func(t *testing.T) store{
		"shared": func(t *testing.T) store {
			return mustGroup(t, mustOpenShared(t, filepath.Join(t.TempDir(), SharedLogFile)), "q/a/1/0")
		},
		"raftboltdb": func(t *testing.T) store {
			b, err := raftboltdb.NewBoltStore(filepath.Join(t.TempDir(), "raft.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = b.Close() })
			return b
		},
	}
	tests := []struct {
		name string
		run  func(t *testing.T, s store)
	}{
		{"empty log has indexes 0", func(t *testing.T, s store) {
			wantIndexes(t, s, 0, 0)
		}},
		{"first and last index", func(t *testing.T, s store) {
			if err := s.StoreLogs([]*raft.Log{testLog(1, "log1"), testLog(2, "log2"), testLog(3, "log3")}); err != nil {
				t.Fatal(err)
			}
			wantIndexes(t, s, 1, 3)
		}},
		{"get log", func(t *testing.T, s store) {
			if err := s.GetLog(1, new(raft.Log)); err != raft.ErrLogNotFound {
				t.Fatalf("GetLog of a missing index: %v, want raft.ErrLogNotFound", err)
			}
			logs := []*raft.Log{testLog(1, "log1"), testLog(2, "log2"), testLog(3, "log3")}
			if err := s.StoreLogs(logs); err != nil {
				t.Fatal(err)
			}
			got := new(raft.Log)
			if err := s.GetLog(2, got); err != nil || !sameLog(got, logs[1]) {
				t.Fatalf("GetLog(2) = %+v, %v; want %+v", got, err, logs[1])
			}
			if err := s.GetLog(4, got); err != raft.ErrLogNotFound {
				t.Fatalf("GetLog past the end: %v, want raft.ErrLogNotFound", err)
			}
		}},
		{"store one log", func(t *testing.T, s store) {
			l := testLog(1, "log1")
			if err := s.StoreLog(l); err != nil {
				t.Fatal(err)
			}
			got := new(raft.Log)
			if err := s.GetLog(1, got); err != nil || !sameLog(got, l) {
				t.Fatalf("GetLog(1) = %+v, %v", got, err)
			}
		}},
		{"every field survives", func(t *testing.T, s store) {
			l := &raft.Log{Index: 7, Term: 1 << 40, Type: raft.LogConfiguration, Data: []byte("conf"),
				Extensions: []byte{0, 1, 2}, AppendedAt: time.Now()}
			if err := s.StoreLog(l); err != nil {
				t.Fatal(err)
			}
			got := new(raft.Log)
			if err := s.GetLog(7, got); err != nil || !sameLog(got, l) {
				t.Fatalf("GetLog(7) = %+v, %v; want %+v", got, err, l)
			}
		}},
		{"gaps are allowed", func(t *testing.T, s store) {
			if err := s.StoreLogs([]*raft.Log{testLog(1, "a"), testLog(2, "b")}); err != nil {
				t.Fatal(err)
			}
			if err := s.StoreLogs([]*raft.Log{testLog(10, "c")}); err != nil {
				t.Fatal(err)
			}
			wantIndexes(t, s, 1, 10)
		}},
		{"overwrite", func(t *testing.T, s store) {
			if err := s.StoreLogs([]*raft.Log{testLog(1, "a"), testLog(2, "b")}); err != nil {
				t.Fatal(err)
			}
			if err := s.StoreLog(testLog(2, "b2")); err != nil {
				t.Fatal(err)
			}
			got := new(raft.Log)
			if err := s.GetLog(2, got); err != nil || string(got.Data) != "b2" {
				t.Fatalf("GetLog(2) = %q, %v; want b2", got.Data, err)
			}
			wantIndexes(t, s, 1, 2)
		}},
		{"delete range", func(t *testing.T, s store) {
			if err := s.StoreLogs([]*raft.Log{testLog(1, "log1"), testLog(2, "log2"), testLog(3, "log3")}); err != nil {
				t.Fatal(err)
			}
			if err := s.DeleteRange(1, 2); err != nil {
				t.Fatal(err)
			}
			for _, i := range []uint64{1, 2} {
				if err := s.GetLog(i, new(raft.Log)); err != raft.ErrLogNotFound {
					t.Fatalf("GetLog(%d) after delete: %v", i, err)
				}
			}
			wantIndexes(t, s, 3, 3)
			if err := s.DeleteRange(3, 100); err != nil {
				t.Fatal(err)
			}
			wantIndexes(t, s, 0, 0)
			if err := s.DeleteRange(5, 9); err != nil {
				t.Fatalf("DeleteRange on an empty log: %v", err)
			}
		}},
		{"set and get", func(t *testing.T, s store) {
			if _, err := s.Get([]byte("bad")); err != ErrKeyNotFound || err.Error() != "not found" {
				t.Fatalf("Get of a missing key: %v, want ErrKeyNotFound (\"not found\")", err)
			}
			k, v := []byte("hello"), []byte("world")
			if err := s.Set(k, v); err != nil {
				t.Fatal(err)
			}
			got, err := s.Get(k)
			if err != nil || !bytes.Equal(got, v) {
				t.Fatalf("Get = %q, %v", got, err)
			}
		}},
		{"set and get uint64", func(t *testing.T, s store) {
			if n, err := s.GetUint64([]byte("bad")); err != ErrKeyNotFound || n != 0 {
				t.Fatalf("GetUint64 of a missing key = %d, %v; want 0, ErrKeyNotFound", n, err)
			}
			k := []byte("abc")
			if err := s.SetUint64(k, 123); err != nil {
				t.Fatal(err)
			}
			if n, err := s.GetUint64(k); err != nil || n != 123 {
				t.Fatalf("GetUint64 = %d, %v", n, err)
			}
			// The same encoding as raft-boltdb: 8 bytes big-endian.
			if b, err := s.Get(k); err != nil || !bytes.Equal(b, []byte{0, 0, 0, 0, 0, 0, 0, 123}) {
				t.Fatalf("Get of a uint64 = %x, %v", b, err)
			}
		}},
		{"raft sees no state", func(t *testing.T, s store) {
			has, err := raft.HasExistingState(s, s, raft.NewInmemSnapshotStore())
			if err != nil || has {
				t.Fatalf("HasExistingState = %v, %v; want false, nil", has, err)
			}
			if err := s.SetUint64([]byte("CurrentTerm"), 2); err != nil {
				t.Fatal(err)
			}
			if has, err := raft.HasExistingState(s, s, raft.NewInmemSnapshotStore()); err != nil || !has {
				t.Fatalf("HasExistingState after a term = %v, %v; want true, nil", has, err)
			}
		}},
	}
	for _, impl := range []string{"shared", "raftboltdb"} {
		for _, tt := range tests {
			t.Run(impl+"/"+tt.name, func(t *testing.T) { tt.run(t, stores[impl](t)) })
		}
	}
}

// TestSharedGroupMatchesRaftBoltDB applies one random sequence of
// operations to several groups of a SharedLog and to as many raft-boltdb
// stores, and compares every answer.
func TestSharedGroupMatchesRaftBoltDB(t *testing.T) {
	const groups, ops = 3, 150
	s := mustOpenShared(t, filepath.Join(t.TempDir(), SharedLogFile))
	var ours []*SharedGroup
	var refs []*raftboltdb.BoltStore
	for i := range groups {
		ours = append(ours, mustGroup(t, s, fmt.Sprint("g", i)))
		b, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(t.TempDir(), "raft.db"), NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		refs = append(refs, b)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	next := make([]uint64, groups)
	for op := range ops {
		i := rng.IntN(groups)
		g, ref := ours[i], refs[i]
		var desc string
		var errG, errR error
		switch k := rng.IntN(10); {
		case k < 4: // append a batch, sometimes after a gap or over the tail
			n := 1 + rng.IntN(5)
			start := next[i] + 1
			if rng.IntN(5) == 0 && start > 3 {
				start -= uint64(rng.IntN(3))
			} else if rng.IntN(8) == 0 {
				start += uint64(rng.IntN(4))
			}
			var logs []*raft.Log
			for j := range n {
				logs = append(logs, &raft.Log{Index: start + uint64(j), Term: uint64(op), Type: raft.LogType(rng.IntN(6)),
					Data: fmt.Appendf(nil, "op%d-%d", op, j), AppendedAt: time.Unix(int64(op), 0)})
			}
			next[i] = start + uint64(n) - 1
			desc = fmt.Sprintf("StoreLogs(%d..%d)", start, next[i])
			errG, errR = g.StoreLogs(logs), ref.StoreLogs(logs)
		case k < 6:
			lo := uint64(rng.IntN(int(next[i]) + 3))
			hi := lo + uint64(rng.IntN(6))
			desc = fmt.Sprintf("DeleteRange(%d, %d)", lo, hi)
			errG, errR = g.DeleteRange(lo, hi), ref.DeleteRange(lo, hi)
		case k < 7:
			key, val := fmt.Appendf(nil, "k%d", rng.IntN(3)), fmt.Appendf(nil, "v%d", op)
			desc = fmt.Sprintf("Set(%s)", key)
			errG, errR = g.Set(key, val), ref.Set(key, val)
		case k < 8:
			key := fmt.Appendf(nil, "u%d", rng.IntN(3))
			desc = fmt.Sprintf("SetUint64(%s)", key)
			errG, errR = g.SetUint64(key, uint64(op)), ref.SetUint64(key, uint64(op))
		default:
			desc = "reads"
		}
		if errG != nil || errR != nil {
			t.Fatalf("op %d group %d %s: shared %v, raftboltdb %v", op, i, desc, errG, errR)
		}
		compareStores(t, fmt.Sprintf("op %d group %d after %s", op, i, desc), g, ref, next[i]+2)
	}
}

func compareStores(t *testing.T, where string, g *SharedGroup, ref *raftboltdb.BoltStore, upTo uint64) {
	t.Helper()
	f1, _ := g.FirstIndex()
	f2, _ := ref.FirstIndex()
	l1, _ := g.LastIndex()
	l2, _ := ref.LastIndex()
	if f1 != f2 || l1 != l2 {
		t.Fatalf("%s: indexes shared %d..%d, raftboltdb %d..%d", where, f1, l1, f2, l2)
	}
	for idx := uint64(0); idx <= upTo; idx++ {
		a, b := new(raft.Log), new(raft.Log)
		e1, e2 := g.GetLog(idx, a), ref.GetLog(idx, b)
		if e1 != e2 || (e1 == nil && !sameLog(a, b)) {
			t.Fatalf("%s: GetLog(%d): shared %+v, %v; raftboltdb %+v, %v", where, idx, a, e1, b, e2)
		}
	}
	for _, key := range []string{"k0", "k1", "k2", "u0", "u1", "u2", "missing"} {
		v1, e1 := g.Get([]byte(key))
		v2, e2 := ref.Get([]byte(key))
		if !bytes.Equal(v1, v2) || e1 != e2 {
			t.Fatalf("%s: Get(%s): shared %q, %v; raftboltdb %q, %v", where, key, v1, e1, v2, e2)
		}
	}
}

func TestSharedLogReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), SharedLogFile)
	s, err := OpenSharedLog(path, quiet)
	if err != nil {
		t.Fatal(err)
	}
	a, b := mustGroup(t, s, "q/a/1/0"), mustGroup(t, s, "q/b/2/0")
	logs := []*raft.Log{testLog(1, "a1"), testLog(2, "a2"), testLog(3, "a3")}
	if err := a.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	if err := a.DeleteRange(1, 1); err != nil {
		t.Fatal(err)
	}
	if err := b.SetUint64([]byte("CurrentTerm"), 5); err != nil {
		t.Fatal(err)
	}
	if err := b.Set([]byte("LastVoteCand"), []byte("node-2")); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := a.LastIndex(); !errors.Is(err, ErrLogClosed) {
		t.Errorf("LastIndex after Close: %v, want ErrLogClosed", err)
	}
	if err := a.StoreLog(testLog(4, "a4")); !errors.Is(err, ErrLogClosed) {
		t.Errorf("StoreLog after Close: %v, want ErrLogClosed", err)
	}

	s = mustOpenShared(t, path)
	a, b = mustGroup(t, s, "q/a/1/0"), mustGroup(t, s, "q/b/2/0")
	wantIndexes(t, a, 2, 3)
	got := new(raft.Log)
	if err := a.GetLog(3, got); err != nil || !sameLog(got, logs[2]) {
		t.Errorf("GetLog(3) after reopen = %+v, %v", got, err)
	}
	if n, err := b.GetUint64([]byte("CurrentTerm")); err != nil || n != 5 {
		t.Errorf("CurrentTerm after reopen = %d, %v", n, err)
	}
	if v, err := b.Get([]byte("LastVoteCand")); err != nil || string(v) != "node-2" {
		t.Errorf("LastVoteCand after reopen = %q, %v", v, err)
	}
	wantIndexes(t, b, 0, 0)
	if ids, err := s.Groups(); err != nil || !slices.Equal(ids, []string{"q/a/1/0", "q/b/2/0"}) {
		t.Errorf("Groups() = %v, %v", ids, err)
	}
}

func TestSharedLogDropGroup(t *testing.T) {
	s := mustOpenShared(t, filepath.Join(t.TempDir(), SharedLogFile))
	a, b := mustGroup(t, s, "a"), mustGroup(t, s, "b")
	if ids, err := s.Groups(); err != nil || len(ids) != 0 {
		t.Fatalf("Groups() before any write = %v, %v; want none (buckets are lazy)", ids, err)
	}
	for _, g := range []*SharedGroup{a, b} {
		if err := g.StoreLogs([]*raft.Log{testLog(1, "x"), testLog(2, "y")}); err != nil {
			t.Fatal(err)
		}
		if err := g.SetUint64([]byte("CurrentTerm"), 3); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DropGroup("a"); err != nil {
		t.Fatal(err)
	}
	if err := s.DropGroup("a"); err != nil {
		t.Errorf("second DropGroup: %v", err)
	}
	if err := s.DropGroup("never"); err != nil {
		t.Errorf("DropGroup of an unknown group: %v", err)
	}
	if ids, err := s.Groups(); err != nil || !slices.Equal(ids, []string{"b"}) {
		t.Errorf("Groups() = %v, %v; want [b]", ids, err)
	}
	if err := a.StoreLog(testLog(3, "z")); !errors.Is(err, ErrGroupDropped) {
		t.Errorf("StoreLog through a dropped handle: %v, want ErrGroupDropped", err)
	}
	if err := a.SetUint64([]byte("CurrentTerm"), 4); !errors.Is(err, ErrGroupDropped) {
		t.Errorf("SetUint64 through a dropped handle: %v, want ErrGroupDropped", err)
	}
	// A new handle starts empty.
	a2 := mustGroup(t, s, "a")
	if a2 == a {
		t.Fatal("Group after DropGroup returned the dropped handle")
	}
	wantIndexes(t, a2, 0, 0)
	if _, err := a2.GetUint64([]byte("CurrentTerm")); err != ErrKeyNotFound {
		t.Errorf("GetUint64 after drop: %v, want ErrKeyNotFound", err)
	}
	if err := a2.GetLog(1, new(raft.Log)); err != raft.ErrLogNotFound {
		t.Errorf("GetLog after drop: %v, want raft.ErrLogNotFound", err)
	}
	// The other group is untouched.
	wantIndexes(t, b, 1, 2)
	if n, err := b.GetUint64([]byte("CurrentTerm")); err != nil || n != 3 {
		t.Errorf("b's CurrentTerm = %d, %v", n, err)
	}
	if mustGroup(t, s, "b") != b {
		t.Error("Group returned a second handle for a live group")
	}
}

func TestSharedLogRefusesBadInput(t *testing.T) {
	s := mustOpenShared(t, filepath.Join(t.TempDir(), SharedLogFile))
	for _, id := range []string{"", string(make([]byte, maxGroupIDBytes+1))} {
		if _, err := s.Group(id); !errors.Is(err, ErrInvalidGroup) {
			t.Errorf("Group(%d bytes): %v, want ErrInvalidGroup", len(id), err)
		}
		if err := s.DropGroup(id); !errors.Is(err, ErrInvalidGroup) {
			t.Errorf("DropGroup(%d bytes): %v, want ErrInvalidGroup", len(id), err)
		}
	}
	g := mustGroup(t, s, "g")
	if err := g.Set(nil, []byte("v")); err == nil {
		t.Error("Set with an empty key succeeded")
	}
	if err := g.Set([]byte("short"), []byte("abc")); err != nil {
		t.Fatal(err)
	}
	if _, err := g.GetUint64([]byte("short")); err == nil {
		t.Error("GetUint64 of a 3-byte value succeeded")
	}
	if err := g.StoreLogs(nil); err != nil {
		t.Errorf("StoreLogs(nil): %v", err)
	}
}

// TestSharedLogGroupCommit holds the committer while 50 groups each queue
// one StoreLogs, then lets it go: all 50 must be one bolt commit.
func TestSharedLogGroupCommit(t *testing.T) {
	const groups = 50
	hold := make(chan struct{})
	s, err := openSharedLog(filepath.Join(t.TempDir(), SharedLogFile), quiet, sharedTestHooks{hold: hold})
	if err != nil {
		close(hold)
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	defer close(hold)

	var wg sync.WaitGroup
	errs := make([]error, groups)
	for i := range groups {
		g := mustGroup(t, s, fmt.Sprint("g", i))
		wg.Go(func() {
			errs[i] = g.StoreLogs([]*raft.Log{testLog(1, "x"), testLog(2, "y")})
		})
	}
	waitFor(t, "50 queued requests", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.queue) == groups
	})
	hold <- struct{}{} // one batch
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("group %d: %v", i, err)
		}
	}
	if c, r := s.commits.Load(), s.requests.Load(); c != 1 || r != groups {
		t.Errorf("commits, requests = %d, %d; want 1, %d", c, r, groups)
	}
	for i := range groups {
		wantIndexes(t, mustGroup(t, s, fmt.Sprint("g", i)), 1, 2)
	}
}

// TestSharedLogConcurrentAppends runs 50 groups appending freely and checks
// that one fsync carried many of them, and that every entry is there.
func TestSharedLogConcurrentAppends(t *testing.T) {
	const groups, calls, batch = 50, 20, 4
	s := mustOpenShared(t, filepath.Join(t.TempDir(), SharedLogFile))
	var wg sync.WaitGroup
	errs := make(chan error, groups)
	data := bytes.Repeat([]byte("m"), 100)
	for i := range groups {
		g := mustGroup(t, s, fmt.Sprint("g", i))
		wg.Go(func() {
			next := uint64(1)
			for c := range calls {
				logs := make([]*raft.Log, batch)
				for j := range logs {
					logs[j] = &raft.Log{Index: next, Term: 1, Data: data}
					next++
				}
				if err := g.StoreLogs(logs); err != nil {
					errs <- fmt.Errorf("group %d call %d: %w", i, c, err)
					return
				}
				// Raft truncates its log after snapshots: mix deletes in.
				if c%5 == 4 {
					if err := g.DeleteRange(next-2*batch, next-batch-1); err != nil {
						errs <- fmt.Errorf("group %d delete: %w", i, err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	commits, requests := s.commits.Load(), s.requests.Load()
	const wantRequests = groups * (calls + calls/5)
	t.Logf("%d requests in %d commits (%.1f per fsync)", requests, commits, float64(requests)/float64(commits))
	if requests != wantRequests {
		t.Errorf("requests = %d, want %d", requests, wantRequests)
	}
	if commits > wantRequests/5 {
		t.Errorf("%d commits for %d requests: group commit is not grouping", commits, wantRequests)
	}
	for i := range groups {
		g := mustGroup(t, s, fmt.Sprint("g", i))
		// Each group deleted the next-to-last batch of every fifth call.
		last := uint64(calls * batch)
		wantIndexes(t, g, 1, last)
		for idx := uint64(1); idx <= last; idx++ {
			err := g.GetLog(idx, new(raft.Log))
			deleted := ((idx-1)/batch)%5 == 3
			if deleted != (err == raft.ErrLogNotFound) || (err != nil && err != raft.ErrLogNotFound) {
				t.Fatalf("group %d GetLog(%d): %v (deleted %v)", i, idx, err, deleted)
			}
		}
	}
}

// TestSharedLogDeleteWithAppendInOneCommit puts an append and a delete of
// the same group in one transaction, the case where bbolt v1.3's
// Cursor.Delete+Next skips keys.
func TestSharedLogDeleteWithAppendInOneCommit(t *testing.T) {
	hold := make(chan struct{})
	s, err := openSharedLog(filepath.Join(t.TempDir(), SharedLogFile), quiet, sharedTestHooks{hold: hold})
	if err != nil {
		close(hold)
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	defer close(hold)
	g := mustGroup(t, s, "g")

	var logs []*raft.Log
	for i := uint64(1); i <= 1000; i++ {
		logs = append(logs, testLog(i, "small"))
	}
	done := make(chan error, 1)
	go func() { done <- g.StoreLogs(logs) }()
	hold <- struct{}{}
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	var errA, errD error
	wg.Go(func() { errA = g.StoreLogs([]*raft.Log{testLog(1001, "x"), testLog(1002, "y")}) })
	waitFor(t, "the append queued", func() bool { s.mu.Lock(); defer s.mu.Unlock(); return len(s.queue) == 1 })
	wg.Go(func() { errD = g.DeleteRange(1, 990) })
	waitFor(t, "the delete queued", func() bool { s.mu.Lock(); defer s.mu.Unlock(); return len(s.queue) == 2 })
	hold <- struct{}{}
	wg.Wait()
	if errA != nil || errD != nil {
		t.Fatal(errA, errD)
	}
	if c := s.commits.Load(); c != 2 {
		t.Errorf("commits = %d, want 2", c)
	}
	wantIndexes(t, g, 991, 1002)
	n := 0
	err = s.db.View(func(tx *bbolt.Tx) error {
		return logBucket(tx, g.name).ForEach(func(k, v []byte) error { n++; return nil })
	})
	if err != nil || n != 12 {
		t.Errorf("log holds %d entries (%v), want 12", n, err)
	}
}

// TestSharedLogCloseWhileAppending closes the log under load: every append
// either succeeds (and is on disk after reopening) or fails with
// ErrLogClosed; nothing hangs, nothing leaks (goleak in TestMain).
func TestSharedLogCloseWhileAppending(t *testing.T) {
	const groups = 20
	path := filepath.Join(t.TempDir(), SharedLogFile)
	s, err := OpenSharedLog(path, quiet)
	if err != nil {
		t.Fatal(err)
	}
	acked := make([]uint64, groups)
	errs := make([]error, groups)
	var wg sync.WaitGroup
	for i := range groups {
		g := mustGroup(t, s, fmt.Sprint("g", i))
		wg.Go(func() {
			for next := uint64(1); ; next++ {
				if err := g.StoreLog(testLog(next, "payload")); err != nil {
					errs[i] = err
					return
				}
				acked[i] = next
			}
		})
	}
	waitFor(t, "some commits", func() bool { return s.commits.Load() >= 5 })
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close hung")
	}
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, ErrLogClosed) {
			t.Errorf("group %d ended with %v, want ErrLogClosed", i, err)
		}
	}

	s = mustOpenShared(t, path)
	for i := range groups {
		g := mustGroup(t, s, fmt.Sprint("g", i))
		wantIndexes(t, g, 1, acked[i])
	}
}

func TestSharedLogRefusesUnknownFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), SharedLogFile)
	s, err := OpenSharedLog(path, quiet)
	if err != nil {
		t.Fatal(err)
	}
	err = s.db.Update(func(tx *bbolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyFormat, indexKey(99)) })
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err := OpenSharedLog(path, quiet); err == nil {
		_ = s.Close()
		t.Fatal("OpenSharedLog accepted format 99")
	}
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestSharedLogCommitFailureIsSticky breaks the file under the committer:
// the failing commit's callers get the error, and so does every later
// write, even if the disk would "recover": after a failed fsync nothing
// tells what reached the disk.
func TestSharedLogCommitFailureIsSticky(t *testing.T) {
	var file *os.File
	hooks := sharedTestHooks{openFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
		f, err := os.OpenFile(name, flag, perm)
		file = f
		return f, err
	}}
	s, err := openSharedLog(filepath.Join(t.TempDir(), SharedLogFile), quiet, hooks)
	if err != nil {
		t.Fatal(err)
	}
	g := mustGroup(t, s, "g")
	if err := g.StoreLog(testLog(1, "ok")); err != nil {
		t.Fatal(err)
	}
	// Writes through a closed *os.File fail with os.ErrClosed (the
	// descriptor number is not reused by this *os.File).
	if err := file.Close(); err != nil {
		t.Fatal(err)
	}
	err1 := g.StoreLog(testLog(2, "lost"))
	if err1 == nil {
		t.Fatal("StoreLog on a broken file succeeded")
	}
	err2 := g.SetUint64([]byte("CurrentTerm"), 2)
	if err2 == nil || err2.Error() != err1.Error() {
		t.Errorf("write after a failed commit: %v, want the sticky %v", err2, err1)
	}
	if c := s.commits.Load(); c != 1 {
		t.Errorf("commits = %d, want 1", c)
	}
	wantIndexes(t, g, 1, 1)
	_ = s.Close() // the file is already closed; only check it returns
}
