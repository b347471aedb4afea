package cluster

import (
	"context"
	"errors"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm"
	peerv1 "github.com/quorumq/quorumq/proto/quorumq/peer/v1"
)

// peerServer answers other nodes. It never forwards again: a node that does
// not lead the group says so, with its hint, and the caller goes there.
type peerServer struct {
	peerv1.UnimplementedPeerServiceServer
	n *Node
}

// leading returns the local replica of g if this node leads it.
func (s *peerServer) leading(g *peerv1.Group) (*replica, *peerv1.NotLeader) {
	r, ok := s.n.replicas.get(g.GetQueue(), g.GetPartition())
	if !ok || r.qid != g.GetQueueId() {
		return nil, &peerv1.NotLeader{}
	}
	if !r.isLeader() {
		return nil, &peerv1.NotLeader{LeaderId: nodeOfServer(r.g.leaderID())}
	}
	return r, nil
}

func (s *peerServer) Propose(ctx context.Context, req *peerv1.ProposeRequest) (*peerv1.ProposeResponse, error) {
	r, nl := s.leading(req.GetGroup())
	if nl != nil {
		return &peerv1.ProposeResponse{NotLeader: nl}, nil
	}
	if err := fsm.ValidateCommand(withVersion(req.GetCommand())); err != nil {
		return nil, status.Error(codes.InvalidArgument, invalidMessage(err))
	}
	res, err := r.propose(ctx, req.GetCommand())
	var nle *NotLeaderError
	if errors.As(err, &nle) {
		return &peerv1.ProposeResponse{NotLeader: &peerv1.NotLeader{LeaderId: nle.Leader}}, nil
	}
	// A refusal (disk low on a replica's node) is an answer, not a failure
	// to retry elsewhere.
	var le *LimitError
	if errors.As(err, &le) {
		return nil, le.status()
	}
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return &peerv1.ProposeResponse{Result: resultToPeer(res)}, nil
}

func (s *peerServer) WaitReady(ctx context.Context, req *peerv1.WaitReadyRequest) (*peerv1.WaitReadyResponse, error) {
	r, nl := s.leading(req.GetGroup())
	if nl != nil {
		return &peerv1.WaitReadyResponse{NotLeader: nl}, nil
	}
	timeout := min(time.Duration(req.GetTimeoutMs())*time.Millisecond, maxWait)
	n := r.waitReady(ctx, timeout)
	return &peerv1.WaitReadyResponse{Ready: n > 0, ReadyCount: n}, nil
}

func (s *peerServer) Read(ctx context.Context, req *peerv1.ReadRequest) (*peerv1.ReadResponse, error) {
	if req.GetLocal() {
		g := req.GetGroup()
		r, ok := s.n.replicas.get(g.GetQueue(), g.GetPartition())
		if !ok || r.qid != g.GetQueueId() {
			return nil, status.Errorf(codes.NotFound, "no replica of %s here", groupString(g))
		}
		if id := req.GetServerId(); id != "" && raft.ServerID(id) != r.g.id {
			return nil, status.Errorf(codes.NotFound, "the replica of %s here is %s, not %s", groupString(g), r.g.id, id)
		}
		return r.read(req), nil
	}
	r, nl := s.leading(req.GetGroup())
	if nl != nil {
		return &peerv1.ReadResponse{NotLeader: nl}, nil
	}
	return r.read(req), nil
}

func (s *peerServer) ProposeCatalog(ctx context.Context, req *peerv1.ProposeCatalogRequest) (*peerv1.ProposeCatalogResponse, error) {
	c := s.n.ctrl
	if c.g.raft.State() != raft.Leader {
		return &peerv1.ProposeCatalogResponse{NotLeader: &peerv1.NotLeader{LeaderId: nodeOfServer(c.g.leaderID())}}, nil
	}
	if err := fsm.ValidateCatalogCommand(req.GetCommand()); err != nil {
		return nil, status.Error(codes.InvalidArgument, invalidMessage(err))
	}
	res, err := c.applyLocal(ctx, req.GetCommand())
	var nle *NotLeaderError
	if errors.As(err, &nle) {
		return &peerv1.ProposeCatalogResponse{NotLeader: &peerv1.NotLeader{LeaderId: nle.Leader}}, nil
	}
	var le *LimitError
	if errors.As(err, &le) {
		return nil, le.status()
	}
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return &peerv1.ProposeCatalogResponse{Code: uint32(res.Code), Detail: res.Detail, Queue: res.Queue, Epoch: res.Epoch}, nil
}

func (s *peerServer) TransferLeadership(ctx context.Context, req *peerv1.TransferRequest) (*peerv1.TransferResponse, error) {
	r, nl := s.leading(req.GetGroup())
	if nl != nil {
		return &peerv1.TransferResponse{NotLeader: nl}, nil
	}
	return r.transfer(ctx, req.GetTo())
}

func (s *peerServer) Identify(ctx context.Context, req *peerv1.IdentifyRequest) (*peerv1.IdentifyResponse, error) {
	return &peerv1.IdentifyResponse{NodeId: s.n.id, Instance: s.n.instance}, nil
}

func (s *peerServer) GossipKeyring(ctx context.Context, req *peerv1.GossipKeyringRequest) (*peerv1.GossipKeyringResponse, error) {
	keys, err := s.n.changeKeyring(req.GetOp(), req.GetKey())
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	return &peerv1.GossipKeyringResponse{Keys: keys}, nil
}
