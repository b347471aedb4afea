package fsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

const (
	stAlive    = fsmv1.NodeState_NODE_STATE_ALIVE
	stDraining = fsmv1.NodeState_NODE_STATE_DRAINING
	stRemoved  = fsmv1.NodeState_NODE_STATE_REMOVED
)

// --- command builders --------------------------------------------------------

func catCmd(stamp int64) *fsmv1.CatalogCommand {
	return &fsmv1.CatalogCommand{Version: CatalogVersion, Stamp: stamp}
}

func cmdUpsert(stamp int64, n *fsmv1.NodeInfo) *fsmv1.CatalogCommand {
	return &fsmv1.CatalogCommand{Version: CatalogVersion, Stamp: stamp,
		Op: &fsmv1.CatalogCommand_UpsertNode{UpsertNode: &fsmv1.UpsertNode{Node: n}}}
}

func cmdNode(stamp int64, id string) *fsmv1.CatalogCommand {
	return cmdUpsert(stamp, &fsmv1.NodeInfo{Id: id, PeerAddr: id + ":7421", Zone: "z-" + id})
}

func cmdState(stamp int64, id string, st fsmv1.NodeState) *fsmv1.CatalogCommand {
	return &fsmv1.CatalogCommand{Version: CatalogVersion, Stamp: stamp,
		Op: &fsmv1.CatalogCommand_SetNodeState{SetNodeState: &fsmv1.SetNodeState{Id: id, State: st}}}
}

// cmdCreate creates queue name with one partition per entry of parts, each
// listing its replicas' nodes.
func cmdCreate(stamp int64, name string, parts ...[]string) *fsmv1.CatalogCommand {
	q := &fsmv1.CreateQueue{Name: name, Settings: DefaultSettings(), ReplicationFactor: uint32(len(parts[0]))}
	for i, nodes := range parts {
		a := &fsmv1.PartitionAssignment{Partition: uint32(i)}
		for _, n := range nodes {
			a.Replicas = append(a.Replicas, catRep(n, 0, true))
		}
		q.Partitions = append(q.Partitions, a)
	}
	return &fsmv1.CatalogCommand{Version: CatalogVersion, Stamp: stamp, Op: &fsmv1.CatalogCommand_CreateQueue{CreateQueue: q}}
}

func cmdDelete(stamp int64, name string, id uint64) *fsmv1.CatalogCommand {
	return &fsmv1.CatalogCommand{Version: CatalogVersion, Stamp: stamp,
		Op: &fsmv1.CatalogCommand_DeleteQueue{DeleteQueue: &fsmv1.DeleteQueue{Name: name, Id: id}}}
}

func cmdSettings(stamp int64, name string, s *fsmv1.Settings) *fsmv1.CatalogCommand {
	return &fsmv1.CatalogCommand{Version: CatalogVersion, Stamp: stamp,
		Op: &fsmv1.CatalogCommand_UpdateQueueSettings{UpdateQueueSettings: &fsmv1.UpdateQueueSettings{Name: name, Settings: s}}}
}

func cmdAssign(stamp int64, queue string, part uint32, expect uint64, preferred string, rs ...*fsmv1.Replica) *fsmv1.CatalogCommand {
	return &fsmv1.CatalogCommand{Version: CatalogVersion, Stamp: stamp, Op: &fsmv1.CatalogCommand_SetAssignment{
		SetAssignment: &fsmv1.SetAssignment{Queue: queue, Partition: part, ExpectedEpoch: expect, Replicas: rs, PreferredLeader: preferred}}}
}

func catRep(node string, epoch uint64, voter bool) *fsmv1.Replica {
	return &fsmv1.Replica{NodeId: node, Epoch: epoch, Voter: voter}
}

