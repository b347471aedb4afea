package cluster

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// drain receives and acks until the queue yields nothing for a while,
// returning how often each payload was delivered.
func drain(t *testing.T, q qv1.QueueServiceClient, queue string) map[string]int {
	t.Helper()
	got := map[string]int{}
	ctx := ctxT(t, 60*time.Second)
	for {
		res, err := q.Receive(ctx, &qv1.ReceiveRequest{Queue: queue, Max: 100, Wait: durationpb.New(time.Second)})
		if err != nil {
			t.Fatalf("drain receive: %v", err)
		}
		if len(res.GetMessages()) == 0 {
			return got
		}
		var receipts []string
		for _, m := range res.GetMessages() {
			got[string(m.GetPayload())]++
			receipts = append(receipts, m.GetReceipt())
		}
		if _, err := q.Ack(ctx, &qv1.AckRequest{Queue: queue, Receipts: receipts}); err != nil {
			t.Fatalf("drain ack: %v", err)
		}
	}
}

// leaderNode returns the index of the node leading partition p of queue.
func (c *testCluster) leaderNode(queue string, p uint32) int {
	for i, n := range c.nodes {
		if n == nil {
			continue
		}
		if r, ok := n.replicas.get(queue, p); ok && r.isLeader() {
			return i
		}
	}
	return -1
}

// TestKillPartitionLeaderUnderLoad: producers keep enqueueing through a node
// that survives while the leader of partition 0 is killed; every
// acknowledged message is delivered afterwards.
func TestKillPartitionLeaderUnderLoad(t *testing.T) {
	c := startCluster(t, 3)
	ctx := ctxT(t, 90*time.Second)
	qc, _ := c.client(0)
	if _, err := qc.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: "jobs", Partitions: 2, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	var leader int
	c.waitFor("a leader of partition 0", 10*time.Second, func() bool { leader = c.leaderNode("jobs", 0); return leader >= 0 })
	via := (leader + 1) % 3
	q, _ := c.client(via)

	var mu sync.Mutex
	acked := map[string]bool{}
	var firstAfterKill time.Duration
	var killedAt time.Time
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("w%d-%d", w, i)
				rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				res, err := q.Enqueue(rctx, &qv1.EnqueueRequest{Queue: "jobs", Messages: []*qv1.Message{{Payload: []byte(id), Key: id, DedupId: id}}})
				cancel()
				if err != nil {
					if status.Code(err) != codes.Unavailable && status.Code(err) != codes.DeadlineExceeded {
						t.Errorf("enqueue %s: %v", id, err)
						return
					}
					i-- // retry the same message: its dedup id makes that safe
					continue
				}
				mu.Lock()
				acked[id] = true
				if !killedAt.IsZero() && firstAfterKill == 0 && res.GetResults()[0].GetPartition() == 0 {
					firstAfterKill = time.Since(killedAt)
				}
				mu.Unlock()
			}
		}()
	}
	c.waitFor("some load", 10*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) > 200 })
	mu.Lock()
	killedAt = time.Now()
	mu.Unlock()
	dead := c.nodes[leader].ID()
	c.kill(leader)
	defer c.waitFor("the others to see the killed node as dead", 30*time.Second, func() bool {
		return c.gossipState(via, dead) == "dead"
	})
	c.waitFor("a new leader of partition 0", 10*time.Second, func() bool { return c.leaderNode("jobs", 0) >= 0 })
	c.waitFor("enqueues on partition 0 after the kill", 10*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return firstAfterKill > 0 })
	c.waitFor("more load", 10*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) > 600 })
	close(stop)
	wg.Wait()
	t.Logf("first acknowledged enqueue on partition 0 %v after killing its leader; %d acknowledged", firstAfterKill, len(acked))

	got := drain(t, q, "jobs")
	for id := range acked {
		if got[id] == 0 {
			t.Errorf("acknowledged %s never delivered", id)
		}
	}
	for id, n := range got {
		if n > 1 {
			t.Errorf("%s delivered %d times", id, n)
		}
	}
}

