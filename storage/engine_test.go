package storage

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/quorumq/quorumq/fsm"
)

// stateKV is the adapter the code handing a PartitionKV to package fsm
// needs (PartitionKV.View returns *PartitionView, fsm.KV wants
// fsm.KVView); see PartitionKV's doc comment.
type stateKV struct{ *PartitionKV }

func (k stateKV) View() fsm.KVView { return k.PartitionKV.View() }

var (
	_ fsm.KV     = stateKV{}
	_ fsm.KVView = (*PartitionView)(nil)
)

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func openTestEngine(t testing.TB, dir string, fs vfs.FS) *Engine {
	t.Helper()
	e, err := OpenEngine(dir, EngineOptions{Logger: quietLogger(), fs: fs})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func closeEngine(t testing.TB, e *Engine) {
	t.Helper()
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
}

// refKV is the reference model: a map, sorted on each scan.
type refKV map[string]string

func (r refKV) clone() refKV { return maps.Clone(r) }

func (r refKV) deleteRange(lower, upper []byte) {
	for k := range r {
		if inRange([]byte(k), lower, upper) {
			delete(r, k)
		}
	}
}

func inRange(k, lower, upper []byte) bool {
	return bytes.Compare(k, lower) >= 0 && (upper == nil || bytes.Compare(k, upper) < 0)
}

// scan returns the pairs in [lower, upper), at most limit of them (limit
// < 0: all).
func (r refKV) scan(lower, upper []byte, limit int) []string {
	var keys []string
	for k := range r {
		if inRange([]byte(k), lower, upper) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var out []string
	for _, k := range keys {
		if limit >= 0 && len(out) == limit {
			break
		}
		out = append(out, k+"="+r[k])
	}
	return out
}

// collect scans with scan, stopping after limit pairs (limit < 0: never).
func collect(scan func(lower, upper []byte, fn func(k, v []byte) bool), lower, upper []byte, limit int) []string {
	var out []string
	scan(lower, upper, func(k, v []byte) bool {
		if limit >= 0 && len(out) == limit {
			return false
		}
		out = append(out, string(k)+"="+string(v))
		return true
	})
	return out
}

func viewScan(t *testing.T, v *PartitionView) func(lower, upper []byte, fn func(k, v []byte) bool) {
	return func(lower, upper []byte, fn func(k, v []byte) bool) {
		if err := v.Scan(lower, upper, fn); err != nil {
			t.Fatal(err)
		}
	}
}

// modelKeys are the keys the model test draws from: ordinary ones, and the
// edges of a group's key space (empty, NUL, 0xff).
func modelKeys() [][]byte {
	keys := [][]byte{{}, {0}, {0, 0}, {1}, {0xff}, {0xff, 0xff}, []byte("a\x00b")}
	for i := range 60 {
		keys = append(keys, fmt.Appendf(nil, "k%03d", i))
	}
	return keys
}

// TestEngineKVModel applies one seeded random sequence of operations to a
// PartitionKV, to a reference map (committed and current state) and to
// fsm.MemKV, and compares every answer. Views taken along the way are read
// later, while writes go on, and must answer the state at their creation.
// Now and then the engine is closed and reopened, with writes pending:
// those are gone after it, the committed ones are not. A neighbour group
// whose id extends this one's is written alongside and must stay intact.
func TestEngineKVModel(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { runKVModel(t, seed, 3000) })
	}
}

