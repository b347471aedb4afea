package fsm

import fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"

// Code is a command's outcome as a whole. Business outcomes are results,
// never errors: every replica reaches the same Code for the same command.
type Code uint8

const (
	// OK: the command was applied (per-item outcomes may still refuse items).
	OK Code = iota
	// Invalid: the command broke a limit or could not be decoded; nothing changed.
	Invalid
	// Unsupported: a command version or operation newer than this replica; nothing changed.
	Unsupported
	// QueueFull: an Enqueue did not fit under max_messages/max_bytes; nothing was stored.
	QueueFull
)

func (c Code) String() string {
	switch c {
	case OK:
		return "ok"
	case Invalid:
		return "invalid"
	case Unsupported:
		return "unsupported"
	case QueueFull:
		return "queue full"
	}
	return "unknown code"
}

// LeaseOutcome is the per-receipt result of Ack, Requeue, ExtendLease and Reject.
type LeaseOutcome uint8

const (
	// LeaseOK: the receipt matched the message's current lease.
	LeaseOK LeaseOutcome = iota
	// LeaseStale: the message is leased under another epoch (it expired and
	// was leased again) or has gone to dead-letter.
	LeaseStale
	// LeaseUnknown: no leased or dead message with this sequence (acked,
	// deleted, back to ready or delayed after its lease ended, or never
	// existed).
	LeaseUnknown
)

func (o LeaseOutcome) String() string {
	switch o {
	case LeaseOK:
		return "ok"
	case LeaseStale:
		return "stale receipt"
	case LeaseUnknown:
		return "unknown receipt"
	}
	return "unknown outcome"
}

// Enqueued is the outcome of one message of an Enqueue.
type Enqueued struct {
	Seq uint64
	// Duplicate: the dedup id was seen within the window; Seq is the first
	// message's and nothing was stored.
	Duplicate bool
}

// Delivery is one message leased by a Receive. Payload, Key and Headers are
// shared with the state machine and must not be modified.
type Delivery struct {
	Seq        uint64
	Epoch      uint32
	Deliveries uint32
	Deadline   int64
	EnqueuedAt int64
	Payload    []byte
	Key        string
	Headers    []*fsmv1.Header
}

// Result is what applying one command returns.
type Result struct {
	Code   Code
	Detail string // why, when Code is not OK
	// Now is the partition's time after the command (max of stamps so far).
	Now int64

	Enqueued  []Enqueued     // Enqueue
	Delivered []Delivery     // Receive
	Leases    []LeaseOutcome // Ack, Requeue, ExtendLease, Reject: one per receipt, in order
	// DeadLettered counts messages a Receive moved to dead-letter instead of
	// delivering them (max deliveries reached).
	DeadLettered uint64
	Moved        uint64 // Redrive
	PurgedReady  uint64 // Purge
	PurgedDead   uint64 // Purge
}
