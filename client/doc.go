// Package client is the Go client of quorumq, a replicated work queue.
//
// # Connecting
//
// New takes a few node addresses (seeds), learns every node of the cluster
// from them, and keeps one gRPC connection per node:
//
//	c, err := client.New(ctx, []string{"node1:7420", "node2:7420"})
//	if err != nil { ... }
//	defer c.Close()
//
// Any node serves any request, forwarding it to the leader of the
// partition it touches. The client sends a request to that leader directly
// when it knows it (from ClusterService.Partitions and from the leader
// hints that come with UNAVAILABLE), which saves a hop; it never depends on
// it. Requests that fail with UNAVAILABLE are retried on another node with
// a bounded, jittered exponential backoff (WithRetry), within the caller's
// context; so are requests that timed out, when repeating them is harmless.
//
// A secure cluster speaks TLS on its client port and wants to know who
// calls: give the cluster's CA and either a client certificate or a bearer
// token (which is only ever sent over TLS):
//
//	tlsCfg, err := pki.ClientTLSConfig("ca.pem", "worker.pem", "worker-key.pem")
//	c, err := client.New(ctx, seeds, client.WithTLS(tlsCfg))
//
//	tlsCfg, err := pki.ClientTLSConfig("ca.pem", "", "")
//	c, err := client.New(ctx, seeds, client.WithTLS(tlsCfg), client.WithToken(token))
//
// (pki is github.com/quorumq/quorumq/transport/pki.)
//
// # Producing
//
// Enqueue stores a batch and returns once it is on disk on a majority of
// replicas. Every message carries a dedup id — a random one unless the
// caller set one — so a retry after an ambiguous failure never stores a
// message twice. A Producer (NewProducer) batches messages sent one at a
// time, per partition leader, and enqueues them asynchronously; each Send
// returns a Future.
//
// # Consuming
//
// Receive leases a batch of messages; each Delivery must then be finished
// with Ack, Requeue or Reject before its lease ends, or it is delivered
// again. Consume runs a handler over a queue until its context is
// cancelled: it prefetches, runs handlers concurrently, extends the leases
// of the messages it holds, batches acks, and on shutdown gives back what
// it did not start. The handler's return finishes the message: nil acks it,
// Reject(reason) dead-letters it, RequeueAfter(d) or any other error
// requeues it.
//
// Delivery is at least once: a message whose lease ends before it is acked
// (a crashed consumer, a lost ack) is delivered again, with a higher
// DeliveryCount. Past the queue's max deliveries it goes to dead-letter,
// where ListDeadLetters, Redrive and PurgeQueue handle it.
//
// # Errors
//
// Errors wrap sentinels to test with errors.Is: ErrNotFound,
// ErrAlreadyExists, ErrInvalid, ErrUnavailable, ErrQueueFull,
// ErrFailedPrecondition, ErrStaleReceipt. The gRPC status stays available
// through *Error and status.FromError.
//
// # Goroutines
//
// A Client owns one goroutine, which keeps members and routes fresh, until
// Close. A Producer owns goroutines until its Close. Consume returns only
// once every goroutine it started has ended.
package client
