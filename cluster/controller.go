package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm"
	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
	"github.com/quorumq/quorumq/storage"
)

// controller is this node's member of the controller group, which holds the
// catalogue. Every node is a member: three voters (five once the cluster
// has five live nodes), the rest non-voters that follow the catalogue, so
// every node can route.
type controller struct {
	n   *Node
	g   *group
	fsm *fsm.RaftFSM[*fsm.Catalog]
	log *slog.Logger

	// leaderSince: when this node last became controller leader (only
	// its runLeader goroutine touches it).
	leaderSince time.Time
}

// controllerVoters is how many voters the controller group should have
// with alive live nodes.
func controllerVoters(alive int) int {
	if alive >= 5 {
		return 5
	}
	return 3
}

func openController(n *Node) (*controller, error) {
	c := &controller{n: n, fsm: fsm.NewCatalogFSM(), log: n.log.With("group", "controller")}
	// The member's id is the one recorded in its store; a new store draws
	// a new one, so a node that lost its controller state never answers
	// as the member it was.
	g, err := openGroup(n, storage.ControllerGroup(), "", newControllerServerID(n.id),
		func(g *group, _ bool, _ *raft.Config) (raft.FSM, raft.SnapshotStore, error) {
			return notifyingFSM[*fsm.Catalog]{c.fsm, g}, g.store.Snapshots, nil
		}, c.log)
	if err != nil {
		return nil, err
	}
	c.g = g
	return c, nil
}

// hasState reports whether this node has ever been part of a cluster.
func (c *controller) hasState() bool {
	has, err := c.g.store.HasState()
	return err == nil && has && c.g.raft.LastIndex() > 0
}

// read calls fn with the catalogue.
func (c *controller) read(fn func(*fsm.Catalog)) { c.fsm.Read(fn) }

func (c *controller) queue(name string) (*fsmv1.QueueInfo, bool) {
	var q *fsmv1.QueueInfo
	var ok bool
	c.read(func(cat *fsm.Catalog) { q, ok = cat.Queue(name) })
	return q, ok
}

// propose applies a catalogue command on the controller leader, forwarding
// to it when this node does not lead.
func (c *controller) propose(ctx context.Context, cmd *fsmv1.CatalogCommand) (*fsm.CatalogResult, error) {
	cmd.Version = fsm.CatalogVersion
	if err := fsm.ValidateCatalogCommand(cmd); err != nil {
		return nil, err
	}
	return retryLeader(ctx, func(ctx context.Context) (*fsm.CatalogResult, string, error) {
		if c.g.raft.State() == raft.Leader {
			res, err := c.applyLocal(ctx, cmd)
			return res, "", err
		}
		leader := nodeOfServer(c.g.leaderID())
		if leader == "" {
			return nil, "", errNoLeader
		}
		return c.n.peers.proposeCatalog(ctx, leader, cmd)
	})
}

// applyLocal proposes cmd on this node, which must lead the controller.
func (c *controller) applyLocal(ctx context.Context, cmd *fsmv1.CatalogCommand) (*fsm.CatalogResult, error) {
	release, err := c.admitQueueOp(ctx, cmd)
	if err != nil {
		return nil, err
	}
	defer release()
	cmd.Version = fsm.CatalogVersion
	cmd.Stamp = time.Now().UnixNano()
	data, err := proto.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	f := c.g.raft.Apply(data, timeoutOf(ctx, 10*time.Second))
	if err := f.Error(); err != nil {
		return nil, raftErr(err, c.g)
	}
	return f.Response().(*fsm.CatalogResult), nil
}

