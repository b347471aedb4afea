package client_test

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/client"
	"github.com/quorumq/quorumq/cluster"
	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

const enqueueMethod = "/quorumq.v1.QueueService/Enqueue"

// rpcLog records the unary calls a client makes: method and node.
type rpcLog struct {
	mu    sync.Mutex
	calls []rpcCall
}

type rpcCall struct {
	method, target string
	req            any
	err            error
}

func (l *rpcLog) interceptor() grpc.DialOption {
	return grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		l.mu.Lock()
		l.calls = append(l.calls, rpcCall{method: method, target: cc.Target(), req: req, err: err})
		l.mu.Unlock()
		return err
	})
}

func (l *rpcLog) of(method string) []rpcCall {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []rpcCall
	for _, c := range l.calls {
		if c.method == method {
			out = append(out, c)
		}
	}
	return out
}

func fnvPartition(key string, parts uint32) uint32 {
	h := fnv.New32a()
	h.Write([]byte(key))
	return h.Sum32() % parts
}

// leaderAddrs maps each partition of queue to its leader's client address.
func leaderAddrs(t *testing.T, c *client.Client, queue string) map[uint32]string {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	ms, err := c.Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	addr := map[string]string{}
	for _, m := range ms {
		addr[m.GetId()] = m.GetClientAddr()
	}
	out := map[uint32]string{}
	waitFor(t, "a leader for every partition of "+queue, 10*time.Second, func() bool {
		ps, err := c.Partitions(ctx, queue)
		if err != nil || len(ps) == 0 {
			return false
		}
		for _, p := range ps {
			if p.GetLeader() == "" {
				return false
			}
			out[p.GetPartition()] = addr[p.GetLeader()]
		}
		return true
	})
	return out
}

// TestEnqueueRoutesToPartitionLeaders: messages are stored where the
// server's partitioning puts them, and a batch spanning partitions goes,
// per leader, straight to the leader.
func TestEnqueueRoutesToPartitionLeaders(t *testing.T) {
	var log rpcLog
	c, _ := newTestClient(t, client.WithDialOptions(log.interceptor()))
	q := queueName(t)
	createQueue(t, c, q, client.QueueOptions{Partitions: 3})
	leaders := leaderAddrs(t, c, q)

	var msgs []*client.Message
	for i := range 30 {
		msgs = append(msgs, &client.Message{Payload: fmt.Appendf(nil, "m%d", i), Key: fmt.Sprintf("key-%d", i)})
	}
	res, err := c.Enqueue(ctxT(t, 10*time.Second), q, msgs...)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if want := fnvPartition(msgs[i].Key, 3); r.Partition != want {
			t.Errorf("message %d: partition %d, want %d", i, r.Partition, want)
		}
		if r.MessageID != fmt.Sprintf("%d-%d", r.Partition, r.Seq) || r.Duplicate || len(r.DedupID) != 32 {
			t.Errorf("message %d: result %+v", i, r)
		}
	}
	distinct := map[string]bool{}
	for _, a := range leaders {
		distinct[a] = true
	}
	calls := log.of(enqueueMethod)
	if len(calls) != len(distinct) {
		t.Fatalf("%d Enqueue calls, want one per leader (%d)", len(calls), len(distinct))
	}
	for _, call := range calls {
		for _, m := range call.req.(*qv1.EnqueueRequest).GetMessages() {
			if p := fnvPartition(m.GetKey(), 3); leaders[p] != call.target {
				t.Errorf("message of partition %d sent to %s, its leader is %s", p, call.target, leaders[p])
			}
		}
	}
}

