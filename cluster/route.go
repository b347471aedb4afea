package cluster

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/quorumq/quorumq/fsm"
	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
	peerv1 "github.com/quorumq/quorumq/proto/quorumq/peer/v1"
)

// routes remembers who leads each partition, learnt from local replicas and
// from the hints other nodes answer with.
type routes struct {
	mu   sync.Mutex
	hint map[groupKey]string
	next map[groupKey]int // rotation over replicas when no leader is known
}

func (rt *routes) get(k groupKey) string {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.hint[k]
}

func (rt *routes) set(k groupKey, leader string) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.hint == nil {
		rt.hint, rt.next = map[groupKey]string{}, map[groupKey]int{}
	}
	if leader == "" {
		delete(rt.hint, k)
		rt.next[k]++
		return
	}
	rt.hint[k] = leader
}

func (rt *routes) rotation(k groupKey) int {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.next[k]
}

// leaderOf is where to send a request for partition p of q: the leader if
// known, else the replicas in turn (the first is the preferred leader).
func (n *Node) leaderOf(q *fsmv1.QueueInfo, p uint32) string {
	k := groupKey{q.GetName(), p}
	if r, ok := n.replicas.get(q.GetName(), p); ok && r.qid == q.GetId() {
		if id := r.g.leaderID(); id != "" {
			return nodeOfServer(id)
		}
	}
	if h := n.routes.get(k); h != "" {
		return h
	}
	if int(p) >= len(q.GetPartitions()) {
		return ""
	}
	reps := q.GetPartitions()[p].GetReplicas()
	if len(reps) == 0 {
		return ""
	}
	return reps[n.routes.rotation(k)%len(reps)].GetNodeId()
}

func groupOf(q *fsmv1.QueueInfo, p uint32) *peerv1.Group {
	return &peerv1.Group{Queue: q.GetName(), QueueId: q.GetId(), Partition: p}
}

// onLeader runs local on this node's replica if it leads partition p of q,
// else remote against the leader's node; it follows leader hints and waits
// out elections within ctx's deadline (or forwardBudget).
func onLeader[T any](ctx context.Context, n *Node, q *fsmv1.QueueInfo, p uint32,
	local func(context.Context, *replica) (T, error),
	remote func(ctx context.Context, node string) (T, error)) (T, error) {
	k := groupKey{q.GetName(), p}
	return retryLeader(ctx, func(ctx context.Context) (T, string, error) {
		var zero T
		target := n.leaderOf(q, p)
		if target == "" {
			return zero, "", errNoLeader
		}
		var res T
		var err error
		if r, ok := n.replicas.get(q.GetName(), p); ok && target == n.id && r.qid == q.GetId() {
			if !r.isLeader() {
				n.routes.set(k, nodeOfServer(r.g.leaderID()))
				return zero, "", &NotLeaderError{Group: groupString(groupOf(q, p)), Leader: nodeOfServer(r.g.leaderID())}
			}
			res, err = local(ctx, r)
		} else {
			n.metrics.forwarded.Add(1)
			res, err = remote(ctx, target)
		}
		var nle *NotLeaderError
		switch {
		case err == nil:
			n.routes.set(k, target)
		case errors.As(err, &nle):
			n.routes.set(k, nle.Leader)
		case isUnavailable(err):
			n.routes.set(k, "")
		}
		return res, "", err
	})
}

// propose applies cmd on partition p of q.
func (n *Node) propose(ctx context.Context, q *fsmv1.QueueInfo, p uint32, cmd *fsmv1.Command) (*fsm.Result, error) {
	return onLeader(ctx, n, q, p,
		func(ctx context.Context, r *replica) (*fsm.Result, error) { return r.propose(ctx, cmd) },
		func(ctx context.Context, node string) (*fsm.Result, error) {
			return n.peers.propose(ctx, node, groupOf(q, p), cmd)
		})
}

// readPartition reads partition p of q on its leader.
func (n *Node) readPartition(ctx context.Context, q *fsmv1.QueueInfo, p uint32, req *peerv1.ReadRequest) (*peerv1.ReadResponse, error) {
	req.Group = groupOf(q, p)
	return onLeader(ctx, n, q, p,
		func(ctx context.Context, r *replica) (*peerv1.ReadResponse, error) { return r.read(req), nil },
		func(ctx context.Context, node string) (*peerv1.ReadResponse, error) {
			return n.peers.read(ctx, node, req)
		})
}

// waitReady waits up to timeout for partition p of q to have a ready
// message, and says how many are ready.
func (n *Node) waitReady(ctx context.Context, q *fsmv1.QueueInfo, p uint32, timeout time.Duration) (uint64, error) {
	return onLeader(ctx, n, q, p,
		func(ctx context.Context, r *replica) (uint64, error) { return r.waitReady(ctx, timeout), nil },
		func(ctx context.Context, node string) (uint64, error) {
			return n.peers.waitReady(ctx, node, groupOf(q, p), timeout.Milliseconds())
		})
}

func withVersion(c *fsmv1.Command) *fsmv1.Command {
	if c == nil {
		return nil
	}
	c.Version = fsm.CommandVersion
	return c
}
