package verify

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// drainBatch is how many messages a drain receive asks for.
const drainBatch = 100

// Drain empties every queue of the workload, to run once the faults have
// stopped and the cluster has healed: it receives and acks until the queue
// is empty, waiting out the leases still held (from receives whose answer
// was lost, and those left to expire on purpose), until every partition
// reports nothing ready, delayed or leased and a last receive finds
// nothing. Then it lists every dead letter. All of it goes in the history
// (KindDrainDeliver, KindAck, KindDeadLetter); the checker needs it to tell
// a lost message from one still queued. Drain returns an error if ctx ends
// first: the history then lacks what was left, which the checker will
// report as lost.
func (w *Workload) Drain(ctx context.Context) error {
	errs := make([]error, len(w.cfg.Queues))
	var wg sync.WaitGroup
	for i, q := range w.cfg.Queues {
		wg.Go(func() {
			if err := w.drainQueue(ctx, q); err != nil {
				errs[i] = err
				return
			}
			errs[i] = w.listDeadLetters(ctx, q)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// drainQueue receives and acks q until it is empty.
func (w *Workload) drainQueue(ctx context.Context, q string) error {
	last := "nothing received yet"
	confirm := false // the stats said empty: one more empty receive ends it
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("verify: draining %s: %w (%s)", q, err, last)
		}
		ds, err := w.receive(ctx, KindDrainDeliver, "drain", q, drainBatch, w.cfg.Wait, w.cfg.Visibility)
		if err != nil {
			last = "receive: " + err.Error()
			confirm = false
			sleepCtx(ctx, 100*time.Millisecond)
			continue
		}
		if len(ds) > 0 {
			w.finish(ctx, KindAck, "drain", q, ds)
			last = fmt.Sprintf("received %d", len(ds))
			confirm = false
			continue
		}
		if confirm {
			return nil
		}
		confirm, last = w.emptyStats(ctx, q)
		if !confirm {
			// Leases are left: the receive's long poll spaces the polls,
			// unless it failed fast.
			sleepCtx(ctx, 100*time.Millisecond)
		}
	}
}

// emptyStats reports whether every partition of q answers with nothing
// ready, delayed or leased, and if not, why.
func (w *Workload) emptyStats(ctx context.Context, q string) (bool, string) {
	cctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	ps, err := w.c.Partitions(cctx, q)
	if err != nil {
		return false, "partitions: " + err.Error()
	}
	if uint32(len(ps)) != w.partitions[q] {
		return false, fmt.Sprintf("%d of %d partitions listed", len(ps), w.partitions[q])
	}
	for _, p := range ps {
		st := p.GetStats()
		if p.GetLeader() == "" || st == nil {
			return false, fmt.Sprintf("partition %d did not answer", p.GetPartition())
		}
		if n := st.GetReady() + st.GetDelayed() + st.GetLeased(); n > 0 {
			return false, fmt.Sprintf("partition %d holds %d ready, %d delayed, %d leased",
				p.GetPartition(), st.GetReady(), st.GetDelayed(), st.GetLeased())
		}
	}
	return true, "empty"
}

// listDeadLetters records every dead letter of q, page by page, retrying
// a page until ctx ends.
func (w *Workload) listDeadLetters(ctx context.Context, q string) error {
	token := ""
	for {
		cctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
		t0 := time.Now()
		dls, next, err := w.c.ListDeadLetters(cctx, q, 1000, token)
		t1 := time.Now()
		cancel()
		if err != nil {
			if !sleepCtx(ctx, 100*time.Millisecond) {
				return fmt.Errorf("verify: listing dead letters of %s: %w", q, err)
			}
			continue
		}
		for _, d := range dls {
			w.h.Add(Op{Kind: KindDeadLetter, Queue: q, Process: "drain", Invoke: t0, Complete: t1, Outcome: OK,
				Msg: msgOf(d.GetPayload()), Partition: d.GetPartition(), Seq: d.GetSeq(),
				DeliveryCount: d.GetDeliveryCount(), Reason: d.GetReason()})
		}
		if next == "" {
			return nil
		}
		token = next
	}
}