func encodeCat(tb testing.TB, c *fsmv1.CatalogCommand) []byte {
	tb.Helper()
	b, err := proto.Marshal(c)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// --- helpers ----------------------------------------------------------------

func catBytes(tb testing.TB, c *Catalog) []byte {
	tb.Helper()
	var b bytes.Buffer
	n, err := c.Snapshot().WriteTo(&b)
	if err != nil || n != int64(b.Len()) {
		tb.Fatalf("WriteTo = %d, %v (wrote %d)", n, err, b.Len())
	}
	return b.Bytes()
}

// applyCat applies cmd, checks its code, and checks the catalogue contract:
// an OK command bumps the epoch by one, any other changes nothing at all.
func applyCat(tb testing.TB, c *Catalog, cmd *fsmv1.CatalogCommand, want CatalogCode) *CatalogResult {
	tb.Helper()
	before, epoch := catBytes(tb, c), c.Epoch()
	res := c.Apply(cmd)
	if res.Code != want {
		tb.Fatalf("code %v (%s), want %v", res.Code, res.Detail, want)
	}
	if want == CatalogOK && c.Epoch() != epoch+1 {
		tb.Fatalf("epoch %d after an applied command, want %d", c.Epoch(), epoch+1)
	}
	if want != CatalogOK {
		if res.Detail == "" {
			tb.Fatalf("code %v without detail", res.Code)
		}
		if !bytes.Equal(catBytes(tb, c), before) {
			tb.Fatalf("a %v command changed the catalogue", res.Code)
		}
	}
	return res
}

// testCatalog has nodes a, b, c, d ALIVE, dr DRAINING, rm REMOVED, and queue
// "q" with two partitions of three replicas on a, b, c.
func testCatalog(tb testing.TB) *Catalog {
	tb.Helper()
	c := NewCatalog()
	for i, id := range []string{"a", "b", "c", "d", "dr", "rm"} {
		applyCat(tb, c, cmdNode(int64(10+i), id), CatalogOK)
	}
	applyCat(tb, c, cmdState(20, "dr", stDraining), CatalogOK)
	applyCat(tb, c, cmdState(21, "rm", stRemoved), CatalogOK)
	applyCat(tb, c, cmdCreate(30, "q", []string{"a", "b", "c"}, []string{"b", "c", "a"}), CatalogOK)
	return c
}

func mustQueue(tb testing.TB, c *Catalog, name string) *fsmv1.QueueInfo {
	tb.Helper()
	q, ok := c.Queue(name)
	if !ok {
		tb.Fatalf("queue %q missing", name)
	}
	return q
}

// --- names and codes ----------------------------------------------------------

func TestCatalogNames(t *testing.T) {
	long := strings.Repeat("x", 128)
	for _, tc := range []struct {
		s           string
		queue, node bool
	}{
		{"orders", true, true}, {"a.b_c-D9", true, true}, {long, true, true},
		{"", false, false}, {long + "x", false, false}, {".hidden", false, false},
		{"-x", false, false}, {"a/b", false, false}, {"a b", false, false},
		{"é", false, false}, {"10.0.0.1:7421", false, true}, {":x", false, true},
	} {
		if err := ValidQueueName(tc.s); (err == nil) != tc.queue || (err != nil && !errors.Is(err, ErrInvalid)) {
			t.Errorf("ValidQueueName(%q) = %v, want ok=%v", tc.s, err, tc.queue)
		}
		if err := ValidNodeID(tc.s); (err == nil) != tc.node {
			t.Errorf("ValidNodeID(%q) = %v, want ok=%v", tc.s, err, tc.node)
		}
	}
	for code := CatalogOK; code <= CatalogRefused+1; code++ {
		if code.String() == "" || (code <= CatalogRefused && code.String() == "unknown code") {
			t.Errorf("code %d has string %q", code, code.String())
		}
	}
}

// --- nodes ------------------------------------------------------------------

func TestCatalogUpsertNode(t *testing.T) {
	c := NewCatalog()
	n := &fsmv1.NodeInfo{Id: "n1", ClientAddr: "h:7420", State: stRemoved, JoinedAt: 99, UpdatedAt: 99}
	applyCat(t, c, cmdUpsert(100, n), CatalogOK)
	got, _ := c.Node("n1")
	if got.GetState() != stAlive || got.GetJoinedAt() != 100 || got.GetUpdatedAt() != 100 || got.GetClientAddr() != "h:7420" {
		t.Fatalf("new node %v", got)
	}
	applyCat(t, c, cmdState(110, "n1", stDraining), CatalogOK)
	applyCat(t, c, cmdUpsert(120, &fsmv1.NodeInfo{Id: "n1", ClientAddr: "h2:7420", Version: "v2", State: stAlive}), CatalogOK)
	got, _ = c.Node("n1")
	if got.GetState() != stDraining || got.GetJoinedAt() != 100 || got.GetUpdatedAt() != 120 || got.GetClientAddr() != "h2:7420" || got.GetVersion() != "v2" {
		t.Fatalf("refreshed node %v", got)
	}
	for name, tc := range map[string]struct {
		cmd  *fsmv1.CatalogCommand
		want CatalogCode
	}{
		"no node":     {cmdUpsert(130, nil), CatalogInvalid},
		"no id":       {cmdUpsert(130, &fsmv1.NodeInfo{}), CatalogInvalid},
		"slash in id": {cmdNode(130, "a/1"), CatalogInvalid},
		"long zone":   {cmdUpsert(130, &fsmv1.NodeInfo{Id: "x", Zone: strings.Repeat("z", MaxNodeFieldBytes+1)}), CatalogInvalid},
		"bad utf8":    {cmdUpsert(130, &fsmv1.NodeInfo{Id: "x", HttpAddr: "\xff"}), CatalogInvalid},
	} {
		t.Run(name, func(t *testing.T) { applyCat(t, c, tc.cmd, tc.want) })
	}
	if len(c.Nodes()) != 1 {
		t.Fatalf("nodes %v", c.Nodes())
	}
}

func TestCatalogSetNodeState(t *testing.T) {
	c := testCatalog(t)
	for _, tc := range []struct {
		name string
		cmd  *fsmv1.CatalogCommand
		want CatalogCode
	}{
		{"unknown node", cmdState(40, "zz", stDraining), CatalogNotFound},
		{"unspecified", cmdState(40, "a", fsmv1.NodeState_NODE_STATE_UNSPECIFIED), CatalogInvalid},
		{"unknown state", cmdState(40, "a", 9), CatalogInvalid},
		{"bad id", cmdState(40, "", stAlive), CatalogInvalid},
		{"drain", cmdState(40, "a", stDraining), CatalogOK},
		{"drain again", cmdState(41, "a", stDraining), CatalogOK},
		{"undrain", cmdState(42, "a", stAlive), CatalogOK},
		{"remove while hosting", cmdState(43, "a", stRemoved), CatalogRefused},
		{"remove idle", cmdState(44, "d", stRemoved), CatalogOK},
		{"removed stays removed", cmdState(45, "d", stAlive), CatalogRefused},
		{"remove twice", cmdState(45, "d", stRemoved), CatalogRefused},
		{"delete queue", cmdDelete(46, "q", 0), CatalogOK},
		{"remove after move", cmdState(47, "a", stRemoved), CatalogOK},
	} {
		t.Run(tc.name, func(t *testing.T) { applyCat(t, c, tc.cmd, tc.want) })
	}
	if n, _ := c.Node("a"); n.GetState() != stRemoved || n.GetUpdatedAt() != 47 {
		t.Fatalf("node a %v", n)
	}
}

func TestCatalogRemovedNeverComesBack(t *testing.T) {
	c := testCatalog(t)
	for round := 0; round < 2; round++ {
		applyCat(t, c, cmdNode(50, "rm"), CatalogRefused)
		applyCat(t, c, cmdState(50, "rm", stAlive), CatalogRefused)
		applyCat(t, c, cmdState(50, "rm", stDraining), CatalogRefused)
		applyCat(t, c, cmdCreate(50, "q2", []string{"a", "rm"}), CatalogRefused)
		applyCat(t, c, cmdAssign(50, "q", 0, 1, "", catRep("rm", 0, false), catRep("a", 1, true)), CatalogRefused)
		// A restored catalogue remembers it too.
		nc := NewCatalog()
		if err := nc.Restore(bytes.NewReader(catBytes(t, c))); err != nil {
			t.Fatal(err)
		}
		c = nc
	}
}

// --- queues -------------------------------------------------------------------

func TestCatalogCreateQueue(t *testing.T) {
	base := func() *fsmv1.CatalogCommand {
		return cmdCreate(100, "new", []string{"a", "b", "c"}, []string{"c", "d", "a"})
	}
	for _, tc := range []struct {
		name string
		mut  func(q *fsmv1.CreateQueue)
		want CatalogCode
	}{
		{"ok", func(q *fsmv1.CreateQueue) {}, CatalogOK},
		{"exists", func(q *fsmv1.CreateQueue) { q.Name = "q" }, CatalogExists},
		{"bad name", func(q *fsmv1.CreateQueue) { q.Name = "-q" }, CatalogInvalid},
		{"no settings", func(q *fsmv1.CreateQueue) { q.Settings = nil }, CatalogInvalid},
		{"bad settings", func(q *fsmv1.CreateQueue) { q.Settings.VisibilityTimeout = 0 }, CatalogInvalid},
		{"rf 0", func(q *fsmv1.CreateQueue) { q.ReplicationFactor = 0 }, CatalogInvalid},
		{"rf 8", func(q *fsmv1.CreateQueue) { q.ReplicationFactor = 8 }, CatalogInvalid},
		{"no partitions", func(q *fsmv1.CreateQueue) { q.Partitions = nil }, CatalogInvalid},
		{"too many partitions", func(q *fsmv1.CreateQueue) {
			for len(q.Partitions) <= MaxQueuePartitions {
				a := proto.CloneOf(q.Partitions[0])
				a.Partition = uint32(len(q.Partitions))
				q.Partitions = append(q.Partitions, a)
			}
		}, CatalogInvalid},
		{"partition out of range", func(q *fsmv1.CreateQueue) { q.Partitions[1].Partition = 2 }, CatalogInvalid},
		{"partition twice", func(q *fsmv1.CreateQueue) { q.Partitions[1].Partition = 0 }, CatalogInvalid},
		{"nil assignment", func(q *fsmv1.CreateQueue) { q.Partitions[1] = nil }, CatalogInvalid},
		{"assignment epoch", func(q *fsmv1.CreateQueue) { q.Partitions[0].Epoch = 1 }, CatalogInvalid},
		{"too few replicas", func(q *fsmv1.CreateQueue) { q.Partitions[0].Replicas = q.Partitions[0].Replicas[:2] }, CatalogInvalid},
		{"same node twice", func(q *fsmv1.CreateQueue) { q.Partitions[0].Replicas[1].NodeId = "a" }, CatalogInvalid},
		{"non-voter", func(q *fsmv1.CreateQueue) { q.Partitions[0].Replicas[1].Voter = false }, CatalogInvalid},
		{"preferred elsewhere", func(q *fsmv1.CreateQueue) { q.Partitions[0].PreferredLeader = "d" }, CatalogInvalid},
		{"preferred ok", func(q *fsmv1.CreateQueue) { q.Partitions[0].PreferredLeader = "b" }, CatalogOK},
		{"replica epoch ignored", func(q *fsmv1.CreateQueue) { q.Partitions[0].Replicas[0].Epoch = 77 }, CatalogOK},
		{"unknown node", func(q *fsmv1.CreateQueue) { q.Partitions[1].Replicas[0].NodeId = "zz" }, CatalogRefused},
		{"draining node", func(q *fsmv1.CreateQueue) { q.Partitions[1].Replicas[0].NodeId = "dr" }, CatalogRefused},
		{"removed node", func(q *fsmv1.CreateQueue) { q.Partitions[1].Replicas[0].NodeId = "rm" }, CatalogRefused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testCatalog(t)
			cmd := base()
			tc.mut(cmd.GetCreateQueue())
			res := applyCat(t, c, cmd, tc.want)
			if tc.want != CatalogOK {
				return
			}
			q := mustQueue(t, c, "new")
			if !proto.Equal(q, res.Queue) || q.GetId() != 2 || q.GetCreatedAt() != 100 || q.GetReplicationFactor() != 3 {
				t.Fatalf("queue %v, result %v", q, res.Queue)
			}
			// q holds epochs 1..6; the new replicas get 7..12 in partition order.
			want := uint64(7)
			for i, a := range q.GetPartitions() {
				if a.GetPartition() != uint32(i) || a.GetEpoch() != 1 {
					t.Fatalf("assignment %v", a)
				}
				for _, r := range a.GetReplicas() {
					if r.GetEpoch() != want || !r.GetVoter() {
						t.Fatalf("replica %v, want epoch %d", r, want)
					}
					want++
				}
			}
			res.Queue.Name = "mutated"
			res.Queue.Partitions[0].Replicas[0].NodeId = "mutated"
			if !proto.Equal(mustQueue(t, c, "new"), q) {
				t.Fatal("the result shares state with the catalogue")
			}
		})
	}
}

