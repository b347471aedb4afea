package cluster

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/quorumq/quorumq/fsm"
	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
	peerv1 "github.com/quorumq/quorumq/proto/quorumq/peer/v1"
	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// maxWait bounds a Receive long poll.
const maxWait = 20 * time.Second

// maxReceiveBytes bounds the messages of one Receive response, so that it
// fits a client's default 4 MiB message limit with room for framing; a
// single larger message is still delivered.
const maxReceiveBytes = 3 << 20

// queueServer is the public QueueService. It validates at the edge, turns
// requests into partition commands, runs them on the partition leaders and
// maps outcomes to gRPC status codes.
type queueServer struct {
	qv1.UnimplementedQueueServiceServer
	n  *Node
	rr atomic.Uint64
}

func (s *queueServer) queue(name string) (*fsmv1.QueueInfo, error) {
	if err := fsm.ValidQueueName(name); err != nil {
		return nil, status.Error(codes.InvalidArgument, invalidMessage(err))
	}
	q, ok := s.n.ctrl.queue(name)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "queue %q not found", name)
	}
	return q, nil
}

func (s *queueServer) CreateQueue(ctx context.Context, req *qv1.CreateQueueRequest) (*qv1.CreateQueueResponse, error) {
	q, err := s.n.createQueue(ctx, req)
	if err != nil {
		return nil, toStatus(err)
	}
	return &qv1.CreateQueueResponse{Queue: publicQueue(q)}, nil
}

func (s *queueServer) DeleteQueue(ctx context.Context, req *qv1.DeleteQueueRequest) (*qv1.DeleteQueueResponse, error) {
	q, err := s.queue(req.GetName())
	if err != nil {
		return nil, err
	}
	res, err := s.n.ctrl.propose(ctx, &fsmv1.CatalogCommand{Op: &fsmv1.CatalogCommand_DeleteQueue{DeleteQueue: &fsmv1.DeleteQueue{Name: q.GetName(), Id: q.GetId()}}})
	if err != nil {
		return nil, toStatus(err)
	}
	if err := catalogStatus(res); err != nil {
		return nil, err
	}
	return &qv1.DeleteQueueResponse{}, nil
}

func (s *queueServer) GetQueue(ctx context.Context, req *qv1.GetQueueRequest) (*qv1.GetQueueResponse, error) {
	q, err := s.queue(req.GetName())
	if err != nil {
		return nil, err
	}
	out := publicQueue(q)
	out.Stats, out.PartitionsUnavailable = s.n.queueStats(ctx, q)
	return &qv1.GetQueueResponse{Queue: out}, nil
}

func (s *queueServer) ListQueues(ctx context.Context, req *qv1.ListQueuesRequest) (*qv1.ListQueuesResponse, error) {
	var out []*qv1.Queue
	s.n.ctrl.read(func(c *fsm.Catalog) {
		for _, q := range c.Queues() {
			out = append(out, publicQueue(q))
		}
	})
	return &qv1.ListQueuesResponse{Queues: s.n.visibleQueues(ctx, out)}, nil
}

// partitionFor picks a message's partition: by key, else by dedup id (so a
// retry reaches the partition that remembers the id), else round robin.
func (s *queueServer) partitionFor(m *qv1.Message, parts uint32) uint32 {
	if parts == 1 {
		return 0
	}
	by := m.GetKey()
	if by == "" {
		by = m.GetDedupId()
	}
	if by == "" {
		return uint32(s.rr.Add(1) % uint64(parts))
	}
	h := fnv.New32a()
	h.Write([]byte(by))
	return h.Sum32() % parts
}

