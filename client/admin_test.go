package client_test

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/client"
)

func TestAdmin(t *testing.T) {
	c, tc := newTestClient(t)
	ctx := ctxT(t, 20*time.Second)
	q := queueName(t)
	zero := uint32(0)
	opts := client.QueueOptions{Partitions: 2, Replicas: 2, Visibility: 5 * time.Second, MaxDeliveries: &zero, DedupWindow: -1, Retention: time.Hour, MaxMessages: 100}
	created, err := c.CreateQueue(ctx, q, opts)
	if err != nil {
		t.Fatal(err)
	}
	s := created.GetSettings()
	if created.GetPartitions() != 2 || created.GetReplicas() != 2 || s.GetVisibilityTimeout().AsDuration() != 5*time.Second ||
		s.GetMaxDeliveries() != 0 || s.GetDedupWindow().AsDuration() != 0 || s.GetRetention().AsDuration() != time.Hour || s.GetMaxMessagesPerPartition() != 100 {
		t.Fatalf("created %v", created)
	}
	if _, err := c.CreateQueue(ctx, q, opts); err != nil {
		t.Errorf("creating the same queue again: %v", err)
	}
	if _, err := c.CreateQueue(ctx, q, client.QueueOptions{Partitions: 3}); !errors.Is(err, client.ErrAlreadyExists) {
		t.Errorf("conflicting create: %v, want ErrAlreadyExists", err)
	}
	if _, err := c.CreateQueue(ctx, "bad name!", client.QueueOptions{}); !errors.Is(err, client.ErrInvalid) || status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad name: %v, want ErrInvalid", err)
	}
	if _, err := c.GetQueue(ctx, "no-such-queue"); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("missing queue: %v, want ErrNotFound", err)
	}

	enqueueN(t, c, q, 5)
	qs, err := c.ListQueues(ctx)
	found := false
	for _, x := range qs {
		found = found || x.GetName() == q
	}
	if err != nil || !found {
		t.Errorf("list queues: %v %v", qs, err)
	}
	ps, err := c.Partitions(ctx, q)
	if err != nil || len(ps) != 2 {
		t.Errorf("partitions: %v %v", ps, err)
	}
	// Every node reports its own replicas; the two replicas of each
	// partition converge on the same applied index and state checksum.
	waitFor(t, "both replicas of each partition to agree", 5*time.Second, func() bool {
		type at struct{ applied, sum uint64 }
		seen := map[uint32][]at{}
		for _, addr := range tc.seeds() {
			ps, err := c.LocalPartitions(ctx, addr, q)
			if err != nil {
				t.Fatalf("local partitions of %s: %v", addr, err)
			}
			for _, p := range ps {
				if p.GetNodeId() == "" || p.GetQueue() != q || p.GetStateChecksum() == 0 {
					t.Fatalf("local partition %v", p)
				}
				seen[p.GetPartition()] = append(seen[p.GetPartition()], at{p.GetAppliedIndex(), p.GetStateChecksum()})
			}
		}
		for p := range uint32(2) {
			if r := seen[p]; len(r) != 2 || r[0] != r[1] {
				return false
			}
		}
		return true
	})
	if st, err := c.ClusterStatus(ctx); err != nil || st.GetNodeId() == "" {
		t.Errorf("status: %v %v", st, err)
	}
	if ms, err := c.Members(ctx); err != nil || len(ms) != 3 {
		t.Errorf("members: %v %v", ms, err)
	}
	purged, err := c.PurgeQueue(ctx, q, true, true)
	if err != nil || purged.GetPurgedReady() != 5 {
		t.Errorf("purge: %v %v", purged, err)
	}
	if err := c.DeleteQueue(ctx, q); err != nil {
		t.Fatal(err)
	}
	// A node answers from its own copy of the catalogue, which may not
	// have applied the delete yet, even the node that acknowledged it.
	waitFor(t, "every node to forget the deleted queue", 5*time.Second, func() bool {
		for range 3 {
			if _, err := c.GetQueue(ctx, q); !errors.Is(err, client.ErrNotFound) {
				return false
			}
		}
		return true
	})
	if err := c.DeleteQueue(ctx, q); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("deleting a deleted queue: %v, want ErrNotFound", err)
	}
}

// TestNewFailsWithoutCluster: New gives up within its context when no
// seed answers.
func TestNewFailsWithoutCluster(t *testing.T) {
	start := time.Now()
	_, err := client.New(ctxT(t, 2*time.Second), []string{"127.0.0.1:1"})
	if !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("New: %v, want ErrUnavailable", err)
	}
	if time.Since(start) > 3*time.Second {
		t.Fatalf("New took %v", time.Since(start))
	}
	if _, err := client.New(ctxT(t, time.Second), nil); !errors.Is(err, client.ErrInvalid) {
		t.Fatalf("New without seeds: %v, want ErrInvalid", err)
	}
	noClientGoroutines(t)
}