func TestCatalogQueueSettingsAndDelete(t *testing.T) {
	c := testCatalog(t)
	s := DefaultSettings()
	s.MaxMessages, s.Partition = 500, 3
	bad := DefaultSettings()
	bad.DedupWindow = -1
	applyCat(t, c, cmdSettings(40, "nope", s), CatalogNotFound)
	applyCat(t, c, cmdSettings(40, "q", bad), CatalogInvalid)
	applyCat(t, c, cmdSettings(40, "q", nil), CatalogInvalid)
	applyCat(t, c, cmdSettings(40, "q", s), CatalogOK)
	if got := mustQueue(t, c, "q").GetSettings(); got.GetMaxMessages() != 500 || got.GetPartition() != 0 {
		t.Fatalf("settings %v", got)
	}
	applyCat(t, c, cmdDelete(41, "nope", 0), CatalogNotFound)
	applyCat(t, c, cmdDelete(41, "", 0), CatalogInvalid)
	applyCat(t, c, cmdDelete(41, "q", 7), CatalogConflict)
	applyCat(t, c, cmdDelete(41, "q", 1), CatalogOK)
	applyCat(t, c, cmdDelete(42, "q", 0), CatalogNotFound)
	applyCat(t, c, cmdCreate(43, "q", []string{"d"}), CatalogOK)
	applyCat(t, c, cmdDelete(44, "q", 1), CatalogConflict) // the old id guards the new queue
	applyCat(t, c, cmdDelete(44, "q", 2), CatalogOK)
}

