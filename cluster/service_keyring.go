package cluster

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	peerv1 "github.com/quorumq/quorumq/proto/quorumq/peer/v1"
	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
	"github.com/quorumq/quorumq/transport/pki"
)

// keyringCallTimeout bounds each node's part of a keyring operation.
const keyringCallTimeout = 5 * time.Second

// GossipKeyring applies a keyring operation on every live node, each
// answering for itself. A node that did not answer keeps its keyring: run
// the operation again once it is back (each one is idempotent).
func (s *clusterServer) GossipKeyring(ctx context.Context, req *qv1.GossipKeyringRequest) (*qv1.GossipKeyringResponse, error) {
	switch req.GetOp() {
	case "list":
	case "install", "use", "remove":
		if _, err := pki.DecodeGossipKey(req.GetKey()); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	default:
		return nil, status.Errorf(codes.InvalidArgument, "keyring operation %q: want install, use, remove or list", req.GetOp())
	}
	if s.n.keyring == nil {
		return nil, status.Error(codes.FailedPrecondition, "gossip is not encrypted (--insecure): there is no keyring")
	}
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		resp qv1.GossipKeyringResponse
	)
	for _, m := range s.n.gossip.members() {
		if m.State != "alive" {
			continue
		}
		wg.Go(func() {
			out := &qv1.GossipKeyringNode{NodeId: m.ID}
			var keys []string
			var err error
			if m.ID == s.n.id {
				keys, err = s.n.changeKeyring(req.GetOp(), req.GetKey())
			} else {
				cctx, cancel := context.WithTimeout(ctx, keyringCallTimeout)
				var c peerv1.PeerServiceClient
				if c, err = s.n.peers.client(m.ID); err == nil {
					var r *peerv1.GossipKeyringResponse
					if r, err = c.GossipKeyring(cctx, &peerv1.GossipKeyringRequest{Op: req.GetOp(), Key: req.GetKey()}); err == nil {
						keys = r.GetKeys()
					}
				}
				cancel()
			}
			if err != nil {
				if st, ok := status.FromError(err); ok {
					out.Error = st.Message()
				} else {
					out.Error = err.Error()
				}
			}
			out.Keys = keys
			mu.Lock()
			resp.Nodes = append(resp.Nodes, out)
			mu.Unlock()
		})
	}
	wg.Wait()
	if req.GetOp() != "list" {
		s.n.log.Info("gossip keyring operation", "op", req.GetOp(), "nodes", len(resp.Nodes))
	}
	return &resp, nil
}
