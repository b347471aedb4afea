package verify

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"time"
)

// OrderCheck says when Check checks the order of first deliveries.
type OrderCheck int

const (
	// OrderAuto checks a queue's order unless the workload requeued or
	// let leases expire in it.
	OrderAuto OrderCheck = iota
	// OrderAlways checks every queue. The state machine keeps first
	// deliveries in sequence order even with requeues and expiries
	// (fsm/DESIGN.md, Ordering), so this is stricter, not wrong.
	OrderAlways
	// OrderNever checks no queue.
	OrderNever
)

// CheckOptions tune Check.
type CheckOptions struct {
	Order OrderCheck
	// Examples is how many problems of each kind a queue lists (default
	// 10); the counts are always complete.
	Examples int
}

// Problem kinds.
const (
	ProblemLost        = "lost"
	ProblemUnexpected  = "unexpected"
	ProblemResurrected = "resurrected"
	ProblemOrder       = "order"
)

// Problem is one violation, for the report.
type Problem struct {
	Kind      string `json:"kind"`
	Queue     string `json:"queue"`
	Partition uint32 `json:"partition"`
	Seq       uint64 `json:"seq,omitempty"`
	Msg       string `json:"msg,omitempty"`
	Detail    string `json:"detail"`
}

// Duplicates counts the deliveries of a message after its first, by why
// the message was delivered again (what became of the delivery before).
type Duplicates struct {
	// LeaseExpiry: the previous lease ended without an ack (let expire on
	// purpose, or a requeue refused because it had already ended).
	LeaseExpiry int `json:"lease_expiry"`
	// Requeue: the previous delivery was requeued.
	Requeue int `json:"requeue"`
	// Failover: the previous delivery's ack failed or its outcome is
	// unknown, or the previous lease was never seen (its receive's answer
	// was lost).
	Failover int `json:"failover"`
	// DoubleStore: the message was stored twice (at two sequences): a
	// retried enqueue that dedup did not catch.
	DoubleStore int `json:"double_store"`
}

// Total is the number of duplicate deliveries.
func (d Duplicates) Total() int { return d.LeaseExpiry + d.Requeue + d.Failover + d.DoubleStore }

func (d *Duplicates) add(c cause) {
	switch c {
	case causeExpiry:
		d.LeaseExpiry++
	case causeRequeue:
		d.Requeue++
	case causeFailover:
		d.Failover++
	case causeDoubleStore:
		d.DoubleStore++
	}
}

type cause int

const (
	causeExpiry cause = iota
	causeRequeue
	causeFailover
	causeDoubleStore
)

// Counts are the figures of a queue, a partition or the whole history.
// A partition's counts leave out what has no known partition (enqueues
// that failed or whose outcome is unknown).
type Counts struct {
	EnqueuedOK      int `json:"enqueued_ok"`
	EnqueuedUnknown int `json:"enqueued_unknown"`
	EnqueueFailed   int `json:"enqueue_failed"`
	// Recovered: enqueues of unknown outcome whose message turned up.
	Recovered int `json:"recovered"`
	// Delivered counts deliveries, the drain's included.
	Delivered    int `json:"delivered"`
	Acked        int `json:"acked"`
	DeadLettered int `json:"dead_lettered"`
	// Duplicates are allowed (delivery is at least once); counted by
	// cause.
	Duplicates Duplicates `json:"duplicates"`

	Lost            int `json:"lost"`
	Unexpected      int `json:"unexpected"`
	Resurrected     int `json:"resurrected"`
	OrderViolations int `json:"order_violations"`
}

// Violations is the number of lost, unexpected, resurrected and
// out-of-order messages.
func (c *Counts) Violations() int {
	return c.Lost + c.Unexpected + c.Resurrected + c.OrderViolations
}