func TestCatalogSetAssignment(t *testing.T) {
	c := testCatalog(t) // q/0 is a/1, b/2, c/3 at epoch 1
	for _, tc := range []struct {
		name  string
		cmd   *fsmv1.CatalogCommand
		want  CatalogCode
		epoch uint64
	}{
		{"no queue", cmdAssign(40, "nope", 0, 1, "", catRep("a", 1, true)), CatalogNotFound, 0},
		{"no partition", cmdAssign(40, "q", 2, 1, "", catRep("a", 1, true)), CatalogNotFound, 0},
		{"stale epoch", cmdAssign(40, "q", 0, 0, "", catRep("a", 1, true)), CatalogConflict, 0},
		{"no replicas", cmdAssign(40, "q", 0, 1, ""), CatalogInvalid, 0},
		{"eight replicas", cmdAssign(40, "q", 0, 1, "", catRep("a", 1, true), catRep("b", 2, true), catRep("c", 3, true),
			catRep("d", 0, true), catRep("e", 0, true), catRep("f", 0, true), catRep("g", 0, true), catRep("h", 0, true)), CatalogInvalid, 0},
		{"same node twice", cmdAssign(40, "q", 0, 1, "", catRep("a", 1, true), catRep("a", 0, false)), CatalogInvalid, 0},
		{"no voter", cmdAssign(40, "q", 0, 1, "", catRep("a", 1, false)), CatalogInvalid, 0},
		{"nil replica", cmdAssign(40, "q", 0, 1, "", catRep("a", 1, true), nil), CatalogInvalid, 0},
		{"preferred elsewhere", cmdAssign(40, "q", 0, 1, "d", catRep("a", 1, true)), CatalogInvalid, 0},
		{"unknown node", cmdAssign(40, "q", 0, 1, "", catRep("a", 1, true), catRep("zz", 0, false)), CatalogRefused, 0},
		{"removed node", cmdAssign(40, "q", 0, 1, "", catRep("a", 1, true), catRep("rm", 0, false)), CatalogRefused, 0},
		{"epoch of another node", cmdAssign(40, "q", 0, 1, "", catRep("a", 2, true)), CatalogInvalid, 0},
		{"epoch never given", cmdAssign(40, "q", 0, 1, "", catRep("a", 99, true)), CatalogInvalid, 0},
		{"epoch of another partition", cmdAssign(40, "q", 0, 1, "", catRep("b", 4, true)), CatalogInvalid, 0},
		{"add learner on draining", cmdAssign(40, "q", 0, 1, "",
			catRep("a", 1, true), catRep("b", 2, true), catRep("c", 3, true), catRep("dr", 0, false)), CatalogOK, 2},
		{"promote", cmdAssign(41, "q", 0, 2, "dr", catRep("a", 1, true), catRep("b", 2, true), catRep("c", 3, true), catRep("dr", 7, true)), CatalogOK, 3},
		{"drop c", cmdAssign(42, "q", 0, 3, "", catRep("a", 1, true), catRep("b", 2, true), catRep("dr", 7, true)), CatalogOK, 4},
		{"old c epoch", cmdAssign(43, "q", 0, 4, "", catRep("a", 1, true), catRep("b", 2, true), catRep("c", 3, true)), CatalogInvalid, 0},
		{"re-add c", cmdAssign(43, "q", 0, 4, "c", catRep("a", 1, true), catRep("b", 2, true), catRep("c", 0, true)), CatalogOK, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if res := applyCat(t, c, tc.cmd, tc.want); res.Epoch != tc.epoch {
				t.Fatalf("result epoch %d, want %d", res.Epoch, tc.epoch)
			}
		})
	}
	a := mustQueue(t, c, "q").GetPartitions()[0]
	want := []*fsmv1.Replica{catRep("a", 1, true), catRep("b", 2, true), catRep("c", 8, true)}
	if a.GetEpoch() != 5 || a.GetPreferredLeader() != "c" || len(a.GetReplicas()) != 3 {
		t.Fatalf("assignment %v", a)
	}
	for i, r := range a.GetReplicas() {
		if !proto.Equal(r, want[i]) {
			t.Fatalf("replica %d = %v, want %v", i, r, want[i])
		}
	}
}