func runKVModel(t *testing.T, seed uint64, ops int) {
	rng := rand.New(rand.NewPCG(seed, 0))
	dir := filepath.Join(t.TempDir(), "state")
	e := openTestEngine(t, dir, nil)
	defer func() { closeEngine(t, e) }()
	const group, neighbour = "q/a/1/1", "q/a/1/10"

	kv := e.Partition(group)
	nb := e.Partition(neighbour)
	nbRef := refKV{}
	mem := fsm.NewMemKV()
	cur, committed := refKV{}, refKV{}
	keys := modelKeys()
	key := func() []byte { return keys[rng.IntN(len(keys))] }
	bound := func() []byte {
		if rng.IntN(5) == 0 {
			return nil
		}
		return key()
	}

	type openView struct {
		v   *PartitionView
		ref refKV
	}
	var views []openView
	checkView := func(i int) {
		ov := views[i]
		k := key()
		got, ok, err := ov.v.Get(k)
		want, wok := ov.ref[string(k)]
		if err != nil || ok != wok || string(got) != want {
			t.Fatalf("view Get(%q) = %q, %v, %v; want %q, %v", k, got, ok, err, want, wok)
		}
		lo, hi, limit := bound(), bound(), rng.IntN(8)-1
		if g, w := collect(viewScan(t, ov.v), lo, hi, limit), ov.ref.scan(lo, hi, limit); !slices.Equal(g, w) {
			t.Fatalf("view Scan(%q, %q, %d) = %q; want %q", lo, hi, limit, g, w)
		}
	}

	for op := range ops {
		switch r := rng.IntN(100); {
		case r < 30:
			k, v := key(), fmt.Appendf(nil, "v%d", op)
			kv.Set(k, v)
			mem.Set(k, v)
			cur[string(k)] = string(v)
			v[0] = 'X' // Set copied it
		case r < 40:
			k := key()
			kv.Delete(k)
			mem.Delete(k)
			delete(cur, string(k))
		case r < 43:
			lo, hi := bound(), bound()
			if lo == nil {
				lo = []byte{}
			}
			kv.DeleteRange(lo, hi)
			mem.DeleteRange(lo, hi)
			cur.deleteRange(lo, hi)
		case r < 60:
			k := key()
			got, ok := kv.Get(k)
			mgot, mok := mem.Get(k)
			want, wok := cur[string(k)]
			if ok != wok || string(got) != want || mok != wok || string(mgot) != want {
				t.Fatalf("op %d: Get(%q) = %q, %v (MemKV %q, %v); want %q, %v", op, k, got, ok, mgot, mok, want, wok)
			}
		case r < 72:
			lo, hi, limit := bound(), bound(), rng.IntN(10)-1
			g := collect(kv.Scan, lo, hi, limit)
			if w := cur.scan(lo, hi, limit); !slices.Equal(g, w) {
				t.Fatalf("op %d: Scan(%q, %q, %d) = %q; want %q", op, lo, hi, limit, g, w)
			}
			if m := collect(mem.Scan, lo, hi, limit); !slices.Equal(g, m) {
				t.Fatalf("op %d: Scan(%q, %q, %d) = %q; MemKV %q", op, lo, hi, limit, g, m)
			}
		case r < 82:
			if err := kv.Commit(); err != nil {
				t.Fatal(err)
			}
			committed = cur.clone()
			if rng.IntN(4) == 0 {
				if err := kv.Sync(); err != nil {
					t.Fatal(err)
				}
			}
		case r < 86:
			views = append(views, openView{kv.View(), committed.clone()})
		case r < 94:
			if len(views) > 0 {
				checkView(rng.IntN(len(views)))
			}
		case r < 96:
			if len(views) > 0 {
				i := rng.IntN(len(views))
				checkView(i)
				views[i].v.Close()
				views = slices.Delete(views, i, i+1)
			}
		case r < 98:
			k, v := key(), fmt.Appendf(nil, "n%d", op)
			nb.Set(k, v)
			if err := nb.Commit(); err != nil {
				t.Fatal(err)
			}
			nbRef[string(k)] = string(v)
		default:
			// Restart: views closed, pending writes lost.
			for i := range views {
				checkView(i)
				views[i].v.Close()
			}
			views = nil
			closeEngine(t, e)
			e = openTestEngine(t, dir, nil)
			kv, nb = e.Partition(group), e.Partition(neighbour)
			cur = committed.clone()
			mem = fsm.NewMemKV()
			for k, v := range cur {
				mem.Set([]byte(k), []byte(v))
			}
		}
	}
	for i := range views {
		checkView(i)
		views[i].v.Close()
	}
	if g, w := collect(kv.Scan, nil, nil, -1), cur.scan(nil, nil, -1); !slices.Equal(g, w) {
		t.Fatalf("final Scan = %q; want %q", g, w)
	}
	if g, w := collect(nb.Scan, nil, nil, -1), nbRef.scan(nil, nil, -1); !slices.Equal(g, w) {
		t.Fatalf("neighbour Scan = %q; want %q", g, w)
	}
}

