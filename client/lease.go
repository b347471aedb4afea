package client

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// ReceiptResult is the outcome of a lease operation for one receipt.
type ReceiptResult struct {
	Receipt string
	// Err is nil if the operation took effect. Otherwise it wraps
	// ErrStaleReceipt (the receipt no longer names a lease),
	// ErrUnavailable (the partition could not be reached in time), or the
	// error of the whole request.
	Err error
	// Presumed is set, with a nil Err, when an attempt's answer was lost
	// (the request may or may not have been applied) and the retry found
	// the lease already gone, as the lost attempt would have left it: the
	// client concludes that attempt took effect. It cannot tell that apart
	// from the lease having expired in between (for an ack: the message
	// was then acked or deleted by someone else; for a requeue or a reject:
	// the message is ready or leased again).
	Presumed bool
}

type opKind int

const (
	opAck opKind = iota
	opRequeue
	opExtend
	opReject
)

func (k opKind) String() string {
	return [...]string{"Ack", "Requeue", "ExtendLease", "Reject"}[k]
}

// leaseOp is one of the receipt operations with its parameter.
type leaseOp struct {
	kind   opKind
	dur    time.Duration // requeue delay, extension
	reason string
}

// leaseItem is a receipt and its partition (-1: unknown).
type leaseItem struct {
	receipt string
	part    int64
}

// goneMeansDone says whether a receipt the server no longer knows as
// leased (outcome) shows that an earlier, ambiguous attempt of op took
// effect. An applied ack deletes the message (UNKNOWN); an applied requeue
// or reject leaves it stored under no lease (STALE), or deletes it (UNKNOWN:
// requeued past its retention). An applied extension leaves the lease in
// place, so a retry finds it OK.
func goneMeansDone(op opKind, outcome qv1.ReceiptStatus) bool {
	switch op {
	case opAck:
		return outcome == qv1.ReceiptStatus_RECEIPT_STATUS_UNKNOWN
	case opRequeue, opReject:
		return outcome == qv1.ReceiptStatus_RECEIPT_STATUS_UNKNOWN || outcome == qv1.ReceiptStatus_RECEIPT_STATUS_STALE
	}
	return false
}

// settle runs op on items, grouped per partition leader, retrying the
// receipts whose outcome is unknown (the request failed with a retryable
// code, or the server reported the partition unavailable). Every receipt
// gets its own result.
func (c *Client) settle(ctx context.Context, op leaseOp, queue string, items []leaseItem) []ReceiptResult {
	if _, learn := c.router.partitions(queue); learn {
		c.refreshSoon()
	}
	res := make([]ReceiptResult, len(items))
	amb := make([]bool, len(items)) // an earlier attempt may have applied it
	pending := make([]int, len(items))
	for i, it := range items {
		res[i].Receipt = it.receipt
		pending[i] = i
	}
	r := retrier{p: c.cfg.retry}
	var mu sync.Mutex
	for {
		var retry []int
		var lastErr error
		groups := c.groupReceipts(queue, items, pending)
		var wg sync.WaitGroup
		for _, g := range groups {
			wg.Go(func() {
				outcomes, err := c.leaseAttempt(ctx, op, queue, g.addr, g.parts, items, g.idx)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					code := status.Code(err)
					for _, i := range g.idx {
						amb[i] = amb[i] || ambiguous(code)
						res[i].Err = wrapErr(op.kind.String(), err)
					}
					if retryable(code, true) && ctx.Err() == nil {
						retry = append(retry, g.idx...)
						lastErr = err
					}
					return
				}
				for j, i := range g.idx {
					switch o := outcomes[j]; {
					case o == qv1.ReceiptStatus_RECEIPT_STATUS_OK:
						res[i].Err = nil
					case (o == qv1.ReceiptStatus_RECEIPT_STATUS_STALE || o == qv1.ReceiptStatus_RECEIPT_STATUS_UNKNOWN) && amb[i] && goneMeansDone(op.kind, o):
						res[i].Err, res[i].Presumed = nil, true
					case o == qv1.ReceiptStatus_RECEIPT_STATUS_STALE:
						res[i].Err = opErrorf(op.kind.String(), ErrStaleReceipt, "stale receipt: the lease ended; the message is ready or leased again")
					case o == qv1.ReceiptStatus_RECEIPT_STATUS_UNKNOWN:
						res[i].Err = opErrorf(op.kind.String(), ErrStaleReceipt, "stale receipt: no leased message matches (acked, deleted or expired)")
					default: // UNAVAILABLE: the partition's command failed; it may have been applied
						amb[i] = true
						res[i].Err = opErrorf(op.kind.String(), ErrUnavailable, "unavailable: the partition did not answer")
						retry = append(retry, i)
						lastErr = res[i].Err
					}
				}
			})
		}
		wg.Wait()
		if len(retry) == 0 || !r.wait(ctx) {
			return res
		}
		c.log.Debug("quorumq: retrying receipts", "op", op.kind, "receipts", len(retry), "attempt", r.attempt+1, "err", lastErr)
		pending = retry
	}
}

// receiptGroup is receipts sent to one node in one request.
type receiptGroup struct {
	addr  string
	parts []uint32
	idx   []int
}

func (c *Client) groupReceipts(queue string, items []leaseItem, pending []int) []*receiptGroup {
	var out []*receiptGroup
	open := map[string]*receiptGroup{}
	for _, i := range pending {
		addr := ""
		if p := items[i].part; p >= 0 {
			addr = c.router.leaderAddr(queue, uint32(p))
		}
		if addr == "" || !c.router.usable(addr) {
			addr = "" // any node: resolved per group below
		}
		g := open[addr]
		if g == nil || len(g.idx) >= maxLeaseBatch {
			g = &receiptGroup{addr: addr}
			open[addr] = g
			out = append(out, g)
		}
		g.idx = append(g.idx, i)
		if p := items[i].part; p >= 0 {
			g.addPart(uint32(p))
		}
	}
	for _, g := range out {
		if g.addr == "" {
			g.addr = c.router.any("")
		}
	}
	return out
}