// TestRestartFromDisk: every node is killed and started again from its data
// directory; nothing acknowledged is lost or duplicated.
func TestRestartFromDisk(t *testing.T) {
	c := startCluster(t, 3)
	ctx := ctxT(t, 90*time.Second)
	q, _ := c.client(0)
	if _, err := q.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: "durable", Partitions: 3}); err != nil {
		t.Fatal(err)
	}
	var msgs []*qv1.Message
	for i := range 300 {
		msgs = append(msgs, &qv1.Message{Payload: []byte(fmt.Sprintf("m%d", i))})
	}
	if _, err := q.Enqueue(ctx, &qv1.EnqueueRequest{Queue: "durable", Messages: msgs}); err != nil {
		t.Fatal(err)
	}
	// Lease some and ack a few before the crash.
	r, err := q.Receive(ctx, &qv1.ReceiveRequest{Queue: "durable", Max: 20, VisibilityTimeout: durationpb.New(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	var receipts []string
	for _, m := range r.GetMessages()[:10] {
		receipts = append(receipts, m.GetReceipt())
	}
	if _, err := q.Ack(ctx, &qv1.AckRequest{Queue: "durable", Receipts: receipts}); err != nil {
		t.Fatal(err)
	}
	ackedBefore := map[string]bool{}
	for _, m := range r.GetMessages()[:10] {
		ackedBefore[string(m.GetPayload())] = true
	}
	for i := range c.nodes {
		c.kill(i)
	}
	for i := range c.nodes {
		c.restart(i)
	}
	c.waitFormed()
	q2, _ := c.client(1)
	got := drain(t, q2, "durable")
	if len(got) != 290 {
		t.Errorf("after restart %d distinct messages, want 290", len(got))
	}
	for id, n := range got {
		if ackedBefore[id] {
			t.Errorf("%s was acked before the crash and came back", id)
		}
		if n > 1 {
			t.Errorf("%s delivered %d times after restart", id, n)
		}
	}
}

// TestGracefulLeaveTransfersLeadership: a node stopping gracefully hands
// its leaderships over; the queue keeps serving.
func TestGracefulLeaveTransfersLeadership(t *testing.T) {
	c := startCluster(t, 3)
	ctx := ctxT(t, 60*time.Second)
	q, _ := c.client(0)
	if _, err := q.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: "g", Partitions: 3}); err != nil {
		t.Fatal(err)
	}
	c.waitFor("leaders of every partition", 10*time.Second, func() bool {
		for p := range uint32(3) {
			if c.leaderNode("g", p) < 0 {
				return false
			}
		}
		return true
	})
	leaving := c.leaderNode("g", 0)
	if leaving == 0 {
		leaving = c.leaderNode("g", 1)
	}
	if leaving <= 0 {
		leaving = 2
	}
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	start := time.Now()
	if err := c.nodes[leaving].Stop(sctx); err != nil {
		t.Fatalf("graceful stop: %v", err)
	}
	t.Logf("graceful stop took %v", time.Since(start))
	gone := c.nodes[leaving].ID()
	c.nodes[leaving] = nil
	c.waitFor("the others to see the node as left", 10*time.Second, func() bool {
		return c.gossipState((leaving+1)%3, gone) == "left"
	})
	c.waitFor("every partition led by a running node", 10*time.Second, func() bool {
		for p := range uint32(3) {
			if c.leaderNode("g", p) < 0 {
				return false
			}
		}
		return true
	})
	if _, err := q.Enqueue(ctx, &qv1.EnqueueRequest{Queue: "g", Messages: []*qv1.Message{{Payload: []byte("after")}}}); err != nil {
		t.Fatalf("enqueue after a graceful leave: %v", err)
	}
}

// TestCancelledLongPollLeasesNothing: a Receive whose caller gave up must
// not go on to lease a message enqueued afterwards.
func TestCancelledLongPollLeasesNothing(t *testing.T) {
	c := startCluster(t, 3)
	ctx := ctxT(t, 60*time.Second)
	q, _ := c.client(0)
	if _, err := q.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: "poll", Partitions: 2}); err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = q.Receive(pctx, &qv1.ReceiveRequest{Queue: "poll", Max: 10, Wait: durationpb.New(10 * time.Second)})
	}()
	c.waitFor("the long poll to be served", 5*time.Second, func() bool {
		return c.nodes[0].metrics.inFlight.Load() > 0
	})
	cancel()
	<-done
	if _, err := q.Enqueue(ctx, &qv1.EnqueueRequest{Queue: "poll", Messages: []*qv1.Message{{Payload: []byte("later")}}}); err != nil {
		t.Fatal(err)
	}
	got, err := q.Receive(ctx, &qv1.ReceiveRequest{Queue: "poll", Max: 10, Wait: durationpb.New(5 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.GetMessages()) != 1 {
		t.Fatalf("a cancelled long poll took the message: received %d", len(got.GetMessages()))
	}
}
