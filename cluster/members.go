package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
	peerv1 "github.com/quorumq/quorumq/proto/quorumq/peer/v1"
)

// A partition leader keeps its Raft configuration in line with the
// catalogue's assignment, one step at a time:
//
//   - a replica assigned but not in the configuration joins as a non-voter;
//   - a non-voter is promoted to voter once it has caught up (its applied
//     index within catchUpLag of the leader's commit index);
//   - a server in the configuration but no longer assigned is removed
//     (the leader hands its leadership over first if it is the one).
//
// The controller decides the assignment (see repair.go); it drops a
// replica only once the configuration shows its replacement as a voter,
// so a partition never has fewer caught-up voters than before a move.

// catchUpLag is how many entries behind the leader's commit index a
// non-voter may be and still count as caught up. Under steady load a new
// replica may trail by more than that for ever, so it also counts as
// caught up once it has applied what was committed when the leader first
// checked it: it then holds everything but what streams in anyway.
const catchUpLag = 64

// membershipInterval is how often a leader checks its configuration when
// nothing in the catalogue changed (a non-voter catching up).
const membershipInterval = 500 * time.Millisecond

// membershipTimeout bounds each configuration change and catch-up probe.
const membershipTimeout = 5 * time.Second

// keepMembers runs while r leads: on each catalogue change and every
// membershipInterval it takes the next step towards the assignment.
func (r *replica) keepMembers(ctx context.Context) {
	t := time.NewTicker(membershipInterval)
	defer t.Stop()
	// catchUpTo: per non-voter, the commit index when it was first checked.
	catchUpTo := map[raft.ServerID]uint64{}
	for {
		if err := r.reconcileMembers(ctx, catchUpTo); err != nil && ctx.Err() == nil {
			r.log.Info("partition membership", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-r.n.ctrl.g.waitApplied():
		case <-t.C:
		}
	}
}

// desiredServer is one assigned replica as a Raft server.
type desiredServer struct {
	rep  *fsmv1.Replica
	addr raft.ServerAddress
}

// reconcileMembers takes at most one configuration step.
func (r *replica) reconcileMembers(ctx context.Context, catchUpTo map[raft.ServerID]uint64) error {
	q, ok := r.n.ctrl.queue(r.queue)
	if !ok || q.GetId() != r.qid || int(r.part) >= len(q.GetPartitions()) {
		return nil
	}
	a := q.GetPartitions()[r.part]
	want := map[raft.ServerID]desiredServer{}
	for _, rep := range a.GetReplicas() {
		info, ok := r.n.ctrl.node(rep.GetNodeId())
		if !ok {
			continue
		}
		id := replicaServerID(rep.GetNodeId(), rep.GetEpoch())
		want[id] = desiredServer{rep, raftAddr(info.GetPeerAddr(), id)}
	}
	if len(want) == 0 {
		return nil
	}
	f := r.g.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return err
	}
	have := map[raft.ServerID]raft.Server{}
	for _, s := range f.Configuration().Servers {
		have[s.ID] = s
	}
	idx := f.Index()

	// Add first: a replacement must be on its way before anything goes.
	for id, d := range want {
		if _, ok := have[id]; !ok {
			r.log.Info("adding replica", "server", id)
			return r.g.raft.AddNonvoter(id, d.addr, idx, membershipTimeout).Error()
		}
	}
	// Promote caught-up non-voters.
	for id, d := range want {
		if have[id].Suffrage != raft.Nonvoter {
			continue
		}
		caught, err := r.caughtUp(ctx, d.rep.GetNodeId(), id, catchUpTo)
		if err != nil || !caught {
			return err
		}
		delete(catchUpTo, id)
		r.log.Info("promoting caught-up replica", "server", id)
		return r.g.raft.AddVoter(id, d.addr, idx, membershipTimeout).Error()
	}
	// Remove what is no longer assigned; the leader itself last, after
	// handing over.
	for id := range have {
		if _, ok := want[id]; ok {
			continue
		}
		if id == r.g.id {
			r.log.Info("no longer assigned here: handing leadership over")
			return r.g.raft.LeadershipTransfer().Error()
		}
		r.log.Info("removing replica", "server", id)
		return r.g.raft.RemoveServer(id, idx, membershipTimeout).Error()
	}
	return nil
}

// errNoReplica: the node has not started the replica yet.
var errNoReplica = errors.New("replica not started")

// caughtUp asks node's replica how far it has applied (see catchUpLag).
func (r *replica) caughtUp(ctx context.Context, node string, id raft.ServerID, catchUpTo map[raft.ServerID]uint64) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, membershipTimeout)
	defer cancel()
	commit := r.g.raft.CommitIndex()
	if catchUpTo[id] == 0 {
		catchUpTo[id] = commit
	}
	resp, err := r.n.peers.read(ctx, node, &peerv1.ReadRequest{Group: &peerv1.Group{Queue: r.queue, QueueId: r.qid, Partition: r.part}, Local: true, ServerId: string(id)})
	if err != nil {
		return false, fmt.Errorf("catch-up of %s: %w: %w", node, errNoReplica, err)
	}
	applied := resp.GetAppliedIndex()
	return applied+catchUpLag >= commit || applied >= catchUpTo[id], nil
}
