package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// sumFSM applies 8-byte commands (distinct numbers) by counting and
// summing them, so two replicas that applied the same commands have the
// same (count, sum). A command seen before is skipped: the test retries a
// command whose leader was lost, which may have committed it anyway.
type sumFSM struct {
	mu         sync.Mutex
	count, sum uint64
	seen       map[uint64]bool
}

func (f *sumFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := binary.BigEndian.Uint64(l.Data)
	if f.seen == nil {
		f.seen = make(map[uint64]bool)
	}
	if f.seen[n] {
		return nil
	}
	f.seen[n] = true
	f.count++
	f.sum += n
	return nil
}

func (f *sumFSM) state() [2]uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return [2]uint64{f.count, f.sum}
}

// Snapshot captures the seen set too: after a restore, a retried command
// must still count once.
func (f *sumFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b := binary.BigEndian.AppendUint64(nil, uint64(len(f.seen)))
	for n := range f.seen {
		b = binary.BigEndian.AppendUint64(b, n)
	}
	return sumSnapshot(b), nil
}

func (f *sumFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	if len(b) < 8 || uint64(len(b)) != 8+8*binary.BigEndian.Uint64(b) {
		return fmt.Errorf("bad snapshot of %d bytes", len(b))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen = make(map[uint64]bool)
	f.count, f.sum = 0, 0
	for b = b[8:]; len(b) > 0; b = b[8:] {
		n := binary.BigEndian.Uint64(b)
		f.seen[n] = true
		f.count++
		f.sum += n
	}
	return nil
}

type sumSnapshot []byte

func (s sumSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		return errors.Join(err, sink.Cancel())
	}
	return sink.Close()
}

func (sumSnapshot) Release() {}

// raftNode is one "node" of the test: one SharedLog and, for every group,
// a Raft instance whose log and stable store are a SharedGroup of it.
type raftNode struct {
	id     string
	dir    string
	shared *SharedLog
	rafts  map[string]*raft.Raft
	trans  map[string]*raft.InmemTransport
	fsms   map[string]*sumFSM
}

func raftAddr(node, group string) raft.ServerAddress {
	return raft.ServerAddress(node + "/" + group)
}

func testRaftConfig(id string) *raft.Config {
	c := raft.DefaultConfig()
	c.LocalID = raft.ServerID(id)
	c.HeartbeatTimeout = 500 * time.Millisecond
	c.ElectionTimeout = 500 * time.Millisecond
	c.LeaderLeaseTimeout = 250 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
	// Snapshot and truncate often, so DeleteRange runs alongside appends.
	c.SnapshotInterval = 100 * time.Millisecond
	c.SnapshotThreshold = 200
	c.TrailingLogs = 100
	c.Logger = newHCLogger(quiet, "raft")
	return c
}

// start opens the node's SharedLog and starts a Raft instance per group.
func (n *raftNode) start(t *testing.T, groups []string) {
	t.Helper()
	s, err := OpenSharedLog(filepath.Join(n.dir, SharedLogFile), quiet)
	if err != nil {
		t.Fatal(err)
	}
	n.shared = s
	n.rafts = make(map[string]*raft.Raft)
	n.trans = make(map[string]*raft.InmemTransport)
	n.fsms = make(map[string]*sumFSM)
	for _, group := range groups {
		sg, err := s.Group(group)
		if err != nil {
			t.Fatal(err)
		}
		cache, err := raft.NewLogCache(64, sg)
		if err != nil {
			t.Fatal(err)
		}
		snaps, err := raft.NewFileSnapshotStoreWithLogger(filepath.Join(n.dir, group), 2, newHCLogger(quiet, "snapshots"))
		if err != nil {
			t.Fatal(err)
		}
		_, trans := raft.NewInmemTransport(raftAddr(n.id, group))
		fsm := new(sumFSM)
		r, err := raft.NewRaft(testRaftConfig(n.id), fsm, cache, sg, snaps, trans)
		if err != nil {
			t.Fatal(err)
		}
		n.rafts[group], n.trans[group], n.fsms[group] = r, trans, fsm
	}
}

// stop shuts the Raft instances down and closes the SharedLog.
func (n *raftNode) stop(t *testing.T) {
	t.Helper()
	for _, r := range n.rafts {
		if err := r.Shutdown().Error(); err != nil {
			t.Error(err)
		}
	}
	if err := n.shared.Close(); err != nil {
		t.Error(err)
	}
	n.rafts = nil
}

// connect links every pair of live nodes' transports, for every group.
func connect(nodes []*raftNode, groups []string) {
	for _, a := range nodes {
		for _, b := range nodes {
			if a == b || a.rafts == nil || b.rafts == nil {
				continue
			}
			for _, g := range groups {
				a.trans[g].Connect(raftAddr(b.id, g), b.trans[g])
			}
		}
	}
}