func (s *queueServer) Enqueue(ctx context.Context, req *qv1.EnqueueRequest) (*qv1.EnqueueResponse, error) {
	q, err := s.queue(req.GetQueue())
	if err != nil {
		return nil, err
	}
	msgs := req.GetMessages()
	if len(msgs) == 0 || len(msgs) > fsm.MaxBatchMessages {
		return nil, status.Errorf(codes.InvalidArgument, "enqueue of %d messages: want 1 to %d", len(msgs), fsm.MaxBatchMessages)
	}
	parts := uint32(len(q.GetPartitions()))
	type batch struct {
		idx []int
		cmd *fsmv1.Command
	}
	batches := map[uint32]*batch{}
	for i, m := range msgs {
		p := s.partitionFor(m, parts)
		b := batches[p]
		if b == nil {
			b = &batch{cmd: &fsmv1.Command{Op: &fsmv1.Command_Enqueue{Enqueue: &fsmv1.Enqueue{}}}}
			batches[p] = b
		}
		b.idx = append(b.idx, i)
		e := b.cmd.GetEnqueue()
		e.Messages = append(e.Messages, &fsmv1.NewMessage{Payload: m.GetPayload(), Key: m.GetKey(),
			Headers: headersToFSM(m.GetHeaders()), Delay: m.GetDelay().AsDuration().Nanoseconds(), DedupId: m.GetDedupId()})
	}
	for _, b := range batches {
		if err := fsm.ValidateCommand(withVersion(b.cmd)); err != nil {
			return nil, status.Error(codes.InvalidArgument, invalidMessage(err))
		}
	}
	out := make([]*qv1.EnqueueResult, len(msgs))
	err = eachPartition(ctx, batches, func(ctx context.Context, p uint32, b *batch) error {
		res, err := s.n.propose(ctx, q, p, b.cmd)
		if err != nil {
			return err
		}
		if err := resultStatus(res); err != nil {
			return err
		}
		for j, e := range res.Enqueued {
			out[b.idx[j]] = &qv1.EnqueueResult{Partition: p, Seq: e.Seq, Duplicate: e.Duplicate, MessageId: messageID(p, e.Seq)}
		}
		return nil
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &qv1.EnqueueResponse{Results: out}, nil
}

// eachPartition runs fn for every partition's batch concurrently and
// returns the first error.
func eachPartition[B any](ctx context.Context, batches map[uint32]B, fn func(context.Context, uint32, B) error) error {
	if len(batches) == 1 {
		for p, b := range batches {
			return fn(ctx, p, b)
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, 0, len(batches))
	var mu sync.Mutex
	for p, b := range batches {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx, p, b); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return errs[0]
	}
	return nil
}

func (s *queueServer) Receive(ctx context.Context, req *qv1.ReceiveRequest) (*qv1.ReceiveResponse, error) {
	q, err := s.queue(req.GetQueue())
	if err != nil {
		return nil, err
	}
	max := req.GetMax()
	if max == 0 {
		max = 1
	}
	wait := req.GetWait().AsDuration()
	vis := req.GetVisibilityTimeout().AsDuration()
	cmd := &fsmv1.Command{Op: &fsmv1.Command_Receive{Receive: &fsmv1.Receive{Consumer: req.GetConsumer(), Max: max, VisibilityTimeout: vis.Nanoseconds()}}}
	if err := fsm.ValidateCommand(withVersion(cmd)); err != nil {
		return nil, status.Error(codes.InvalidArgument, invalidMessage(err))
	}
	if wait < 0 || wait > maxWait {
		return nil, status.Errorf(codes.InvalidArgument, "wait %v outside [0, %v]", wait, maxWait)
	}
	sign, err := s.n.receiptSigner()
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(wait)
	parts := uint32(len(q.GetPartitions()))
	start := uint32(s.rr.Add(1) % uint64(parts))
	for {
		if err := ctx.Err(); err != nil {
			// The caller gave up: lease nothing more for it.
			return nil, toStatus(err)
		}
		// Only partitions with a ready message get a Receive (a Raft
		// write); they are asked at once, so a response waits for one
		// commit, not one per partition. The rotating start keeps any
		// partition from always being served first.
		if ready := s.n.readyPartitions(ctx, q, start); len(ready) > 0 {
			out, err := s.n.receiveFrom(ctx, q, ready, max, cmd.GetReceive(), sign)
			if len(out) > 0 {
				return &qv1.ReceiveResponse{Messages: out}, nil
			}
			if err != nil {
				return nil, toStatus(err)
			}
		}
		if !time.Now().Before(deadline) {
			return &qv1.ReceiveResponse{}, nil
		}
		if err := s.n.waitAnyReady(ctx, q, time.Until(deadline)); err != nil {
			return nil, toStatus(err)
		}
	}
}

// readyCount is a partition and how many ready messages it had.
type readyCount struct {
	p     uint32
	ready uint64
}

// readyPartitions asks every partition of q, concurrently, how many ready
// messages it has, and returns those with some, in order from start.
func (n *Node) readyPartitions(ctx context.Context, q *fsmv1.QueueInfo, start uint32) []readyCount {
	parts := uint32(len(q.GetPartitions()))
	ready := make([]uint64, parts)
	var wg sync.WaitGroup
	for p := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if c, err := n.waitReady(ctx, q, p, 0); err == nil {
				ready[p] = c
			}
		}()
	}
	wg.Wait()
	var out []readyCount
	for i := range parts {
		if p := (start + i) % parts; ready[p] > 0 {
			out = append(out, readyCount{p, ready[p]})
		}
	}
	return out
}

