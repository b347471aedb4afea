package client

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// QueueOptions are a new queue's shape and settings. Zero values mean the
// server's defaults.
type QueueOptions struct {
	// Partitions: default 1, at most 1024. Replicas: default 3 (or the
	// number of nodes, if fewer), at most 7.
	Partitions uint32
	Replicas   uint32
	// Visibility is the lease of a Receive that names none (default 30 s).
	Visibility time.Duration
	// MaxDeliveries: a message leased this many times goes to dead-letter
	// (nil: default 10; 0: unlimited).
	MaxDeliveries *uint32
	// DedupWindow is how long a dedup id is remembered (0: default 5 min;
	// negative: dedup off).
	DedupWindow time.Duration
	// Retention: messages older than this are deleted (0: default 4 days;
	// negative: kept until acked).
	Retention time.Duration
	// MaxMessages and MaxBytes limit each partition's stored messages, in
	// every state (0: unlimited); past them Enqueue fails with ErrQueueFull.
	MaxMessages uint64
	MaxBytes    uint64
}

func (o QueueOptions) settings() *qv1.QueueSettings {
	s := &qv1.QueueSettings{MaxDeliveries: o.MaxDeliveries, MaxMessagesPerPartition: o.MaxMessages, MaxBytesPerPartition: o.MaxBytes}
	opt := func(d time.Duration) *durationpb.Duration {
		switch {
		case d == 0:
			return nil // the server's default
		case d < 0:
			return durationpb.New(0) // off
		}
		return durationpb.New(d)
	}
	s.DedupWindow, s.Retention = opt(o.DedupWindow), opt(o.Retention)
	if o.Visibility != 0 {
		s.VisibilityTimeout = durationpb.New(o.Visibility)
	}
	return s
}

// CreateQueue creates a queue and returns it. Creating one that exists
// with the same shape and settings returns it (so the client retries it
// safely); with others it fails with ErrAlreadyExists.
func (c *Client) CreateQueue(ctx context.Context, name string, opts QueueOptions) (*qv1.Queue, error) {
	req := &qv1.CreateQueueRequest{Name: name, Partitions: opts.Partitions, Replicas: opts.Replicas, Settings: opts.settings()}
	var resp *qv1.CreateQueueResponse
	err := c.invoke(ctx, anyNode("CreateQueue", true), func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = qv1.NewQueueServiceClient(cc).CreateQueue(ctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	c.router.setParts(name, resp.GetQueue().GetPartitions())
	c.refreshSoon()
	return resp.GetQueue(), nil
}

// GetQueue returns a queue's settings and its stats summed over the
// partitions (PartitionsUnavailable counts those that did not answer).
func (c *Client) GetQueue(ctx context.Context, name string) (*qv1.Queue, error) {
	var resp *qv1.GetQueueResponse
	err := c.invoke(ctx, call{op: "GetQueue", safe: true, queue: name}, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = qv1.NewQueueServiceClient(cc).GetQueue(ctx, &qv1.GetQueueRequest{Name: name})
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp.GetQueue(), nil
}

// ListQueues lists every queue (without stats).
func (c *Client) ListQueues(ctx context.Context) ([]*qv1.Queue, error) {
	var resp *qv1.ListQueuesResponse
	err := c.invoke(ctx, anyNode("ListQueues", true), func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = qv1.NewQueueServiceClient(cc).ListQueues(ctx, &qv1.ListQueuesRequest{})
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp.GetQueues(), nil
}

// DeleteQueue deletes a queue and its messages. A retry that finds the
// queue gone after an attempt whose answer was lost returns nil.
func (c *Client) DeleteQueue(ctx context.Context, name string) error {
	var lost bool
	err := c.invoke(ctx, anyNode("DeleteQueue", true), func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := qv1.NewQueueServiceClient(cc).DeleteQueue(ctx, &qv1.DeleteQueueRequest{Name: name})
		if err != nil && ambiguous(status.Code(err)) {
			lost = true
		}
		return err
	})
	c.router.forget(name)
	if lost && status.Code(err) == codes.NotFound {
		return nil
	}
	return err
}

// PurgeQueue deletes a queue's ready and delayed messages (ready) and its
// dead letters (dead), and says how many of each. Leased messages stay.
// It is not retried after a timeout, so that its counts are one purge's.
func (c *Client) PurgeQueue(ctx context.Context, name string, ready, dead bool) (*qv1.PurgeResponse, error) {
	var resp *qv1.PurgeResponse
	err := c.invoke(ctx, call{op: "Purge", queue: name}, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = qv1.NewQueueServiceClient(cc).Purge(ctx, &qv1.PurgeRequest{Queue: name, Ready: ready, Dead: dead})
		return err
	})
	return resp, err
}

// ListDeadLetters returns up to limit (0: 100; at most 1000) of a queue's
// dead letters from pageToken ("" for the first page), and the token of
// the next page ("" after the last).
func (c *Client) ListDeadLetters(ctx context.Context, queue string, limit int, pageToken string) ([]*qv1.DeadLetter, string, error) {
	if limit < 0 || limit > 1000 {
		return nil, "", wrapErr("ListDeadLetters", invalidf("limit %d outside [0, 1000]", limit))
	}
	req := &qv1.ListDeadLettersRequest{Queue: queue, Limit: uint32(limit), PageToken: pageToken}
	var resp *qv1.ListDeadLettersResponse
	err := c.invoke(ctx, call{op: "ListDeadLetters", safe: true, queue: queue}, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = qv1.NewQueueServiceClient(cc).ListDeadLetters(ctx, req)
		return err
	})
	if err != nil {
		return nil, "", err
	}
	return resp.GetDeadLetters(), resp.GetNextPageToken(), nil
}

// Redrive moves dead letters back to ready, with their delivery counts
// reset: the named ones (message ids "<partition>-<seq>"), or, with none
// named, up to max per partition (0: all). It returns how many moved.
// Redriving named messages is retried after a timeout (moving them again
// is a no-op); redriving by count is not.
func (c *Client) Redrive(ctx context.Context, queue string, messageIDs []string, max uint64) (uint64, error) {
	req := &qv1.RedriveRequest{Queue: queue, MessageIds: messageIDs, Max: max}
	var resp *qv1.RedriveResponse
	err := c.invoke(ctx, call{op: "Redrive", safe: len(messageIDs) > 0, queue: queue}, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = qv1.NewQueueServiceClient(cc).Redrive(ctx, req)
		return err
	})
	if err != nil {
		return 0, err
	}
	return resp.GetMoved(), nil
}

