package verify

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/client"
)

// Kind is what an operation did.
type Kind string

// The kinds of operation a history holds.
const (
	// KindQueue describes a queue the workload used: its partitions and
	// whether it requeued or let leases expire there (Unordered).
	KindQueue Kind = "queue"
	// KindEnqueue is one message of an Enqueue call.
	KindEnqueue Kind = "enqueue"
	// KindReceive is a Receive call that failed or whose outcome is
	// unknown; it names no message. Receives that answered record one
	// KindDeliver per message instead (and none when empty).
	KindReceive Kind = "receive"
	// KindDeliver is one message received by a consumer during the run.
	KindDeliver Kind = "deliver"
	// KindAck is the ack of one delivery (by its receipt).
	KindAck Kind = "ack"
	// KindRequeue is the requeue of one delivery.
	KindRequeue Kind = "requeue"
	// KindExpire is a delivery whose lease the workload lets expire on
	// purpose: it is never acked.
	KindExpire Kind = "expire"
	// KindDrainDeliver is one message received by the final drain.
	KindDrainDeliver Kind = "drain-deliver"
	// KindDeadLetter is one message listed in a dead-letter area after
	// the drain.
	KindDeadLetter Kind = "dead-letter"
)

// Outcome is how an operation ended.
type Outcome string

// Outcomes.
const (
	// OK: it happened.
	OK Outcome = "ok"
	// Failed: it definitely did not happen (refused before anything
	// reached Raft, or refused by the state machine).
	Failed Outcome = "failed"
	// Unknown: it may or may not have happened (timeout, connection lost,
	// no leader).
	Unknown Outcome = "unknown"
)

// Op is one operation of a history. Which fields are set depends on Kind.
type Op struct {
	Kind  Kind   `json:"kind"`
	Queue string `json:"queue"`
	// Process is the workload's producer or consumer ("p3", "c1",
	// "drain").
	Process  string    `json:"process,omitempty"`
	Invoke   time.Time `json:"invoke"`
	Complete time.Time `json:"complete"`
	Outcome  Outcome   `json:"outcome"`
	// Err is the error text of a failed or unknown operation.
	Err string `json:"err,omitempty"`

	// Msg is the workload's unique id of the message, carried in its
	// payload; "" on a delivery whose payload the workload did not write.
	Msg     string `json:"msg,omitempty"`
	DedupID string `json:"dedup,omitempty"`
	// Partition and Seq say where the message is stored: from the enqueue
	// result (when OK) or the delivery. Seq 0 means unknown (sequences
	// start at 1), and Partition is then meaningless.
	Partition uint32 `json:"partition,omitempty"`
	Seq       uint64 `json:"seq,omitempty"`
	// Duplicate: the enqueue was a dedup hit (an earlier attempt stored
	// the message; Partition and Seq are that attempt's).
	Duplicate bool `json:"duplicate,omitempty"`
	// DeliveryCount is the server's count for a delivery or dead letter.
	DeliveryCount uint32 `json:"count,omitempty"`
	// Receipt names the lease of a delivery, and the lease an ack,
	// requeue or expire finishes.
	Receipt string `json:"receipt,omitempty"`
	// Presumed: an ack whose first attempt's answer was lost and whose
	// retry found the message gone (client.ReceiptResult.Presumed).
	Presumed bool `json:"presumed,omitempty"`
	// Reason is a dead letter's reason.
	Reason string `json:"reason,omitempty"`

	// Partitions (KindQueue) is the queue's partition count.
	Partitions uint32 `json:"partitions,omitempty"`
	// Unordered (KindQueue): the workload requeues or lets leases expire
	// in this queue.
	Unordered bool `json:"unordered,omitempty"`
}

// position is where a message is stored, for messages and reports.
func (o *Op) position() string {
	if o.Seq == 0 {
		return "?"
	}
	return fmt.Sprintf("%d-%d", o.Partition, o.Seq)
}

// History is an append-only record of operations, safe for concurrent use.
type History struct {
	mu     sync.Mutex
	ops    []Op
	counts map[Kind]map[Outcome]int
	acks   []ackWaiter // see AckedOn
}

// ackWaiter is closed by the next acknowledged enqueue on a partition.
type ackWaiter struct {
	queue     string
	partition uint32
	ch        chan struct{}
}