// TestEngineIsolation: groups whose ids are prefixes of one another never
// see each other's keys, in reads, range deletions and DropGroup.
func TestEngineIsolation(t *testing.T) {
	e := openTestEngine(t, filepath.Join(t.TempDir(), "state"), nil)
	defer closeEngine(t, e)
	// In byte order, as Groups returns them.
	groups := []string{"q/a/1/", "q/a/1/1", "q/a/1/1\x01", "q/a/1/10", "q/a/1/1\xff"}
	edgeKeys := [][]byte{{}, {0}, {1}, []byte("x"), {0xff, 0xff}}
	for _, g := range groups {
		kv := e.Partition(g)
		for _, k := range edgeKeys {
			kv.Set(k, []byte(g))
		}
		if err := kv.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	check := func(g string, want int) {
		t.Helper()
		kv := e.Partition(g)
		n := 0
		kv.Scan(nil, nil, func(k, v []byte) bool {
			if string(v) != g {
				t.Fatalf("group %q sees %q=%q", g, k, v)
			}
			n++
			return true
		})
		if n != want {
			t.Fatalf("group %q: %d keys, want %d", g, n, want)
		}
		view := kv.View()
		defer view.Close()
		n = 0
		if err := view.Scan(nil, nil, func(k, v []byte) bool { n++; return string(v) == g }); err != nil || n != want {
			t.Fatalf("group %q view: %d keys, %v; want %d", g, n, err, want)
		}
	}
	for _, g := range groups {
		check(g, len(edgeKeys))
	}
	gs, err := e.Groups()
	if err != nil || !slices.Equal(gs, groups) {
		t.Fatalf("Groups() = %q, %v; want %q", gs, err, groups)
	}

	// A range deletion of a whole group, pending then committed.
	kv := e.Partition("q/a/1/1")
	kv.DeleteRange(nil, nil)
	if _, ok := kv.Get([]byte("x")); ok {
		t.Fatal("Get sees a key deleted by a pending DeleteRange")
	}
	if err := kv.Commit(); err != nil {
		t.Fatal(err)
	}
	for _, g := range groups {
		want := len(edgeKeys)
		if g == "q/a/1/1" {
			want = 0
		}
		check(g, want)
	}

	before := e.Partition("q/a/1/10").View()
	if err := e.DropGroup("q/a/1/10"); err != nil {
		t.Fatal(err)
	}
	check("q/a/1/10", 0)
	// A view taken before the drop keeps its state.
	if v, ok, err := before.Get([]byte("x")); err != nil || !ok || string(v) != "q/a/1/10" {
		t.Fatalf("view from before DropGroup: Get = %q, %v, %v", v, ok, err)
	}
	before.Close()
	check("q/a/1/", len(edgeKeys))
	check("q/a/1/1\x01", len(edgeKeys))
	gs, err = e.Groups()
	if want := []string{"q/a/1/", "q/a/1/1\x01", "q/a/1/1\xff"}; err != nil || !slices.Equal(gs, want) {
		t.Fatalf("Groups() = %q, %v; want %q", gs, err, want)
	}
	if err := e.DropGroup("a\x00b"); err == nil {
		t.Fatal("DropGroup of an id with NUL succeeded")
	}
}

func TestEnginePartitionRefusesBadGroup(t *testing.T) {
	e := openTestEngine(t, filepath.Join(t.TempDir(), "state"), nil)
	defer closeEngine(t, e)
	for _, g := range []string{"", "a\x00b"} {
		func() {
			defer func() {
				if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "invalid group") {
					t.Fatalf("Partition(%q): recovered %v", g, r)
				}
			}()
			e.Partition(g)
		}()
	}
}

