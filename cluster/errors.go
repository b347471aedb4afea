package cluster

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/hashicorp/raft"
)

var (
	// errNoLeader: the group has no known leader right now; retryable.
	errNoLeader = errors.New("no leader")
	// ErrNotFound: no such queue.
	ErrNotFound = errors.New("not found")
	// ErrShuttingDown: the node is stopping.
	ErrShuttingDown = errors.New("node is shutting down")
)

// NotLeaderError says the node asked does not lead the group; Leader is its
// best guess of the node that does ("" if none).
type NotLeaderError struct {
	Group  string
	Leader string
}

func (e *NotLeaderError) Error() string {
	if e.Leader == "" {
		return fmt.Sprintf("%s: no leader", e.Group)
	}
	return fmt.Sprintf("%s: not the leader (leader is %s)", e.Group, e.Leader)
}

// UnavailableError ends a forwarding attempt that found no leader in time.
type UnavailableError struct {
	Group  string
	Leader string // last hint, "" if none
	Err    error
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("%s unavailable (leader hint %q): %v", e.Group, e.Leader, e.Err)
}

func (e *UnavailableError) Unwrap() error { return e.Err }

// raftErr turns a raft future error into one of ours.
func raftErr(err error, g *group) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return &NotLeaderError{Group: g.name.String(), Leader: nodeOfServer(g.leaderID())}
	case errors.Is(err, raft.ErrRaftShutdown):
		return ErrShuttingDown
	}
	return err
}

// timeoutOf is how long a raft call may block within ctx (def if ctx has no deadline).
func timeoutOf(ctx context.Context, def time.Duration) time.Duration {
	if d, ok := ctx.Deadline(); ok {
		return max(time.Until(d), time.Millisecond)
	}
	return def
}

// forwardBudget bounds how long a request waits for a leader when the
// caller gave no deadline.
const forwardBudget = 5 * time.Second

// retryLeader calls try until it succeeds or fails for good. A
// NotLeaderError with a hint is retried at once (the hint is used by try's
// next call); no leader or an unreachable node waits 10–60 ms with jitter.
// When the budget ends the error is an *UnavailableError.
func retryLeader[T any](ctx context.Context, try func(ctx context.Context) (T, string, error)) (T, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, forwardBudget)
		defer cancel()
	}
	var zero T
	var last error
	hint := ""
	for attempt := 0; ; attempt++ {
		res, h, err := try(ctx)
		if err == nil {
			return res, nil
		}
		if h != "" {
			hint = h
		}
		last = err
		var nl *NotLeaderError
		retryable := errors.As(err, &nl) || errors.Is(err, errNoLeader) || isUnavailable(err)
		if !retryable {
			return zero, err
		}
		if nl != nil && nl.Leader != "" {
			hint = nl.Leader
			if attempt == 0 {
				continue // the hint names the leader: go there at once
			}
		}
		wait := 10*time.Millisecond + rand.N(50*time.Millisecond)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return zero, &UnavailableError{Leader: hint, Err: errors.Join(last, ctx.Err())}
		case <-t.C:
		}
	}
}