// ClusterStatus returns the status of the node that answers.
func (c *Client) ClusterStatus(ctx context.Context) (*qv1.StatusResponse, error) {
	var resp *qv1.StatusResponse
	err := c.invoke(ctx, anyNode("Status", true), func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = qv1.NewClusterServiceClient(cc).Status(ctx, &qv1.StatusRequest{})
		return err
	})
	return resp, err
}

// Members lists the cluster's nodes as the answering node sees them.
func (c *Client) Members(ctx context.Context) ([]*qv1.Member, error) {
	var resp *qv1.MembersResponse
	err := c.invoke(ctx, anyNode("Members", true), func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = qv1.NewClusterServiceClient(cc).Members(ctx, &qv1.MembersRequest{})
		return err
	})
	if err != nil {
		return nil, err
	}
	c.router.setMembers(resp.GetMembers())
	return resp.GetMembers(), nil
}

// Partitions lists the partitions of queue ("" for every queue): leader,
// Raft progress, replicas and stats.
func (c *Client) Partitions(ctx context.Context, queue string) ([]*qv1.PartitionInfo, error) {
	var resp *qv1.PartitionsResponse
	err := c.invoke(ctx, anyNode("Partitions", true), func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = qv1.NewClusterServiceClient(cc).Partitions(ctx, &qv1.PartitionsRequest{Queue: queue})
		return err
	})
	if err != nil {
		return nil, err
	}
	if queue != "" {
		c.router.setPartitions(queue, resp.GetPartitions())
	}
	return resp.GetPartitions(), nil
}

// LocalPartitions asks exactly the node at client address addr for its own
// replicas of queue ("" = every queue), as they stand on that node: applied
// index, state checksum, stats. Replicas of a partition at the same applied
// index must report the same checksum; comparing them across nodes checks
// that replicas converged. One attempt, no retry elsewhere.
func (c *Client) LocalPartitions(ctx context.Context, addr, queue string) ([]*qv1.PartitionInfo, error) {
	cc, err := c.conn(addr)
	if err != nil {
		return nil, wrapErr("LocalPartitions", err)
	}
	resp, err := qv1.NewClusterServiceClient(cc).Partitions(ctx, &qv1.PartitionsRequest{Queue: queue, Local: true})
	if err != nil {
		return nil, wrapErr("LocalPartitions", err)
	}
	return resp.GetPartitions(), nil
}

// TransferLeadership moves the leadership of a partition to node to (""
// for Raft's choice) and returns the new leader's id.
func (c *Client) TransferLeadership(ctx context.Context, queue string, partition uint32, to string) (string, error) {
	req := &qv1.TransferLeadershipRequest{Queue: queue, Partition: partition, To: to}
	var resp *qv1.TransferLeadershipResponse
	err := c.invoke(ctx, call{op: "TransferLeadership", queue: queue, parts: []uint32{partition}}, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = qv1.NewClusterServiceClient(cc).TransferLeadership(ctx, req)
		return err
	})
	if err != nil {
		return "", err
	}
	c.refreshSoon()
	return resp.GetLeader(), nil
}

// DrainNode marks node draining: the cluster moves its replicas and
// leaderships to other nodes while it keeps serving (cancel: stop
// draining). It returns how many replicas the node still hosts.
func (c *Client) DrainNode(ctx context.Context, node string, cancel bool) (uint32, error) {
	var resp *qv1.DrainNodeResponse
	err := c.invoke(ctx, anyNode("DrainNode", true), func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = qv1.NewClusterServiceClient(cc).DrainNode(ctx, &qv1.DrainNodeRequest{NodeId: node, Cancel: cancel})
		return err
	})
	return resp.GetReplicas(), err
}

// RemoveNode takes a node that hosts no replica out of the cluster for
// good; it is refused while the node still hosts a replica.
func (c *Client) RemoveNode(ctx context.Context, node string) error {
	return c.invoke(ctx, anyNode("RemoveNode", true), func(ctx context.Context, cc *grpc.ClientConn) error {
		_, err := qv1.NewClusterServiceClient(cc).RemoveNode(ctx, &qv1.RemoveNodeRequest{NodeId: node})
		return err
	})
}

// Rebalance plans replica moves and leadership changes that even out the
// healthy nodes' load; the moves run in the background.
func (c *Client) Rebalance(ctx context.Context) (*qv1.RebalanceResponse, error) {
	var resp *qv1.RebalanceResponse
	err := c.invoke(ctx, anyNode("Rebalance", true), func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = qv1.NewClusterServiceClient(cc).Rebalance(ctx, &qv1.RebalanceRequest{})
		return err
	})
	return resp, err
}