func TestCatalogReplicaEpochsNeverReused(t *testing.T) {
	c := testCatalog(t)
	seen := map[uint64]string{}
	collect := func() {
		for _, q := range c.Queues() {
			for _, a := range q.GetPartitions() {
				for _, r := range a.GetReplicas() {
					id := q.GetName() + "/" + r.GetNodeId()
					if prev, ok := seen[r.GetEpoch()]; ok && prev != id {
						t.Fatalf("replica epoch %d used by %s and %s", r.GetEpoch(), prev, id)
					}
					seen[r.GetEpoch()] = id
				}
			}
		}
	}
	collect()
	for i := int64(0); i < 3; i++ {
		applyCat(t, c, cmdDelete(100+i*10, "q", 0), CatalogOK)
		res := applyCat(t, c, cmdCreate(101+i*10, "q", []string{"a", "b", "c"}, []string{"b", "c", "a"}), CatalogOK)
		if res.Queue.GetId() != uint64(i+2) {
			t.Fatalf("recreated queue id %d", res.Queue.GetId())
		}
		collect()
		// Move the replica on c away and back: it comes back as a new member.
		r := res.Queue.GetPartitions()[0].GetReplicas()
		applyCat(t, c, cmdAssign(102+i*10, "q", 0, 1, "", r[0], r[1]), CatalogOK)
		applyCat(t, c, cmdAssign(103+i*10, "q", 0, 2, "", r[0], r[1], catRep("c", 0, false)), CatalogOK)
		collect()
	}
	if len(seen) != 6+3*7 {
		t.Fatalf("%d distinct replica epochs", len(seen))
	}
}

// --- commands that change nothing --------------------------------------------

func TestCatalogRefusedCommands(t *testing.T) {
	c := testCatalog(t)
	unknownOp := protowire.AppendTag(encodeCat(t, catCmd(50)), 99, protowire.BytesType)
	unknownOp = protowire.AppendBytes(unknownOp, nil)
	for _, tc := range []struct {
		name string
		data []byte
		cmd  *fsmv1.CatalogCommand
		want CatalogCode
	}{
		{name: "nil command", want: CatalogInvalid},
		{name: "version 0", cmd: &fsmv1.CatalogCommand{Stamp: 50, Op: cmdNode(50, "x").Op}, want: CatalogUnsupported},
		{name: "version 2", cmd: &fsmv1.CatalogCommand{Version: 2, Stamp: 50, Op: cmdNode(50, "x").Op}, want: CatalogUnsupported},
		{name: "no op", cmd: catCmd(50), want: CatalogUnsupported},
		{name: "unknown op field", data: unknownOp, want: CatalogUnsupported},
		{name: "garbage", data: []byte{0xff, 0xff, 0xff}, want: CatalogInvalid},
		{name: "truncated", data: encodeCat(t, cmdNode(50, "x"))[:5], want: CatalogInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, now := catBytes(t, c), c.Now()
			var res *CatalogResult
			if tc.data != nil {
				res = c.ApplyEncoded(tc.data)
			} else {
				res = c.Apply(tc.cmd)
			}
			if res.Code != tc.want || res.Detail == "" || c.Now() != now || !bytes.Equal(before, catBytes(t, c)) {
				t.Fatalf("result %v %q; now %d -> %d", res.Code, res.Detail, now, c.Now())
			}
		})
	}
	if err := ValidateCatalogCommand(catCmd(1)); !errors.Is(err, ErrUnknownCommand) {
		t.Fatalf("ValidateCatalogCommand(no op) = %v", err)
	}
}

