package cluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm"
	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
	peerv1 "github.com/quorumq/quorumq/proto/quorumq/peer/v1"
)

// The controller leader moves replicas, one SetAssignment at a time, each
// recorded in the catalogue, so that a new controller leader resumes
// where the last one stopped:
//
//  1. start: the replica to go is marked leaving and its replacement is
//     added as a non-voter on a healthy node, in one command;
//  2. the partition leader adds the non-voter, and promotes it once it
//     has caught up (members.go);
//  3. finish: once the partition's configuration shows the replacement as
//     a voter, it becomes a voter in the catalogue and the leaving replica
//     is dropped, in one command; the partition leader then removes it.
//
// A move whose target stops being healthy before step 3 is rolled back:
// the non-voter is dropped and the leaving mark cleared.
//
// A replica must go when it is marked leaving (rebalance), when its node
// is draining or removed, or when its node has been unreachable for
// Config.ReplaceAfter.

// maxMoves bounds the moves in progress over the whole cluster; each node
// is the target of at most one move at a time, and the source of at most
// one, so that recovery does not swamp anyone.
const maxMoves = 4

// targetGrace: a move's target that is not alive this long is given up.
const targetGrace = 30 * time.Second

// moveState is what one repair round knows of the cluster.
type moveState struct {
	c      *controller
	now    time.Time
	gossip map[string]Member
	nodes  map[string]*fsmv1.NodeInfo
	load   map[string]int // replicas per node
	target map[string]int // moves in progress to a node
	source map[string]int // moves in progress off a node
	moving int
}

// healthy: the node may take replicas.
func (s *moveState) healthy(id string) bool {
	n, ok := s.nodes[id]
	m, alive := s.gossip[id]
	return ok && n.GetState() == fsmv1.NodeState_NODE_STATE_ALIVE && alive && m.State == "alive"
}

// gone: the node has been unreachable for ReplaceAfter.
func (s *moveState) gone(id string) bool {
	after := s.c.n.cfg.ReplaceAfter
	if after < 0 {
		return false
	}
	m, ok := s.gossip[id]
	if !ok {
		// Never seen by this leader's gossip: count from when it took over.
		return s.now.Sub(s.c.leaderSince) >= after
	}
	return m.State != "alive" && s.now.Sub(m.Since) >= after
}

// mustGo reports whether replica r has to be moved, and why.
func (s *moveState) mustGo(r *fsmv1.Replica) (string, bool) {
	switch n := s.nodes[r.GetNodeId()]; {
	case r.GetLeaving():
		return "rebalance", true
	case n.GetState() == fsmv1.NodeState_NODE_STATE_DRAINING:
		return "node draining", true
	case n.GetState() == fsmv1.NodeState_NODE_STATE_REMOVED:
		return "node removed", true
	case s.gone(r.GetNodeId()):
		return "node unreachable", true
	}
	return "", false
}

// repair takes the next step of every move that can make one.
func (c *controller) repair(ctx context.Context, members []Member) error {
	s := &moveState{c: c, now: time.Now(), gossip: map[string]Member{}, nodes: map[string]*fsmv1.NodeInfo{},
		load: map[string]int{}, target: map[string]int{}, source: map[string]int{}}
	for _, m := range members {
		s.gossip[m.ID] = m
	}
	var queues []*fsmv1.QueueInfo
	c.read(func(cat *fsm.Catalog) {
		queues = cat.Queues()
		for _, n := range cat.Nodes() {
			s.nodes[n.GetId()] = n
		}
	})
	for _, q := range queues {
		for _, a := range q.GetPartitions() {
			moving := slices.ContainsFunc(a.GetReplicas(), func(r *fsmv1.Replica) bool { return !r.GetVoter() })
			for _, r := range a.GetReplicas() {
				s.load[r.GetNodeId()]++
				if !r.GetVoter() {
					s.moving++
					s.target[r.GetNodeId()]++
				}
				if r.GetLeaving() && moving {
					s.source[r.GetNodeId()]++
				}
			}
		}
	}
	var errs []error
	for _, q := range queues {
		for _, a := range q.GetPartitions() {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var err error
			if slices.ContainsFunc(a.GetReplicas(), func(r *fsmv1.Replica) bool { return !r.GetVoter() }) {
				err = s.advance(ctx, q, a)
			} else {
				err = s.start(ctx, q, a)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("queue %s partition %d: %w", q.GetName(), a.GetPartition(), err))
			}
		}
	}
	return errors.Join(errs...)
}