func (c *Counts) plus(o *Counts) {
	c.EnqueuedOK += o.EnqueuedOK
	c.EnqueuedUnknown += o.EnqueuedUnknown
	c.EnqueueFailed += o.EnqueueFailed
	c.Recovered += o.Recovered
	c.Delivered += o.Delivered
	c.Acked += o.Acked
	c.DeadLettered += o.DeadLettered
	c.Duplicates.LeaseExpiry += o.Duplicates.LeaseExpiry
	c.Duplicates.Requeue += o.Duplicates.Requeue
	c.Duplicates.Failover += o.Duplicates.Failover
	c.Duplicates.DoubleStore += o.Duplicates.DoubleStore
	c.Lost += o.Lost
	c.Unexpected += o.Unexpected
	c.Resurrected += o.Resurrected
	c.OrderViolations += o.OrderViolations
}

// PartitionVerdict is one partition's counts.
type PartitionVerdict struct {
	Partition uint32 `json:"partition"`
	Counts
}

// QueueVerdict is one queue's counts and problems.
type QueueVerdict struct {
	Queue string `json:"queue"`
	// OrderChecked says whether first deliveries were checked for order;
	// OrderNote why not.
	OrderChecked bool   `json:"order_checked"`
	OrderNote    string `json:"order_note,omitempty"`
	Counts
	Partitions []PartitionVerdict `json:"partitions"`
	// Problems are examples of each violation (CheckOptions.Examples of
	// each kind).
	Problems []Problem `json:"problems"`
}

// Verdict is the result of Check.
type Verdict struct {
	Queues []QueueVerdict `json:"queues"`
	Total  Counts         `json:"total"`
}

// OK reports whether nothing was lost, unexpected, resurrected or out of
// order.
func (v *Verdict) OK() bool { return v.Total.Violations() == 0 }

// MarshalJSON adds "ok" to the verdict's fields.
func (v *Verdict) MarshalJSON() ([]byte, error) {
	type plain Verdict
	return json.Marshal(struct {
		OK bool `json:"ok"`
		*plain
	}{v.OK(), (*plain)(v)})
}

// Check reads a history and judges it. A message is identified by the id
// the workload put in its payload (Op.Msg), so that a dedup hit, which
// answers with the first enqueue's partition and sequence, is the same
// message. Per queue and partition it counts:
//
//   - lost: an enqueue answered ok, and the message was never delivered
//     nor listed as a dead letter;
//   - unexpected: a message delivered or dead-lettered that was never
//     enqueued with an ok or unknown outcome (or whose payload the workload
//     did not write);
//   - resurrected: a delivery or dead letter invoked after an ack of the
//     same message had completed ok;
//   - order violations: a first delivery (delivery count 1) of sequence a
//     invoked after the first delivery of a higher sequence b of the same
//     partition had completed; see OrderCheck;
//   - duplicates, by cause, and recovered enqueues of unknown outcome.
func Check(ops []Op, opts CheckOptions) *Verdict {
	if opts.Examples <= 0 {
		opts.Examples = 10
	}
	byQueue := map[string][]*Op{}
	var names []string
	for i := range ops {
		op := &ops[i]
		if _, ok := byQueue[op.Queue]; !ok {
			names = append(names, op.Queue)
		}
		byQueue[op.Queue] = append(byQueue[op.Queue], op)
	}
	slices.Sort(names)
	v := &Verdict{Queues: []QueueVerdict{}}
	for _, q := range names {
		qv := checkQueue(q, byQueue[q], opts)
		v.Total.plus(&qv.Counts)
		v.Queues = append(v.Queues, qv)
	}
	return v
}

// message is what the history says about one message of a queue.
type message struct {
	id        string
	enqueues  []*Op
	delivered []*Op // KindDeliver and KindDrainDeliver, ok
	dead      []*Op
	acked     bool      // an ack completed ok
	ackedAt   time.Time // the earliest such completion
}

// queueCheck is the state of checking one queue.
type queueCheck struct {
	name     string
	opts     CheckOptions
	qv       QueueVerdict
	parts    map[uint32]*Counts
	problems map[string][]Problem
}

func (c *queueCheck) part(p uint32) *Counts {
	if c.parts[p] == nil {
		c.parts[p] = &Counts{}
	}
	return c.parts[p]
}

