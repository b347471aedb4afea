package client_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/quorumq/quorumq/client"
)

// The examples run against an in-process three-node cluster; testSeeds
// returns its nodes' client addresses and testTLS its client TLS
// configuration. A program passes a few addresses of its own, e.g.
// []string{"quorumq-0.quorumq:7420", "quorumq-1.quorumq:7420"}, and
// builds its TLS configuration from the cluster's CA and its own
// certificate:
//
//	tlsCfg, err := pki.ClientTLSConfig("ca.pem", "worker.pem", "worker-key.pem")

func ExampleClient_Enqueue() {
	ctx := context.Background()
	c, err := client.New(ctx, testSeeds(), client.WithTLS(testTLS()))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if _, err := c.CreateQueue(ctx, "example-orders", client.QueueOptions{Partitions: 3}); err != nil {
		log.Fatal(err)
	}

	// Messages with the same key go to the same partition, in order.
	res, err := c.Enqueue(ctx, "example-orders",
		&client.Message{Payload: []byte(`{"order":1}`), Key: "customer-7"},
		&client.Message{Payload: []byte(`{"order":2}`), Key: "customer-7", DedupID: "order-2"},
	)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("same partition:", res[0].Partition == res[1].Partition)

	// Sending order 2 again (say, after a crash of the sender) stores
	// nothing: its dedup id is remembered.
	again, err := c.Enqueue(ctx, "example-orders", &client.Message{Payload: []byte(`{"order":2}`), Key: "customer-7", DedupID: "order-2"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("duplicate:", again[0].Duplicate, again[0].MessageID == res[1].MessageID)
	// Output:
	// same partition: true
	// duplicate: true true
}

func ExampleProducer() {
	ctx := context.Background()
	c, err := client.New(ctx, testSeeds(), client.WithTLS(testTLS()))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if _, err := c.CreateQueue(ctx, "example-events", client.QueueOptions{Partitions: 2}); err != nil {
		log.Fatal(err)
	}

	p := c.NewProducer("example-events", client.Linger(10*time.Millisecond))
	var futures []*client.Future
	for i := range 250 {
		futures = append(futures, p.Send(ctx, &client.Message{Payload: fmt.Appendf(nil, "event %d", i)}))
	}
	stored := 0
	for _, f := range futures {
		if _, err := f.Wait(ctx); err != nil {
			log.Print(err)
			continue
		}
		stored++
	}
	if err := p.Close(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("stored:", stored)
	// Output:
	// stored: 250
}

func ExampleClient_Consume() {
	ctx := context.Background()
	c, err := client.New(ctx, testSeeds(), client.WithTLS(testTLS()))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if _, err := c.CreateQueue(ctx, "example-jobs", client.QueueOptions{Partitions: 1}); err != nil {
		log.Fatal(err)
	}
	_, err = c.Enqueue(ctx, "example-jobs",
		&client.Message{Payload: []byte("resize a.png")},
		&client.Message{Payload: []byte("resize b.png")},
		&client.Message{Payload: []byte("resize c.png")},
	)
	if err != nil {
		log.Fatal(err)
	}

	// Consume until cancelled; here, after three jobs. Returning nil acks
	// a message; an error requeues it.
	cctx, cancel := context.WithCancel(ctx)
	done := 0
	err = c.Consume(cctx, "example-jobs", func(ctx context.Context, d *client.Delivery) error {
		fmt.Println("job:", string(d.Payload))
		if done++; done == 3 {
			cancel()
		}
		return nil
	}, client.Concurrency(1), client.Wait(time.Second))
	fmt.Println("consume returned:", err)

	q, err := c.GetQueue(ctx, "example-jobs")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("acked:", q.GetStats().GetAckedTotal(), "left:", q.GetStats().GetReady()+q.GetStats().GetLeased())
	// Output:
	// job: resize a.png
	// job: resize b.png
	// job: resize c.png
	// consume returned: <nil>
	// acked: 3 left: 0
}

func ExampleClient_ListDeadLetters() {
	ctx := context.Background()
	c, err := client.New(ctx, testSeeds(), client.WithTLS(testTLS()))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	maxDeliveries := uint32(3)
	if _, err := c.CreateQueue(ctx, "example-payments", client.QueueOptions{MaxDeliveries: &maxDeliveries}); err != nil {
		log.Fatal(err)
	}
	if _, err := c.Enqueue(ctx, "example-payments",
		&client.Message{Payload: []byte("pay 10")},
		&client.Message{Payload: []byte("pay -5")},
	); err != nil {
		log.Fatal(err)
	}

	// A handler rejects what it can never process: the message goes to
	// dead-letter at once, without using up its deliveries.
	cctx, cancel := context.WithCancel(ctx)
	handled := 0
	_ = c.Consume(cctx, "example-payments", func(ctx context.Context, d *client.Delivery) error {
		if handled++; handled == 2 {
			cancel()
		}
		if string(d.Payload) == "pay -5" {
			return client.Reject("negative amount")
		}
		return nil
	}, client.Concurrency(1), client.Wait(time.Second))

	// Inspect the dead letters, then send one back once the bug is fixed.
	dead, _, err := c.ListDeadLetters(ctx, "example-payments", 10, "")
	if err != nil {
		log.Fatal(err)
	}
	for _, d := range dead {
		fmt.Printf("dead: %q (%s)\n", d.GetPayload(), d.GetReason())
	}
	moved, err := c.Redrive(ctx, "example-payments", []string{dead[0].GetMessageId()}, 0)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("redriven:", moved)

	ds, err := c.Receive(ctx, "example-payments", 10, client.Wait(5*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	for _, d := range ds {
		fmt.Printf("received again: %q, delivery %d\n", d.Payload, d.DeliveryCount)
		if err := d.Ack(ctx); err != nil {
			log.Fatal(err)
		}
	}
	// Output:
	// dead: "pay -5" (negative amount)
	// redriven: 1
	// received again: "pay -5", delivery 1
}