// runLeader is the controller leader's loop: barrier, then keep the
// catalogue and the controller's membership in line with gossip. It returns
// when leadership is lost or ctx ends.
func (c *controller) runLeader(ctx context.Context) {
	if err := c.g.raft.Barrier(10 * time.Second).Error(); err != nil {
		c.log.Warn("controller barrier", "err", err)
		return
	}
	c.log.Info("controller leader")
	c.leaderSince = time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var balance <-chan time.Time
	if iv := c.n.cfg.BalanceInterval; iv > 0 {
		bt := time.NewTicker(iv)
		defer bt.Stop()
		balance = bt.C
	}
	for {
		if err := c.reconcile(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("reconcile", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-c.n.gossip.changed:
		case <-tick.C:
		case <-balance:
			c.balance(ctx)
		}
		if c.g.raft.State() != raft.Leader {
			return
		}
	}
}

// reconcile records alive members in the catalogue and adds them to the
// controller group: voters up to controllerVoters, non-voters after.
// Members that left gracefully are taken out of the group.
func (c *controller) reconcile(ctx context.Context) error {
	if err := c.ensureReceiptKey(ctx); err != nil {
		return err
	}
	members := c.n.gossip.members()
	var nodes []*fsmv1.NodeInfo
	c.read(func(cat *fsm.Catalog) { nodes = cat.Nodes() })
	known := map[string]*fsmv1.NodeInfo{}
	for _, n := range nodes {
		known[n.GetId()] = n
	}
	var errs []error
	for _, m := range members {
		if m.State != "alive" {
			continue
		}
		k, ok := known[m.ID]
		if ok && k.GetState() == fsmv1.NodeState_NODE_STATE_REMOVED {
			continue
		}
		// Gossiping is not enough: before it is recorded (or its new
		// instance or address is), a node proves over mutual TLS that its
		// certificate names the id it gossips. A refused node is never
		// recorded, so never given a vote or a replica.
		if err := c.n.admit(ctx, m); err != nil {
			continue
		}
		info := nodeInfo(m)
		if ok && k.GetInstance() != "" && k.GetInstance() != info.GetInstance() {
			// The node lost its data: replace its replicas, and take its
			// old self out of the controller group, before it is recorded
			// with its new instance (and so may start replicas).
			if err := c.replaceLost(ctx, m.ID); err != nil {
				errs = append(errs, err)
				continue
			}
			if err := c.removeStaleMembers(m); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		if ok && k.GetInstance() == info.GetInstance() && k.GetClientAddr() == info.GetClientAddr() && k.GetPeerAddr() == info.GetPeerAddr() &&
			k.GetGossipAddr() == info.GetGossipAddr() && k.GetHttpAddr() == info.GetHttpAddr() &&
			k.GetZone() == info.GetZone() && k.GetVersion() == info.GetVersion() {
			continue
		}
		res, err := c.applyLocal(ctx, &fsmv1.CatalogCommand{Op: &fsmv1.CatalogCommand_UpsertNode{UpsertNode: &fsmv1.UpsertNode{Node: info}}})
		if err == nil && res.Code != fsm.CatalogOK {
			err = fmt.Errorf("upsert node %s: %v: %s", m.ID, res.Code, res.Detail)
		}
		errs = append(errs, err)
	}
	errs = append(errs, c.reconcileRaft(members))
	errs = append(errs, c.repair(ctx, members))
	return errors.Join(errs...)
}

func nodeInfo(m Member) *fsmv1.NodeInfo {
	return &fsmv1.NodeInfo{Id: m.ID, ClientAddr: m.Client, PeerAddr: m.Peer, GossipAddr: m.Gossip,
		HttpAddr: m.HTTP, Zone: m.Zone, Version: m.Version, Instance: m.Instance}
}

// removeStaleMembers takes out of the controller group every member of
// node m other than the one m's gossip names (m.Controller): identities
// whose state the node no longer has. The leader never removes itself.
func (c *controller) removeStaleMembers(m Member) error {
	if m.Controller == "" || m.ID == nodeOfServer(c.g.id) {
		return nil
	}
	f := c.g.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return err
	}
	var errs []error
	for _, s := range f.Configuration().Servers {
		if nodeOfServer(s.ID) == m.ID && s.ID != raft.ServerID(m.Controller) {
			c.log.Warn("removing a controller member whose state is gone", "node", m.ID, "server", s.ID, "now", m.Controller)
			errs = append(errs, c.g.raft.RemoveServer(s.ID, 0, 5*time.Second).Error())
		}
	}
	return errors.Join(errs...)
}

func (c *controller) reconcileRaft(members []Member) error {
	f := c.g.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return err
	}
	cfg := f.Configuration()
	// in: the configuration by server id; a member's server id is
	// m.Controller (the id of the state it holds now).
	in := map[raft.ServerID]raft.Server{}
	voters := 0
	for _, s := range cfg.Servers {
		in[s.ID] = s
		if s.Suffrage == raft.Voter {
			voters++
		}
	}
	alive := 0
	for _, m := range members {
		if m.State == "alive" {
			alive++
		}
	}
	maxVoters := controllerVoters(alive)
	var errs []error
	remove := func(id raft.ServerID) {
		if err := c.g.raft.RemoveServer(id, 0, 5*time.Second).Error(); err != nil {
			errs = append(errs, err)
			return
		}
		if in[id].Suffrage == raft.Voter {
			voters--
		}
		delete(in, id)
	}
	byNode := map[string]Member{}
	for _, m := range members {
		byNode[m.ID] = m
	}
	// A voter gone for ReplaceAfter is removed (the live voters keep their
	// majority) when a live node can take its vote (added below) or three
	// voters remain anyway.
	spare := 0
	for _, m := range members {
		if s, ok := in[raft.ServerID(m.Controller)]; m.State == "alive" && m.Controller != "" && (!ok || s.Suffrage != raft.Voter) {
			spare++
		}
	}
	if after := c.n.cfg.ReplaceAfter; after >= 0 {
		for id, s := range in {
			m, seen := byNode[nodeOfServer(id)]
			gone := (seen && m.State != "alive" && time.Since(m.Since) >= after) || (!seen && time.Since(c.leaderSince) >= after)
			if s.Suffrage != raft.Voter || !gone || id == c.g.id || (spare == 0 && voters-1 < 3) {
				continue
			}
			c.log.Warn("controller voter gone: replacing it", "server", id)
			remove(id)
			spare--
		}
	}
	// Nodes removed from the catalogue, or that left, are out of the group
	// for good; so is any member whose node now gossips another identity
	// (its state is gone) once the catalogue knows the node's current
	// instance (the lost replicas were replaced first: reconcile).
	known := map[string]*fsmv1.NodeInfo{}
	for _, n := range c.nodes() {
		known[n.GetId()] = n
	}
	for id := range in {
		node := nodeOfServer(id)
		if id == c.g.id {
			continue
		}
		m, seen := byNode[node]
		k, recorded := known[node]
		switch {
		case recorded && k.GetState() == fsmv1.NodeState_NODE_STATE_REMOVED:
			remove(id)
		case seen && m.State == "left":
			remove(id)
		case seen && m.State == "alive" && m.Controller != "" && raft.ServerID(m.Controller) != id &&
			recorded && k.GetInstance() == m.Instance:
			c.log.Warn("removing a controller member whose state is gone", "node", node, "server", id, "now", m.Controller)
			remove(id)
		}
	}
	for _, m := range members {
		if m.State != "alive" || m.Controller == "" {
			continue
		}
		// Only a node the catalogue records as it is now (admitted, see
		// reconcile) joins the group.
		if k, ok := known[m.ID]; !ok || k.GetState() == fsmv1.NodeState_NODE_STATE_REMOVED || k.GetInstance() != m.Instance {
			continue
		}
		id := raft.ServerID(m.Controller)
		addr := raftAddr(m.Peer, id)
		s, ok := in[id]
		switch {
		case !ok && voters < maxVoters:
			errs = append(errs, c.g.raft.AddVoter(id, addr, 0, 5*time.Second).Error())
			voters++
		case !ok:
			errs = append(errs, c.g.raft.AddNonvoter(id, addr, 0, 5*time.Second).Error())
		case s.Address != addr:
			// Same member, new address (a pod back with a new IP).
			if s.Suffrage == raft.Voter {
				errs = append(errs, c.g.raft.AddVoter(id, addr, 0, 5*time.Second).Error())
			} else {
				errs = append(errs, c.g.raft.AddNonvoter(id, addr, 0, 5*time.Second).Error())
			}
		case s.Suffrage != raft.Voter && voters < maxVoters:
			errs = append(errs, c.g.raft.AddVoter(id, addr, 0, 5*time.Second).Error())
			voters++
		}
	}
	return errors.Join(errs...)
}

