package cluster

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// TestFiveNodeFormation: five nodes bootstrap one cluster with five
// controller voters; a node that hosts none of a queue's partitions serves
// it by forwarding.
func TestFiveNodeFormation(t *testing.T) {
	c := startCluster(t, 5)
	c.waitFor("five voters", 10*time.Second, func() bool {
		for _, n := range c.nodes {
			if len(n.ctrl.voterIDs()) != 5 {
				return false
			}
		}
		return true
	})
	ctx := ctxT(t, 60*time.Second)
	q, _ := c.client(0)
	res, err := q.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: "one", Partitions: 1, Replicas: 3})
	if err != nil {
		t.Fatal(err)
	}
	hosts := map[string]bool{}
	info, _ := c.nodes[0].ctrl.queue(res.GetQueue().GetName())
	for _, r := range info.GetPartitions()[0].GetReplicas() {
		hosts[r.GetNodeId()] = true
	}
	var outsiders []int
	for i, n := range c.nodes {
		if !hosts[n.ID()] {
			outsiders = append(outsiders, i)
		}
	}
	if len(outsiders) != 2 {
		t.Fatalf("hosts %v", hosts)
	}
	producer, _ := c.client(outsiders[0])
	consumer, _ := c.client(outsiders[1])
	if _, err := producer.Enqueue(ctx, &qv1.EnqueueRequest{Queue: "one", Messages: []*qv1.Message{{Payload: []byte("hi")}}}); err != nil {
		t.Fatal(err)
	}
	got, err := consumer.Receive(ctx, &qv1.ReceiveRequest{Queue: "one", Max: 10, Wait: durationpb.New(5 * time.Second)})
	if err != nil || len(got.GetMessages()) != 1 || string(got.GetMessages()[0].GetPayload()) != "hi" {
		t.Fatalf("receive through a non-hosting node: %v %v", got, err)
	}
	ack, err := consumer.Ack(ctx, &qv1.AckRequest{Queue: "one", Receipts: []string{got.GetMessages()[0].GetReceipt()}})
	if err != nil || ack.GetResults()[0].GetStatus() != qv1.ReceiptStatus_RECEIPT_STATUS_OK {
		t.Fatalf("ack through a non-hosting node: %v %v", ack, err)
	}
}

// TestConcurrentBootstrapFormsOneCluster: nodes that start together, all
// expecting three and joining each other in every order, end in one
// cluster: one controller leader that every node follows.
func TestConcurrentBootstrapFormsOneCluster(t *testing.T) {
	for round := range 3 {
		t.Run(fmt.Sprintf("round%d", round), func(t *testing.T) {
			base := t.TempDir()
			const size = 4
			// Bind every gossip port first so that all nodes can join each
			// other from the start.
			nodes := make([]*Node, size)
			t.Cleanup(func() {
				for _, n := range nodes {
					if n != nil {
						_ = n.Kill()
					}
				}
			})
			var wg sync.WaitGroup
			var mu sync.Mutex
			var addrs []string
			ready := make(chan struct{})
			for i := range size {
				wg.Add(1)
				go func() {
					defer wg.Done()
					cfg := nodeConfig(filepath.Join(base, fmt.Sprint(i)), fmt.Sprintf("b%d", (i*7+round)%size), 3, nil)
					n, err := Start(cfg)
					if err != nil {
						t.Errorf("start: %v", err)
						return
					}
					mu.Lock()
					nodes[i] = n
					addrs = append(addrs, n.GossipAddr())
					if len(addrs) == size {
						close(ready)
					}
					mu.Unlock()
					<-ready
					mu.Lock()
					join := append([]string{}, addrs...)
					mu.Unlock()
					_, _ = n.gossip.ml.Join(join)
				}()
			}
			wg.Wait()
			if t.Failed() {
				return
			}
			c := &testCluster{t: t, nodes: nodes}
			c.waitFor("one leader known to all, four nodes in the catalogue", 30*time.Second, func() bool {
				leader := nodes[0].ctrl.g.leaderID()
				for _, n := range nodes {
					if n.ctrl.g.leaderID() == "" || n.ctrl.g.leaderID() != leader || len(n.ctrl.nodes()) != size {
						return false
					}
				}
				return true
			})
			for _, n := range nodes {
				if got := len(n.ctrl.voterIDs()); got != 3 {
					t.Errorf("%s sees %d voters", n.ID(), got)
				}
			}
		})
	}
}
