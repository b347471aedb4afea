package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/quorumq/quorumq/fsm"
	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

// nodeLimits holds the state of the node's limits.
type nodeLimits struct {
	recv *recvLimits
	// queueOps paces queue creations and deletions on the controller
	// leader; queueOpsMu serialises them there, so that each one's caps
	// are checked against a catalogue holding every earlier one.
	queueOps   *rate.Limiter
	queueOpsMu sync.Mutex
	// replicaStarts paces the starts of new replicas on this node
	// (replicaSet.reconcile).
	replicaStarts *rate.Limiter

	refusedMu sync.Mutex
	refused   map[string]uint64 // queue operations refused, by flag (metrics)
}

// countRefusal counts err if it is a LimitError; it returns err.
func (l *nodeLimits) countRefusal(err error) error {
	var le *LimitError
	if errors.As(err, &le) {
		l.refusedMu.Lock()
		l.refused[le.Flag]++
		l.refusedMu.Unlock()
	}
	return err
}

// Replicas a node starts for new partitions, per second and at once
// (replicaStarts). A 256-partition queue takes about 12 s to start
// everywhere; its CreateQueue answers once the first partitions have
// leaders (or after 5 s), and enqueues to a partition that has none yet
// wait for it.
const (
	replicaStartsPerSecond = 20
	replicaStartsBurst     = 10
)

func newNodeLimits(l Limits) *nodeLimits {
	return &nodeLimits{
		recv:          newRecvLimits(),
		queueOps:      rate.NewLimiter(rate.Limit(l.QueueOpsRate), max(1, int(2*l.QueueOpsRate))),
		replicaStarts: rate.NewLimiter(replicaStartsPerSecond, replicaStartsBurst),
		refused:       map[string]uint64{},
	}
}

// maxQueueOpWait: a queue creation or deletion over the rate waits this long
// at most for its turn (within its deadline); past that it is refused.
const maxQueueOpWait = 2 * time.Second

// admitQueueOp checks a catalogue command on the controller leader before
// it is proposed: queue creations and deletions are rate-limited and run one
// at a time, and a creation must stay within the queue, partition and
// replica caps. The caller proposes cmd, then calls release.
func (c *controller) admitQueueOp(ctx context.Context, cmd *fsmv1.CatalogCommand) (release func(), err error) {
	release, err = c.checkQueueOp(ctx, cmd)
	return release, c.n.lim.countRefusal(err)
}

func (c *controller) checkQueueOp(ctx context.Context, cmd *fsmv1.CatalogCommand) (release func(), err error) {
	create := cmd.GetCreateQueue()
	if create == nil && cmd.GetDeleteQueue() == nil {
		return func() {}, nil
	}
	l, lim := c.n.cfg.Limits, c.n.lim
	if create != nil {
		if err := checkPartitions(l, len(create.GetPartitions())); err != nil {
			return nil, err
		}
	}
	r := lim.queueOps.Reserve()
	wait := r.Delay()
	if dl, ok := ctx.Deadline(); wait > maxQueueOpWait || (ok && time.Until(dl) < wait) {
		r.Cancel()
		return nil, &LimitError{Flag: "--queue-ops-rate", Exhausted: true,
			Detail: fmt.Sprintf("too many queue creations and deletions: at most %g per second", l.QueueOpsRate)}
	}
	if wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			r.Cancel()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
	lim.queueOpsMu.Lock()
	if create != nil {
		if err := c.checkCaps(l, create); err != nil {
			lim.queueOpsMu.Unlock()
			return nil, err
		}
	}
	return lim.queueOpsMu.Unlock, nil
}

// checkPartitions refuses a queue of more partitions than the limit.
func checkPartitions(l Limits, parts int) error {
	if parts > l.MaxPartitionsPerQueue {
		return &LimitError{Flag: "--max-partitions-per-queue",
			Detail: fmt.Sprintf("%d partitions, at most %d per queue", parts, l.MaxPartitionsPerQueue)}
	}
	return nil
}

// checkCaps refuses the creation of a new queue past the cluster's queue
// cap, or one that would put more replicas on a node than its cap.
func (c *controller) checkCaps(l Limits, cq *fsmv1.CreateQueue) error {
	var err error
	c.read(func(cat *fsm.Catalog) {
		if _, exists := cat.Queue(cq.GetName()); exists {
			return // nothing new is placed: the catalogue answers
		}
		queues := cat.Queues()
		if len(queues) >= l.MaxQueues {
			err = &LimitError{Flag: "--max-queues", Exhausted: true,
				Detail: fmt.Sprintf("the cluster holds %d queues, at most %d", len(queues), l.MaxQueues)}
			return
		}
		load := map[string]int{}
		for _, q := range queues {
			for _, pa := range q.GetPartitions() {
				for _, r := range pa.GetReplicas() {
					load[r.GetNodeId()]++
				}
			}
		}
		added := map[string]int{}
		for _, pa := range cq.GetPartitions() {
			for _, r := range pa.GetReplicas() {
				added[r.GetNodeId()]++
			}
		}
		for node, k := range added {
			if load[node]+k > l.MaxReplicasPerNode {
				err = &LimitError{Flag: "--max-replicas-per-node", Exhausted: true,
					Detail: fmt.Sprintf("node %s holds %d partition replicas; %d more would pass its cap of %d", node, load[node], k, l.MaxReplicasPerNode)}
				return
			}
		}
	})
	return err
}
