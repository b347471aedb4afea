package fsm

import (
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

// ErrInvalid is wrapped by every validation error: the command or settings
// break a documented limit and must not be proposed.
var ErrInvalid = errors.New("invalid")

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

// DefaultSettings are the settings of a partition that has applied no
// Configure command.
func DefaultSettings() *fsmv1.Settings {
	return &fsmv1.Settings{
		VisibilityTimeout: int64(DefaultVisibility),
		MaxDeliveries:     DefaultMaxDelivery,
		DedupWindow:       int64(DefaultDedupWindow),
		Retention:         int64(DefaultRetention),
	}
}

// ValidateSettings reports whether s is a settings value a partition accepts.
func ValidateSettings(s *fsmv1.Settings) error {
	if s == nil {
		return invalidf("settings missing")
	}
	if v := time.Duration(s.GetVisibilityTimeout()); v < MinVisibility || v > MaxVisibility {
		return invalidf("visibility timeout %v outside [%v, %v]", v, MinVisibility, MaxVisibility)
	}
	if s.GetMaxDeliveries() > MaxMaxDeliveries {
		return invalidf("max deliveries %d above %d", s.GetMaxDeliveries(), MaxMaxDeliveries)
	}
	if w := time.Duration(s.GetDedupWindow()); w < 0 || w > MaxDedupWindow {
		return invalidf("dedup window %v outside [0, %v]", w, MaxDedupWindow)
	}
	if r := time.Duration(s.GetRetention()); r != 0 && (r < MinRetention || r > MaxRetention) {
		return invalidf("retention %v outside [%v, %v] (0 keeps messages until acked)", r, MinRetention, MaxRetention)
	}
	if _, ok := fsmv1.Overflow_name[int32(s.GetOverflow())]; !ok {
		return invalidf("unknown overflow policy %d", s.GetOverflow())
	}
	return nil
}

// ValidateCommand checks a command against every limit the state machine
// enforces, so that the cluster can refuse bad input before it reaches Raft.
// A command that passes is applied without an "invalid" result.
func ValidateCommand(c *fsmv1.Command) error {
	if c == nil {
		return invalidf("command missing")
	}
	if c.GetVersion() != CommandVersion {
		return fmt.Errorf("%w: command version %d, want %d", ErrUnsupportedVersion, c.GetVersion(), CommandVersion)
	}
	if s := c.GetStamp(); s < 0 || s > MaxStamp {
		return invalidf("stamp %d outside [0, %d]", s, int64(MaxStamp))
	}
	switch op := c.GetOp().(type) {
	case *fsmv1.Command_Enqueue:
		return validateEnqueue(newMsgsFromProto(op.Enqueue.GetMessages()))
	case *fsmv1.Command_Receive:
		r := op.Receive
		if r.GetMax() < 1 || r.GetMax() > MaxReceive {
			return invalidf("receive max %d outside [1, %d]", r.GetMax(), MaxReceive)
		}
		if err := checkString("consumer", r.GetConsumer(), MaxConsumerBytes); err != nil {
			return err
		}
		return checkVisibility(r.GetVisibilityTimeout())
	case *fsmv1.Command_Ack:
		return checkLeases(op.Ack.GetLeases())
	case *fsmv1.Command_Requeue:
		if d := time.Duration(op.Requeue.GetDelay()); d < 0 || d > MaxDelay {
			return invalidf("requeue delay %v outside [0, %v]", d, MaxDelay)
		}
		return checkLeases(op.Requeue.GetLeases())
	case *fsmv1.Command_ExtendLease:
		if err := checkVisibility(op.ExtendLease.GetVisibilityTimeout()); err != nil {
			return err
		}
		return checkLeases(op.ExtendLease.GetLeases())
	case *fsmv1.Command_Reject:
		if err := checkString("reason", op.Reject.GetReason(), MaxReasonBytes); err != nil {
			return err
		}
		return checkLeases(op.Reject.GetLeases())
	case *fsmv1.Command_Redrive:
		if len(op.Redrive.GetSeqs()) > MaxBatchMessages {
			return invalidf("redrive of %d sequences, at most %d", len(op.Redrive.GetSeqs()), MaxBatchMessages)
		}
		return nil
	case *fsmv1.Command_Purge:
		if !op.Purge.GetReady() && !op.Purge.GetDead() {
			return invalidf("purge names neither ready nor dead messages")
		}
		return nil
	case *fsmv1.Command_Configure:
		return ValidateSettings(op.Configure.GetSettings())
	case *fsmv1.Command_Tick:
		return nil
	case nil:
		return fmt.Errorf("%w: command has no known operation", ErrUnknownCommand)
	default:
		return fmt.Errorf("%w: %T", ErrUnknownCommand, op)
	}
}

// ErrUnsupportedVersion and ErrUnknownCommand mark commands from a newer
// format than this replica applies.
var (
	ErrUnsupportedVersion = errors.New("unsupported command version")
	ErrUnknownCommand     = errors.New("unknown command")
)

func validateEnqueue(msgs []newMsg) error {
	if len(msgs) == 0 {
		return invalidf("enqueue of no messages")
	}
	if len(msgs) > MaxBatchMessages {
		return invalidf("enqueue of %d messages, at most %d", len(msgs), MaxBatchMessages)
	}
	var total uint64
	for i := range msgs {
		m := &msgs[i]
		if len(m.payload) > MaxPayloadBytes {
			return invalidf("message %d: payload of %d bytes, at most %d", i, len(m.payload), MaxPayloadBytes)
		}
		if err := checkString("key", m.key, MaxKeyBytes); err != nil {
			return fmt.Errorf("message %d: %w", i, err)
		}
		if err := checkString("dedup id", m.dedupID, MaxDedupIDBytes); err != nil {
			return fmt.Errorf("message %d: %w", i, err)
		}
		if d := time.Duration(m.delay); d < 0 || d > MaxDelay {
			return invalidf("message %d: delay %v outside [0, %v]", i, d, MaxDelay)
		}
		if len(m.headers) > MaxHeaders {
			return invalidf("message %d: %d headers, at most %d", i, len(m.headers), MaxHeaders)
		}
		for _, h := range m.headers {
			if h.GetKey() == "" {
				return invalidf("message %d: header with an empty key", i)
			}
			if err := checkString("header key", h.GetKey(), MaxHeaderKeyBytes); err != nil {
				return fmt.Errorf("message %d: %w", i, err)
			}
			if len(h.GetValue()) > MaxHeaderValBytes {
				return invalidf("message %d: header %q value of %d bytes, at most %d", i, h.GetKey(), len(h.GetValue()), MaxHeaderValBytes)
			}
		}
		total += m.size()
	}
	if total > MaxBatchBytes {
		return invalidf("enqueue of %d bytes, at most %d", total, MaxBatchBytes)
	}
	return nil
}

func checkLeases(ls []*fsmv1.LeaseRef) error {
	if len(ls) == 0 {
		return invalidf("no receipts")
	}
	if len(ls) > MaxBatchMessages {
		return invalidf("%d receipts, at most %d", len(ls), MaxBatchMessages)
	}
	return nil
}

func checkVisibility(v int64) error {
	if d := time.Duration(v); d != 0 && (d < MinVisibility || d > MaxVisibility) {
		return invalidf("visibility timeout %v outside [%v, %v] (0 = queue default)", d, MinVisibility, MaxVisibility)
	}
	return nil
}

func checkString(what, s string, max int) error {
	if len(s) > max {
		return invalidf("%s of %d bytes, at most %d", what, len(s), max)
	}
	if !utf8.ValidString(s) {
		return invalidf("%s is not valid UTF-8", what)
	}
	return nil
}
