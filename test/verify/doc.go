// Package verify checks a quorumq cluster the way Jepsen checks a queue: a
// workload of concurrent producers and consumers records every operation it
// invokes and how it ended (a History); after the faults stop, a drain reads
// every queue empty; a checker then proves from the history alone that no
// acknowledged enqueue was lost, that nothing came from nowhere, that no
// acked message came back, and that first deliveries kept their partition's
// order. CheckConvergence adds the replicas' side: every replica of every
// partition ends at the same state.
//
// `quorumq verify` and the chaos suite drive it the same way:
//
//	w, err := verify.New(verify.Config{Client: c, Duration: time.Minute})
//	err = w.Setup(ctx)                // queues created, leaders elected
//	// ... start the faults ...
//	err = w.Run(ctx)                  // producers and consumers, until Duration
//	// ... stop the faults, let the cluster heal ...
//	err = w.Drain(ctx)                // every queue read empty, dead letters listed
//	v := verify.Check(w.History().Ops(), verify.CheckOptions{})
//	err = verify.CheckConvergence(ctx, c, nil, w.Queues())
//
// # What the history holds
//
// Each message the workload enqueues carries a unique id in its payload
// (run tag, producer, counter) that is also its dedup id, so the checker
// identifies a message by it whatever partition and sequence the cluster
// reports. Each operation has an invoke and a complete time and an outcome:
// ok, failed (it definitely did not happen) or unknown (it may have). The
// workload uses the real client, with its retries, and a deadline on every
// call; it retries nothing by hand. An operation the client could not settle
// is recorded as unknown, never guessed.
//
// # Honest limits
//
// An enqueue of unknown outcome whose message never turns up cannot be told
// from a lost one; the checker counts it as neither. Times are the
// workload's wall clock, so histories from one process compare safely. The
// history is kept in memory: about 300 bytes per operation, three or four
// operations per message.
package verify