// TestEngineCloseReopen: committed writes survive Close (synced or not: a
// clean Close syncs the WAL), writes never committed do not, and the
// groups' uncommitted batches do not bother Close.
func TestEngineCloseReopen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	e := openTestEngine(t, dir, nil)
	a, b := e.Partition("q/a/1/1"), e.Partition("q/a/1/2")
	a.Set([]byte("synced"), []byte("1"))
	if err := a.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := a.Sync(); err != nil {
		t.Fatal(err)
	}
	a.Set([]byte("committed"), []byte("2"))
	a.Delete([]byte("synced"))
	a.Set([]byte("synced"), []byte("1b"))
	if err := a.Commit(); err != nil {
		t.Fatal(err)
	}
	a.Set([]byte("pending"), []byte("3"))
	a.Delete([]byte("committed"))
	b.Set([]byte("pending"), []byte("4"))
	closeEngine(t, e)

	e = openTestEngine(t, dir, nil)
	defer closeEngine(t, e)
	a, b = e.Partition("q/a/1/1"), e.Partition("q/a/1/2")
	if g := collect(a.Scan, nil, nil, -1); !slices.Equal(g, []string{"committed=2", "synced=1b"}) {
		t.Fatalf("after reopen: %q", g)
	}
	if g := collect(b.Scan, nil, nil, -1); len(g) != 0 {
		t.Fatalf("after reopen, uncommitted group has %q", g)
	}
	if gs, err := e.Groups(); err != nil || !slices.Equal(gs, []string{"q/a/1/1"}) {
		t.Fatalf("Groups() = %q, %v", gs, err)
	}
}

// crashAndReopen simulates a power loss: a copy of fs with every write
// that was not synced dropped (or, with rng, a random part of it), and an
// engine opened on it. The old engine is closed.
func crashAndReopen(t *testing.T, e *Engine, fs *vfs.MemFS, cfg vfs.CrashCloneCfg) (*Engine, *vfs.MemFS) {
	t.Helper()
	crashed := fs.CrashClone(cfg)
	closeEngine(t, e)
	return openTestEngine(t, "/state", crashed), crashed
}

