package client

import (
	"context"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// maxWait is the server's bound on a Receive long poll.
const maxWait = 20 * time.Second

// Delivery is a received message under a lease. Finish it with exactly
// one of Ack, Requeue or Reject before the lease ends (ExtendLease moves the
// end); otherwise the message is delivered again once the lease expires.
// The first of them finishes the delivery whatever its outcome (the client
// has already retried what it could); later calls, ExtendLease included,
// return ErrAlreadyFinished. The methods are safe for concurrent use.
type Delivery struct {
	Queue     string
	MessageID string // "<partition>-<seq>"
	Partition uint32
	Seq       uint64
	Payload   []byte
	Key       string
	Headers   map[string]string
	// DeliveryCount is how many times the message has been leased,
	// this time included.
	DeliveryCount uint32
	EnqueuedAt    time.Time
	// LeaseDeadline is when the lease ends, by the server's clock, as
	// received (ExtendLease does not update it).
	LeaseDeadline time.Time
	// Receipt is the lease's opaque handle (for logs, or Client.Ack).
	Receipt string

	c        *Client
	finished atomic.Bool
	// Set by Consume; guarded by cons.mu.
	cons     *consumer
	deadline time.Time // local estimate of the lease's end
	started  bool      // a handler took it
	lost     bool      // an extension found the lease gone
}

func newDelivery(c *Client, queue string, m *qv1.ReceivedMessage) *Delivery {
	return &Delivery{
		Queue: queue, MessageID: m.GetMessageId(), Partition: m.GetPartition(), Seq: m.GetSeq(),
		Payload: m.GetPayload(), Key: m.GetKey(), Headers: m.GetHeaders(), DeliveryCount: m.GetDeliveryCount(),
		EnqueuedAt: m.GetEnqueuedAt().AsTime(), LeaseDeadline: m.GetLeaseDeadline().AsTime(), Receipt: m.GetReceipt(),
		c: c,
	}
}

// Receive leases up to max messages (1 to 1000) from queue, across its
// partitions. With Wait it long-polls that long for a first message (the
// wait is cut short to end before ctx's deadline); without, it answers at
// once, possibly with none. Receive is retried on UNAVAILABLE and
// DEADLINE_EXCEEDED: a lease whose answer was lost just expires.
func (c *Client) Receive(ctx context.Context, queue string, max int, opts ...ReceiveOption) ([]*Delivery, error) {
	var cfg receiveConfig
	for _, o := range opts {
		o.configureReceive(&cfg)
	}
	return c.receive(ctx, queue, max, cfg)
}

func (c *Client) receive(ctx context.Context, queue string, n int, cfg receiveConfig) ([]*Delivery, error) {
	if n < 1 || n > maxReceive {
		return nil, wrapErr("Receive", invalidf("max %d outside [1, %d]", n, maxReceive))
	}
	if cfg.wait < 0 || cfg.wait > maxWait {
		return nil, wrapErr("Receive", invalidf("wait %v outside [0, %v]", cfg.wait, maxWait))
	}
	req := &qv1.ReceiveRequest{Queue: queue, Max: uint32(n), Consumer: cfg.consumer}
	if cfg.visibility > 0 {
		req.VisibilityTimeout = durationpb.New(cfg.visibility)
	}
	var resp *qv1.ReceiveResponse
	err := c.invoke(ctx, call{op: "Receive", safe: true, queue: queue}, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		wait := cfg.wait
		if dl, ok := ctx.Deadline(); ok {
			// End the poll before the caller's deadline, so that an empty
			// answer arrives instead of DEADLINE_EXCEEDED.
			wait = min(wait, time.Until(dl)*3/4)
		}
		req.Wait = nil
		if wait > 0 {
			req.Wait = durationpb.New(wait)
		}
		resp, err = qv1.NewQueueServiceClient(cc).Receive(ctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make([]*Delivery, len(resp.GetMessages()))
	for i, m := range resp.GetMessages() {
		out[i] = newDelivery(c, queue, m)
	}
	return out, nil
}

// Ack removes the message for good. It returns nil if it did, also when an
// attempt's answer was lost and the retry found the message already gone;
// ErrStaleReceipt if the lease had ended (the message will be, or was,
// delivered again); ErrAlreadyFinished if the delivery was already finished.
func (d *Delivery) Ack(ctx context.Context) error {
	return d.finish(ctx, leaseOp{kind: opAck})
}

// Requeue makes the message ready again, after delay (0: at once). The
// delivery counts toward the queue's max deliveries: a message requeued
// past them goes to dead-letter.
func (d *Delivery) Requeue(ctx context.Context, delay time.Duration) error {
	if delay < 0 {
		return wrapErr("Requeue", invalidf("negative delay %v", delay))
	}
	return d.finish(ctx, leaseOp{kind: opRequeue, dur: delay})
}

// Reject moves the message to the queue's dead-letter list with reason.
func (d *Delivery) Reject(ctx context.Context, reason string) error {
	return d.finish(ctx, leaseOp{kind: opReject, reason: reason})
}

// ExtendLease makes the lease end visibility from now (0: the queue's
// visibility timeout). It may be called any number of times until the
// delivery is finished.
func (d *Delivery) ExtendLease(ctx context.Context, visibility time.Duration) error {
	if d.finished.Load() {
		return ErrAlreadyFinished
	}
	if visibility < 0 {
		return wrapErr("ExtendLease", invalidf("negative visibility %v", visibility))
	}
	start := time.Now()
	res := d.c.settle(ctx, leaseOp{kind: opExtend, dur: visibility}, d.Queue, []leaseItem{{receipt: d.Receipt, part: int64(d.Partition)}})
	if res[0].Err == nil && d.cons != nil && visibility > 0 {
		d.cons.extended(d, start.Add(visibility))
	}
	return res[0].Err
}

// finish runs a finishing operation once.
func (d *Delivery) finish(ctx context.Context, op leaseOp) error {
	if !d.finished.CompareAndSwap(false, true) {
		return ErrAlreadyFinished
	}
	res := d.c.settle(ctx, op, d.Queue, []leaseItem{{receipt: d.Receipt, part: int64(d.Partition)}})
	if d.cons != nil {
		d.cons.release(d)
	}
	return res[0].Err
}