// receiveFrom leases up to max messages, taking from as few of the ready
// partitions as their counts allow (in the given order; each Receive is a
// Raft write), all at once, the response's byte budget split between them.
// It returns what it got; the error is the first failure, if any.
func (n *Node) receiveFrom(ctx context.Context, q *fsmv1.QueueInfo, ready []readyCount, max uint32, tmpl *fsmv1.Receive, sign func(receipt) string) ([]*qv1.ReceivedMessage, error) {
	type share struct {
		p   uint32
		max uint32
	}
	var plan []share
	for left := max; left > 0 && len(plan) < len(ready); {
		r := ready[len(plan)]
		take := uint32(min(uint64(left), r.ready))
		plan = append(plan, share{r.p, take})
		left -= take
	}
	k := len(plan)
	got := make([][]*qv1.ReceivedMessage, k)
	errs := make([]error, k)
	var wg sync.WaitGroup
	for i, sh := range plan {
		p := sh.p
		cmd := &fsmv1.Command{Op: &fsmv1.Command_Receive{Receive: &fsmv1.Receive{
			Consumer: tmpl.GetConsumer(), Max: sh.max, VisibilityTimeout: tmpl.GetVisibilityTimeout(),
			MaxBytes: maxReceiveBytes / uint64(k),
		}}}
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := n.propose(ctx, q, p, cmd)
			if err != nil {
				errs[i] = err
				return
			}
			for _, d := range res.Delivered {
				got[i] = append(got[i], receivedMessage(q, p, d, sign))
			}
		}()
	}
	wg.Wait()
	var out []*qv1.ReceivedMessage
	for _, g := range got {
		out = append(out, g...)
	}
	return out, errors.Join(errs...)
}

// waitAnyReady returns once any partition of q has a ready message, or after
// timeout.
func (n *Node) waitAnyReady(parent context.Context, q *fsmv1.QueueInfo, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(parent, timeout+time.Second)
	defer cancel()
	found := make(chan struct{}, len(q.GetPartitions()))
	var wg sync.WaitGroup
	for p := range uint32(len(q.GetPartitions())) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if ready, err := n.waitReady(ctx, q, p, timeout); ready > 0 && err == nil {
				found <- struct{}{}
			}
		}()
	}
	go func() {
		wg.Wait()
		close(found)
	}()
	<-found
	cancel()
	return parent.Err()
}

func receivedMessage(q *fsmv1.QueueInfo, p uint32, d fsm.Delivery, sign func(receipt) string) *qv1.ReceivedMessage {
	return &qv1.ReceivedMessage{
		Receipt:       sign(receipt{queueID: q.GetId(), partition: p, seq: d.Seq, epoch: d.Epoch}),
		Partition:     p,
		Seq:           d.Seq,
		MessageId:     messageID(p, d.Seq),
		Payload:       d.Payload,
		Key:           d.Key,
		Headers:       headersFromFSM(d.Headers),
		DeliveryCount: d.Deliveries,
		EnqueuedAt:    timestamppb.New(time.Unix(0, d.EnqueuedAt)),
		LeaseDeadline: timestamppb.New(time.Unix(0, d.Deadline)),
	}
}