func TestCatalogNow(t *testing.T) {
	c := NewCatalog()
	applyCat(t, c, cmdNode(100, "a"), CatalogOK)
	applyCat(t, c, cmdNode(50, "b"), CatalogOK) // an older stamp never moves time back
	if n, _ := c.Node("b"); c.Now() != 100 || n.GetJoinedAt() != 100 {
		t.Fatalf("now %d, joined %d", c.Now(), n.GetJoinedAt())
	}
	applyCat(t, c, cmdState(200, "zz", stDraining), CatalogNotFound) // refused: time stays
	if c.Now() != 100 || c.Epoch() != 2 {
		t.Fatalf("now %d epoch %d", c.Now(), c.Epoch())
	}
	n, _ := c.Node("a")
	n.Zone = "mutated"
	c.Nodes()[0].Id = "mutated"
	if n2, _ := c.Node("a"); n2.GetZone() != "z-a" || c.Nodes()[0].GetId() != "a" {
		t.Fatal("reads share state with the catalogue")
	}
}

// --- determinism and snapshots ------------------------------------------------

// catScript is a fixed mix of commands, some of them refused, that inserts
// nodes and queues out of key order.
func catScript() []*fsmv1.CatalogCommand {
	var cmds []*fsmv1.CatalogCommand
	stamp := int64(1000)
	next := func() int64 { stamp += 7; return stamp % 1100 } // wraps: some stamps go back
	for i := 9; i >= 0; i-- {
		cmds = append(cmds, cmdNode(next(), fmt.Sprintf("n%d", i)))
	}
	node := func(i int) string { return fmt.Sprintf("n%d", i%10) }
	for q := 0; q < 8; q++ {
		var parts [][]string
		for p := 0; p < 1+q%4; p++ {
			parts = append(parts, []string{node(q + p), node(q + p + 1), node(q + p + 2)})
		}
		cmds = append(cmds, cmdCreate(next(), fmt.Sprintf("queue-%d", 7-q), parts...))
	}
	s := DefaultSettings()
	s.MaxBytes = 1 << 30
	cmds = append(cmds,
		cmdState(next(), "n3", stDraining),
		cmdDelete(next(), "queue-2", 0),
		cmdSettings(next(), "queue-5", s),
		cmdAssign(next(), "queue-7", 0, 1, "", catRep("n0", 1, true), catRep("n1", 2, true), catRep("n4", 0, false)),
		cmdAssign(next(), "queue-7", 0, 2, "n4", catRep("n0", 1, true), catRep("n4", 44, true)),
		cmdState(next(), "n2", stRemoved),
		cmdCreate(next(), "queue-2", []string{"n5", "n6"}, []string{"n6", "n7"}),
		cmdNode(next(), "n3"),
		cmdDelete(next(), "queue-7", 0),
		cmdState(next(), "n0", stDraining),
		cmdCreate(next(), "queue-9", []string{"n0"}),
		cmdNode(next(), "a:1"),
	)
	return cmds
}

func TestCatalogDeterministicSnapshots(t *testing.T) {
	script := catScript()
	a, b := NewCatalog(), NewCatalog()
	oks := 0
	for _, cmd := range script {
		ra, rb := a.ApplyEncoded(encodeCat(t, cmd)), b.Apply(cmd)
		if ra.Code != rb.Code || ra.Detail != rb.Detail || ra.Epoch != rb.Epoch || !proto.Equal(ra.Queue, rb.Queue) {
			t.Fatalf("results differ: %+v vs %+v", ra, rb)
		}
		if ra.Code == CatalogOK {
			oks++
		}
	}
	if oks < len(script)-4 || a.Epoch() != uint64(oks) {
		t.Fatalf("%d of %d commands applied, epoch %d", oks, len(script), a.Epoch())
	}
	want := catBytes(t, a)
	if !bytes.Equal(want, catBytes(t, b)) {
		t.Fatal("equal command sequences give different snapshots")
	}
	if !slices.IsSortedFunc(a.Nodes(), func(x, y *fsmv1.NodeInfo) int { return strings.Compare(x.GetId(), y.GetId()) }) ||
		!slices.IsSortedFunc(a.Queues(), func(x, y *fsmv1.QueueInfo) int { return strings.Compare(x.GetName(), y.GetName()) }) {
		t.Fatal("Nodes or Queues not sorted")
	}
	// Snapshot and restore at every point, then go on: same bytes as never
	// snapshotted.
	for cut := 0; cut <= len(script); cut++ {
		c := NewCatalog()
		for _, cmd := range script[:cut] {
			c.Apply(cmd)
		}
		r := NewCatalog()
		if err := r.Restore(bytes.NewReader(catBytes(t, c))); err != nil {
			t.Fatalf("cut %d: %v", cut, err)
		}
		for _, cmd := range script[cut:] {
			r.Apply(cmd)
		}
		if !bytes.Equal(want, catBytes(t, r)) {
			t.Fatalf("cut %d: restored catalogue diverged", cut)
		}
	}
}

// frameCat frames m like WriteTo, with a valid checksum.
func frameCat(tb testing.TB, m *fsmv1.CatalogSnapshot) []byte {
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	b := binary.BigEndian.AppendUint32([]byte(catalogSnapshotMagic), uint32(len(body)))
	b = append(b, body...)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(body, crc32.MakeTable(crc32.Castagnoli)))
}

