package client

import (
	"context"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// retryPolicy bounds the attempts of one call.
type retryPolicy struct {
	attempts  int
	base, max time.Duration
}

func (p retryPolicy) normalized() retryPolicy {
	p.attempts = max(p.attempts, 1)
	if p.base <= 0 {
		p.base = time.Millisecond
	}
	p.max = max(p.max, p.base)
	return p
}

// backoff is the wait before attempt n+1 (n >= 1): base doubling up to max,
// with "equal jitter" (half fixed, half random) so that clients that failed
// together do not retry together.
func (p retryPolicy) backoff(n int) time.Duration {
	d := p.max
	if n < 32 && p.base<<(n-1) < p.max && p.base<<(n-1) > 0 {
		d = p.base << (n - 1)
	}
	return d/2 + rand.N(d/2+1)
}

// retryable says whether a call that failed with code may be tried again.
// UNAVAILABLE means the request found no leader or no node; whether it was
// applied is unknown only if it reached a leader, so retrying it is safe for
// every call this client makes (an Enqueue always carries dedup ids).
// DEADLINE_EXCEEDED is retried only for calls that are safe to repeat
// (safe). INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION and
// RESOURCE_EXHAUSTED are answers, never retried.
func retryable(code codes.Code, safe bool) bool {
	switch code {
	case codes.Unavailable:
		return true
	case codes.DeadlineExceeded:
		return safe
	}
	return false
}

// ambiguous says whether a call that failed with code may have been
// applied anyway: the request may have reached a leader and committed
// before the answer was lost.
func ambiguous(code codes.Code) bool {
	switch code {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Unknown, codes.Internal, codes.Aborted:
		return true
	}
	return false
}

// retrier counts the attempts of one call and waits between them.
type retrier struct {
	p       retryPolicy
	attempt int
}

// wait sleeps the backoff before the next attempt and reports whether there
// is one: false once attempts are used up, the context is done, or its
// deadline would pass before the backoff ends (no point in waiting for an
// attempt that cannot be made).
func (r *retrier) wait(ctx context.Context) bool {
	r.attempt++
	if r.attempt >= r.p.attempts || ctx.Err() != nil {
		return false
	}
	d := r.p.backoff(r.attempt)
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// leaderHint returns the LeaderHint detail of an UNAVAILABLE status, or nil.
func leaderHint(err error) *qv1.LeaderHint {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable {
		return nil
	}
	for _, d := range st.Details() {
		if h, ok := d.(*qv1.LeaderHint); ok && (h.GetLeaderId() != "" || h.GetLeaderAddr() != "") {
			return h
		}
	}
	return nil
}