// start begins a move off the first replica that must go, if a target is
// free.
func (s *moveState) start(ctx context.Context, q *fsmv1.QueueInfo, a *fsmv1.PartitionAssignment) error {
	if s.moving >= maxMoves {
		return nil
	}
	var leaving *fsmv1.Replica
	var why string
	for _, r := range a.GetReplicas() {
		if w, ok := s.mustGo(r); ok && s.source[r.GetNodeId()] == 0 {
			leaving, why = r, w
			break
		}
	}
	if leaving == nil {
		// Nothing must go; but a partition with fewer replicas than its
		// replication factor (a replacement rolled back after the replica
		// it replaced was already dropped) gets one added.
		if len(a.GetReplicas()) >= int(q.GetReplicationFactor()) {
			return nil
		}
		why = "under-replicated"
	}
	to := s.pickTarget(a)
	if to == "" {
		return nil // no node can take it now; retried next round
	}
	rs := make([]*fsmv1.Replica, 0, len(a.GetReplicas())+1)
	for _, r := range a.GetReplicas() {
		r = proto.CloneOf(r)
		if leaving != nil && r.GetNodeId() == leaving.GetNodeId() {
			r.Leaving = true
		}
		rs = append(rs, r)
	}
	rs = append(rs, &fsmv1.Replica{NodeId: to, Voter: false})
	preferred := a.GetPreferredLeader()
	from := ""
	if leaving != nil {
		from = leaving.GetNodeId()
		if preferred == from {
			preferred = ""
		}
	}
	if err := s.c.setAssignment(ctx, q, a, rs, preferred); err != nil {
		return err
	}
	s.c.log.Info("move started", "queue", q.GetName(), "partition", a.GetPartition(), "from", from, "to", to, "reason", why)
	s.c.n.metrics.movesStarted.Add(1)
	s.moving++
	s.target[to]++
	if from != "" {
		s.source[from]++
	}
	s.load[to]++
	return nil
}

// pickTarget chooses a healthy node that hosts no replica of a and is not
// the target of another move: first one in a zone the partition's staying
// replicas do not use, then the fewest replicas, then the lowest id.
func (s *moveState) pickTarget(a *fsmv1.PartitionAssignment) string {
	zones := map[string]bool{}
	for _, r := range a.GetReplicas() {
		if _, going := s.mustGo(r); !going {
			if z := s.nodes[r.GetNodeId()].GetZone(); z != "" {
				zones[z] = true
			}
		}
	}
	var best string
	var bestKey [2]int
	for id := range s.nodes {
		if !s.healthy(id) || s.target[id] > 0 || slices.ContainsFunc(a.GetReplicas(), func(r *fsmv1.Replica) bool { return r.GetNodeId() == id }) {
			continue
		}
		zoneUsed := 0
		if zones[s.nodes[id].GetZone()] {
			zoneUsed = 1
		}
		key := [2]int{zoneUsed, s.load[id]}
		if best == "" || cmp.Or(cmp.Compare(key[0], bestKey[0]), cmp.Compare(key[1], bestKey[1]), cmp.Compare(id, best)) < 0 {
			best, bestKey = id, key
		}
	}
	return best
}

// advance finishes a move whose replacement the partition's configuration
// shows as a voter, or rolls back one whose target is no longer healthy.
func (s *moveState) advance(ctx context.Context, q *fsmv1.QueueInfo, a *fsmv1.PartitionAssignment) error {
	var nv *fsmv1.Replica
	for _, r := range a.GetReplicas() {
		if !r.GetVoter() {
			nv = r
			break
		}
	}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	resp, err := s.c.n.readPartition(rctx, q, a.GetPartition(), &peerv1.ReadRequest{})
	cancel()
	promoted := false
	if err == nil {
		id := string(replicaServerID(nv.GetNodeId(), nv.GetEpoch()))
		promoted = slices.ContainsFunc(resp.GetReplicas(), func(r *peerv1.ReplicaState) bool { return r.GetServerId() == id && r.GetVoter() })
	}
	if promoted {
		return s.finish(ctx, q, a, nv)
	}
	if m, ok := s.gossip[nv.GetNodeId()]; s.healthy(nv.GetNodeId()) || (ok && m.State == "alive") || (ok && s.now.Sub(m.Since) < targetGrace) {
		return nil // still catching up
	}
	// The target went away: roll back.
	rs := make([]*fsmv1.Replica, 0, len(a.GetReplicas()))
	for _, r := range a.GetReplicas() {
		if r == nv {
			continue
		}
		r = proto.CloneOf(r)
		r.Leaving = false
		rs = append(rs, r)
	}
	if err := s.c.setAssignment(ctx, q, a, rs, a.GetPreferredLeader()); err != nil {
		return err
	}
	s.c.log.Warn("move rolled back: its target is gone", "queue", q.GetName(), "partition", a.GetPartition(), "to", nv.GetNodeId())
	s.c.n.metrics.movesRolledBack.Add(1)
	return nil
}