// TestEnqueueLostAnswerStoresOnce: the first answer is lost after the
// server stored the batch; the retry finds the dedup ids and stores
// nothing again.
func TestEnqueueLostAnswerStoresOnce(t *testing.T) {
	var lost atomic.Bool
	drop := grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if method == enqueueMethod && err == nil && lost.CompareAndSwap(false, true) {
			return status.Error(codes.Unavailable, "answer lost (test)")
		}
		return err
	})
	c, _ := newTestClient(t, client.WithDialOptions(drop))
	q := queueName(t)
	createQueue(t, c, q, client.QueueOptions{Partitions: 2})
	res, err := c.Enqueue(ctxT(t, 10*time.Second), q, &client.Message{Payload: []byte("once")}, &client.Message{Payload: []byte("twice?"), DedupID: "mine"})
	if err != nil {
		t.Fatal(err)
	}
	if !lost.Load() || !res[0].Duplicate || !res[1].Duplicate {
		t.Fatalf("want the retry to report duplicates, got %+v", res)
	}
	if res[1].DedupID != "mine" {
		t.Errorf("dedup id %q, want the caller's", res[1].DedupID)
	}
	if got := drain(t, c, q); got["once"] != 1 || got["twice?"] != 1 || len(got) != 2 {
		t.Fatalf("stored %v, want each message once", got)
	}
}

// TestEnqueueAcrossLeaderTransfers: enqueues with dedup ids keep
// succeeding while the partition's leadership moves, and each message is
// stored exactly once.
func TestEnqueueAcrossLeaderTransfers(t *testing.T) {
	c, tc := newTestClient(t)
	q := queueName(t)
	createQueue(t, c, q, client.QueueOptions{Partitions: 1})
	leaderAddrs(t, c, q)
	ctx := ctxT(t, 30*time.Second)

	const n = 150
	done := make(chan struct{})
	var transfers int
	var transferErr error
	go func() {
		defer close(done)
		for range 3 {
			ps, err := c.Partitions(ctx, q)
			if err != nil || len(ps) != 1 {
				transferErr = fmt.Errorf("partitions: %v %w", ps, err)
				return
			}
			to := tc.nodes[(tc.nodeIndex(ps[0].GetLeader())+1)%len(tc.nodes)].ID()
			if _, err := c.TransferLeadership(ctx, q, 0, to); err != nil {
				transferErr = err
				return
			}
			transfers++
		}
	}()
	for i := range n {
		id := fmt.Sprintf("m%d", i)
		if _, err := c.Enqueue(ctx, q, &client.Message{Payload: []byte(id), DedupID: id}); err != nil {
			t.Fatalf("enqueue %s: %v", id, err)
		}
	}
	<-done
	if transferErr != nil {
		t.Logf("transfer: %v", transferErr)
	}
	if transfers == 0 {
		t.Fatal("no leadership transfer happened")
	}
	checkExactlyOnce(t, drain(t, c, q), n)
}

func checkExactlyOnce(t *testing.T, got map[string]int, n int) {
	t.Helper()
	for i := range n {
		if k := got[fmt.Sprintf("m%d", i)]; k != 1 {
			t.Errorf("m%d stored %d times", i, k)
		}
	}
	if len(got) != n {
		t.Errorf("%d distinct messages stored, want %d", len(got), n)
	}
}

// TestEnqueueAcrossLeaderCrash: the leader of the only partition crashes
// while producers send to it; the client retries on the survivors, no
// enqueue fails and every message is stored exactly once.
func TestEnqueueAcrossLeaderCrash(t *testing.T) {
	var logs logBuffer
	tc, err := startClusterWith(3, "crash", slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if err != nil {
		t.Fatal(err)
	}
	defer tc.stop()
	defer func() {
		if t.Failed() {
			f := filepath.Join(os.TempDir(), "quorumq-"+queueName(t)+".log")
			_ = os.WriteFile(f, []byte(logs.String()), 0o644)
			t.Logf("cluster log in %s", f)
		}
	}()
	var log rpcLog
	c := connect(t, tc, client.WithDialOptions(log.interceptor()))
	q := queueName(t)
	createQueue(t, c, q, client.QueueOptions{Partitions: 1})
	ctx := ctxT(t, 40*time.Second)
	ps, err := c.Partitions(ctx, q)
	if err != nil || len(ps) != 1 || ps[0].GetLeader() == "" {
		t.Fatalf("partitions: %v %v", ps, err)
	}
	leader := tc.nodeIndex(ps[0].GetLeader())

	const workers, perWorker = 4, 60
	var sent atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				id := fmt.Sprintf("m%d", w*perWorker+i)
				ectx, cancel := context.WithTimeout(ctx, 15*time.Second)
				_, err := c.Enqueue(ectx, q, &client.Message{Payload: []byte(id), DedupID: id})
				cancel()
				if err != nil {
					errs <- fmt.Errorf("enqueue %s: %w", id, err)
					return
				}
				sent.Add(1)
			}
		})
	}
	waitFor(t, "some enqueues before the crash", 10*time.Second, func() bool { return sent.Load() >= 40 })
	tc.kill(leader)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		for _, call := range log.of(enqueueMethod) {
			if call.err != nil {
				t.Logf("attempt on %s: %v", call.target, call.err)
			}
		}
		for i, n := range tc.nodes {
			if n == nil {
				continue
			}
			nc := connect(t, &testCluster{nodes: []*cluster.Node{n}})
			ps, err := nc.Partitions(ctxT(t, 5*time.Second), q)
			t.Logf("n%d sees %v %v", i+1, ps, err)
		}
		return
	}
	failed := 0
	for _, call := range log.of(enqueueMethod) {
		if call.err != nil {
			failed++
		}
	}
	t.Logf("%d Enqueue attempts failed and were retried", failed)
	checkExactlyOnce(t, drain(t, c, q), workers*perWorker)
}

