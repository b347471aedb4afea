package client

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Sentinel errors. Errors the cluster answers with wrap the one their gRPC
// code maps to, so callers test them with errors.Is; the server's message is
// kept in the error's text.
var (
	// ErrNotFound: no such queue (NOT_FOUND).
	ErrNotFound = errors.New("quorumq: not found")
	// ErrAlreadyExists: a queue of that name exists with other settings
	// (ALREADY_EXISTS).
	ErrAlreadyExists = errors.New("quorumq: already exists")
	// ErrInvalid: the request was refused as malformed: bad name, message
	// too large, batch too big (INVALID_ARGUMENT), or refused by the client
	// before it was sent.
	ErrInvalid = errors.New("quorumq: invalid argument")
	// ErrUnavailable: no node could serve the request, even after retries
	// (UNAVAILABLE).
	ErrUnavailable = errors.New("quorumq: unavailable")
	// ErrQueueFull: the queue's partition is at its message or byte limit
	// (RESOURCE_EXHAUSTED).
	ErrQueueFull = errors.New("quorumq: queue full")
	// ErrFailedPrecondition: the cluster cannot do it in its current state,
	// e.g. too few live nodes to place the replicas (FAILED_PRECONDITION).
	ErrFailedPrecondition = errors.New("quorumq: failed precondition")
	// ErrStaleReceipt: the receipt no longer names a lease: it expired and
	// the message was made ready or delivered again, or the message is gone
	// (acked, deleted). The operation did not take effect.
	ErrStaleReceipt = errors.New("quorumq: stale receipt")
	// ErrAlreadyFinished: Ack, Requeue or Reject was already called on this
	// delivery (or the consumer finished it).
	ErrAlreadyFinished = errors.New("quorumq: delivery already finished")
	// ErrClosed: the client or producer is closed.
	ErrClosed = errors.New("quorumq: closed")
)

// Error is an error status the cluster (or gRPC on its behalf) answered a
// call with. It unwraps to the sentinel its code maps to (ErrNotFound, ...,
// or context.DeadlineExceeded and context.Canceled), and status.FromError
// still finds its gRPC status.
type Error struct {
	// Op is the call that failed, e.g. "Enqueue".
	Op     string
	Status *status.Status
	kind   error
}

func (e *Error) Error() string {
	return fmt.Sprintf("quorumq: %s: %s: %s", e.Op, codeText(e.Status.Code()), e.Status.Message())
}

// codeText is "failed precondition" for FailedPrecondition.
func codeText(c codes.Code) string {
	var b strings.Builder
	for i, r := range c.String() {
		if 'A' <= r && r <= 'Z' {
			if i > 0 {
				b.WriteByte(' ')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Unwrap returns the sentinel error of the status code, if any.
func (e *Error) Unwrap() error { return e.kind }

// GRPCStatus lets status.FromError and status.Code see through the error.
func (e *Error) GRPCStatus() *status.Status { return e.Status }

// Code is the gRPC status code.
func (e *Error) Code() codes.Code { return e.Status.Code() }

// kindOf maps a status to the sentinel error callers test for.
func kindOf(st *status.Status) error {
	switch st.Code() {
	case codes.NotFound:
		return ErrNotFound
	case codes.AlreadyExists:
		return ErrAlreadyExists
	case codes.InvalidArgument, codes.OutOfRange:
		return ErrInvalid
	case codes.Unavailable:
		return ErrUnavailable
	case codes.ResourceExhausted:
		// The server says "queue full: ..."; gRPC's own message-size
		// refusals share the code but are not a full queue.
		if strings.HasPrefix(st.Message(), "queue full") {
			return ErrQueueFull
		}
	case codes.FailedPrecondition:
		return ErrFailedPrecondition
	case codes.DeadlineExceeded:
		return context.DeadlineExceeded
	case codes.Canceled:
		return context.Canceled
	}
	return nil
}

// wrapErr turns an RPC error into an *Error for op. Errors without a
// status (the client's own refusals, a closed client) get op as context.
func wrapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("quorumq: %s: %w", op, err)
	}
	return &Error{Op: op, Status: st, kind: kindOf(st)}
}

// kindError is an error of the client's own making: its text, and the
// sentinel it wraps.
type kindError struct {
	kind error
	msg  string
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.kind }

// invalidf is a client-side refusal of bad input.
func invalidf(format string, args ...any) error {
	return &kindError{kind: ErrInvalid, msg: "invalid argument: " + fmt.Sprintf(format, args...)}
}

// errClosed is what calls on a closed client or producer fail with.
var errClosed = &kindError{kind: ErrClosed, msg: "closed"}

// opErrorf is an outcome of op that the client reports with a sentinel.
func opErrorf(op string, kind error, format string, args ...any) error {
	return &kindError{kind: kind, msg: "quorumq: " + op + ": " + fmt.Sprintf(format, args...)}
}
