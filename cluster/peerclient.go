package cluster

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm"
	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
	peerv1 "github.com/quorumq/quorumq/proto/quorumq/peer/v1"
	"github.com/quorumq/quorumq/transport"
)

// peerClient calls other nodes' PeerService over the pooled connections.
type peerClient struct {
	n    *Node
	pool *transport.Pool
}

// isUnavailable reports a transport-level failure worth retrying elsewhere.
func isUnavailable(err error) bool {
	if errors.Is(err, errNoLeader) {
		return true
	}
	s, ok := status.FromError(err)
	return ok && (s.Code() == codes.Unavailable || s.Code() == codes.Canceled && !errors.Is(err, context.Canceled))
}

// peerAddr finds a node's peer address: gossip first (freshest), then the
// catalogue.
func (p *peerClient) peerAddr(id string) (string, error) {
	for _, m := range p.n.gossip.members() {
		if m.ID == id && m.State == "alive" {
			return m.Peer, nil
		}
	}
	if info, ok := p.n.ctrl.node(id); ok && info.GetPeerAddr() != "" {
		return info.GetPeerAddr(), nil
	}
	return "", fmt.Errorf("node %s: %w", id, errNoLeader)
}

func (p *peerClient) client(id string) (peerv1.PeerServiceClient, error) {
	addr, err := p.peerAddr(id)
	if err != nil {
		return nil, err
	}
	cc, err := p.pool.Conn(id, addr)
	if err != nil {
		return nil, err
	}
	return peerv1.NewPeerServiceClient(cc), nil
}

func notLeader(group string, nl *peerv1.NotLeader) error {
	if nl == nil {
		return nil
	}
	return &NotLeaderError{Group: group, Leader: nl.GetLeaderId()}
}

func (p *peerClient) proposeCatalog(ctx context.Context, leader string, cmd *fsmv1.CatalogCommand) (*fsm.CatalogResult, string, error) {
	c, err := p.client(leader)
	if err != nil {
		return nil, "", err
	}
	resp, err := c.ProposeCatalog(ctx, &peerv1.ProposeCatalogRequest{Command: cmd})
	if err != nil {
		return nil, "", err
	}
	if err := notLeader("controller", resp.GetNotLeader()); err != nil {
		return nil, resp.GetNotLeader().GetLeaderId(), err
	}
	return &fsm.CatalogResult{Code: fsm.CatalogCode(resp.GetCode()), Detail: resp.GetDetail(), Queue: resp.GetQueue(), Epoch: resp.GetEpoch()}, "", nil
}

func (p *peerClient) propose(ctx context.Context, node string, g *peerv1.Group, cmd *fsmv1.Command) (*fsm.Result, error) {
	c, err := p.client(node)
	if err != nil {
		return nil, err
	}
	resp, err := c.Propose(ctx, &peerv1.ProposeRequest{Group: g, Command: cmd})
	if err != nil {
		return nil, err
	}
	if err := notLeader(groupString(g), resp.GetNotLeader()); err != nil {
		return nil, err
	}
	return resultFromPeer(resp.GetResult()), nil
}

func (p *peerClient) waitReady(ctx context.Context, node string, g *peerv1.Group, timeoutMs int64) (uint64, error) {
	c, err := p.client(node)
	if err != nil {
		return 0, err
	}
	resp, err := c.WaitReady(ctx, &peerv1.WaitReadyRequest{Group: g, TimeoutMs: timeoutMs})
	if err != nil {
		return 0, err
	}
	if err := notLeader(groupString(g), resp.GetNotLeader()); err != nil {
		return 0, err
	}
	if resp.GetReady() && resp.GetReadyCount() == 0 {
		return 1, nil // an older node that does not count
	}
	return resp.GetReadyCount(), nil
}

func (p *peerClient) read(ctx context.Context, node string, req *peerv1.ReadRequest) (*peerv1.ReadResponse, error) {
	c, err := p.client(node)
	if err != nil {
		return nil, err
	}
	resp, err := c.Read(ctx, req)
	if err != nil {
		return nil, err
	}
	if err := notLeader(groupString(req.GetGroup()), resp.GetNotLeader()); err != nil {
		return nil, err
	}
	return resp, nil
}

func (p *peerClient) transfer(ctx context.Context, node string, req *peerv1.TransferRequest) (*peerv1.TransferResponse, error) {
	c, err := p.client(node)
	if err != nil {
		return nil, err
	}
	resp, err := c.TransferLeadership(ctx, req)
	if err != nil {
		return nil, err
	}
	if err := notLeader(groupString(req.GetGroup()), resp.GetNotLeader()); err != nil {
		return nil, err
	}
	return resp, nil
}

func groupString(g *peerv1.Group) string {
	return fmt.Sprintf("%s/%d", g.GetQueue(), g.GetPartition())
}
