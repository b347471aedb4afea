package client_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/client"
	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

func enqueueN(t *testing.T, c *client.Client, queue string, n int) {
	t.Helper()
	var msgs []*client.Message
	for i := range n {
		msgs = append(msgs, &client.Message{Payload: fmt.Appendf(nil, "m%d", i)})
	}
	if _, err := c.Enqueue(ctxT(t, 10*time.Second), queue, msgs...); err != nil {
		t.Fatal(err)
	}
}

func stats(t *testing.T, c *client.Client, queue string) *qv1.QueueStats {
	t.Helper()
	qi, err := c.GetQueue(ctxT(t, 5*time.Second), queue)
	if err != nil {
		t.Fatal(err)
	}
	return qi.GetStats()
}

// consume runs Consume in the background; stop cancels it and returns its
// error. It polls with a 1 s wait unless opts say otherwise: the server
// keeps working on a cancelled long poll until its wait ends.
func consume(t *testing.T, c *client.Client, queue string, h func(context.Context, *client.Delivery) error, opts ...client.ConsumeOption) (stop func() error) {
	opts = append([]client.ConsumeOption{client.Wait(time.Second)}, opts...)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- c.Consume(ctx, queue, h, opts...) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-errc:
			case <-time.After(30 * time.Second):
				err = errors.New("Consume did not return within 30 s of its cancellation")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// TestConsumeAutoExtendsLeases: a handler that runs three times the
// visibility keeps its message leased; it is delivered exactly once.
func TestConsumeAutoExtendsLeases(t *testing.T) {
	c, _ := newTestClient(t)
	q := queueName(t)
	createQueue(t, c, q, client.QueueOptions{Partitions: 1})
	enqueueN(t, c, q, 1)

	var calls atomic.Int32
	finished := make(chan struct{})
	stop := consume(t, c, q, func(ctx context.Context, d *client.Delivery) error {
		if calls.Add(1) > 1 {
			return nil
		}
		select { // the job: three visibility timeouts of work
		case <-time.After(3 * time.Second):
		case <-ctx.Done():
			return ctx.Err()
		}
		close(finished)
		return nil
	}, client.Visibility(time.Second), client.Concurrency(2), client.Prefetch(4), client.Wait(time.Second))

	select {
	case <-finished:
	case <-time.After(15 * time.Second):
		t.Fatal("handler did not finish")
	}
	waitFor(t, "the ack", 5*time.Second, func() bool { return stats(t, c, q).GetAckedTotal() == 1 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("delivered %d times, want once", n)
	}
	if st := stats(t, c, q); st.GetExpiredTotal() != 0 || st.GetLeased() != 0 || st.GetReady() != 0 {
		t.Fatalf("stats %v", st)
	}
	noClientGoroutinesOf(t, "consumer")
}

// TestConsumeGracefulShutdown: on cancel, running handlers finish and are
// acked, prefetched messages that no handler started are requeued, and
// nothing is left leased.
func TestConsumeGracefulShutdown(t *testing.T) {
	c, _ := newTestClient(t)
	q := queueName(t)
	createQueue(t, c, q, client.QueueOptions{Partitions: 2})
	enqueueN(t, c, q, 30)

	var started atomic.Int32
	stop := consume(t, c, q, func(ctx context.Context, d *client.Delivery) error {
		started.Add(1)
		// Run until shutdown ends the grace period, then succeed.
		<-ctx.Done()
		return nil
	}, client.Prefetch(10), client.Concurrency(2), client.Visibility(30*time.Second), client.ShutdownTimeout(300*time.Millisecond))

	waitFor(t, "10 messages held, 2 of them running", 10*time.Second, func() bool {
		return started.Load() == 2 && stats(t, c, q).GetLeased() == 10
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	st := stats(t, c, q)
	if started.Load() != 2 || st.GetLeased() != 0 || st.GetReady() != 28 || st.GetAckedTotal() != 2 {
		t.Fatalf("after shutdown: %d started, stats %v; want 2 started and acked, 28 ready, 0 leased", started.Load(), st)
	}
	noClientGoroutinesOf(t, "consumer")
}

// TestConsumeShutdownTimeout: a handler still running after the shutdown
// timeout gets its context cancelled; its error requeues its message.
func TestConsumeShutdownTimeout(t *testing.T) {
	c, _ := newTestClient(t)
	q := queueName(t)
	createQueue(t, c, q, client.QueueOptions{Partitions: 1})
	enqueueN(t, c, q, 1)
	running := make(chan struct{})
	stop := consume(t, c, q, func(ctx context.Context, d *client.Delivery) error {
		close(running)
		<-ctx.Done()
		return ctx.Err()
	}, client.ShutdownTimeout(200*time.Millisecond))
	<-running
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if st := stats(t, c, q); st.GetLeased() != 0 || st.GetReady() != 1 {
		t.Fatalf("stats %v, want the message ready again", st)
	}
}

// TestConsumeOutcomes: the handler's return decides each message's fate.
func TestConsumeOutcomes(t *testing.T) {
	c, _ := newTestClient(t)
	q := queueName(t)
	createQueue(t, c, q, client.QueueOptions{Partitions: 1})
	ctx := ctxT(t, 20*time.Second)
	for _, p := range []string{"ack", "reject", "retry", "later", "self", "panic"} {
		if _, err := c.Enqueue(ctx, q, &client.Message{Payload: []byte(p)}); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	seen := map[string][]uint32{}
	stop := consume(t, c, q, func(ctx context.Context, d *client.Delivery) error {
		mu.Lock()
		seen[string(d.Payload)] = append(seen[string(d.Payload)], d.DeliveryCount)
		n := len(seen[string(d.Payload)])
		mu.Unlock()
		switch p := string(d.Payload); {
		case n > 1 || p == "ack":
			return nil
		case p == "reject":
			return fmt.Errorf("bad input: %w", client.Reject("malformed"))
		case p == "retry":
			return errors.New("transient")
		case p == "later":
			return client.RequeueAfter(300 * time.Millisecond)
		case p == "self":
			if err := d.Ack(ctx); err != nil {
				return err
			}
			if err := d.Ack(ctx); !errors.Is(err, client.ErrAlreadyFinished) {
				t.Errorf("second ack: %v, want ErrAlreadyFinished", err)
			}
			return errors.New("ignored: the handler finished the message itself")
		default:
			panic("handler bug")
		}
	}, client.Wait(time.Second))
	waitFor(t, "every message finished", 15*time.Second, func() bool {
		st := stats(t, c, q)
		return st.GetAckedTotal() == 5 && st.GetDead() == 1
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := map[string][]uint32{"ack": {1}, "reject": {1}, "retry": {1, 2}, "later": {1, 2}, "self": {1}, "panic": {1, 2}}
	for p, w := range want {
		if fmt.Sprint(seen[p]) != fmt.Sprint(w) {
			t.Errorf("%s: delivery counts %v, want %v", p, seen[p], w)
		}
	}
	dls, _, err := c.ListDeadLetters(ctx, q, 0, "")
	if err != nil || len(dls) != 1 || string(dls[0].GetPayload()) != "reject" || dls[0].GetReason() != "malformed" {
		t.Fatalf("dead letters %v %v", dls, err)
	}
}

// TestConsumeMissingQueue: Consume ends with the error that makes
// receiving impossible.
func TestConsumeMissingQueue(t *testing.T) {
	c, _ := newTestClient(t)
	err := c.Consume(ctxT(t, 10*time.Second), "no-such-queue", func(context.Context, *client.Delivery) error { return nil })
	if !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("Consume: %v, want ErrNotFound", err)
	}
}

// TestDeliveryFinishOnce: a delivery is finished at most once, and a
// receipt whose message is gone is stale.
func TestDeliveryFinishOnce(t *testing.T) {
	c, _ := newTestClient(t)
	q := queueName(t)
	createQueue(t, c, q, client.QueueOptions{Partitions: 1})
	enqueueN(t, c, q, 1)
	ctx := ctxT(t, 10*time.Second)
	ds, err := c.Receive(ctx, q, 10, client.Wait(5*time.Second), client.Visibility(time.Minute))
	if err != nil || len(ds) != 1 {
		t.Fatalf("receive: %v %v", ds, err)
	}
	d := ds[0]
	if d.DeliveryCount != 1 || string(d.Payload) != "m0" || d.Queue != q || d.MessageID == "" {
		t.Fatalf("delivery %+v", d)
	}
	if err := d.ExtendLease(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := d.Ack(ctx); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"ack":     d.Ack(ctx),
		"requeue": d.Requeue(ctx, 0),
		"reject":  d.Reject(ctx, "x"),
		"extend":  d.ExtendLease(ctx, time.Minute),
	} {
		if !errors.Is(err, client.ErrAlreadyFinished) {
			t.Errorf("%s after ack: %v, want ErrAlreadyFinished", name, err)
		}
	}
	res, err := c.Ack(ctx, q, d.Receipt)
	if !errors.Is(err, client.ErrStaleReceipt) || len(res) != 1 || res[0].Presumed {
		t.Fatalf("ack of an acked receipt: %v %+v, want ErrStaleReceipt", err, res)
	}
}

// TestAckLostAnswer: an ack applied whose answer is lost is retried; the
// retry finds the message gone and reports the ack as presumed done. A
// receipt of the same batch whose first attempt was refused outright is
// not presumed.
func TestAckLostAnswer(t *testing.T) {
	const ackMethod = "/quorumq.v1.QueueService/Ack"
	var lost atomic.Bool
	drop := grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if method == ackMethod && err == nil && lost.CompareAndSwap(false, true) {
			return status.Error(codes.Unavailable, "answer lost (test)")
		}
		return err
	})
	c, _ := newTestClient(t, client.WithDialOptions(drop))
	q := queueName(t)
	createQueue(t, c, q, client.QueueOptions{Partitions: 1})
	enqueueN(t, c, q, 1)
	ctx := ctxT(t, 10*time.Second)
	ds, err := c.Receive(ctx, q, 1, client.Wait(5*time.Second))
	if err != nil || len(ds) != 1 {
		t.Fatalf("receive: %v %v", ds, err)
	}
	res, err := c.Ack(ctx, q, ds[0].Receipt)
	if err != nil || !lost.Load() || !res[0].Presumed {
		t.Fatalf("ack: %v %+v, want success presumed after the lost answer", err, res)
	}
	if st := stats(t, c, q); st.GetAckedTotal() != 1 || st.GetLeased() != 0 {
		t.Fatalf("stats %v", st)
	}
}

// noClientGoroutinesOf waits until no goroutine runs the client code named
// (e.g. "consumer", "Producer").
func noClientGoroutinesOf(t *testing.T, what string) {
	t.Helper()
	waitFor(t, "the "+what+"'s goroutines to end", 5*time.Second, func() bool {
		for _, g := range clientGoroutines() {
			if containsFrame(g, "client.(*"+what+")") {
				return false
			}
		}
		return true
	})
}
