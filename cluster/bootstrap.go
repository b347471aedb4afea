package cluster

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/raft"
)

// bootstrapLoop forms the controller group once, the first time
// BootstrapExpect fresh nodes see each other: the fresh nodes sort their
// ids, and only the lowest of the first BootstrapExpect bootstraps, with
// exactly those nodes as voters. A node with state never bootstraps, and no
// fresh node bootstraps while it sees a node that has state: it waits for
// that cluster's leader to add it. Every node computes the same choice
// from the same gossip view, so one cluster forms.
func (n *Node) bootstrapLoop(ctx context.Context) {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	// The same choice must be seen twice in a row, half a second apart, so
	// that a node does not act on a view that gossip is still filling in.
	var last string
	for {
		if n.ctrl.hasState() || n.ctrl.g.leaderID() != "" {
			n.gossip.setFresh(false)
			return
		}
		if n.cfg.BootstrapExpect > 0 {
			servers, ok := n.bootstrapChoice(ctx)
			key := ""
			for _, s := range servers {
				key += string(s.ID) + "@" + string(s.Address) + ","
			}
			if ok && key == last {
				n.log.Info("bootstrapping the cluster", "voters", len(servers))
				if err := n.ctrl.g.bootstrap(servers); err != nil {
					n.log.Error("bootstrap", "err", err)
				}
			}
			last = key
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-n.gossip.changed:
		}
	}
}

// bootstrapChoice returns the voters to bootstrap with, if this node is the
// one to do it now.
//
// Every chosen node must first prove its identity over mutual TLS
// (admission): a node in the choice that cannot holds the formation up,
// and says so in the log, rather than be left out (which other nodes
// might not agree on).
func (n *Node) bootstrapChoice(ctx context.Context) ([]raft.Server, bool) {
	var fresh []Member
	for _, m := range n.gossip.members() {
		if m.State != "alive" {
			continue
		}
		if !m.Fresh {
			return nil, false // a cluster exists; wait to be added to it
		}
		if m.Controller == "" {
			return nil, false // a node that does not say its controller id
		}
		fresh = append(fresh, m)
	}
	if len(fresh) < n.cfg.BootstrapExpect {
		return nil, false
	}
	slices.SortFunc(fresh, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	chosen := fresh[:n.cfg.BootstrapExpect]
	if chosen[0].ID != n.id {
		return nil, false
	}
	// The leader adds the rest as they come; never more voters than a
	// cluster of this size should have.
	chosen = chosen[:min(len(chosen), controllerVoters(len(chosen)))]
	for _, m := range chosen {
		if err := n.admit(ctx, m); err != nil {
			return nil, false
		}
	}
	servers := make([]raft.Server, len(chosen))
	for i, m := range chosen {
		id := raft.ServerID(m.Controller)
		servers[i] = raft.Server{Suffrage: raft.Voter, ID: id, Address: raftAddr(m.Peer, id)}
	}
	return servers, true
}
