package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/quorumq/quorumq/fsm"
	"github.com/quorumq/quorumq/storage"
	"github.com/quorumq/quorumq/transport"
)

// group is one local Raft group member: the controller or a partition
// replica. It owns its raft instance, stores and transport.
type group struct {
	name  storage.GroupName
	id    raft.ServerID
	raft  *raft.Raft
	store *storage.GroupStore
	layer *transport.GroupLayer
	trans *raft.NetworkTransport
	// applied is broadcast (closed and replaced) after every applied batch.
	mu      sync.Mutex
	applied chan struct{}
	// leaderCh gets leadership changes (raft NotifyCh).
	leaderCh chan bool
}

// raftConfig is the Raft timing for many groups per node: heartbeats every
// HeartbeatTimeout/10, so a 500 ms timeout sends 20 heartbeats a second per
// follower per group led, and a dead leader is noticed within 0.5–1 s.
func raftConfig(id raft.ServerID, c *Config, log *slog.Logger) *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = id
	rc.HeartbeatTimeout = c.HeartbeatTimeout
	rc.ElectionTimeout = c.ElectionTimeout
	rc.LeaderLeaseTimeout = c.HeartbeatTimeout / 2
	rc.CommitTimeout = 20 * time.Millisecond
	// The leader takes every Apply waiting on its channel, up to
	// MaxAppendEntries, into one log append: one fsync. BatchApplyCh stays
	// off: with it an Apply sitting in the buffered channel when raft shuts
	// down is never answered (its future has no shutdown channel), and the
	// proposer would wait for ever.
	rc.BatchApplyCh = false
	rc.MaxAppendEntries = 256
	// Snapshot every 16k entries but keep 32k entries after it, so that a
	// follower lagging by less than that catches up from the log instead of
	// looping on snapshot installs.
	rc.SnapshotThreshold = 16384
	rc.TrailingLogs = 32768
	rc.SnapshotInterval = 60 * time.Second
	if c.trailingLogs != 0 {
		rc.TrailingLogs = c.trailingLogs
	}
	if c.snapshotThreshold != 0 {
		rc.SnapshotThreshold = c.snapshotThreshold
	}
	rc.Logger = transport.NewHCLogger(log, "raft")
	return rc
}

// controllerTiming makes the controller group's leader hold on through
// bursts of load that the partition groups put on the node (hundreds of
// them starting, electing or stopping at once, issue 13): its heartbeats
// may be late by a second before it steps down, and followers wait at
// least 2 s without one before they campaign. Nothing waits on the
// controller for latency: a catalogue change may take a second longer when
// its leader dies, and partitions keep serving meanwhile.
func controllerTiming(rc *raft.Config) {
	rc.HeartbeatTimeout = max(rc.HeartbeatTimeout, 2*time.Second)
	rc.ElectionTimeout = max(rc.ElectionTimeout, 2*time.Second)
	rc.LeaderLeaseTimeout = max(rc.LeaderLeaseTimeout, time.Second)
}

// serverIDKey is where a group's stable store keeps this member's Raft
// server id, so that a restarted node finds its identity in each group. It
// is written before Raft first runs on the store, so a member's identity
// and the state it voted and acknowledged with live and die together: a
// node that lost the store has lost the identity too (see DESIGN.md,
// "Identity").
var serverIDKey = []byte("quorumq/server-id")

// errIdentityMismatch: the store holds another member's state.
var errIdentityMismatch = errors.New("the group's store belongs to another member")

// groupFSM makes a group's FSM once its store is open and its identity
// known (fresh: the store was new, this member starts from nothing). It
// may replace the snapshot store Raft is given, and sets up rc.
type groupFSM func(g *group, fresh bool, rc *raft.Config) (raft.FSM, raft.SnapshotStore, error)

// openGroup starts a raft instance for name with the FSM mk makes for it.
// id is this member's server id: the one recorded in the group's store
// must be id (a store of another member is errIdentityMismatch, and a
// store with state but no recorded id is refused too); a new store records
// id before Raft runs. id "" means the one recorded in the group, which
// must exist; newID, if not "", is the id a store without one takes.
func openGroup(n *Node, name storage.GroupName, id, newID raft.ServerID, mk groupFSM, log *slog.Logger) (*group, error) {
	g := &group{name: name, applied: make(chan struct{}), leaderCh: make(chan bool, 8)}
	var opts []storage.GroupOption
	if !name.IsController() {
		opts = append(opts, storage.WithEngineLog(n.engine))
	}
	store, err := n.dir.OpenGroup(name, log, opts...)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	g.store = store
	var fresh bool
	if g.id, fresh, err = groupIdentity(store, id, newID); err != nil {
		store.Close()
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	layer, err := n.mux.Group(name.String(), g.id, raft.ServerAddress(n.peerAddr))
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("transport for %s: %w", name, err)
	}
	g.layer = layer
	g.trans = transport.NewRaftTransport(layer, log, peerAddrs{n})
	rc := raftConfig(g.id, &n.cfg, log)
	if name.IsController() {
		controllerTiming(rc)
	}
	rc.NotifyCh = g.leaderCh
	f, snaps, err := mk(g, fresh, rc)
	if err != nil {
		g.trans.Close()
		store.Close()
		return nil, fmt.Errorf("state of %s: %w", name, err)
	}
	r, err := raft.NewRaft(rc, f, store.Log, store.Stable, snaps, g.trans)
	if err != nil {
		g.trans.Close()
		store.Close()
		return nil, fmt.Errorf("raft for %s: %w", name, err)
	}
	g.raft = r
	return g, nil
}