// members returns the catalogue's nodes sorted by id.
func (c *controller) nodes() []*fsmv1.NodeInfo {
	var out []*fsmv1.NodeInfo
	c.read(func(cat *fsm.Catalog) { out = cat.Nodes() })
	return out
}

// node returns a catalogue node by id.
func (c *controller) node(id string) (*fsmv1.NodeInfo, bool) {
	var out *fsmv1.NodeInfo
	var ok bool
	c.read(func(cat *fsm.Catalog) { out, ok = cat.Node(id) })
	return out, ok
}

// voterIDs lists the nodes of the controller group's voters, sorted.
func (c *controller) voterIDs() []string {
	f := c.g.raft.GetConfiguration()
	if f.Error() != nil {
		return nil
	}
	var ids []string
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			ids = append(ids, nodeOfServer(s.ID))
		}
	}
	slices.Sort(ids)
	return ids
}

// epochKnown reports whether this member's catalogue has caught up with the
// group (a leader is known and everything committed is applied), so that a
// queue missing from it really was deleted.
func (c *controller) epochKnown() bool {
	r := c.g.raft
	return c.g.leaderID() != "" && r.AppliedIndex() > 0 && r.AppliedIndex() >= r.CommitIndex()
}

// balance evens out leaderships (a few transfers a round, only when the
// healthy nodes' counts differ by more than one) and, with AutoRebalance
// and no move in progress, plans replica moves.
func (c *controller) balance(ctx context.Context) {
	_, moving := c.replicationHealth()
	o := rebalanceOpts{moves: c.n.cfg.AutoRebalance && moving == 0, leaders: true, onlyIfUneven: true, maxTransfers: 2}
	res, err := c.n.rebalance(ctx, o)
	switch {
	case err != nil && ctx.Err() == nil:
		c.log.Info("balance", "err", err)
	case res != nil && (res.GetMoves() > 0 || res.GetLeaderChanges() > 0):
		c.log.Info("balance", "moves", res.GetMoves(), "preferred_leader_changes", res.GetLeaderChanges())
	}
}

// ensureReceiptKey creates the cluster's first receipt signing key: a
// cluster formed before keys existed, or a new one, gets one from its
// first controller leader.
func (c *controller) ensureReceiptKey(ctx context.Context) error {
	var have bool
	c.read(func(cat *fsm.Catalog) { have = len(cat.ReceiptKeys()) > 0 })
	if have {
		return nil
	}
	if lagging := c.n.nodesWithoutAccess(); len(lagging) > 0 {
		c.log.Debug("receipt key waits for every node to run a version with access control", "nodes", lagging)
		return nil
	}
	cmd, err := newReceiptKeyCommand()
	if err != nil {
		return err
	}
	res, err := c.applyLocal(ctx, withCatalogVersion(cmd))
	if err != nil {
		return fmt.Errorf("create the receipt key: %w", err)
	}
	if res.Code != fsm.CatalogOK {
		return fmt.Errorf("create the receipt key: %v %s", res.Code, res.Detail)
	}
	c.log.Info("receipt signing key created", "key", res.KeyID)
	return nil
}