// finish makes the promoted replacement a voter in the catalogue and drops
// the leaving replica (if the move had one; a lost replica was dropped when
// it was replaced).
func (s *moveState) finish(ctx context.Context, q *fsmv1.QueueInfo, a *fsmv1.PartitionAssignment, nv *fsmv1.Replica) error {
	rs := make([]*fsmv1.Replica, 0, len(a.GetReplicas()))
	dropped := ""
	for _, r := range a.GetReplicas() {
		if r.GetLeaving() && dropped == "" {
			dropped = r.GetNodeId()
			continue
		}
		r = proto.CloneOf(r)
		if r.GetNodeId() == nv.GetNodeId() {
			r.Voter = true
		}
		rs = append(rs, r)
	}
	preferred := a.GetPreferredLeader()
	if preferred == dropped {
		preferred = ""
	}
	if err := s.c.setAssignment(ctx, q, a, rs, preferred); err != nil {
		return err
	}
	s.c.log.Info("move finished", "queue", q.GetName(), "partition", a.GetPartition(), "to", nv.GetNodeId(), "dropped", dropped)
	s.c.n.metrics.movesFinished.Add(1)
	return nil
}

// setAssignment proposes a's new replicas, compare-and-set on a's epoch.
func (c *controller) setAssignment(ctx context.Context, q *fsmv1.QueueInfo, a *fsmv1.PartitionAssignment, rs []*fsmv1.Replica, preferred string) error {
	res, err := c.applyLocal(ctx, &fsmv1.CatalogCommand{Op: &fsmv1.CatalogCommand_SetAssignment{SetAssignment: &fsmv1.SetAssignment{
		Queue: q.GetName(), Partition: a.GetPartition(), ExpectedEpoch: a.GetEpoch(), Replicas: rs, PreferredLeader: preferred,
	}}})
	if err != nil {
		return err
	}
	if res.Code != fsm.CatalogOK {
		return fmt.Errorf("set assignment: %v: %s", res.Code, res.Detail)
	}
	return nil
}

// replaceLost replaces every replica on node, whose data is gone (it came
// back with another instance), by a new replica on the same node under a
// new epoch that starts empty and catches up. The lost replica is dropped
// at once: it holds nothing any more.
func (c *controller) replaceLost(ctx context.Context, node string) error {
	var queues []*fsmv1.QueueInfo
	c.read(func(cat *fsm.Catalog) { queues = cat.Queues() })
	var errs []error
	for _, q := range queues {
		for _, a := range q.GetPartitions() {
			i := slices.IndexFunc(a.GetReplicas(), func(r *fsmv1.Replica) bool { return r.GetNodeId() == node })
			if i < 0 {
				continue
			}
			rs := make([]*fsmv1.Replica, 0, len(a.GetReplicas()))
			voters := 0
			for j, r := range a.GetReplicas() {
				if j != i {
					rs = append(rs, proto.CloneOf(r))
					if r.GetVoter() {
						voters++
					}
				}
			}
			if voters == 0 {
				// The only voter lost its data: nothing to copy from. The
				// node starts the partition again, empty.
				c.log.Error("the only voting replica lost its data: the partition starts empty", "queue", q.GetName(), "partition", a.GetPartition(), "node", node)
				continue
			}
			rs = append(rs, &fsmv1.Replica{NodeId: node, Voter: false})
			preferred := a.GetPreferredLeader()
			if preferred == node {
				preferred = ""
			}
			if err := c.setAssignment(ctx, q, a, rs, preferred); err != nil {
				errs = append(errs, err)
				continue
			}
			c.log.Warn("replica lost its data: replaced", "queue", q.GetName(), "partition", a.GetPartition(), "node", node)
		}
	}
	return errors.Join(errs...)
}

// replicationHealth counts, as the controller leader sees them, the
// partitions with fewer voters on live nodes than their replication
// factor, and those with a move in progress.
func (c *controller) replicationHealth() (under, moving int) {
	alive := map[string]bool{}
	for _, m := range c.n.gossip.members() {
		alive[m.ID] = m.State == "alive"
	}
	c.read(func(cat *fsm.Catalog) {
		for _, q := range cat.Queues() {
			for _, a := range q.GetPartitions() {
				live, mv := 0, false
				for _, r := range a.GetReplicas() {
					if r.GetVoter() && alive[r.GetNodeId()] {
						live++
					}
					mv = mv || !r.GetVoter()
				}
				if live < int(q.GetReplicationFactor()) {
					under++
				}
				if mv {
					moving++
				}
			}
		}
	})
	return under, moving
}