// groupIdentity returns the server id a member opening store answers as
// (see openGroup), recording it first in a store that has none (fresh).
func groupIdentity(store *storage.GroupStore, id, newID raft.ServerID) (_ raft.ServerID, fresh bool, _ error) {
	rec, err := store.Stable.Get(serverIDKey)
	if err != nil && !errors.Is(err, storage.ErrKeyNotFound) {
		return "", false, fmt.Errorf("read server id: %w", err)
	}
	if len(rec) > 0 {
		if id != "" && raft.ServerID(rec) != id {
			return "", false, fmt.Errorf("%w: %s, not %s", errIdentityMismatch, rec, id)
		}
		return raft.ServerID(rec), false, nil
	}
	if newID == "" || id != "" && id != newID {
		return "", false, errors.New("no server id recorded")
	}
	id = newID
	// State without a recorded id cannot have been written by this code
	// (the id goes first): whose it is is unknown, so it is nobody's.
	if has, err := store.HasState(); err != nil || has {
		return "", false, fmt.Errorf("%w: state without a recorded server id (%v)", errIdentityMismatch, err)
	}
	if err := store.Stable.Set(serverIDKey, []byte(id)); err != nil {
		return "", false, fmt.Errorf("record server id: %w", err)
	}
	return id, true, nil
}

// bootstrap forms the group with servers unless it already has state.
func (g *group) bootstrap(servers []raft.Server) error {
	has, err := g.store.HasState()
	if err != nil || has {
		return err
	}
	err = g.raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error()
	if errors.Is(err, raft.ErrCantBootstrap) {
		return nil
	}
	return err
}

// waitApplied returns a channel closed at the next applied batch.
func (g *group) waitApplied() <-chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.applied
}

func (g *group) broadcastApplied() {
	g.mu.Lock()
	close(g.applied)
	g.applied = make(chan struct{})
	g.mu.Unlock()
}

// close shuts the raft instance down and releases its stores.
func (g *group) close() error {
	err := g.raft.Shutdown().Error()
	err = errors.Join(err, g.trans.Close(), g.store.Close())
	return err
}

// leaderID is the group's leader as this member knows it, or "".
func (g *group) leaderID() raft.ServerID {
	_, id := g.raft.LeaderWithID()
	return id
}

// notifyingFSM signals its group after every applied batch and restore, so
// that waiters (long polls, the replica manager) wake up.
type notifyingFSM[M fsm.Machine] struct {
	*fsm.RaftFSM[M]
	g *group
}

func (f notifyingFSM[M]) ApplyBatch(logs []*raft.Log) []any {
	out := f.RaftFSM.ApplyBatch(logs)
	f.g.broadcastApplied()
	return out
}

func (f notifyingFSM[M]) Apply(l *raft.Log) any { return f.ApplyBatch([]*raft.Log{l})[0] }

func (f notifyingFSM[M]) Restore(rc io.ReadCloser) error {
	err := f.RaftFSM.Restore(rc)
	f.g.broadcastApplied()
	return err
}

// followLeadership runs lead while ch (a raft NotifyCh) last said this member
// leads, cancelling it when leadership is lost; it returns when ctx ends.
func followLeadership(ctx context.Context, ch <-chan bool, lead func(context.Context)) {
	isLeader := false
	for {
		for !isLeader {
			select {
			case <-ctx.Done():
				return
			case isLeader = <-ch:
			}
		}
		lctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			lead(lctx)
		}()
		select {
		case <-ctx.Done():
			isLeader = false
		case isLeader = <-ch:
		}
		cancel()
		<-done
		if ctx.Err() != nil {
			return
		}
	}
}

// peerAddrs resolves a Raft server id ("<node>" or "<node>/<epoch>") to the
// node's peer address as gossip sees it now, so that a node back with a new
// IP is reached at once.
type peerAddrs struct{ n *Node }

func (p peerAddrs) ServerAddr(id raft.ServerID) (raft.ServerAddress, error) {
	node := nodeOfServer(id)
	g := p.n.gossipReady.Load() // nil until gossip runs: use the configured address
	if g == nil {
		return "", fmt.Errorf("gossip not started")
	}
	for _, m := range g.members() {
		if m.ID == node && m.State == "alive" && m.Peer != "" {
			return raftAddr(m.Peer, id), nil
		}
	}
	return "", fmt.Errorf("no live member %s", node)
}

// raftAddr is the address a Raft configuration holds for server id on a
// node whose peer address is peer: the address, tagged with the server id
// (transport.Address). The id tells the node which member a connection is
// for, so it never answers for a member it does not hold; it also lets a
// new node at a dead one's address join a group the dead one is still a
// member of.
func raftAddr(peer string, id raft.ServerID) raft.ServerAddress {
	return transport.Address(peer, id)
}