func TestCatalogCorruptSnapshots(t *testing.T) {
	good := catBytes(t, testCatalog(t))
	victim := NewCatalog()
	for _, cmd := range catScript() {
		victim.Apply(cmd)
	}
	state := catBytes(t, victim)
	refuse := func(name string, data []byte) {
		t.Helper()
		err := victim.Restore(bytes.NewReader(data))
		if !errors.Is(err, ErrCorruptCatalogSnapshot) {
			t.Fatalf("%s: Restore = %v", name, err)
		}
		if !bytes.Equal(state, catBytes(t, victim)) {
			t.Fatalf("%s: a refused restore changed the catalogue", name)
		}
	}
	for i := range good {
		bad := bytes.Clone(good)
		bad[i] ^= 0x10
		refuse(fmt.Sprintf("flipped byte %d", i), bad)
	}
	for n := range good {
		refuse(fmt.Sprintf("truncated to %d", n), good[:n])
	}
	refuse("wrong magic", append([]byte("QQPSNAP1"), good[8:]...))
	refuse("trailing data", append(bytes.Clone(good), 0))
	huge := bytes.Clone(good)
	binary.BigEndian.PutUint32(huge[8:], maxCatalogSnapshotBytes+1)
	refuse("huge length", huge)

	// Well-framed snapshots that break an invariant.
	base := testCatalog(t).Snapshot().msg
	for name, mut := range map[string]func(s *fsmv1.CatalogSnapshot){
		"version":            func(s *fsmv1.CatalogSnapshot) { s.Version = 2 },
		"next queue id 0":    func(s *fsmv1.CatalogSnapshot) { s.NextQueueId = 0 },
		"duplicate node":     func(s *fsmv1.CatalogSnapshot) { s.Nodes[1].Id = "a" },
		"unsorted nodes":     func(s *fsmv1.CatalogSnapshot) { s.Nodes[0], s.Nodes[1] = s.Nodes[1], s.Nodes[0] },
		"node state":         func(s *fsmv1.CatalogSnapshot) { s.Nodes[0].State = 0 },
		"bad node id":        func(s *fsmv1.CatalogSnapshot) { s.Nodes[0].Id = "" },
		"duplicate queue":    func(s *fsmv1.CatalogSnapshot) { s.Queues = append(s.Queues, s.Queues[0]) },
		"queue id 0":         func(s *fsmv1.CatalogSnapshot) { s.Queues[0].Id = 0 },
		"queue id ahead":     func(s *fsmv1.CatalogSnapshot) { s.Queues[0].Id = s.NextQueueId },
		"settings":           func(s *fsmv1.CatalogSnapshot) { s.Queues[0].Settings = nil },
		"settings partition": func(s *fsmv1.CatalogSnapshot) { s.Queues[0].Settings.Partition = 1 },
		"rf":                 func(s *fsmv1.CatalogSnapshot) { s.Queues[0].ReplicationFactor = 0 },
		"partition number":   func(s *fsmv1.CatalogSnapshot) { s.Queues[0].Partitions[1].Partition = 0 },
		"assignment epoch":   func(s *fsmv1.CatalogSnapshot) { s.Queues[0].Partitions[0].Epoch = 0 },
		"unknown node":       func(s *fsmv1.CatalogSnapshot) { s.Queues[0].Partitions[0].Replicas[0].NodeId = "zz" },
		"removed node":       func(s *fsmv1.CatalogSnapshot) { s.Queues[0].Partitions[0].Replicas[0].NodeId = "rm" },
		"epoch reused":       func(s *fsmv1.CatalogSnapshot) { s.Queues[0].Partitions[1].Replicas[0].Epoch = 1 },
		"epoch ahead":        func(s *fsmv1.CatalogSnapshot) { s.Queues[0].Partitions[0].Replicas[0].Epoch = s.NextReplicaEpoch },
		"no voter": func(s *fsmv1.CatalogSnapshot) {
			for _, r := range s.Queues[0].Partitions[0].Replicas {
				r.Voter = false
			}
		},
	} {
		s := proto.CloneOf(base)
		mut(s)
		refuse(name, frameCat(t, s))
	}
	if err := victim.Restore(bytes.NewReader(frameCat(t, proto.CloneOf(base)))); err != nil {
		t.Fatalf("reframed good snapshot: %v", err)
	}
	if !bytes.Equal(catBytes(t, victim), good) {
		t.Fatal("restored catalogue differs")
	}
}

// --- through the Raft adapter -----------------------------------------------

type catSink struct {
	bytes.Buffer
	cancelled bool
}

func (s *catSink) ID() string    { return "catalog-test" }
func (s *catSink) Cancel() error { s.cancelled = true; return nil }
func (s *catSink) Close() error  { return nil }

