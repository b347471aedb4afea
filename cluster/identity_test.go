package cluster

import (
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/types/known/durationpb"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// Issue 11: a wiped node must never answer for the identities it held.
//
// The loss these tests reproduce: the leader of a group acknowledged
// writes that only it and one follower (F) hold; a third member (L) lags.
// The leader's disk is wiped and it restarts at once. If the new, empty
// incarnation answers Raft traffic meant for the old member, L gets the
// missing vote from it, wins an election without the acknowledged
// entries, and makes F delete them. The network makes the order
// deterministic: L is cut off from the leader while the writes are
// acknowledged, and F from every other member of the group while L
// campaigns (in the field, F refused L's vote because it had heard from
// the leader a moment before). Both tests fail on the code before the
// fix.

// transferController makes node to the controller leader.
func (c *testCluster) transferController(to int) {
	c.t.Helper()
	target := c.nodes[to].ctrl.g
	c.waitFor(fmt.Sprintf("n%d to lead the controller", to+1), 30*time.Second, func() bool {
		if target.raft.State() == raft.Leader {
			return true
		}
		for _, n := range c.nodes {
			if n != nil && n.ctrl.g.raft.State() == raft.Leader {
				_ = n.ctrl.g.raft.LeadershipTransferToServer(target.id, raftAddr(c.nodes[to].PeerAddr(), target.id)).Error()
			}
		}
		return target.raft.State() == raft.Leader
	})
}

// transferPartition makes node to the leader of queue's partition p.
func (c *testCluster) transferPartition(queue string, p uint32, to int) {
	c.t.Helper()
	_, cl := c.client(to)
	c.waitFor(fmt.Sprintf("n%d to lead %s/%d", to+1, queue, p), 30*time.Second, func() bool {
		if c.leaderNode(queue, p) == to {
			return true
		}
		ctx := ctxT(c.t, 10*time.Second)
		_, _ = cl.TransferLeadership(ctx, &qv1.TransferLeadershipRequest{Queue: queue, Partition: p, To: c.name(to)})
		return c.leaderNode(queue, p) == to
	})
}

// enqueueOne enqueues payload through q and fails the test unless it is
// acknowledged.
func enqueueOne(t *testing.T, q qv1.QueueServiceClient, queue, payload string) {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	if _, err := q.Enqueue(ctx, &qv1.EnqueueRequest{Queue: queue, Messages: []*qv1.Message{{Payload: []byte(payload), DedupId: payload}}}); err != nil {
		t.Fatalf("enqueue %s: %v", payload, err)
	}
}

func TestWipedPartitionLeaderNeverVotes(t *testing.T) {
	// Different timings of the restart after the wipe.
	for _, delay := range []time.Duration{0, 200 * time.Millisecond, 700 * time.Millisecond} {
		t.Run(fmt.Sprintf("restart after %v", delay), func(t *testing.T) {
			testWipedPartitionLeader(t, delay)
		})
	}
}

// memberID is node i's member of queue's partition p.
func (c *testCluster) memberID(i int, queue string, p uint32) string {
	c.t.Helper()
	r, ok := c.nodes[i].replicas.get(queue, p)
	if !ok {
		c.t.Fatalf("n%d has no replica of %s/%d", i+1, queue, p)
	}
	return string(r.g.id)
}

func testWipedPartitionLeader(t *testing.T, restartDelay time.Duration) {
	const (
		follower = 0 // n1 holds the acknowledged entries
		lagging  = 1 // n2 lags and will campaign
		leader   = 2 // n3 leads the partition and is wiped
		queue    = "ff"
	)
	c := startCluster(t, 3)
	q3, _ := c.client(leader)
	if _, err := q3.CreateQueue(ctxT(t, 10*time.Second), &qv1.CreateQueueRequest{Name: queue, Partitions: 1, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	c.waitFor("a partition leader", 10*time.Second, func() bool { return c.leaderNode(queue, 0) >= 0 })
	c.transferPartition(queue, 0, leader)
	f, l, old := c.memberID(follower, queue, 0), c.memberID(lagging, queue, 0), c.memberID(leader, queue, 0)

	// Messages every replica holds; acked below where n2 cannot see it.
	for i := range 10 {
		enqueueOne(t, q3, queue, fmt.Sprintf("old-%d", i))
	}
	c.waitFor("n2 to apply the first messages", 10*time.Second, func() bool {
		r, ok := c.nodes[lagging].replicas.get(queue, 0)
		ld, lok := c.nodes[leader].replicas.get(queue, 0)
		return ok && lok && r.g.raft.AppliedIndex() >= ld.g.raft.CommitIndex()
	})

	c.net.CutMembers(l, old)
	ctx := ctxT(t, 60*time.Second)
	res, err := q3.Receive(ctx, &qv1.ReceiveRequest{Queue: queue, Max: 10, Wait: durationpb.New(5 * time.Second)})
	if err != nil || len(res.GetMessages()) != 10 {
		t.Fatalf("receive: %d messages, %v", len(res.GetMessages()), err)
	}
	acked := map[string]bool{}
	var receipts []string
	for _, m := range res.GetMessages() {
		receipts = append(receipts, m.GetReceipt())
		acked[string(m.GetPayload())] = true
	}
	if _, err := q3.Ack(ctx, &qv1.AckRequest{Queue: queue, Receipts: receipts}); err != nil {
		t.Fatalf("ack: %v", err)
	}
	var stored []string
	for i := range 20 {
		p := fmt.Sprintf("new-%d", i)
		enqueueOne(t, q3, queue, p)
		stored = append(stored, p)
	}

	// Wipe the partition leader; cut n1's member off; n2's member can
	// reach n3 again.
	c.wipe(leader)
	c.net.CutMembers(f, "*")
	c.net.HealMembers(l, old)
	if restartDelay > 0 {
		time.Sleep(restartDelay) // the timing under test, not a wait for a condition
	}
	c.restart(leader)

	// The controller replaces n3's lost replica by a new member on n3.
	// n2 campaigns: its requests for n3's old member must reach no replica,
	// so it cannot win.
	newN3 := c.nodes[leader]
	c.waitFor("n3 to run a new replica of the partition", 60*time.Second, func() bool {
		r, ok := newN3.replicas.get(queue, 0)
		return ok && string(r.g.id) != old
	})
	c.waitFor("n2 to lead, or its requests for n3's old member to be refused", 60*time.Second, func() bool {
		return c.leaderNode(queue, 0) == lagging || newN3.mux.Stats().WrongTarget >= 5
	})
	if c.leaderNode(queue, 0) == lagging {
		t.Errorf("n2 became the leader of %s/0 without the acknowledged writes", queue)
	}

	c.net.Heal()
	c.waitFor("a partition leader after healing", 30*time.Second, func() bool { return c.leaderNode(queue, 0) >= 0 })
	q1, _ := c.client(follower)
	got := drain(t, q1, queue)
	for _, p := range stored {
		if got[p] == 0 {
			t.Errorf("acknowledged %s lost", p)
		}
	}
	for p := range acked {
		if got[p] > 0 {
			t.Errorf("acked %s delivered again", p)
		}
	}
	for p, k := range got {
		if k > 1 {
			t.Errorf("%s delivered %d times", p, k)
		}
	}
	// The wiped node's new replica catches up: three voters again.
	c.waitFor("the partition fully replicated again", 60*time.Second, func() bool {
		return c.fullyReplicated(queue, 3, map[string]bool{"n1": true, "n2": true, "n3": true})
	})
}

func TestWipedControllerVoterNeverVotes(t *testing.T) {
	for _, delay := range []time.Duration{0, 200 * time.Millisecond, 700 * time.Millisecond} {
		t.Run(fmt.Sprintf("restart after %v", delay), func(t *testing.T) {
			testWipedControllerVoter(t, delay)
		})
	}
}

func testWipedControllerVoter(t *testing.T, restartDelay time.Duration) {
	const (
		follower = 0 // n1 holds the acknowledged catalogue changes
		lagging  = 1 // n2 lags and will campaign
		leader   = 2 // n3 leads the controller and is wiped
	)
	c := startCluster(t, 3)
	c.transferController(leader)
	c.cut([]int{lagging}, []int{leader})
	q3, _ := c.client(leader)
	var created []string
	for i := range 3 {
		name := fmt.Sprintf("made-%d", i)
		if _, err := q3.CreateQueue(ctxT(t, 10*time.Second), &qv1.CreateQueueRequest{Name: name, Partitions: 1, Replicas: 3}); err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		created = append(created, name)
	}

	c.wipe(leader)
	c.cut([]int{follower}, []int{lagging, leader})
	c.net.HealLink(c.name(lagging), c.name(leader))
	if restartDelay > 0 {
		time.Sleep(restartDelay) // the timing under test, not a wait for a condition
	}
	c.restart(leader)
	newN3 := c.nodes[leader]
	c.waitFor("n2 to lead, or its vote requests for n3's old controller member to be refused", 30*time.Second, func() bool {
		return c.nodes[lagging].ctrl.g.raft.State() == raft.Leader || newN3.mux.Stats().WrongTarget >= 5
	})
	if c.nodes[lagging].ctrl.g.raft.State() == raft.Leader {
		t.Error("n2 became controller leader without the acknowledged catalogue changes")
	}

	c.net.Heal()
	c.waitFor("every node caught up with a controller leader", 60*time.Second, func() bool {
		for _, n := range c.nodes {
			if !n.ctrl.epochKnown() {
				return false
			}
		}
		return true
	})
	for _, name := range created {
		if _, ok := c.nodes[lagging].ctrl.queue(name); !ok {
			t.Errorf("queue %s, created and acknowledged, is gone", name)
		}
	}
	c.waitFor("every queue created before the wipe known to every node", 60*time.Second, func() bool {
		for _, n := range c.nodes {
			for _, name := range created {
				if _, ok := n.ctrl.queue(name); !ok {
					return false
				}
			}
		}
		return true
	})
	// The old member is gone from the group, the new one in it.
	c.waitFor("n3's new controller member in the group, its old one out", 60*time.Second, func() bool {
		f := c.nodes[follower].ctrl.g.raft.GetConfiguration()
		if f.Error() != nil {
			return false
		}
		n3 := 0
		for _, s := range f.Configuration().Servers {
			if nodeOfServer(s.ID) == c.name(leader) {
				if s.ID != newN3.ctrl.g.id {
					return false
				}
				n3++
			}
		}
		return n3 == 1
	})
}
