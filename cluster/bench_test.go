package cluster

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// BenchmarkClusterEnqueue measures acknowledged enqueues (fsync on a
// majority) on an in-process 3-node cluster, with a queue of 6 partitions
// x R3, through one node's client port. One op is one message.
func BenchmarkClusterEnqueue(b *testing.B) {
	for _, size := range []int{128, 1024} {
		for _, producers := range []int{1, 32} {
			for _, batch := range []int{1, 100} {
				b.Run(fmt.Sprintf("size=%d/producers=%d/batch=%d", size, producers, batch), func(b *testing.B) {
					benchEnqueue(b, size, producers, batch)
				})
			}
		}
	}
}

func benchEnqueue(b *testing.B, size, producers, batch int) {
	c := startCluster(b, 3)
	q, _ := c.client(0)
	ctx := context.Background()
	name := fmt.Sprintf("bench-%d", time.Now().UnixNano())
	if _, err := q.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: name, Partitions: 6, Replicas: 3}); err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, size)
	var next atomic.Int64
	lat := make([][]time.Duration, producers)
	b.ResetTimer()
	var wg sync.WaitGroup
	for w := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msgs := make([]*qv1.Message, batch)
			for i := range msgs {
				msgs[i] = &qv1.Message{Payload: payload}
			}
			for next.Add(int64(batch)) <= int64(b.N)+int64(batch)-1 {
				start := time.Now()
				if _, err := q.Enqueue(ctx, &qv1.EnqueueRequest{Queue: name, Messages: msgs}); err != nil {
					b.Error(err)
					return
				}
				lat[w] = append(lat[w], time.Since(start))
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	if len(all) > 0 {
		b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
	}
	b.ReportMetric(float64(len(all)*batch)/b.Elapsed().Seconds(), "msgs/s")
	var applies, applyNanos uint64
	for _, n := range c.nodes {
		applies += n.metrics.applyCount.Load()
		applyNanos += n.metrics.applyNanos.Load()
	}
	if applies > 0 {
		b.ReportMetric(float64(applyNanos)/float64(applies)/1e6, "ms/apply")
	}
}

// BenchmarkClusterConsumeAck measures receive+ack of prefilled messages on
// an in-process 3-node cluster (6 partitions x R3), consumers receiving up
// to 100 at a time through one node. One op is one message.
func BenchmarkClusterConsumeAck(b *testing.B) {
	for _, consumers := range []int{1, 4} {
		b.Run(fmt.Sprintf("consumers=%d", consumers), func(b *testing.B) {
			c := startCluster(b, 3)
			q, _ := c.client(0)
			ctx := context.Background()
			name := fmt.Sprintf("consume-%d", time.Now().UnixNano())
			if _, err := q.CreateQueue(ctx, &qv1.CreateQueueRequest{Name: name, Partitions: 6, Replicas: 3}); err != nil {
				b.Fatal(err)
			}
			msgs := make([]*qv1.Message, 500)
			for i := range msgs {
				msgs[i] = &qv1.Message{Payload: make([]byte, 128)}
			}
			for filled := 0; filled < b.N; filled += len(msgs) {
				if _, err := q.Enqueue(ctx, &qv1.EnqueueRequest{Queue: name, Messages: msgs}); err != nil {
					b.Fatal(err)
				}
			}
			var done atomic.Int64
			b.ResetTimer()
			var wg sync.WaitGroup
			for range consumers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for done.Load() < int64(b.N) {
						res, err := q.Receive(ctx, &qv1.ReceiveRequest{Queue: name, Max: 100, Wait: durationpb.New(100 * time.Millisecond)})
						if err != nil {
							b.Error(err)
							return
						}
						if len(res.GetMessages()) == 0 {
							continue
						}
						receipts := make([]string, len(res.GetMessages()))
						for i, m := range res.GetMessages() {
							receipts[i] = m.GetReceipt()
						}
						if _, err := q.Ack(ctx, &qv1.AckRequest{Queue: name, Receipts: receipts}); err != nil {
							b.Error(err)
							return
						}
						done.Add(int64(len(receipts)))
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(done.Load())/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