func TestCatalogRaftFSM(t *testing.T) {
	f := NewCatalogFSM()
	out := f.ApplyBatch([]*raft.Log{
		{Index: 1, Type: raft.LogConfiguration, Data: []byte("not a command")},
		{Index: 2, Type: raft.LogCommand, Data: encodeCat(t, cmdNode(10, "a"))},
		{Index: 3, Type: raft.LogNoop},
		{Index: 4, Type: raft.LogCommand, Data: []byte{0xff}},
		{Index: 5, Type: raft.LogCommand, Data: encodeCat(t, cmdCreate(11, "q", []string{"a"}))},
	})
	if out[0] != nil || out[2] != nil {
		t.Fatalf("non-command entries returned %v, %v", out[0], out[2])
	}
	for i, want := range map[int]CatalogCode{1: CatalogOK, 3: CatalogInvalid, 4: CatalogOK} {
		if r, ok := out[i].(*CatalogResult); !ok || r.Code != want {
			t.Fatalf("entry %d returned %#v, want %v", i+1, out[i], want)
		}
	}
	if r := out[4].(*CatalogResult); r.Queue.GetName() != "q" || r.Queue.GetId() != 1 {
		t.Fatalf("created %v", r.Queue)
	}
	if r := f.Apply(&raft.Log{Index: 6, Type: raft.LogBarrier}); r != nil || f.AppliedIndex() != 6 {
		t.Fatalf("barrier returned %v, applied index %d", r, f.AppliedIndex())
	}
	var want []byte
	f.Read(func(c *Catalog) { want = catBytes(t, c) })

	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// The snapshot is a point-in-time copy: later commands are not in it.
	f.Apply(&raft.Log{Index: 7, Type: raft.LogCommand, Data: encodeCat(t, cmdNode(12, "b"))})
	sink := &catSink{}
	if err := snap.Persist(sink); err != nil || sink.cancelled {
		t.Fatalf("Persist = %v, cancelled %v", err, sink.cancelled)
	}
	snap.Release()
	frame := append([]byte(indexMagic), 0, 0, 0, 0, 0, 0, 0, 6)
	if !bytes.Equal(sink.Bytes(), append(frame, want...)) {
		t.Fatal("persisted snapshot is not the applied index and the state at Snapshot time")
	}

	g := NewCatalogFSM()
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if g.AppliedIndex() != 6 {
		t.Fatalf("restored applied index %d, want the snapshot's 6", g.AppliedIndex())
	}
	g.Read(func(c *Catalog) {
		if !bytes.Equal(catBytes(t, c), want) || c.Epoch() != 2 {
			t.Fatalf("restored catalogue differs (epoch %d)", c.Epoch())
		}
	})
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()[:20]))); err == nil {
		t.Fatal("restored a truncated snapshot")
	}
	g.Read(func(c *Catalog) {
		if !bytes.Equal(catBytes(t, c), want) {
			t.Fatal("a refused restore changed the catalogue")
		}
	})
}

// --- fuzzing ------------------------------------------------------------------

// FuzzCatalogApply applies a sequence of commands (each a varint length and
// the encoded command; a bad length makes the rest one command) to a small
// catalogue, and checks after each one the catalogue contract and that a
// snapshot restores to the same bytes.
func FuzzCatalogApply(f *testing.F) {
	base := catBytes(f, testCatalog(f))
	seed := func(cmds ...*fsmv1.CatalogCommand) {
		var b []byte
		for _, c := range cmds {
			e := encodeCat(f, c)
			b = append(protowire.AppendVarint(b, uint64(len(e))), e...)
		}
		f.Add(b)
	}
	seed(cmdNode(40, "e"), cmdState(41, "e", stDraining))
	seed(cmdCreate(40, "q2", []string{"a", "b"}, []string{"c", "d"}), cmdDelete(41, "q2", 2))
	seed(cmdAssign(40, "q", 0, 1, "", catRep("a", 1, true), catRep("d", 0, false)),
		cmdAssign(41, "q", 0, 2, "d", catRep("a", 1, true), catRep("d", 7, true)), cmdState(42, "b", stRemoved))
	seed(cmdSettings(40, "q", DefaultSettings()), cmdState(41, "d", stRemoved), cmdNode(42, "d"))
	seed(cmdDelete(40, "q", 1), cmdState(41, "a", stRemoved), cmdState(41, "b", stRemoved))
	f.Add([]byte{0xff, 0x01})
	f.Fuzz(func(t *testing.T, data []byte) {
		c := NewCatalog()
		if err := c.Restore(bytes.NewReader(base)); err != nil {
			t.Fatal(err)
		}
		for steps := 0; len(data) > 0 && steps < 64; steps++ {
			var cmd []byte
			n, k := protowire.ConsumeVarint(data)
			if k < 0 || n > uint64(len(data)-k) {
				cmd, data = data, nil
			} else {
				cmd, data = data[k:k+int(n)], data[k+int(n):]
			}
			before, epoch := catBytes(t, c), c.Epoch()
			res := c.ApplyEncoded(cmd)
			after := catBytes(t, c)
			if res.Code == CatalogOK && c.Epoch() != epoch+1 {
				t.Fatalf("applied command moved the epoch %d -> %d", epoch, c.Epoch())
			}
			if res.Code != CatalogOK && !bytes.Equal(before, after) {
				t.Fatalf("%v command changed the catalogue", res.Code)
			}
			r := NewCatalog()
			if err := r.Restore(bytes.NewReader(after)); err != nil {
				t.Fatalf("restore after %v: %v", res.Code, err)
			}
			if !bytes.Equal(catBytes(t, r), after) {
				t.Fatal("snapshot round trip changed the bytes")
			}
		}
	})
}

// A snapshot written before the index frame existed still restores.
func TestRaftFSMRestoreUnframed(t *testing.T) {
	c := testCatalog(t)
	g := NewCatalogFSM()
	if err := g.Restore(io.NopCloser(bytes.NewReader(catBytes(t, c)))); err != nil {
		t.Fatal(err)
	}
	g.Read(func(got *Catalog) {
		if !bytes.Equal(catBytes(t, got), catBytes(t, c)) {
			t.Fatal("unframed snapshot restored a different catalogue")
		}
	})
	if g.AppliedIndex() != 0 {
		t.Fatalf("applied index %d after an unframed restore, want 0", g.AppliedIndex())
	}
}
