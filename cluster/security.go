package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm"
	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
	peerv1 "github.com/quorumq/quorumq/proto/quorumq/peer/v1"
	"github.com/quorumq/quorumq/transport"
	"github.com/quorumq/quorumq/transport/pki"
)

// Trust between nodes (see DESIGN.md, "Who is trusted"): the peer port is
// mutual TLS with the cluster CA; a peer may use it only when its
// certificate names a node that the catalogue knows or that gossips (and
// gossip is encrypted with the cluster's key); a node is recorded in the
// catalogue, given a vote or a replica only after it proved, over mutual
// TLS, that its certificate names the node id it gossips (admission).

// setupSecurity loads the TLS material and makes the peer port and peer
// dials mutual TLS. It does nothing with Config.Insecure.
func (n *Node) setupSecurity() error {
	if n.cfg.Insecure {
		n.log.Warn("INSECURE: no TLS between nodes, no gossip encryption, no TLS and no authentication for clients; anyone who reaches a port owns this cluster. Use --insecure only for throwaway clusters.")
		return nil
	}
	r, err := pki.NewReloader(pki.Files{CA: n.cfg.TLSCAFile, Cert: n.cfg.TLSCertFile, Key: n.cfg.TLSKeyFile}, n.log.With("component", "tls"))
	if err != nil {
		return err
	}
	if !slices.Contains(r.Nodes(), n.id) {
		return fmt.Errorf("tls: the certificate %s names nodes %v, not this node (%s): issue one with 'quorumq certs node --id %s'",
			n.cfg.TLSCertFile, r.Nodes(), n.id, n.id)
	}
	n.tls = r
	n.mux.Security = &transport.Security{
		TLS:       r,
		NodeOf:    func(id raft.ServerID) string { return nodeOfServer(id) },
		Authorize: n.authorizePeer,
	}
	n.peers.pool.Creds = n.mux.Security.PeerClientCredentials
	return nil
}

// errNotMember: a valid certificate of a node the cluster does not know.
var errNotMember = errors.New("not a member: neither in the catalogue nor in gossip")

// authorizePeer lets a peer use the peer port when its certificate names a
// node that the catalogue records (and has not removed) or that is alive
// in gossip (a node being admitted, or a cluster forming).
func (n *Node) authorizePeer(nodes []string) error {
	if len(nodes) == 0 {
		return errors.New("the certificate names no node")
	}
	if n.ctrl != nil {
		var ok bool
		n.ctrl.read(func(c *fsm.Catalog) {
			for _, id := range nodes {
				if info, found := c.Node(id); found && info.GetState() != fsmv1.NodeState_NODE_STATE_REMOVED {
					ok = true
					return
				}
			}
		})
		if ok {
			return nil
		}
	}
	if g := n.gossipReady.Load(); g != nil {
		for _, m := range g.members() {
			if m.State == "alive" && slices.Contains(nodes, m.ID) {
				return nil
			}
		}
	}
	return errNotMember
}

// authorizeCall checks, per call, that the peer of a peer gRPC call is
// still allowed (the connection was checked when it opened).
func (n *Node) authorizeCall(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if n.tls != nil {
		nodes, ok := transport.PeerNodes(ctx)
		if !ok {
			return nil, status.Error(codes.Unauthenticated, "peer calls need mutual TLS")
		}
		if err := n.authorizePeer(nodes); err != nil {
			return nil, status.Errorf(codes.PermissionDenied, "peer %v: %v", nodes, err)
		}
	}
	return handler(ctx, req)
}

// admission remembers which gossiping nodes proved their identity.
type admission struct {
	mu   sync.Mutex
	seen map[string]admissionResult // by node id
	log  map[string]time.Time       // last refusal logged, by node id
}

type admissionResult struct {
	key string // instance + peer address the result is for
	err error
	at  time.Time
}

// How long a probe's outcome is reused.
const (
	admittedTTL = 5 * time.Minute
	refusedTTL  = 5 * time.Second
)

// admit checks, over mutual TLS, that gossip member m answers on its peer
// port with a certificate that names m's node id and says it is m (same
// instance). Without TLS every member is admitted. Outcomes are cached.
func (n *Node) admit(ctx context.Context, m Member) error {
	if n.tls == nil || m.ID == n.id {
		return nil
	}
	key := m.Instance + "@" + m.Peer
	a := &n.admission
	a.mu.Lock()
	if r, ok := a.seen[m.ID]; ok && r.key == key {
		ttl := admittedTTL
		if r.err != nil {
			ttl = refusedTTL
		}
		if time.Since(r.at) < ttl {
			a.mu.Unlock()
			return r.err
		}
	}
	a.mu.Unlock()

	err := n.probeIdentity(ctx, m)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.seen == nil {
		a.seen, a.log = map[string]admissionResult{}, map[string]time.Time{}
	}
	a.seen[m.ID] = admissionResult{key: key, err: err, at: time.Now()}
	if err != nil {
		n.metrics.admissionRefused.Add(1)
		if time.Since(a.log[m.ID]) > time.Minute {
			a.log[m.ID] = time.Now()
			n.log.Warn("node refused: it did not prove its identity over mutual TLS", "refused_node", m.ID, "peer", m.Peer, "err", err)
		}
	}
	return err
}

func (n *Node) probeIdentity(ctx context.Context, m Member) error {
	if m.Peer == "" {
		return errors.New("no peer address in its gossip")
	}
	cc, err := n.peers.pool.Conn(m.ID, m.Peer)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	resp, err := peerv1.NewPeerServiceClient(cc).Identify(ctx, &peerv1.IdentifyRequest{}, grpc.WaitForReady(false))
	if err != nil {
		return fmt.Errorf("mutual TLS to %s as %s: %w", m.Peer, m.ID, err)
	}
	if resp.GetNodeId() != m.ID || resp.GetInstance() != m.Instance {
		return fmt.Errorf("answered as %s (instance %s), gossips as %s (instance %s)", resp.GetNodeId(), resp.GetInstance(), m.ID, m.Instance)
	}
	return nil
}
