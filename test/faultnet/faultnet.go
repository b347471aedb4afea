// Package faultnet is an in-process network for multi-node tests: each node
// dials its peers through its own Dialer, and the test cuts and heals the
// links between nodes. A cut link closes its open connections and fails new
// dials at once (as a reset, not a silent drop), in both directions.
//
// It covers the connections a node dials itself (a cluster.Node's Raft and
// peer gRPC traffic, through Config.PeerDialer); gossip keeps its own
// sockets and is not cut. Links can also be cut between two members of
// Raft groups (by server id), leaving the nodes' other traffic alone: a
// Raft dial says which members it connects (transport.DialMembers).
package faultnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"

	"github.com/quorumq/quorumq/transport"
)

// ErrCut is what a dial over a cut link returns.
var ErrCut = errors.New("faultnet: link cut")

// Network knows which node owns which address and which links are cut. The
// zero value is not usable; call New.
type Network struct {
	mu    sync.Mutex
	owner map[string]string           // host:port -> node
	cut   map[link]bool               // node links that are down
	conns map[link]map[*conn]struct{} // open connections per node link
	// Member links: a link between two Raft members (server ids); "*"
	// stands for any member.
	mcut   map[link]bool
	mconns map[link]map[*conn]struct{}

	refused atomic.Uint64
}

// link is an unordered pair of nodes or members.
type link struct{ a, b string }

func mkLink(a, b string) link {
	if a > b {
		a, b = b, a
	}
	return link{a, b}
}

// New returns a network with every link up.
func New() *Network {
	return &Network{owner: map[string]string{}, cut: map[link]bool{}, conns: map[link]map[*conn]struct{}{},
		mcut: map[link]bool{}, mconns: map[link]map[*conn]struct{}{}}
}

// Register says that node listens on addrs (host:port). Dials to an address
// nobody registered are not subject to cuts.
func (n *Network) Register(node string, addrs ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, a := range addrs {
		n.owner[a] = node
	}
}

// Dialer returns the dial function node uses to reach its peers.
func (n *Network) Dialer(node string) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		local, target, raftConn := transport.DialMembers(ctx)
		ml := mkLink(string(local), string(target))
		n.mu.Lock()
		to, known := n.owner[addr]
		l := mkLink(node, to)
		down := known && n.cut[l] || raftConn && n.memberCut(local, target)
		n.mu.Unlock()
		if down {
			n.refused.Add(1)
			return nil, fmt.Errorf("dial %s (%s -> %s): %w", addr, node, to, ErrCut)
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return c, err
		}
		tc := &conn{Conn: c, net: n, link: l, known: known, mlink: ml, member: raftConn}
		n.mu.Lock()
		defer n.mu.Unlock()
		if known && n.cut[l] || raftConn && n.memberCut(local, target) { // cut while dialing
			c.Close()
			n.refused.Add(1)
			return nil, fmt.Errorf("dial %s (%s -> %s): %w", addr, node, to, ErrCut)
		}
		if known {
			if n.conns[l] == nil {
				n.conns[l] = map[*conn]struct{}{}
			}
			n.conns[l][tc] = struct{}{}
		}
		if raftConn {
			if n.mconns[ml] == nil {
				n.mconns[ml] = map[*conn]struct{}{}
			}
			n.mconns[ml][tc] = struct{}{}
		}
		return tc, nil
	}
}

// memberCut reports whether the link between members a and b is down;
// n.mu is held.
func (n *Network) memberCut(a, b raft.ServerID) bool {
	return n.mcut[mkLink(string(a), string(b))] || n.mcut[mkLink(string(a), "*")] || n.mcut[mkLink(string(b), "*")]
}

// CutMembers takes down the link between the Raft members a and b (server
// ids; "*" for b means every other member), closing its connections. The
// nodes' other traffic goes on.
func (n *Network) CutMembers(a, b string) {
	var closing []*conn
	n.mu.Lock()
	n.mcut[mkLink(a, b)] = true
	for l, cs := range n.mconns {
		if l == mkLink(a, b) || b == "*" && (l.a == a || l.b == a) {
			for c := range cs {
				closing = append(closing, c)
			}
		}
	}
	n.mu.Unlock()
	for _, c := range closing {
		c.Close()
	}
}

// HealMembers brings the link between members a and b up again.
func (n *Network) HealMembers(a, b string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.mcut, mkLink(a, b))
}

// Cut takes down the links between every node of a and every node of b,
// closing their open connections.
func (n *Network) Cut(a, b []string) {
	var closing []*conn
	n.mu.Lock()
	for _, x := range a {
		for _, y := range b {
			if x == y {
				continue
			}
			l := mkLink(x, y)
			n.cut[l] = true
			for c := range n.conns[l] {
				closing = append(closing, c)
			}
		}
	}
	n.mu.Unlock()
	for _, c := range closing {
		c.Conn.Close()
	}
}

// Isolate cuts node off from every other registered node.
func (n *Network) Isolate(node string) {
	n.Cut([]string{node}, n.nodes())
}

// Heal brings every link up again, node and member links alike.
func (n *Network) Heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cut = map[link]bool{}
	n.mcut = map[link]bool{}
}

// HealLink brings the links between a and b up again.
func (n *Network) HealLink(a, b string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.cut, mkLink(a, b))
}

// Refused counts the dials refused over cut links.
func (n *Network) Refused() uint64 { return n.refused.Load() }

func (n *Network) nodes() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	for _, node := range n.owner {
		if !seen[node] {
			seen[node] = true
			out = append(out, node)
		}
	}
	return out
}

// conn is a connection over a link; it forgets itself when closed.
type conn struct {
	net.Conn
	net    *Network
	link   link
	known  bool // tracked under link
	mlink  link
	member bool // tracked under mlink
	once   sync.Once
}

func (c *conn) Close() error {
	c.once.Do(func() {
		c.net.mu.Lock()
		if c.known {
			delete(c.net.conns[c.link], c)
		}
		if c.member {
			delete(c.net.mconns[c.mlink], c)
		}
		c.net.mu.Unlock()
	})
	return c.Conn.Close()
}
