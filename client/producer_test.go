package client_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/quorumq/quorumq/client"
	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// TestProducerFlushesOnLinger: a lone message is sent once the linger
// passes, without Flush.
func TestProducerFlushesOnLinger(t *testing.T) {
	c, _ := newTestClient(t)
	q := queueName(t)
	createQueue(t, c, q, client.QueueOptions{Partitions: 1})
	p := c.NewProducer(q)
	f := p.Send(ctxT(t, time.Second), &client.Message{Payload: []byte("alone")})
	select {
	case <-f.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a lone message was not sent within 5 s (linger 5 ms)")
	}
	res, err := f.Wait(context.Background())
	if err != nil || res.MessageID == "" || res.DedupID == "" {
		t.Fatalf("result %+v, %v", res, err)
	}
	if err := p.Close(ctxT(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	noClientGoroutinesOf(t, "Producer")
}

// TestProducerFlushesOnSize: MaxBatchMessages messages go as one batch,
// at once, long before the linger.
func TestProducerFlushesOnSize(t *testing.T) {
	var log rpcLog
	c, _ := newTestClient(t, client.WithDialOptions(log.interceptor()))
	q := queueName(t)
	createQueue(t, c, q, client.QueueOptions{Partitions: 1})
	leaderAddrs(t, c, q) // the producer batches per leader: know it first
	p := c.NewProducer(q, client.MaxBatchMessages(10), client.Linger(time.Minute))
	defer p.Close(context.Background())
	ctx := ctxT(t, 10*time.Second)
	var fs []*client.Future
	for i := range 10 {
		fs = append(fs, p.Send(ctx, &client.Message{Payload: fmt.Appendf(nil, "m%d", i)}))
	}
	seqs := map[uint64]bool{}
	for i, f := range fs {
		res, err := f.Wait(ctx)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		seqs[res.Seq] = true
	}
	if len(seqs) != 10 {
		t.Errorf("%d distinct sequence numbers, want 10", len(seqs))
	}
	// One batch: one request of all ten (sent again only if retried).
	ok := 0
	for _, call := range log.of(enqueueMethod) {
		if n := len(call.req.(*qv1.EnqueueRequest).GetMessages()); n != 10 {
			t.Errorf("an Enqueue call of %d messages, want all 10 in one", n)
		}
		if call.err == nil {
			ok++
		} else {
			t.Logf("retried: %v", call.err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d successful Enqueue calls, want one batch", ok)
	}
}

// TestProducerClose: Close sends what is pending and waits; MaxInFlight
// bounds the batches in flight; Send after Close fails.
func TestProducerClose(t *testing.T) {
	var log rpcLog
	c, _ := newTestClient(t, client.WithDialOptions(log.interceptor()))
	q := queueName(t)
	createQueue(t, c, q, client.QueueOptions{Partitions: 3})
	p := c.NewProducer(q, client.MaxBatchMessages(50), client.MaxInFlight(2), client.Linger(time.Minute))
	ctx := ctxT(t, 20*time.Second)
	const n = 600
	var fs []*client.Future
	for i := range n {
		fs = append(fs, p.Send(ctx, &client.Message{Payload: fmt.Appendf(nil, "m%d", i), DedupID: fmt.Sprintf("m%d", i)}))
	}
	if err := p.Close(ctx); err != nil {
		t.Fatal(err)
	}
	for i, f := range fs {
		select {
		case <-f.Done():
		default:
			t.Fatalf("message %d not done after Close", i)
		}
		if _, err := f.Wait(ctx); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	if _, err := p.Send(ctx, &client.Message{Payload: []byte("late")}).Wait(ctx); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("send after close: %v, want ErrClosed", err)
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatalf("flush after close: %v", err)
	}
	if calls := len(log.of(enqueueMethod)); calls < n/50 || calls > n/50+6 {
		t.Errorf("%d Enqueue calls for %d messages in batches of 50", calls, n)
	}
	checkExactlyOnce(t, drain(t, c, q), n)
	noClientGoroutinesOf(t, "Producer")
}

// TestProducerFlush: Flush sends the open batches and waits for them.
func TestProducerFlush(t *testing.T) {
	c, _ := newTestClient(t)
	q := queueName(t)
	createQueue(t, c, q, client.QueueOptions{Partitions: 2})
	p := c.NewProducer(q, client.Linger(time.Minute))
	defer p.Close(context.Background())
	ctx := ctxT(t, 10*time.Second)
	var fs []*client.Future
	for i := range 20 {
		fs = append(fs, p.Send(ctx, &client.Message{Payload: fmt.Appendf(nil, "m%d", i), Key: fmt.Sprint(i)}))
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for i, f := range fs {
		select {
		case <-f.Done():
		default:
			t.Fatalf("message %d not done after Flush", i)
		}
		if res, err := f.Wait(ctx); err != nil || res.Partition != fnvPartition(fmt.Sprint(i), 2) {
			t.Fatalf("message %d: %+v %v", i, res, err)
		}
	}
}