// leader waits until one live node leads group (and has committed in its
// term) and returns its Raft.
func leader(nodes []*raftNode, group string) (*raft.Raft, error) {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, n := range nodes {
			if r := n.rafts[group]; r != nil && r.State() == raft.Leader && r.Barrier(time.Second).Error() == nil {
				return r, nil
			}
		}
	}
	return nil, fmt.Errorf("%s: no leader after 10s", group)
}

// applyN applies n commands, numbered from first, through group's leader,
// pipelined so that Raft batches them. A command whose leader was lost is
// retried through the next leader, as a client would (the FSM skips
// duplicates). It runs in its own goroutine, so it returns an error instead
// of failing the test.
func applyN(nodes []*raftNode, group string, first, n uint64) error {
	var todo []uint64
	for i := first; i < first+n; i++ {
		todo = append(todo, i)
	}
	for attempt := 0; len(todo) > 0; attempt++ {
		r, err := leader(nodes, group)
		if err != nil {
			return err
		}
		futures := make([]raft.ApplyFuture, len(todo))
		for i, cmd := range todo {
			futures[i] = r.Apply(binary.BigEndian.AppendUint64(nil, cmd), 5*time.Second)
		}
		var retry []uint64
		var last error
		for i, f := range futures {
			if err := f.Error(); err != nil {
				retry, last = append(retry, todo[i]), err
			}
		}
		if len(retry) > 0 && attempt == 10 {
			return fmt.Errorf("%s: %d commands still failing after %d attempts: %w", group, len(retry), attempt+1, last)
		}
		todo = retry
	}
	return nil
}

// applyAll runs applyN on every group at once.
func applyAll(t *testing.T, nodes []*raftNode, groups []string, first, n uint64) {
	t.Helper()
	errs := make([]error, len(groups))
	var wg sync.WaitGroup
	for i, g := range groups {
		wg.Go(func() { errs[i] = applyN(nodes, g, first, n) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

// waitApplied waits until every live node's FSM of group has applied the
// commands 1..n.
func waitApplied(t *testing.T, nodes []*raftNode, group string, n uint64) {
	t.Helper()
	want := [2]uint64{n, n * (n + 1) / 2}
	for _, node := range nodes {
		waitFor(t, fmt.Sprintf("%s on %s to apply %d commands", group, node.id, n), func() bool {
			return node.fsms[group].state() == want
		})
	}
}

// TestSharedLogUnderRaft runs three nodes, each with one SharedLog holding
// two Raft groups, applies 1,000 commands to each group, restarts one node
// from its SharedLog while the others go on, and checks it catches up.
func TestSharedLogUnderRaft(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Raft clusters")
	}
	groups := []string{"q/a/1/0", "q/b/2/0"}
	var nodes []*raftNode
	for i := range 3 {
		n := &raftNode{id: fmt.Sprint("n", i), dir: t.TempDir()}
		n.start(t, groups)
		nodes = append(nodes, n)
	}
	defer func() {
		for _, n := range nodes {
			if n.rafts != nil {
				n.stop(t)
			}
		}
	}()
	connect(nodes, groups)
	for _, g := range groups {
		var servers []raft.Server
		for _, n := range nodes {
			servers = append(servers, raft.Server{ID: raft.ServerID(n.id), Address: raftAddr(n.id, g)})
		}
		if err := nodes[0].rafts[g].BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
			t.Fatal(err)
		}
	}

	applyAll(t, nodes, groups, 1, 1000)
	for _, g := range groups {
		waitApplied(t, nodes, g, 1000)
	}
	commitsBefore, requestsBefore := nodes[0].shared.commits.Load(), nodes[0].shared.requests.Load()

	// Restart n2 from its data; the others go on without it.
	down := nodes[2]
	down.stop(t)
	for _, n := range nodes[:2] {
		for _, g := range groups {
			n.trans[g].Disconnect(raftAddr(down.id, g))
		}
	}
	applyAll(t, nodes[:2], groups, 1001, 200)

	down.start(t, groups)
	for _, g := range groups {
		sg := mustGroup(t, down.shared, g)
		first, _ := sg.FirstIndex()
		last, _ := sg.LastIndex()
		term, err := sg.GetUint64([]byte("CurrentTerm"))
		t.Logf("%s: restarted n2 holds log %d..%d, term %d", g, first, last, term)
		if last < 1000 || err != nil || term == 0 {
			t.Errorf("%s: restarted node's state: log ends at %d, term %d (%v); want >= 1000 and a term", g, last, term, err)
		}
	}
	connect(nodes, groups)
	for _, g := range groups {
		waitApplied(t, nodes, g, 1200)
	}
	t.Logf("n0: %d requests in %d commits before the restart", requestsBefore, commitsBefore)
}
