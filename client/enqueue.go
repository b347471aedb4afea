package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// Server limits on one request (fsm/limits.go).
const (
	maxEnqueueMessages = 1000
	maxEnqueueBytes    = 8 << 20 // payloads, keys and headers
	maxLeaseBatch      = 1000    // receipts in one Ack, Requeue, ...
	maxReceive         = 1000
)

// Message is a message to enqueue.
type Message struct {
	Payload []byte
	// Key: messages with the same key go to the same partition, in order.
	Key     string
	Headers map[string]string
	// Delay keeps the message invisible this long after it is stored (at
	// most 24 h).
	Delay time.Duration
	// DedupID: a second enqueue with the same id within the queue's dedup
	// window stores nothing and returns the first message's id. The client
	// gives a message without one a random id, so that its own retries never
	// store a message twice; set one to make your retries safe too.
	DedupID string
}

// EnqueueResult says where a message was stored.
type EnqueueResult struct {
	// MessageID is "<partition>-<seq>"; "" if the message is not known to
	// be stored (its batch failed).
	MessageID string
	Partition uint32
	Seq       uint64
	// Duplicate: the dedup id was seen within the window; nothing was
	// stored and the ids are the first message's.
	Duplicate bool
	// DedupID is the id the message was sent with (generated if it had none).
	DedupID string
}

// newDedupID is 128 random bits in hex.
func newDedupID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand since Go 1.24)
	return hex.EncodeToString(b[:])
}

// outMsg is a message on its way: its wire form and size.
type outMsg struct {
	idx  int // position in the caller's list
	pb   *qv1.Message
	size int
}

func toWire(m *Message) (*qv1.Message, int, error) {
	if m == nil {
		return nil, 0, invalidf("nil message")
	}
	if m.Delay < 0 {
		return nil, 0, invalidf("negative delay %v", m.Delay)
	}
	pb := &qv1.Message{Payload: m.Payload, Key: m.Key, Headers: m.Headers, DedupId: m.DedupID}
	if pb.DedupId == "" {
		pb.DedupId = newDedupID()
	}
	if m.Delay > 0 {
		pb.Delay = durationpb.New(m.Delay)
	}
	size := len(m.Payload) + len(m.Key) + len(pb.DedupId)
	for k, v := range m.Headers {
		size += len(k) + len(v)
	}
	return pb, size, nil
}

// enqGroup is messages that go to one node in one request.
type enqGroup struct {
	target string   // node address; "" = any
	parts  []uint32 // partitions the messages hash to (when known)
	msgs   []outMsg
	bytes  int
}

func (g *enqGroup) addPart(p uint32) {
	for _, q := range g.parts {
		if q == p {
			return
		}
	}
	g.parts = append(g.parts, p)
}

// groupByLeader splits msgs into requests: one per partition leader (so
// that one request goes to one node, which then writes each partition it
// leads without forwarding), each within the server's limits. Messages of
// a queue whose partitions are not known yet go in requests to any node.
func (c *Client) groupByLeader(queue string, msgs []outMsg) []*enqGroup {
	parts, learn := c.router.partitions(queue)
	if learn {
		c.refreshSoon()
	}
	var out []*enqGroup
	open := map[string]*enqGroup{}
	for _, m := range msgs {
		target, p := "", uint32(0)
		if parts > 0 {
			p = partitionFor(m.pb.GetKey(), m.pb.GetDedupId(), parts)
			target = c.router.leaderAddr(queue, p)
		}
		g := open[target]
		if g != nil && (len(g.msgs) >= maxEnqueueMessages || g.bytes+m.size > maxEnqueueBytes) {
			g = nil
		}
		if g == nil {
			g = &enqGroup{target: target}
			open[target] = g
			out = append(out, g)
		}
		g.msgs = append(g.msgs, m)
		g.bytes += m.size
		if parts > 0 {
			g.addPart(p)
		}
	}
	return out
}

// Enqueue stores msgs in queue and returns where each went, in order. It
// returns once every message is on disk on a majority of its partition's
// replicas.
//
// Every message carries a dedup id (a random one unless set), so Enqueue
// retries UNAVAILABLE and DEADLINE_EXCEEDED without ever storing a message
// twice (within the queue's dedup window). Messages are sent, concurrently,
// to the leaders of the partitions they hash to, and batches beyond the
// server's limits (1000 messages, 8 MiB) are split.
//
// On error some messages may still have been stored: those have a
// MessageID in their result; the others were not, or are not known to be
// (send them again with the same DedupID to be sure).
func (c *Client) Enqueue(ctx context.Context, queue string, msgs ...*Message) ([]EnqueueResult, error) {
	if len(msgs) == 0 {
		return nil, wrapErr("Enqueue", invalidf("no messages"))
	}
	out := make([]outMsg, len(msgs))
	for i, m := range msgs {
		pb, size, err := toWire(m)
		if err != nil {
			return nil, wrapErr("Enqueue", err)
		}
		out[i] = outMsg{idx: i, pb: pb, size: size}
	}
	results := make([]EnqueueResult, len(msgs))
	for i := range out {
		results[i].DedupID = out[i].pb.GetDedupId()
	}
	groups := c.groupByLeader(queue, out)
	errs := make([]error, len(groups))
	if len(groups) == 1 {
		errs[0] = c.sendGroup(ctx, queue, groups[0], results)
	} else {
		var wg sync.WaitGroup
		for i, g := range groups {
			wg.Go(func() { errs[i] = c.sendGroup(ctx, queue, g, results) })
		}
		wg.Wait()
	}
	for _, err := range errs {
		if err != nil {
			return results, err
		}
	}
	return results, nil
}

// sendGroup enqueues one group, with retries, and writes its results at
// the messages' positions in results.
func (c *Client) sendGroup(ctx context.Context, queue string, g *enqGroup, results []EnqueueResult) error {
	req := &qv1.EnqueueRequest{Queue: queue, Messages: make([]*qv1.Message, len(g.msgs))}
	for i, m := range g.msgs {
		req.Messages[i] = m.pb
	}
	target := func() string {
		// After a hint or a refresh the group's partitions may have one
		// (new) leader; with several leaders, the first one's is as good as
		// any node.
		if len(g.parts) > 0 {
			if a := c.router.leaderAddr(queue, g.parts[0]); a != "" {
				return a
			}
		}
		return g.target
	}
	var resp *qv1.EnqueueResponse
	err := c.invoke(ctx, call{op: "Enqueue", safe: true, queue: queue, parts: g.parts, target: target},
		func(ctx context.Context, cc *grpc.ClientConn) (err error) {
			resp, err = qv1.NewQueueServiceClient(cc).Enqueue(ctx, req)
			return err
		})
	if err != nil {
		return err
	}
	if len(resp.GetResults()) != len(g.msgs) {
		return wrapErr("Enqueue", errors.New("server answered a different number of results"))
	}
	for i, r := range resp.GetResults() {
		res := &results[g.msgs[i].idx]
		res.MessageID, res.Partition, res.Seq, res.Duplicate = r.GetMessageId(), r.GetPartition(), r.GetSeq(), r.GetDuplicate()
	}
	return nil
}