// TestEnqueueErrors: refusals are answers, not retried, and map to the
// sentinels.
func TestEnqueueErrors(t *testing.T) {
	var log rpcLog
	c, _ := newTestClient(t, client.WithDialOptions(log.interceptor()))
	ctx := ctxT(t, 10*time.Second)
	q := queueName(t)
	createQueue(t, c, q, client.QueueOptions{Partitions: 1, MaxMessages: 1})

	if _, err := c.Enqueue(ctx, "no-such-queue", &client.Message{Payload: []byte("x")}); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("missing queue: %v, want ErrNotFound", err)
	}
	if _, err := c.Enqueue(ctx, q, &client.Message{Payload: make([]byte, 2<<20)}); !errors.Is(err, client.ErrInvalid) {
		t.Errorf("huge message: %v, want ErrInvalid", err)
	}
	if _, err := c.Enqueue(ctx, q); !errors.Is(err, client.ErrInvalid) {
		t.Errorf("no message: %v, want ErrInvalid", err)
	}
	if _, err := c.Enqueue(ctx, q, &client.Message{Payload: []byte("1")}); err != nil {
		t.Fatal(err)
	}
	_, err := c.Enqueue(ctx, q, &client.Message{Payload: []byte("2")})
	if !errors.Is(err, client.ErrQueueFull) || status.Code(err) != codes.ResourceExhausted {
		t.Errorf("full queue: %v, want ErrQueueFull", err)
	}
	var e *client.Error
	if !errors.As(err, &e) || e.Op != "Enqueue" {
		t.Errorf("full queue: %#v, want a *client.Error of Enqueue", err)
	}
	if n := len(log.of(enqueueMethod)); n != 4 {
		t.Errorf("%d Enqueue calls, want 4: refusals are not retried", n)
	}
}

// TestEnqueueSplitsLargeBatches: a batch beyond the server's 1000
// messages per request is split, and the results keep the caller's order.
func TestEnqueueSplitsLargeBatches(t *testing.T) {
	var log rpcLog
	c, _ := newTestClient(t, client.WithDialOptions(log.interceptor()))
	q := queueName(t)
	createQueue(t, c, q, client.QueueOptions{Partitions: 1})
	var msgs []*client.Message
	for i := range 2500 {
		msgs = append(msgs, &client.Message{Payload: fmt.Appendf(nil, "m%d", i)})
	}
	res, err := c.Enqueue(ctxT(t, 20*time.Second), q, msgs...)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	for i, r := range res {
		if r.MessageID == "" || seen[r.Seq] {
			t.Fatalf("message %d: %+v", i, r)
		}
		seen[r.Seq] = true
	}
	ok := 0
	for _, call := range log.of(enqueueMethod) {
		if call.err == nil {
			ok++
		} else {
			t.Logf("retried: %v", call.err)
		}
	}
	if ok != 3 {
		t.Errorf("%d successful Enqueue calls for 2500 messages, want 3", ok)
	}
	checkExactlyOnce(t, drain(t, c, q), 2500)
}