// leaseOp runs a receipt-based command (ack, requeue, extend, reject):
// receipts are grouped per partition, each group is one command, and each
// receipt gets its own status.
func (s *queueServer) leaseOp(ctx context.Context, queue string, receipts []string, mk func([]*fsmv1.LeaseRef) *fsmv1.Command) ([]*qv1.ReceiptResult, error) {
	q, err := s.queue(queue)
	if err != nil {
		return nil, err
	}
	if len(receipts) == 0 || len(receipts) > fsm.MaxBatchMessages {
		return nil, status.Errorf(codes.InvalidArgument, "%d receipts: want 1 to %d", len(receipts), fsm.MaxBatchMessages)
	}
	out := make([]*qv1.ReceiptResult, len(receipts))
	type batch struct {
		idx  []int
		refs []*fsmv1.LeaseRef
	}
	batches := map[uint32]*batch{}
	keys := s.n.policy()
	for i, rs := range receipts {
		if len(rs) > maxReceiptLen {
			return nil, status.Errorf(codes.InvalidArgument, "%v: %d bytes, at most %d", errBadReceipt, len(rs), maxReceiptLen)
		}
		out[i] = &qv1.ReceiptResult{Receipt: rs, Status: qv1.ReceiptStatus_RECEIPT_STATUS_UNKNOWN}
		rc, verdict := keys.open(rs)
		switch {
		case verdict == receiptNewerKey:
			out[i].Status = qv1.ReceiptStatus_RECEIPT_STATUS_UNAVAILABLE
			continue
		case verdict != receiptValid:
			continue // guessed, altered, or signed by a retired key
		case rc.queueID != q.GetId() || int(rc.partition) >= len(q.GetPartitions()):
			continue // a receipt of another (deleted) queue
		}
		b := batches[rc.partition]
		if b == nil {
			b = &batch{}
			batches[rc.partition] = b
		}
		b.idx = append(b.idx, i)
		b.refs = append(b.refs, &fsmv1.LeaseRef{Seq: rc.seq, Epoch: rc.epoch})
	}
	for _, b := range batches {
		if err := fsm.ValidateCommand(withVersion(mk(b.refs))); err != nil {
			return nil, status.Error(codes.InvalidArgument, invalidMessage(err))
		}
	}
	_ = eachPartition(ctx, batches, func(ctx context.Context, p uint32, b *batch) error {
		res, err := s.n.propose(ctx, q, p, mk(b.refs))
		for j, i := range b.idx {
			switch {
			case err != nil || res.Code != fsm.OK:
				out[i].Status = qv1.ReceiptStatus_RECEIPT_STATUS_UNAVAILABLE
			case res.Leases[j] == fsm.LeaseOK:
				out[i].Status = qv1.ReceiptStatus_RECEIPT_STATUS_OK
			case res.Leases[j] == fsm.LeaseStale:
				out[i].Status = qv1.ReceiptStatus_RECEIPT_STATUS_STALE
			}
		}
		return nil
	})
	return out, nil
}

func (s *queueServer) Ack(ctx context.Context, req *qv1.AckRequest) (*qv1.AckResponse, error) {
	res, err := s.leaseOp(ctx, req.GetQueue(), req.GetReceipts(), func(refs []*fsmv1.LeaseRef) *fsmv1.Command {
		return &fsmv1.Command{Op: &fsmv1.Command_Ack{Ack: &fsmv1.Ack{Leases: refs}}}
	})
	return &qv1.AckResponse{Results: res}, err
}

func (s *queueServer) Requeue(ctx context.Context, req *qv1.RequeueRequest) (*qv1.RequeueResponse, error) {
	res, err := s.leaseOp(ctx, req.GetQueue(), req.GetReceipts(), func(refs []*fsmv1.LeaseRef) *fsmv1.Command {
		return &fsmv1.Command{Op: &fsmv1.Command_Requeue{Requeue: &fsmv1.Requeue{Leases: refs, Delay: req.GetDelay().AsDuration().Nanoseconds()}}}
	})
	return &qv1.RequeueResponse{Results: res}, err
}

func (s *queueServer) ExtendLease(ctx context.Context, req *qv1.ExtendLeaseRequest) (*qv1.ExtendLeaseResponse, error) {
	res, err := s.leaseOp(ctx, req.GetQueue(), req.GetReceipts(), func(refs []*fsmv1.LeaseRef) *fsmv1.Command {
		return &fsmv1.Command{Op: &fsmv1.Command_ExtendLease{ExtendLease: &fsmv1.ExtendLease{Leases: refs, VisibilityTimeout: req.GetVisibilityTimeout().AsDuration().Nanoseconds()}}}
	})
	return &qv1.ExtendLeaseResponse{Results: res}, err
}

func (s *queueServer) Reject(ctx context.Context, req *qv1.RejectRequest) (*qv1.RejectResponse, error) {
	res, err := s.leaseOp(ctx, req.GetQueue(), req.GetReceipts(), func(refs []*fsmv1.LeaseRef) *fsmv1.Command {
		return &fsmv1.Command{Op: &fsmv1.Command_Reject{Reject: &fsmv1.Reject{Leases: refs, Reason: req.GetReason()}}}
	})
	return &qv1.RejectResponse{Results: res}, err
}

