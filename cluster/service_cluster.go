package cluster

import (
	"cmp"
	"context"
	"slices"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm"
	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
	peerv1 "github.com/quorumq/quorumq/proto/quorumq/peer/v1"
	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// clusterServer is the public ClusterService.
type clusterServer struct {
	qv1.UnimplementedClusterServiceServer
	n *Node
}

func (s *clusterServer) Status(ctx context.Context, req *qv1.StatusRequest) (*qv1.StatusResponse, error) {
	n := s.n
	resp := &qv1.StatusResponse{NodeId: n.id, Version: Version, ControllerLeader: nodeOfServer(n.ctrl.g.leaderID()), Ready: n.notReady() == ""}
	for _, m := range n.gossip.members() {
		if m.State == "alive" {
			resp.Members++
		}
	}
	n.ctrl.read(func(c *fsm.Catalog) {
		for _, q := range c.Queues() {
			resp.Queues++
			resp.Partitions += uint32(len(q.GetPartitions()))
		}
	})
	for _, r := range n.replicas.all() {
		resp.LocalReplicas++
		if r.isLeader() {
			resp.LocalLeaders++
		}
	}
	return resp, nil
}

func (s *clusterServer) Members(ctx context.Context, req *qv1.MembersRequest) (*qv1.MembersResponse, error) {
	resp := &qv1.MembersResponse{}
	seen := map[string]bool{}
	for _, m := range s.n.gossip.members() {
		seen[m.ID] = true
		mem := &qv1.Member{Id: m.ID, ClientAddr: m.Client, PeerAddr: m.Peer, GossipAddr: m.Gossip, HttpAddr: m.HTTP,
			Zone: m.Zone, Version: m.Version, GossipState: m.State}
		if info, ok := s.n.ctrl.node(m.ID); ok {
			mem.CatalogState = catalogStateName(info.GetState())
		} else if m.State == "alive" {
			if err := s.n.admit(ctx, m); err != nil {
				mem.Refused, mem.RefusedReason = true, err.Error()
			}
		}
		resp.Members = append(resp.Members, mem)
	}
	for _, info := range s.n.ctrl.nodes() {
		if !seen[info.GetId()] {
			resp.Members = append(resp.Members, &qv1.Member{Id: info.GetId(), ClientAddr: info.GetClientAddr(), PeerAddr: info.GetPeerAddr(),
				GossipAddr: info.GetGossipAddr(), HttpAddr: info.GetHttpAddr(), Zone: info.GetZone(), Version: info.GetVersion(),
				GossipState: "unknown", CatalogState: catalogStateName(info.GetState())})
		}
	}
	return resp, nil
}

func catalogStateName(s fsmv1.NodeState) string {
	switch s {
	case fsmv1.NodeState_NODE_STATE_ALIVE:
		return "alive"
	case fsmv1.NodeState_NODE_STATE_DRAINING:
		return "draining"
	case fsmv1.NodeState_NODE_STATE_REMOVED:
		return "removed"
	}
	return ""
}

func (s *clusterServer) Partitions(ctx context.Context, req *qv1.PartitionsRequest) (*qv1.PartitionsResponse, error) {
	visible := s.n.queueFilter(ctx)
	if q := req.GetQueue(); q != "" && !visible(q) {
		return nil, status.Errorf(codes.PermissionDenied, "no permission on queue %q (needs produce, consume or manage)", q)
	}
	if req.GetLocal() {
		return s.localPartitions(req.GetQueue(), visible)
	}
	var queues []*fsmv1.QueueInfo
	s.n.ctrl.read(func(c *fsm.Catalog) { queues = c.Queues() })
	resp := &qv1.PartitionsResponse{}
	var mu sync.Mutex
	for _, q := range queues {
		if req.GetQueue() != "" && q.GetName() != req.GetQueue() || !visible(q.GetName()) {
			continue
		}
		infos := make([]*qv1.PartitionInfo, len(q.GetPartitions()))
		parts := map[uint32]bool{}
		for p := range uint32(len(q.GetPartitions())) {
			parts[p] = true
		}
		_ = eachPartition(ctx, parts, func(ctx context.Context, p uint32, _ bool) error {
			info := &qv1.PartitionInfo{Queue: q.GetName(), Partition: p}
			for _, r := range q.GetPartitions()[p].GetReplicas() {
				info.Replicas = append(info.Replicas, &qv1.ReplicaInfo{NodeId: r.GetNodeId(), Voter: r.GetVoter(), Leaving: r.GetLeaving(), CatchingUp: !r.GetVoter()})
			}
			if r, err := s.n.readPartition(ctx, q, p, &peerv1.ReadRequest{}); err == nil {
				info.Leader, info.Term, info.CommitIndex, info.AppliedIndex = r.GetLeaderId(), r.GetTerm(), r.GetCommitIndex(), r.GetAppliedIndex()
				info.Stats = statsToPublic(r.GetStats())
			}
			mu.Lock()
			infos[p] = info
			mu.Unlock()
			return nil
		})
		resp.Partitions = append(resp.Partitions, infos...)
	}
	return resp, nil
}

func (s *clusterServer) TransferLeadership(ctx context.Context, req *qv1.TransferLeadershipRequest) (*qv1.TransferLeadershipResponse, error) {
	q, ok := s.n.ctrl.queue(req.GetQueue())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "queue %q not found", req.GetQueue())
	}
	if int(req.GetPartition()) >= len(q.GetPartitions()) {
		return nil, status.Errorf(codes.InvalidArgument, "queue %q has no partition %d", q.GetName(), req.GetPartition())
	}
	leader, err := s.n.transferLeadership(ctx, q, req.GetPartition(), req.GetTo())
	if err != nil {
		return nil, toStatus(err)
	}
	return &qv1.TransferLeadershipResponse{Leader: leader}, nil
}