// count applies f to the queue's counts and, if p >= 0, to partition p's.
func (c *queueCheck) count(p int64, f func(*Counts)) {
	f(&c.qv.Counts)
	if p >= 0 {
		f(c.part(uint32(p)))
	}
}

func (c *queueCheck) problem(kind string, p uint32, seq uint64, msg, format string, args ...any) {
	c.problems[kind] = append(c.problems[kind], Problem{Kind: kind, Queue: c.name, Partition: p, Seq: seq, Msg: msg,
		Detail: fmt.Sprintf(format, args...)})
}

func checkQueue(name string, ops []*Op, opts CheckOptions) QueueVerdict {
	c := &queueCheck{name: name, opts: opts, qv: QueueVerdict{Queue: name}, parts: map[uint32]*Counts{}, problems: map[string][]Problem{}}
	msgs := map[string]*message{}
	get := func(id string) *message {
		if msgs[id] == nil {
			msgs[id] = &message{id: id}
		}
		return msgs[id]
	}
	finish := map[string]*Op{} // receipt -> the ack, requeue or expire of that lease
	foreign := map[[2]uint64][]*Op{}
	unordered := false
	for _, op := range ops {
		switch op.Kind {
		case KindQueue:
			for p := range op.Partitions {
				c.part(p)
			}
			unordered = unordered || op.Unordered
		case KindEnqueue:
			m := get(op.Msg)
			m.enqueues = append(m.enqueues, op)
			switch op.Outcome {
			case OK:
				c.count(int64(op.Partition), func(n *Counts) { n.EnqueuedOK++ })
			case Unknown:
				c.count(-1, func(n *Counts) { n.EnqueuedUnknown++ })
			default:
				c.count(-1, func(n *Counts) { n.EnqueueFailed++ })
			}
		case KindDeliver, KindDrainDeliver:
			if op.Outcome != OK {
				continue
			}
			c.count(int64(op.Partition), func(n *Counts) { n.Delivered++ })
			if op.Msg == "" {
				k := [2]uint64{uint64(op.Partition), op.Seq}
				foreign[k] = append(foreign[k], op)
				continue
			}
			m := get(op.Msg)
			m.delivered = append(m.delivered, op)
		case KindDeadLetter:
			c.count(int64(op.Partition), func(n *Counts) { n.DeadLettered++ })
			if op.Msg == "" {
				k := [2]uint64{uint64(op.Partition), op.Seq}
				foreign[k] = append(foreign[k], op)
				continue
			}
			m := get(op.Msg)
			m.dead = append(m.dead, op)
		case KindAck, KindRequeue, KindExpire:
			if op.Kind != KindAck {
				unordered = true
			}
			if finish[op.Receipt] == nil {
				finish[op.Receipt] = op
			}
			if op.Kind == KindAck && op.Outcome == OK {
				c.count(int64(op.Partition), func(n *Counts) { n.Acked++ })
				if op.Msg != "" {
					m := get(op.Msg)
					if !m.acked || op.Complete.Before(m.ackedAt) {
						m.acked, m.ackedAt = true, op.Complete
					}
				}
			}
		}
	}

	ids := make([]string, 0, len(msgs))
	for id := range msgs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		c.checkMessage(msgs[id], finish)
	}
	for _, k := range sortedKeys(foreign) {
		op := foreign[k][0]
		c.count(int64(op.Partition), func(n *Counts) { n.Unexpected++ })
		c.problem(ProblemUnexpected, op.Partition, op.Seq, "", "%s at %s by %s: payload not written by the workload", op.Kind, op.position(), op.Process)
	}

	switch {
	case opts.Order == OrderNever:
		c.qv.OrderNote = "not checked (turned off)"
	case opts.Order == OrderAuto && unordered:
		c.qv.OrderNote = "not checked: the workload requeued or let leases expire in this queue"
	default:
		c.qv.OrderChecked = true
		c.checkOrder(ops)
	}
	return c.finish()
}