func (s *queueServer) ListDeadLetters(ctx context.Context, req *qv1.ListDeadLettersRequest) (*qv1.ListDeadLettersResponse, error) {
	q, err := s.queue(req.GetQueue())
	if err != nil {
		return nil, err
	}
	limit := req.GetLimit()
	if limit == 0 {
		limit = 100
	}
	if limit > 1000 {
		return nil, status.Errorf(codes.InvalidArgument, "limit %d above 1000", limit)
	}
	// The page token is "<partition>-<position after>".
	var part uint32
	var after uint64
	if t := req.GetPageToken(); t != "" {
		if part, after, err = parseMessageID(t); err != nil {
			return nil, status.Error(codes.InvalidArgument, "malformed page token")
		}
	}
	resp := &qv1.ListDeadLettersResponse{}
	for p := part; p < uint32(len(q.GetPartitions())); p, after = p+1, 0 {
		left := limit - uint32(len(resp.DeadLetters))
		r, err := s.n.readPartition(ctx, q, p, &peerv1.ReadRequest{DeadLetters: true, DeadAfter: after, DeadLimit: left})
		if err != nil {
			return nil, toStatus(err)
		}
		for _, d := range r.GetDeadLetters() {
			resp.DeadLetters = append(resp.DeadLetters, &qv1.DeadLetter{Partition: p, Seq: d.GetSeq(), MessageId: messageID(p, d.GetSeq()),
				Payload: d.GetPayload(), Key: d.GetKey(), Headers: headersFromFSM(d.GetHeaders()), Reason: d.GetReason(),
				DeliveryCount: d.GetDeliveries(), EnqueuedAt: timestamppb.New(time.Unix(0, d.GetEnqueuedAt())), DeadAt: timestamppb.New(time.Unix(0, d.GetDeadAt()))})
			after = d.GetOrder()
		}
		if uint32(len(resp.DeadLetters)) >= limit {
			resp.NextPageToken = messageID(p, after)
			break
		}
	}
	return resp, nil
}

func (s *queueServer) Redrive(ctx context.Context, req *qv1.RedriveRequest) (*qv1.RedriveResponse, error) {
	q, err := s.queue(req.GetQueue())
	if err != nil {
		return nil, err
	}
	batches := map[uint32]*fsmv1.Redrive{}
	if ids := req.GetMessageIds(); len(ids) > 0 {
		for _, id := range ids {
			p, seq, err := parseMessageID(id)
			if err != nil {
				return nil, status.Error(codes.InvalidArgument, invalidMessage(err))
			}
			if int(p) >= len(q.GetPartitions()) {
				continue
			}
			if batches[p] == nil {
				batches[p] = &fsmv1.Redrive{}
			}
			batches[p].Seqs = append(batches[p].Seqs, seq)
		}
	} else {
		for p := range uint32(len(q.GetPartitions())) {
			batches[p] = &fsmv1.Redrive{Max: req.GetMax()}
		}
	}
	var moved atomic.Uint64
	err = eachPartition(ctx, batches, func(ctx context.Context, p uint32, r *fsmv1.Redrive) error {
		cmd := &fsmv1.Command{Op: &fsmv1.Command_Redrive{Redrive: r}}
		if err := fsm.ValidateCommand(withVersion(cmd)); err != nil {
			return status.Error(codes.InvalidArgument, invalidMessage(err))
		}
		res, err := s.n.propose(ctx, q, p, cmd)
		if err != nil {
			return err
		}
		moved.Add(res.Moved)
		return nil
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &qv1.RedriveResponse{Moved: moved.Load()}, nil
}

func (s *queueServer) Purge(ctx context.Context, req *qv1.PurgeRequest) (*qv1.PurgeResponse, error) {
	q, err := s.queue(req.GetQueue())
	if err != nil {
		return nil, err
	}
	if !req.GetReady() && !req.GetDead() {
		return nil, status.Error(codes.InvalidArgument, "purge names neither ready nor dead messages")
	}
	batches := map[uint32]bool{}
	for p := range uint32(len(q.GetPartitions())) {
		batches[p] = true
	}
	var ready, dead atomic.Uint64
	err = eachPartition(ctx, batches, func(ctx context.Context, p uint32, _ bool) error {
		res, err := s.n.propose(ctx, q, p, &fsmv1.Command{Op: &fsmv1.Command_Purge{Purge: &fsmv1.Purge{Ready: req.GetReady(), Dead: req.GetDead()}}})
		if err != nil {
			return err
		}
		ready.Add(res.PurgedReady)
		dead.Add(res.PurgedDead)
		return nil
	})
	if err != nil {
		return nil, toStatus(err)
	}
	return &qv1.PurgeResponse{PurgedReady: ready.Load(), PurgedDead: dead.Load()}, nil
}

// queueStats sums the partitions' stats; partitions that do not answer
// are counted, not fatal.
func (n *Node) queueStats(ctx context.Context, q *fsmv1.QueueInfo) (*qv1.QueueStats, uint32) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st := &qv1.QueueStats{}
	var unavailable uint32
	var oldest int64
	var mu sync.Mutex
	parts := map[uint32]bool{}
	for p := range uint32(len(q.GetPartitions())) {
		parts[p] = true
	}
	_ = eachPartition(ctx, parts, func(ctx context.Context, p uint32, _ bool) error {
		r, err := n.readPartition(ctx, q, p, &peerv1.ReadRequest{})
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			unavailable++
			return nil
		}
		s := r.GetStats()
		st.Ready += s.GetReady()
		st.Delayed += s.GetDelayed()
		st.Leased += s.GetLeased()
		st.Dead += s.GetDead()
		st.Bytes += s.GetBytes()
		st.EnqueuedTotal += s.GetEnqueuedTotal()
		st.AckedTotal += s.GetAckedTotal()
		st.DeadLetteredTotal += s.GetDeadLetteredTotal()
		st.ExpiredTotal += s.GetExpiredTotal()
		if o := s.GetOldestReadyAt(); o != 0 && (oldest == 0 || o < oldest) {
			oldest = o
		}
		return nil
	})
	if oldest != 0 {
		st.OldestReadyAge = durationpb.New(max(time.Since(time.Unix(0, oldest)), 0))
	}
	return st, unavailable
}

