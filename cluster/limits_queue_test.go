package cluster

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// TestLargeQueueDoesNotStarveController replays the probe of issue 13: a
// queue of the most partitions allowed is created and deleted while a
// producer enqueues to another queue; the controller never goes without a
// leader for long and no enqueue times out. A 1,024-partition queue is
// refused.
//
// The three nodes share this process and its cores, and idle replicas are
// not free (each leader heartbeats each follower 10–20 times a second over
// its own connections; 768 took 1.7 cores of a 2-core machine before the
// reconcile pass stopped copying a queue per replica). The nodes allow 64
// partitions per queue here, and the queue has that many (32 under the
// race detector, which makes everything several times slower).
// QUORUMQ_TEST_MAX_PARTITIONS=256 runs the default maximum: it passes on
// an idle 2-core machine, but not reliably beside other tests.
func TestLargeQueueDoesNotStarveController(t *testing.T) {
	// A producer's deadline: the Go client's default (client.SendTimeout).
	// The producers all timed out, for minutes.
	const sendTimeout = 30 * time.Second
	if testing.Short() {
		t.Skip("creates and deletes hundreds of partition replicas")
	}
	big := 64
	if raceEnabled {
		big = 32
	}
	if v := os.Getenv("QUORUMQ_TEST_MAX_PARTITIONS"); v != "" {
		var err error
		if big, err = strconv.Atoi(v); err != nil {
			t.Fatal(err)
		}
	}
	c := startClusterWith(t, 3, func(cfg *Config) { cfg.Limits.MaxPartitionsPerQueue = big })
	q0, _ := c.client(0)
	ctx := ctxT(t, 5*time.Minute)
	if _, err := q0.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: "huge", Partitions: 1024}); status.Code(err) != codes.InvalidArgument ||
		!strings.Contains(err.Error(), "--max-partitions-per-queue") {
		t.Fatalf("1024 partitions: %v", err)
	}
	if _, err := q0.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: "steady", Partitions: 3, Replicas: 3}); err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent, failed atomic.Int64
	var firstErr atomic.Value
	var worst atomic.Int64
	q1, _ := c.client(1)
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			rctx, cancel := context.WithTimeout(ctx, sendTimeout)
			start := time.Now()
			_, err := q1.Enqueue(rctx, &qv1.EnqueueRequest{Queue: "steady", Messages: []*qv1.Message{{Payload: fmt.Appendf(nil, "m%d", i)}}})
			cancel()
			if d := int64(time.Since(start)); d > worst.Load() {
				worst.Store(d)
			}
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				continue
			}
			sent.Add(1)
		}
	})
	var leaderless atomic.Int64 // longest time any node saw no controller leader
	wg.Go(func() {
		since := make([]time.Time, len(c.nodes))
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			for i, n := range c.nodes {
				if n.ctrl.g.leaderID() != "" {
					since[i] = time.Time{}
					continue
				}
				if since[i].IsZero() {
					since[i] = time.Now()
				}
				if d := int64(time.Since(since[i])); d > leaderless.Load() {
					leaderless.Store(d)
				}
			}
		}
	})

	start := time.Now()
	if _, err := q0.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: "big", Partitions: uint32(big), Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	c.waitFor("every replica of big started", 3*time.Minute, func() bool {
		for _, n := range c.nodes {
			k := 0
			for _, r := range n.replicas.all() {
				if r.queue == "big" {
					k++
				}
			}
			if k < big {
				return false
			}
		}
		return true
	})
	created := time.Since(start)
	if _, err := q0.DeleteQueue(ctx, &qv1.DeleteQueueRequest{Name: "big"}); err != nil {
		t.Fatal(err)
	}
	c.waitFor("every replica of big stopped", 3*time.Minute, func() bool {
		for _, n := range c.nodes {
			for _, r := range n.replicas.all() {
				if r.queue == "big" {
					return false
				}
			}
		}
		return true
	})
	close(stop)
	wg.Wait()
	t.Logf("%d partitions: created in %v, deleted in %v; %d enqueues ok, %d failed (first: %v), slowest %v; longest without controller leader %v",
		big, created.Round(time.Millisecond), (time.Since(start) - created).Round(time.Millisecond), sent.Load(), failed.Load(), firstErr.Load(),
		time.Duration(worst.Load()).Round(time.Millisecond), time.Duration(leaderless.Load()).Round(time.Millisecond))
	if failed.Load() > 0 {
		t.Errorf("%d enqueues on another queue failed, first: %v", failed.Load(), firstErr.Load())
	}
	if d := time.Duration(leaderless.Load()); d > 2*time.Second {
		t.Errorf("a node saw no controller leader for %v", d)
	}
}