// checkMessage judges one message of the workload.
func (c *queueCheck) checkMessage(m *message, finish map[string]*Op) {
	var okEnq *Op
	unknown, failed := false, false
	for _, e := range m.enqueues {
		switch e.Outcome {
		case OK:
			if okEnq == nil {
				okEnq = e
			}
		case Unknown:
			unknown = true
		default:
			failed = true
		}
	}
	seen := len(m.delivered) > 0 || len(m.dead) > 0
	var first *Op // where the message turned up first
	for _, d := range append(append([]*Op(nil), m.delivered...), m.dead...) {
		if first == nil || d.Invoke.Before(first.Invoke) {
			first = d
		}
	}
	switch {
	case okEnq != nil && !seen:
		c.count(int64(okEnq.Partition), func(n *Counts) { n.Lost++ })
		c.problem(ProblemLost, okEnq.Partition, okEnq.Seq, m.id, "enqueued ok at %s by %s (completed %s), never delivered nor dead-lettered",
			okEnq.position(), okEnq.Process, stamp(okEnq.Complete))
	case okEnq == nil && unknown && seen:
		c.count(int64(first.Partition), func(n *Counts) { n.Recovered++ })
	case okEnq == nil && seen:
		why := "never enqueued"
		if failed {
			why = "its enqueue failed"
		}
		c.count(int64(first.Partition), func(n *Counts) { n.Unexpected++ })
		c.problem(ProblemUnexpected, first.Partition, first.Seq, m.id, "%s at %s by %s, but %s", first.Kind, first.position(), first.Process, why)
	}

	resurrected := map[*Op]bool{}
	if m.acked {
		for _, d := range append(append([]*Op(nil), m.delivered...), m.dead...) {
			if m.ackedAt.Before(d.Invoke) {
				resurrected[d] = true
				c.count(int64(d.Partition), func(n *Counts) { n.Resurrected++ })
				c.problem(ProblemResurrected, d.Partition, d.Seq, m.id, "%s at %s (count %d) by %s invoked %s, after an ack completed ok %s",
					d.Kind, d.position(), d.DeliveryCount, d.Process, stamp(d.Invoke), stamp(m.ackedAt))
			}
		}
	}
	c.countDuplicates(m, finish, resurrected)
}

// countDuplicates counts every delivery of m after its first, by cause.
// Deliveries are grouped by the sequence they were stored at (two groups:
// the message was stored twice), and ordered by delivery count within one.
func (c *queueCheck) countDuplicates(m *message, finish map[string]*Op, resurrected map[*Op]bool) {
	copies := map[[2]uint64][]*Op{}
	for _, d := range m.delivered {
		k := [2]uint64{uint64(d.Partition), d.Seq}
		copies[k] = append(copies[k], d)
	}
	firstCopy := true
	for _, k := range sortedCopies(copies) {
		ds := copies[k]
		slices.SortStableFunc(ds, func(a, b *Op) int {
			return cmp.Or(cmp.Compare(a.DeliveryCount, b.DeliveryCount), a.Invoke.Compare(b.Invoke))
		})
		for i, d := range ds {
			var why cause
			switch {
			case resurrected[d]:
				continue // a violation, not a duplicate
			case i == 0 && firstCopy:
				continue
			case i == 0:
				why = causeDoubleStore
			default:
				why = redeliveryCause(ds[i-1], d, finish)
			}
			c.count(int64(d.Partition), func(n *Counts) { n.Duplicates.add(why) })
		}
		firstCopy = false
	}
}

// sortedCopies orders a message's stored copies by their first delivery.
func sortedCopies(copies map[[2]uint64][]*Op) [][2]uint64 {
	keys := make([][2]uint64, 0, len(copies))
	first := map[[2]uint64]time.Time{}
	for k, ds := range copies {
		keys = append(keys, k)
		t := ds[0].Invoke
		for _, d := range ds {
			if d.Invoke.Before(t) {
				t = d.Invoke
			}
		}
		first[k] = t
	}
	slices.SortFunc(keys, func(a, b [2]uint64) int {
		return cmp.Or(first[a].Compare(first[b]), cmp.Compare(a[0], b[0]), cmp.Compare(a[1], b[1]))
	})
	return keys
}