func headersToFSM(h map[string]string) []*fsmv1.Header {
	if len(h) == 0 {
		return nil
	}
	out := make([]*fsmv1.Header, 0, len(h))
	for k, v := range h {
		out = append(out, &fsmv1.Header{Key: k, Value: []byte(v)})
	}
	slices.SortFunc(out, func(a, b *fsmv1.Header) int { return strings.Compare(a.Key, b.Key) })
	return out
}

func headersFromFSM(hs []*fsmv1.Header) map[string]string {
	if len(hs) == 0 {
		return nil
	}
	out := make(map[string]string, len(hs))
	for _, h := range hs {
		out[h.GetKey()] = string(h.GetValue())
	}
	return out
}

// resultStatus maps a partition result code to a gRPC status.
func resultStatus(r *fsm.Result) error {
	switch r.Code {
	case fsm.OK:
		return nil
	case fsm.QueueFull:
		return status.Error(codes.ResourceExhausted, "queue full: "+r.Detail)
	case fsm.Invalid:
		return status.Error(codes.InvalidArgument, r.Detail)
	}
	return status.Error(codes.FailedPrecondition, fmt.Sprintf("%v: %s", r.Code, r.Detail))
}

// toStatus maps our errors to gRPC status at the service edge.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var ue *UnavailableError
	var nle *NotLeaderError
	var le *LimitError
	switch {
	case errors.As(err, &le):
		return le.status()
	case errors.As(err, &ue):
		st := status.New(codes.Unavailable, err.Error())
		if ue.Leader != "" {
			if d, derr := st.WithDetails(&qv1.LeaderHint{LeaderId: ue.Leader}); derr == nil {
				st = d
			}
		}
		return st.Err()
	case errors.As(err, &nle), errors.Is(err, errNoLeader), errors.Is(err, ErrShuttingDown):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, fsm.ErrInvalid):
		return status.Error(codes.InvalidArgument, invalidMessage(err))
	case errors.Is(err, ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

// invalidMessage is an invalid-input error's text without the "invalid: "
// of fsm.ErrInvalid, which the INVALID_ARGUMENT code already says.
func invalidMessage(err error) string {
	return strings.TrimPrefix(err.Error(), fsm.ErrInvalid.Error()+": ")
}