// NewHistory returns an empty history.
func NewHistory() *History {
	return &History{counts: map[Kind]map[Outcome]int{}}
}

// Add appends op.
func (h *History) Add(op Op) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, op)
	if h.counts[op.Kind] == nil {
		h.counts[op.Kind] = map[Outcome]int{}
	}
	h.counts[op.Kind][op.Outcome]++
	if op.Kind == KindEnqueue && op.Outcome == OK && len(h.acks) > 0 {
		keep := h.acks[:0]
		for _, w := range h.acks {
			if w.queue == op.Queue && w.partition == op.Partition {
				close(w.ch)
				continue
			}
			keep = append(keep, w)
		}
		h.acks = keep
	}
}

// AckedOn returns a channel closed as soon as an enqueue acknowledged on
// partition p of queue is added after this call: a fault can strike right
// after an acknowledgement.
func (h *History) AckedOn(queue string, p uint32) <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	ch := make(chan struct{})
	h.acks = append(h.acks, ackWaiter{queue, p, ch})
	return ch
}

// Ops returns a copy of the operations, in the order they were added.
func (h *History) Ops() []Op {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Op(nil), h.ops...)
}

// Count returns how many operations of kind ended with outcome.
func (h *History) Count(kind Kind, outcome Outcome) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.counts[kind][outcome]
}

// WriteTo writes the history as JSON lines, one Op per line.
func (h *History) WriteTo(w io.Writer) (int64, error) {
	return WriteOps(w, h.Ops())
}

// WriteFile writes the history to path as JSON lines.
func (h *History) WriteFile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("history: %w", err)
	}
	if _, err := h.WriteTo(f); err != nil {
		_ = f.Close()
		return fmt.Errorf("history %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("history %s: %w", path, err)
	}
	return nil
}

// WriteOps writes ops as JSON lines and returns the bytes written.
func WriteOps(w io.Writer, ops []Op) (int64, error) {
	cw := &countWriter{w: w}
	bw := bufio.NewWriter(cw)
	enc := json.NewEncoder(bw)
	for i := range ops {
		if err := enc.Encode(&ops[i]); err != nil {
			return cw.n, err
		}
	}
	err := bw.Flush()
	return cw.n, err
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// ReadOps reads a history written by WriteOps.
func ReadOps(r io.Reader) ([]Op, error) {
	var ops []Op
	dec := json.NewDecoder(bufio.NewReader(r))
	for {
		var op Op
		err := dec.Decode(&op)
		if errors.Is(err, io.EOF) {
			return ops, nil
		}
		if err != nil {
			return ops, fmt.Errorf("history: operation %d: %w", len(ops)+1, err)
		}
		if op.Kind == "" {
			return ops, fmt.Errorf("history: operation %d has no kind", len(ops)+1)
		}
		ops = append(ops, op)
	}
}

// ReadFile reads a history file written by History.WriteFile.
func ReadFile(path string) ([]Op, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	defer f.Close()
	ops, err := ReadOps(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return ops, nil
}

// Classify says whether an operation that returned err happened.
//
// Failed means definitely not applied: the client refused the call before
// sending it, or the cluster answered with a refusal that comes before
// anything reaches Raft (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION,
// RESOURCE_EXHAUSTED, ALREADY_EXISTS), or a receipt was stale (the state
// machine refused it). Everything else is Unknown: DEADLINE_EXCEEDED,
// CANCELED, UNAVAILABLE (the client cannot tell a request that never
// reached a leader from one whose answer was lost), UNKNOWN, INTERNAL, a
// closed client, and errors without a status.
func Classify(err error) Outcome {
	if err == nil {
		return OK
	}
	switch {
	case errors.Is(err, client.ErrStaleReceipt):
		return Failed
	case errors.Is(err, client.ErrClosed), errors.Is(err, client.ErrUnavailable),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		// A closed client may have sent an earlier attempt.
		return Unknown
	case errors.Is(err, client.ErrInvalid), errors.Is(err, client.ErrNotFound),
		errors.Is(err, client.ErrAlreadyExists), errors.Is(err, client.ErrQueueFull),
		errors.Is(err, client.ErrFailedPrecondition):
		return Failed
	}
	if st, ok := status.FromError(err); ok {
		switch st.Code() {
		case codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition, codes.ResourceExhausted, codes.AlreadyExists:
			return Failed
		}
	}
	return Unknown
}