// redeliveryCause says why d followed prev.
func redeliveryCause(prev, d *Op, finish map[string]*Op) cause {
	if prev.DeliveryCount > 0 && d.DeliveryCount > prev.DeliveryCount+1 {
		return causeFailover // a lease in between whose receive's answer was lost
	}
	f := finish[prev.Receipt]
	switch {
	case f == nil, f.Kind == KindExpire:
		return causeExpiry
	case f.Kind == KindRequeue && f.Outcome == Failed:
		return causeExpiry // refused: the lease had already ended
	case f.Kind == KindRequeue:
		return causeRequeue
	}
	return causeFailover // an ack that failed, is unknown, or completed after d began
}

// checkOrder counts, per partition, the first deliveries (count 1) of a
// sequence a invoked after a first delivery of a higher sequence had
// completed: the partition should have leased a first, as it was stored
// (and ready) before b.
func (c *queueCheck) checkOrder(ops []*Op) {
	firsts := map[uint32][]*Op{}
	for _, op := range ops {
		if (op.Kind == KindDeliver || op.Kind == KindDrainDeliver) && op.Outcome == OK && op.DeliveryCount == 1 && op.Seq > 0 {
			firsts[op.Partition] = append(firsts[op.Partition], op)
		}
	}
	for p, ds := range firsts {
		// Highest sequence first; minDone is the earliest completed first
		// delivery of a higher sequence than the one at hand.
		slices.SortFunc(ds, func(a, b *Op) int { return cmp.Compare(b.Seq, a.Seq) })
		var minDone *Op
		for i := 0; i < len(ds); {
			j := i
			for j < len(ds) && ds[j].Seq == ds[i].Seq {
				if minDone != nil && minDone.Complete.Before(ds[j].Invoke) {
					d := ds[j]
					c.count(int64(p), func(n *Counts) { n.OrderViolations++ })
					c.problem(ProblemOrder, p, d.Seq, d.Msg, "seq %d first delivered to %s (invoked %s) after seq %d was delivered to %s (completed %s)",
						d.Seq, d.Process, stamp(d.Invoke), minDone.Seq, minDone.Process, stamp(minDone.Complete))
				}
				j++
			}
			for k := i; k < j; k++ {
				if minDone == nil || ds[k].Complete.Before(minDone.Complete) {
					minDone = ds[k]
				}
			}
			i = j
		}
	}
}

// finish sorts the partitions and problems into the verdict.
func (c *queueCheck) finish() QueueVerdict {
	qv := c.qv
	qv.Partitions = []PartitionVerdict{}
	for p, n := range c.parts {
		qv.Partitions = append(qv.Partitions, PartitionVerdict{Partition: p, Counts: *n})
	}
	slices.SortFunc(qv.Partitions, func(a, b PartitionVerdict) int { return cmp.Compare(a.Partition, b.Partition) })
	qv.Problems = []Problem{}
	for _, kind := range []string{ProblemLost, ProblemUnexpected, ProblemResurrected, ProblemOrder} {
		ps := c.problems[kind]
		slices.SortStableFunc(ps, func(a, b Problem) int {
			return cmp.Or(cmp.Compare(a.Partition, b.Partition), cmp.Compare(a.Seq, b.Seq), cmp.Compare(a.Msg, b.Msg))
		})
		qv.Problems = append(qv.Problems, ps[:min(len(ps), c.opts.Examples)]...)
	}
	return qv
}

func sortedKeys(m map[[2]uint64][]*Op) [][2]uint64 {
	keys := make([][2]uint64, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b [2]uint64) int { return cmp.Or(cmp.Compare(a[0], b[0]), cmp.Compare(a[1], b[1])) })
	return keys
}

// stamp shows a time to the millisecond.
func stamp(t time.Time) string { return t.Format("15:04:05.000") }