// TestQueueCaps: every cap is enforced before anything is placed, each
// refusal names its flag.
func TestQueueCaps(t *testing.T) {
	c := startClusterWith(t, 3, func(cfg *Config) {
		cfg.Limits.MaxQueues = 3
		cfg.Limits.MaxPartitionsPerQueue = 8
		cfg.Limits.MaxReplicasPerNode = 12
	})
	q, _ := c.client(1) // not necessarily the controller leader: refusals cross the peer hop
	ctx := ctxT(t, 2*time.Minute)
	create := func(name string, parts uint32) error {
		_, err := q.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: name, Partitions: parts, Replicas: 3})
		return err
	}
	refused := func(err error, code codes.Code, flag string) {
		t.Helper()
		if status.Code(err) != code || !strings.Contains(err.Error(), flag) {
			t.Fatalf("%v, want %v naming %s", err, code, flag)
		}
	}
	refused(create("wide", 9), codes.InvalidArgument, "--max-partitions-per-queue")
	refused(create("huge", 1024), codes.InvalidArgument, "--max-partitions-per-queue")
	refused(create("huger", 1025), codes.InvalidArgument, "1024")
	if err := create("a", 8); err != nil {
		t.Fatal(err)
	}
	// 8 replicas on each node; 5 more would be 13 > 12.
	refused(create("b", 5), codes.ResourceExhausted, "--max-replicas-per-node")
	if err := create("b", 4); err != nil {
		t.Fatal(err)
	}
	if err := create("b", 4); err != nil {
		t.Fatalf("creating an existing queue again: %v", err)
	}
	if err := create("c", 0); err == nil || status.Code(err) != codes.ResourceExhausted {
		// 12 replicas on each node: the cap is reached.
		t.Fatalf("c: %v", err)
	}
	if _, err := q.DeleteQueue(ctx, &qv1.DeleteQueueRequest{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"c", "d"} {
		if err := create(name, 1); err != nil {
			t.Fatal(err)
		}
	}
	refused(create("e", 1), codes.ResourceExhausted, "--max-queues")
	for _, name := range []string{"a", "e"} {
		if _, ok := c.nodes[0].ctrl.queue(name); ok {
			t.Fatalf("refused queue %s is in the catalogue", name)
		}
	}
	// The edge node counts what it refuses itself, the controller leader
	// the rest.
	var all strings.Builder
	for _, n := range c.nodes {
		n.writeLimitMetrics(&all)
	}
	for _, want := range []string{`{limit="max-partitions-per-queue"} 2`, `{limit="max-replicas-per-node"} 2`, `{limit="max-queues"} 1`} {
		if !strings.Contains(all.String(), want) {
			t.Errorf("metrics lack %s:\n%s", want, all.String())
		}
	}
}

// TestQueueOpsRate: queue creations and deletions over --queue-ops-rate
// wait a little, then are refused.
func TestQueueOpsRate(t *testing.T) {
	c := startClusterWith(t, 3, func(cfg *Config) { cfg.Limits.QueueOpsRate = 0.25 }) // burst 1, then one per 4 s
	q, _ := c.client(0)
	ctx := ctxT(t, 2*time.Minute)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() {
			_, errs[i] = q.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: fmt.Sprintf("r%d", i), Partitions: 1})
		})
	}
	wg.Wait()
	ok, limited := 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case status.Code(err) == codes.ResourceExhausted && strings.Contains(err.Error(), "--queue-ops-rate"):
			limited++
		default:
			t.Fatal(err)
		}
	}
	if ok != 1 || limited != 3 {
		t.Fatalf("%d created, %d refused by the rate; want 1 and 3", ok, limited)
	}
}
