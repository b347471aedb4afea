package cluster

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
	"github.com/quorumq/quorumq/storage"
)

// openNodeState opens a data directory and its state engine as Start
// does, and binds the instance.
func openNodeState(t *testing.T, path string) (*storage.Dir, *storage.Engine, string, *identities) {
	t.Helper()
	d, err := storage.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := storage.OpenEngine(filepath.Join(path, storage.StateDir), storage.EngineOptions{})
	if err != nil {
		t.Fatal(err)
	}
	inst, ids, err := bindInstance(d, s, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return d, s, inst, ids
}

func closeNodeState(t *testing.T, d *storage.Dir, s *storage.Engine) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}

// The instance is kept while the partition state is there, and changes
// when the state is gone or foreign: the cluster then replaces every
// replica the node held rather than let it answer for them.
func TestBindInstance(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data")
	d, s, first, ids := openNodeState(t, path)
	name := storage.PartitionGroup("q", 1, 0)
	if err := ids.recordCreated(name, 7); err != nil {
		t.Fatal(err)
	}
	// A group with state, as a replica leaves it.
	gs, err := d.OpenGroup(name, nil, storage.WithEngineLog(s))
	if err != nil {
		t.Fatal(err)
	}
	if err := gs.Stable.SetUint64([]byte("CurrentTerm"), 3); err != nil {
		t.Fatal(err)
	}
	gs.Close()
	closeNodeState(t, d, s)

	d, s, again, ids := openNodeState(t, path)
	if again != first {
		t.Fatalf("instance changed on a plain restart: %s -> %s", first, again)
	}
	if e, err := ids.createdEpoch(name); err != nil || e != 7 {
		t.Fatalf("created epoch %d, %v; want 7", e, err)
	}
	closeNodeState(t, d, s)

	// The state engine (partition state and logs) lost, the rest of the
	// directory kept.
	if err := os.RemoveAll(filepath.Join(path, storage.StateDir)); err != nil {
		t.Fatal(err)
	}
	d, s, rotated, _ := openNodeState(t, path)
	if rotated == first {
		t.Fatal("the partition state is gone but the instance was kept")
	}
	closeNodeState(t, d, s)

	// The instance file replaced (or lost) while the engine stayed.
	if err := os.WriteFile(filepath.Join(path, "instance"), []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d, s, third, _ := openNodeState(t, path)
	if third == rotated || third == "0123456789abcdef0123456789abcdef" {
		t.Fatalf("partition state of another instance adopted: %s", third)
	}
	closeNodeState(t, d, s)
	d, s, fourth, _ := openNodeState(t, path)
	if fourth != third {
		t.Fatalf("instance changed on a plain restart: %s -> %s", third, fourth)
	}
	closeNodeState(t, d, s)
}

// A store is answered for only under the id recorded in it; a store with
// state but no recorded id belongs to nobody.
func TestGroupIdentity(t *testing.T) {
	d, err := storage.Open(filepath.Join(t.TempDir(), "data"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	s, err := storage.OpenEngine(filepath.Join(t.TempDir(), "state"), storage.EngineOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	open := func(name storage.GroupName) *storage.GroupStore {
		gs, err := d.OpenGroup(name, nil, storage.WithEngineLog(s))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { gs.Close() })
		return gs
	}
	a := open(storage.PartitionGroup("q", 1, 0))
	if _, _, err := groupIdentity(a, "n1/3", ""); err == nil {
		t.Fatal("a store without an id was given one without create")
	}
	if id, fresh, err := groupIdentity(a, "n1/3", "n1/3"); err != nil || id != "n1/3" || !fresh {
		t.Fatalf("create: %s, %v", id, err)
	}
	if id, fresh, err := groupIdentity(a, "", ""); err != nil || id != "n1/3" || fresh {
		t.Fatalf("recorded id: %s, %v", id, err)
	}
	if _, _, err := groupIdentity(a, "n1/4", "n1/4"); !errors.Is(err, errIdentityMismatch) {
		t.Fatalf("another member's store: %v, want errIdentityMismatch", err)
	}
	b := open(storage.PartitionGroup("q", 1, 1))
	if err := b.Stable.SetUint64([]byte("CurrentTerm"), 5); err != nil {
		t.Fatal(err)
	}
	if _, _, err := groupIdentity(b, "n1/3", "n1/3"); !errors.Is(err, errIdentityMismatch) {
		t.Fatalf("state without an id: %v, want errIdentityMismatch", err)
	}
}

// A catalogue that is behind (a restart before catching up) may ask for a
// replica id this node created and has since replaced: nothing is started
// and the newer replica is left alone.
func TestStaleAssignmentNeverRecreatesAnIdentity(t *testing.T) {
	c := startCluster(t, 3)
	q, _ := c.client(0)
	if _, err := q.CreateQueue(ctxT(t, 10*time.Second), &qv1.CreateQueueRequest{Name: "s", Partitions: 1, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	n := c.nodes[0]
	c.waitFor("the replica on n1", 10*time.Second, func() bool { _, ok := n.replicas.get("s", 0); return ok })
	info, _ := n.ctrl.queue("s")
	r, _ := n.replicas.get("s", 0)
	epoch := epochOfServer(r.g.id)
	name := storage.PartitionGroup("s", info.GetId(), 0)

	// As if the node had created a later epoch, then been handed an
	// assignment from before it.
	if err := n.ids.recordCreated(name, epoch+5); err != nil {
		t.Fatal(err)
	}
	pa := info.GetPartitions()[0]
	n.replicas.start(info, pa, &fsmv1.Replica{NodeId: n.ID(), Epoch: epoch + 2, Voter: true})
	if got, _ := n.replicas.get("s", 0); got != r {
		t.Fatal("a stale assignment replaced the running replica")
	}

	// With nothing running, the old identity is not created again either.
	n.replicas.remove(r)
	n.replicas.start(info, pa, &fsmv1.Replica{NodeId: n.ID(), Epoch: epoch + 2, Voter: true})
	if got, ok := n.replicas.get("s", 0); ok {
		t.Fatalf("identity %s created a second time", got.g.id)
	}
	// A newer epoch is created.
	n.replicas.start(info, pa, &fsmv1.Replica{NodeId: n.ID(), Epoch: epoch + 6, Voter: true})
	got, ok := n.replicas.get("s", 0)
	if !ok || got.g.id != replicaServerID(n.ID(), epoch+6) {
		t.Fatalf("newer identity not started: %v", ok)
	}
	if got.g.raft.State() == raft.Shutdown {
		t.Fatal("started replica is shut down")
	}
}

// A node whose partition state is lost (its state engine deleted, the rest
// of its directory intact) comes back as a new instance: its replicas are
// replaced, and nothing acknowledged is lost.
func TestLostPartitionStateRejoinsAsNewInstance(t *testing.T) {
	c := startCluster(t, 3)
	q, _ := c.client(0)
	if _, err := q.CreateQueue(ctxT(t, 10*time.Second), &qv1.CreateQueueRequest{Name: "p", Partitions: 2, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		enqueueOne(t, q, "p", "m"+string(rune('a'+i)))
	}
	before := c.nodes[2].instance
	lost := map[uint64]bool{}
	info, _ := c.nodes[0].ctrl.queue("p")
	for _, pa := range info.GetPartitions() {
		for _, r := range pa.GetReplicas() {
			if r.GetNodeId() == "n3" {
				lost[r.GetEpoch()] = true
			}
		}
	}
	c.kill(2)
	if err := os.RemoveAll(filepath.Join(c.cfgs[2].DataDir, storage.StateDir)); err != nil {
		t.Fatal(err)
	}
	c.restart(2)
	if c.nodes[2].instance == before {
		t.Fatal("the instance survived the loss of the partition state")
	}
	live := map[string]bool{"n1": true, "n2": true, "n3": true}
	c.waitFor("the queue fully replicated on new replicas", 60*time.Second, func() bool {
		if !c.fullyReplicated("p", 3, live) {
			return false
		}
		info, _ := c.nodes[0].ctrl.queue("p")
		for _, pa := range info.GetPartitions() {
			for _, r := range pa.GetReplicas() {
				if r.GetNodeId() == "n3" && lost[r.GetEpoch()] {
					return false // still the lost one
				}
			}
		}
		return true
	})
	got := drain(t, q, "p")
	if len(got) != 20 {
		t.Fatalf("drained %d messages, want 20", len(got))
	}
}
