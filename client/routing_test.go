package client

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// Known FNV-1a 32 values: "a" 0xe40c292c, "foobar" 0xbf9cf968.
func TestPartitionFor(t *testing.T) {
	for _, tc := range []struct {
		key, dedup string
		parts      uint32
		want       uint32
	}{
		{"a", "", 1, 0},
		{"a", "", 1000, 0xe40c292c % 1000},
		{"foobar", "a", 7, 0xbf9cf968 % 7},
		{"", "foobar", 7, 0xbf9cf968 % 7},
		{"", "a", 3, 0xe40c292c % 3},
		{"anything", "", 0, 0},
	} {
		if got := partitionFor(tc.key, tc.dedup, tc.parts); got != tc.want {
			t.Errorf("partitionFor(%q, %q, %d) = %d, want %d", tc.key, tc.dedup, tc.parts, got, tc.want)
		}
	}
}

func TestNodeOf(t *testing.T) {
	for in, want := range map[string]string{"n1": "n1", "n1/3": "n1", "node-a.b:1/12": "node-a.b:1", "": ""} {
		if got := nodeOf(in); got != want {
			t.Errorf("nodeOf(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRouterPicksLiveNodes(t *testing.T) {
	r := newRouter([]string{"seed:1"})
	if got := r.any(""); got != "seed:1" {
		t.Fatalf("no members: %q, want the seed", got)
	}
	r.setMembers([]*qv1.Member{
		{Id: "a", ClientAddr: "a:1", GossipState: "alive", CatalogState: "alive"},
		{Id: "b", ClientAddr: "b:1", GossipState: "alive"},
		{Id: "c", ClientAddr: "c:1", GossipState: "dead"},
		{Id: "d", ClientAddr: "d:1", GossipState: "alive", CatalogState: "removed"},
	})
	seen := map[string]int{}
	for range 10 {
		seen[r.any("")]++
	}
	if len(seen) != 2 || seen["a:1"] != 5 || seen["b:1"] != 5 {
		t.Fatalf("round robin over live members: %v", seen)
	}
	if got := r.any("a:1"); got != "b:1" {
		t.Errorf("avoiding a: %q", got)
	}
	r.fail("b:1")
	if got := r.any("a:1"); got != "seed:1" {
		t.Errorf("a avoided, b suspect: %q, want the seed", got)
	}
	r.fail("a:1")
	r.fail("seed:1")
	if got := r.any("a:1"); got == "a:1" || got == "" {
		t.Errorf("everything suspect: %q, want another address than the avoided one", got)
	}
	r.ok("a:1")
	if got := r.any(""); got != "a:1" {
		t.Errorf("a cleared: %q", got)
	}
}

func TestRouterLearnsLeaders(t *testing.T) {
	r := newRouter([]string{"seed:1"})
	r.setMembers([]*qv1.Member{
		{Id: "n1", ClientAddr: "n1:1", GossipState: "alive"},
		{Id: "n2", ClientAddr: "n2:1", GossipState: "alive"},
	})
	if parts, learn := r.partitions("q"); parts != 0 || !learn {
		t.Fatalf("new queue: %d %v", parts, learn)
	}
	if _, learn := r.partitions("q"); learn {
		t.Fatal("asked to learn a queue twice")
	}
	r.setPartitions("q", []*qv1.PartitionInfo{{Queue: "q", Partition: 0, Leader: "n1"}, {Queue: "q", Partition: 1}})
	if parts, _ := r.partitions("q"); parts != 2 {
		t.Fatalf("parts %d", parts)
	}
	if a := r.leaderAddr("q", 0); a != "n1:1" {
		t.Errorf("leader of 0: %q", a)
	}
	if a := r.leaderAddr("q", 1); a != "" {
		t.Errorf("leader of 1: %q, want unknown", a)
	}
	// A hint may carry a Raft server id; it applies to the one partition
	// the request touched.
	if a := r.learnHint("q", []uint32{1}, &qv1.LeaderHint{LeaderId: "n2/7"}); a != "n2:1" {
		t.Errorf("hint address %q", a)
	}
	if a := r.leaderAddr("q", 1); a != "n2:1" {
		t.Errorf("leader of 1 after hint: %q", a)
	}
	r.learnHint("q", []uint32{0, 1}, &qv1.LeaderHint{LeaderId: "n2"})
	if a := r.leaderAddr("q", 0); a != "n1:1" {
		t.Errorf("a hint for a multi-partition request moved partition 0 to %q", a)
	}
	r.forget("q")
	if parts, _ := r.partitions("q"); parts != 0 || r.leaderAddr("q", 0) != "" {
		t.Error("forgotten queue still routed")
	}
}

func TestBackoff(t *testing.T) {
	p := retryPolicy{attempts: 10, base: 10 * time.Millisecond, max: 100 * time.Millisecond}.normalized()
	for n := 1; n <= 40; n++ {
		ceil := min(p.base<<min(n-1, 20), p.max)
		for range 20 {
			if d := p.backoff(n); d < ceil/2 || d > ceil {
				t.Fatalf("backoff(%d) = %v outside [%v, %v]", n, d, ceil/2, ceil)
			}
		}
	}
}

func TestRetrierHonoursDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	r := retrier{p: retryPolicy{attempts: 5, base: time.Second, max: time.Second}}
	start := time.Now()
	if r.wait(ctx) {
		t.Fatal("waited for an attempt past the deadline")
	}
	if time.Since(start) > 40*time.Millisecond {
		t.Fatal("slept although the backoff outlives the deadline")
	}
	r = retrier{p: retryPolicy{attempts: 2, base: time.Millisecond, max: time.Millisecond}}
	if !r.wait(context.Background()) || r.wait(context.Background()) {
		t.Fatal("two attempts allow exactly one retry")
	}
}

func TestRetryable(t *testing.T) {
	for _, tc := range []struct {
		code       codes.Code
		safe, want bool
	}{
		{codes.Unavailable, false, true},
		{codes.DeadlineExceeded, false, false},
		{codes.DeadlineExceeded, true, true},
		{codes.InvalidArgument, true, false},
		{codes.NotFound, true, false},
		{codes.FailedPrecondition, true, false},
		{codes.ResourceExhausted, true, false},
	} {
		if got := retryable(tc.code, tc.safe); got != tc.want {
			t.Errorf("retryable(%v, %v) = %v", tc.code, tc.safe, got)
		}
	}
}

func TestGoneMeansDone(t *testing.T) {
	stale, unknown := qv1.ReceiptStatus_RECEIPT_STATUS_STALE, qv1.ReceiptStatus_RECEIPT_STATUS_UNKNOWN
	for _, tc := range []struct {
		op   opKind
		o    qv1.ReceiptStatus
		want bool
	}{
		{opAck, unknown, true}, {opAck, stale, false},
		{opRequeue, unknown, true}, {opRequeue, stale, true},
		{opReject, stale, true},
		{opExtend, stale, false}, {opExtend, unknown, false},
	} {
		if got := goneMeansDone(tc.op, tc.o); got != tc.want {
			t.Errorf("goneMeansDone(%v, %v) = %v", tc.op, tc.o, got)
		}
	}
}

func TestWrapErr(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want error
	}{
		{status.Error(codes.NotFound, "queue \"x\" not found"), ErrNotFound},
		{status.Error(codes.AlreadyExists, "exists"), ErrAlreadyExists},
		{status.Error(codes.InvalidArgument, "bad"), ErrInvalid},
		{status.Error(codes.Unavailable, "no leader"), ErrUnavailable},
		{status.Error(codes.ResourceExhausted, "queue full: 10 messages"), ErrQueueFull},
		{status.Error(codes.FailedPrecondition, "placing"), ErrFailedPrecondition},
		{status.Error(codes.DeadlineExceeded, "late"), context.DeadlineExceeded},
		{status.Error(codes.Canceled, "gone"), context.Canceled},
	} {
		err := wrapErr("Op", tc.err)
		if !errors.Is(err, tc.want) {
			t.Errorf("%v does not wrap %v", err, tc.want)
		}
		if status.Code(err) != status.Code(tc.err) || !strings.Contains(err.Error(), status.Convert(tc.err).Message()) {
			t.Errorf("%v lost the status %v", err, tc.err)
		}
	}
	if err := wrapErr("Op", status.Error(codes.ResourceExhausted, "grpc: received message larger than max")); errors.Is(err, ErrQueueFull) {
		t.Errorf("a message size refusal is not a full queue: %v", err)
	}
	if got := wrapErr("Op", status.Error(codes.FailedPrecondition, "x")).Error(); got != "quorumq: Op: failed precondition: x" {
		t.Errorf("message %q", got)
	}
}