// transferLeadership hands partition p's leadership to the replica on node
// to ("" = Raft's choice), wherever the leader is, and returns the new
// leader's node.
func (n *Node) transferLeadership(ctx context.Context, q *fsmv1.QueueInfo, p uint32, to string) (string, error) {
	tr := &peerv1.TransferRequest{Group: groupOf(q, p), To: to}
	resp, err := onLeader(ctx, n, q, p,
		func(ctx context.Context, r *replica) (*peerv1.TransferResponse, error) { return r.transfer(ctx, to) },
		func(ctx context.Context, node string) (*peerv1.TransferResponse, error) {
			return n.peers.transfer(ctx, node, tr)
		})
	return resp.GetLeaderId(), err
}

// localPartitions reports this node's own replicas as they stand here, each
// with its state checksum: what a convergence check compares across nodes.
func (s *clusterServer) localPartitions(queue string, visible func(string) bool) (*qv1.PartitionsResponse, error) {
	resp := &qv1.PartitionsResponse{}
	for _, r := range s.n.replicas.all() {
		if queue != "" && r.queue != queue || !visible(r.queue) {
			continue
		}
		applied, sum, err := r.fsm.StateChecksum()
		if err != nil {
			return nil, status.Errorf(codes.Internal, "partition %s/%d: %v", r.queue, r.part, err)
		}
		info := &qv1.PartitionInfo{
			Queue: r.queue, Partition: r.part, NodeId: s.n.ID(),
			Leader: nodeOfServer(r.g.leaderID()), Term: r.g.raft.CurrentTerm(), CommitIndex: r.g.raft.CommitIndex(),
			AppliedIndex: applied, StateChecksum: sum,
		}
		r.fsm.Read(func(p *fsm.Partition) { info.Stats = statsToPublic(statsToPeer(p.Stats())) })
		resp.Partitions = append(resp.Partitions, info)
	}
	slices.SortFunc(resp.Partitions, func(a, b *qv1.PartitionInfo) int {
		return cmp.Or(cmp.Compare(a.GetQueue(), b.GetQueue()), cmp.Compare(a.GetPartition(), b.GetPartition()))
	})
	return resp, nil
}