// TestEngineSyncSurvivesCrash: a Commit alone may be lost in a crash; after
// Sync it is not. The same sequence with a synced empty batch in place of
// Sync loses the commit, which is why Sync writes a LogData record.
func TestEngineSyncSurvivesCrash(t *testing.T) {
	fs := vfs.NewCrashableMem()
	e := openTestEngine(t, "/state", fs)
	kv := e.Partition("q/a/1/1")
	kv.Set([]byte("a"), []byte("1"))
	if err := kv.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := kv.Sync(); err != nil {
		t.Fatal(err)
	}
	kv.Set([]byte("b"), []byte("2"))
	if err := kv.Commit(); err != nil {
		t.Fatal(err)
	}
	e, fs = crashAndReopen(t, e, fs, vfs.CrashCloneCfg{})
	kv = e.Partition("q/a/1/1")
	if g := collect(kv.Scan, nil, nil, -1); !slices.Equal(g, []string{"a=1"}) {
		t.Fatalf("after crash: %q; want the synced commit only", g)
	}

	// pebble's surprise: an empty batch applied with Sync returns without
	// syncing anything.
	kv.Set([]byte("c"), []byte("3"))
	if err := kv.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := e.db.Apply(e.db.NewBatch(), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	e, _ = crashAndReopen(t, e, fs, vfs.CrashCloneCfg{})
	defer closeEngine(t, e)
	kv = e.Partition("q/a/1/1")
	if g := collect(kv.Scan, nil, nil, -1); !slices.Equal(g, []string{"a=1"}) {
		t.Fatalf("after crash: %q; the synced empty batch was expected not to sync", g)
	}
}

// TestEngineCommitAtomicAcrossCrash: commits are atomic and ordered across
// a crash that keeps a random part of the unsynced writes (4 KiB blocks,
// holes left as zeros): what survives is a prefix of the commits, each
// whole. Commits of 0.2 to 8 KiB: some share a block, some span several.
// The data stays under the first memtable's 256 KiB, so that no WAL
// rotation (which syncs the old WAL) happens.
func TestEngineCommitAtomicAcrossCrash(t *testing.T) {
	const commits = 30
	val := bytes.Repeat([]byte("v"), 200)
	for seed := range uint64(12) {
		rng := rand.New(rand.NewPCG(seed, 1))
		fs := vfs.NewCrashableMem()
		e := openTestEngine(t, "/state", fs)
		kv := e.Partition("q/a/1/1")
		sizes := make([]int, commits)
		for c := range commits {
			sizes[c] = 1 + rng.IntN(40)
			for i := range sizes[c] {
				kv.Set(fmt.Appendf(nil, "c%02d/%02d", c, i), val)
			}
			kv.Set([]byte("last"), fmt.Appendf(nil, "%d", c))
			if err := kv.Commit(); err != nil {
				t.Fatal(err)
			}
		}
		e, _ = crashAndReopen(t, e, fs, vfs.CrashCloneCfg{
			UnsyncedDataPercent: 75 + int(seed)*2,
			RNG:                 rand.New(rand.NewPCG(rng.Uint64(), 0)),
		})
		kv = e.Partition("q/a/1/1")
		counts := make([]int, commits)
		kv.Scan([]byte("c"), []byte("d"), func(k, _ []byte) bool {
			var c, i int
			if _, err := fmt.Sscanf(string(k), "c%02d/%02d", &c, &i); err != nil {
				t.Fatal(err)
			}
			counts[c]++
			return true
		})
		survived := 0
		for c, n := range counts {
			switch {
			case n == sizes[c] && survived == c:
				survived++
			case n == 0 && c >= survived:
			default:
				t.Fatalf("seed %d: commit %d has %d of %d keys (%d commits survived whole before it)", seed, c, n, sizes[c], survived)
			}
		}
		last, ok := kv.Get([]byte("last"))
		if want := fmt.Sprint(survived - 1); survived > 0 && (!ok || string(last) != want) || survived == 0 && ok {
			t.Fatalf("seed %d: last = %q, %v; %d commits survived", seed, last, ok, survived)
		}
		t.Logf("seed %d: %d of %d unsynced commits survived", seed, survived, commits)
		closeEngine(t, e)
	}
}

// TestEngineViewWhileWriting: a goroutine scans a view of 100k keys while
// the owner rewrites, deletes and commits; the view sees exactly the state
// at its creation.
func TestEngineViewWhileWriting(t *testing.T) {
	const n = 100_000
	e := openTestEngine(t, filepath.Join(t.TempDir(), "state"), nil)
	defer closeEngine(t, e)
	kv := e.Partition("q/a/1/1")
	key := func(i int) []byte { return binary.BigEndian.AppendUint32([]byte("m"), uint32(i)) }
	for i := range n {
		kv.Set(key(i), fmt.Appendf(nil, "g0-%d", i))
		if i%10_000 == 9_999 {
			if err := kv.Commit(); err != nil {
				t.Fatal(err)
			}
		}
	}
	view := kv.View()
	defer view.Close()

	var wg sync.WaitGroup
	errs := make(chan error, 3)
	wg.Add(2)
	go func() {
		defer wg.Done()
		for pass := range 2 {
			i := 0
			err := view.Scan(nil, nil, func(k, v []byte) bool {
				if !bytes.Equal(k, key(i)) || string(v) != fmt.Sprintf("g0-%d", i) {
					errs <- fmt.Errorf("pass %d: view key %d is %x=%q", pass, i, k, v)
					return false
				}
				i++
				return true
			})
			if err == nil && i != n {
				err = fmt.Errorf("pass %d: view scanned %d keys, want %d", pass, i, n)
			}
			if err != nil {
				errs <- err
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(7, 7))
		for range 2000 {
			i := rng.IntN(n)
			v, ok, err := view.Get(key(i))
			if err != nil || !ok || string(v) != fmt.Sprintf("g0-%d", i) {
				errs <- fmt.Errorf("view Get(%d) = %q, %v, %v", i, v, ok, err)
				return
			}
		}
	}()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for gen := 1; ; gen++ {
		select {
		case <-done:
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			t.Logf("owner committed %d generations while the view was read", gen-1)
			return
		default:
		}
		for j := range 500 {
			i := (gen*500 + j) % n
			if j%5 == 0 {
				kv.Delete(key(i))
			} else {
				kv.Set(key(i), fmt.Appendf(nil, "g%d-%d", gen, i))
			}
		}
		if gen%20 == 0 {
			kv.DeleteRange(key(gen%n), key(gen%n+100))
		}
		if err := kv.Commit(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestEnginePartitionsConcurrent: partitions on their own goroutines write,
// commit and sync through one engine at once (one WAL, shared fsyncs).
func TestEnginePartitionsConcurrent(t *testing.T) {
	const groups, commits = 8, 200
	e := openTestEngine(t, filepath.Join(t.TempDir(), "state"), nil)
	defer closeEngine(t, e)
	var wg sync.WaitGroup
	errs := make(chan error, groups)
	for g := range groups {
		wg.Go(func() {
			kv := e.Partition(fmt.Sprintf("q/a/1/%d", g))
			for c := range commits {
				kv.Set(fmt.Appendf(nil, "k%03d", c), fmt.Appendf(nil, "%d", g))
				kv.Set([]byte("meta"), fmt.Appendf(nil, "%d", c))
				if err := kv.Commit(); err != nil {
					errs <- err
					return
				}
				if c%10 == 9 {
					if err := kv.Sync(); err != nil {
						errs <- err
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
	for g := range groups {
		kv := e.Partition(fmt.Sprintf("q/a/1/%d", g))
		n := 0
		kv.Scan([]byte("k"), []byte("l"), func(_, v []byte) bool {
			n++
			return string(v) == fmt.Sprint(g)
		})
		if meta, _ := kv.Get([]byte("meta")); n != commits || string(meta) != fmt.Sprint(commits-1) {
			t.Fatalf("group %d: %d keys, meta %q", g, n, meta)
		}
	}
}

func TestEngineCloseWithOpenView(t *testing.T) {
	e := openTestEngine(t, filepath.Join(t.TempDir(), "state"), nil)
	kv := e.Partition("q/a/1/1")
	kv.Set([]byte("k"), []byte("v"))
	if err := kv.Commit(); err != nil {
		t.Fatal(err)
	}
	v := kv.View()
	if s := e.Stats(); s.OpenViews != 1 || s.OpenSnapshots != 1 {
		t.Fatalf("Stats: %d views, %d snapshots; want 1, 1", s.OpenViews, s.OpenSnapshots)
	}
	if err := e.Close(); err == nil || !strings.Contains(err.Error(), "1 views still open") {
		t.Fatalf("Close with an open view: %v", err)
	}
	// The engine is still open and the view still reads.
	if got, ok, err := v.Get([]byte("k")); err != nil || !ok || string(got) != "v" {
		t.Fatalf("view Get after refused Close: %q, %v, %v", got, ok, err)
	}
	v.Close()
	v.Close()
	if _, _, err := v.Get([]byte("k")); err != ErrViewClosed {
		t.Fatalf("Get on a closed view: %v", err)
	}
	if err := v.Scan(nil, nil, func(_, _ []byte) bool { return true }); err != ErrViewClosed {
		t.Fatalf("Scan on a closed view: %v", err)
	}
	closeEngine(t, e)
	closeEngine(t, e) // again: the first result
	if _, err := e.Groups(); err != ErrEngineClosed {
		t.Fatalf("Groups after Close: %v", err)
	}
	if err := e.DropGroup("q/a/1/1"); err != ErrEngineClosed {
		t.Fatalf("DropGroup after Close: %v", err)
	}
	if s := e.Stats(); s != (EngineStats{}) {
		t.Fatalf("Stats after Close: %+v", s)
	}
}

// TestEngineFormatMarker: a store of another layout version, or one with
// data but no marker, is refused with a clear error.
func TestEngineFormatMarker(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	closeEngine(t, openTestEngine(t, dir, nil))

	rewrite := func(set func(db *pebble.DB) error) {
		db, err := pebble.Open(dir, &pebble.Options{Logger: pebbleLogger{quietLogger()}})
		if err != nil {
			t.Fatal(err)
		}
		if err := set(db); err != nil {
			t.Fatal(err)
		}
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
	}
	rewrite(func(db *pebble.DB) error {
		return db.Set(keyEngineFormat, binary.BigEndian.AppendUint64(nil, engineFormat+1), pebble.Sync)
	})
	_, err := OpenEngine(dir, EngineOptions{Logger: quietLogger()})
	if err == nil || !strings.Contains(err.Error(), "layout version") {
		t.Fatalf("open of a store of a later version: %v", err)
	}
	// A store of the version before Raft logs moved in is upgraded, and the
	// upgrade is recorded.
	rewrite(func(db *pebble.DB) error {
		return db.Set(keyEngineFormat, binary.BigEndian.AppendUint64(nil, engineFormatNoLogs), pebble.Sync)
	})
	closeEngine(t, openTestEngine(t, dir, nil))
	rewrite(func(db *pebble.DB) error {
		v, c, err := db.Get(keyEngineFormat)
		if err != nil {
			return err
		}
		defer c.Close()
		if binary.BigEndian.Uint64(v) != engineFormat {
			return fmt.Errorf("format %x after the upgrade", v)
		}
		return nil
	})
	rewrite(func(db *pebble.DB) error {
		return db.Delete(keyEngineFormat, pebble.Sync)
	})
	if e, err := OpenEngine(dir, EngineOptions{Logger: quietLogger()}); err != nil {
		// An empty store (the marker deleted, nothing else) is taken as new.
		t.Fatalf("open of an empty store: %v", err)
	} else {
		closeEngine(t, e)
	}
	rewrite(func(db *pebble.DB) error {
		if err := db.Delete(keyEngineFormat, nil); err != nil {
			return err
		}
		return db.Set([]byte("pq/a/1/1\x00k"), []byte("v"), pebble.Sync)
	})
	_, err = OpenEngine(dir, EngineOptions{Logger: quietLogger()})
	if err == nil || !strings.Contains(err.Error(), "no layout marker") {
		t.Fatalf("open of a store without marker: %v", err)
	}
}

func TestEngineStats(t *testing.T) {
	e := openTestEngine(t, filepath.Join(t.TempDir(), "state"), nil)
	defer closeEngine(t, e)
	kv := e.Partition("q/a/1/1")
	val := bytes.Repeat([]byte{'x'}, 1024)
	for i := range 1000 {
		kv.Set(fmt.Appendf(nil, "m%04d", i), val)
	}
	if err := kv.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := e.db.Flush(); err != nil {
		t.Fatal(err)
	}
	kv.Scan(nil, nil, func(_, _ []byte) bool { return true })
	s := e.Stats()
	if s.DiskBytes == 0 || s.LiveBytes == 0 || s.WALBytesWritten < 1000*1024 || s.Flushes == 0 ||
		s.CacheHits+s.CacheMisses == 0 {
		t.Fatalf("Stats after 1 MB written and flushed: %+v", s)
	}
}

func TestPebbleLoggerFatalPanics(t *testing.T) {
	defer func() {
		if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "storage: state engine: boom 7") {
			t.Fatalf("recovered %v", r)
		}
	}()
	pebbleLogger{quietLogger()}.Fatalf("boom %d", 7)
}