func (g *receiptGroup) addPart(p uint32) {
	for _, q := range g.parts {
		if q == p {
			return
		}
	}
	g.parts = append(g.parts, p)
}

// leaseAttempt sends one request for the receipts items[idx] to addr and
// returns their outcomes in order.
func (c *Client) leaseAttempt(ctx context.Context, op leaseOp, queue, addr string, parts []uint32, items []leaseItem, idx []int) ([]qv1.ReceiptStatus, error) {
	receipts := make([]string, len(idx))
	for j, i := range idx {
		receipts[j] = items[i].receipt
	}
	cc, err := c.conn(addr)
	if err != nil {
		return nil, err
	}
	qs := qv1.NewQueueServiceClient(cc)
	var results []*qv1.ReceiptResult
	switch op.kind {
	case opAck:
		var resp *qv1.AckResponse
		resp, err = qs.Ack(ctx, &qv1.AckRequest{Queue: queue, Receipts: receipts})
		results = resp.GetResults()
	case opRequeue:
		req := &qv1.RequeueRequest{Queue: queue, Receipts: receipts}
		if op.dur > 0 {
			req.Delay = durationpb.New(op.dur)
		}
		var resp *qv1.RequeueResponse
		resp, err = qs.Requeue(ctx, req)
		results = resp.GetResults()
	case opExtend:
		req := &qv1.ExtendLeaseRequest{Queue: queue, Receipts: receipts}
		if op.dur > 0 {
			req.VisibilityTimeout = durationpb.New(op.dur)
		}
		var resp *qv1.ExtendLeaseResponse
		resp, err = qs.ExtendLease(ctx, req)
		results = resp.GetResults()
	case opReject:
		var resp *qv1.RejectResponse
		resp, err = qs.Reject(ctx, &qv1.RejectRequest{Queue: queue, Receipts: receipts, Reason: op.reason})
		results = resp.GetResults()
	}
	if err != nil {
		switch status.Code(err) {
		case codes.Unavailable:
			if h := leaderHint(err); h != nil {
				c.router.learnHint(queue, parts, h)
			} else {
				c.router.fail(addr)
			}
			c.refreshSoon()
		case codes.NotFound:
			c.router.forget(queue)
		}
		return nil, err
	}
	c.router.ok(addr)
	if len(results) != len(idx) {
		return nil, status.Errorf(codes.Internal, "server answered %d results for %d receipts", len(results), len(idx))
	}
	out := make([]qv1.ReceiptStatus, len(results))
	for j, r := range results {
		out[j] = r.GetStatus()
	}
	return out, nil
}

// settleReceipts is the public batch form: results per receipt, and an
// error if any receipt failed.
func (c *Client) settleReceipts(ctx context.Context, op leaseOp, queue string, receipts []string) ([]ReceiptResult, error) {
	if len(receipts) == 0 {
		return nil, wrapErr(op.kind.String(), invalidf("no receipts"))
	}
	items := make([]leaseItem, len(receipts))
	for i, r := range receipts {
		items[i] = leaseItem{receipt: r, part: -1}
	}
	res := c.settle(ctx, op, queue, items)
	var failed int
	var first error
	for _, r := range res {
		if r.Err != nil {
			failed++
			if first == nil {
				first = r.Err
			}
		}
	}
	if failed == 0 {
		return res, nil
	}
	if failed == 1 && len(res) == 1 {
		return res, first
	}
	return res, fmt.Errorf("%d of %d receipts failed, first: %w", failed, len(res), first)
}

// Ack acknowledges the leases named by receipts (from Delivery.Receipt):
// their messages are removed for good. Results are per receipt, in order;
// the error is non-nil if any receipt failed. Acks are retried when their
// outcome is unknown; see ReceiptResult.Presumed.
func (c *Client) Ack(ctx context.Context, queue string, receipts ...string) ([]ReceiptResult, error) {
	return c.settleReceipts(ctx, leaseOp{kind: opAck}, queue, receipts)
}

// Requeue makes the messages of receipts ready again after delay (0: at
// once). Results as for Ack.
func (c *Client) Requeue(ctx context.Context, queue string, delay time.Duration, receipts ...string) ([]ReceiptResult, error) {
	if delay < 0 {
		return nil, wrapErr("Requeue", invalidf("negative delay %v", delay))
	}
	return c.settleReceipts(ctx, leaseOp{kind: opRequeue, dur: delay}, queue, receipts)
}

// ExtendLease makes the leases of receipts end visibility from now (0: the
// queue's visibility timeout). Results as for Ack.
func (c *Client) ExtendLease(ctx context.Context, queue string, visibility time.Duration, receipts ...string) ([]ReceiptResult, error) {
	if visibility < 0 {
		return nil, wrapErr("ExtendLease", invalidf("negative visibility %v", visibility))
	}
	return c.settleReceipts(ctx, leaseOp{kind: opExtend, dur: visibility}, queue, receipts)
}

// Reject moves the messages of receipts to the queue's dead-letter list
// with reason. Results as for Ack.
func (c *Client) Reject(ctx context.Context, queue, reason string, receipts ...string) ([]ReceiptResult, error) {
	return c.settleReceipts(ctx, leaseOp{kind: opReject, reason: reason}, queue, receipts)
}
