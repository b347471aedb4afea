package verify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/client"
)

// base is the time 0 of the hand-written histories; times are given in
// milliseconds from it.
var base = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func ms(n int) time.Time { return base.Add(time.Duration(n) * time.Millisecond) }

// h builds a history of queue "q" with two partitions.
type h struct{ ops []Op }

func newH(unordered bool) *h {
	return &h{ops: []Op{{Kind: KindQueue, Queue: "q", Invoke: ms(0), Complete: ms(0), Outcome: OK, Partitions: 2, Unordered: unordered}}}
}

func (b *h) add(op Op) *h {
	if op.Queue == "" {
		op.Queue = "q"
	}
	if op.Process == "" {
		op.Process = "t"
	}
	b.ops = append(b.ops, op)
	return b
}

// enq records an enqueue of msg over [t0, t1]; p and seq count when ok.
func (b *h) enq(msg string, out Outcome, p uint32, seq uint64, t0, t1 int) *h {
	op := Op{Kind: KindEnqueue, Msg: msg, DedupID: msg, Invoke: ms(t0), Complete: ms(t1), Outcome: out}
	if out == OK {
		op.Partition, op.Seq = p, seq
	}
	return b.add(op)
}

// del records a delivery of msg stored at p-seq, its count-th, under
// receipt, by a receive over [t0, t1].
func (b *h) del(msg string, p uint32, seq uint64, count uint32, receipt string, t0, t1 int) *h {
	return b.add(Op{Kind: KindDeliver, Msg: msg, Partition: p, Seq: seq, DeliveryCount: count, Receipt: receipt,
		Invoke: ms(t0), Complete: ms(t1), Outcome: OK})
}

// fin records an ack, requeue or expire of the lease receipt.
func (b *h) fin(kind Kind, msg string, p uint32, seq uint64, receipt string, out Outcome, t0, t1 int) *h {
	return b.add(Op{Kind: kind, Msg: msg, Partition: p, Seq: seq, Receipt: receipt, Invoke: ms(t0), Complete: ms(t1), Outcome: out})
}

func (b *h) dead(msg string, p uint32, seq uint64, t int) *h {
	return b.add(Op{Kind: KindDeadLetter, Msg: msg, Partition: p, Seq: seq, DeliveryCount: 10, Reason: "max deliveries reached",
		Invoke: ms(t), Complete: ms(t), Outcome: OK})
}

// life adds the plain life of a message: enqueued ok at p-seq, delivered
// once, acked ok, starting at time t.
func (b *h) life(msg string, p uint32, seq uint64, t int) *h {
	r := "r-" + msg
	return b.enq(msg, OK, p, seq, t, t+1).del(msg, p, seq, 1, r, t+2, t+3).fin(KindAck, msg, p, seq, r, OK, t+4, t+5)
}

func (b *h) check(opts CheckOptions) *Verdict { return Check(b.ops, opts) }

// want compares the total counts with the expected ones, naming each
// difference.
func want(t *testing.T, v *Verdict, exp Counts) {
	t.Helper()
	if v.Total != exp {
		t.Errorf("counts\n got %+v\nwant %+v", v.Total, exp)
	}
	if ok := exp.Violations() == 0; v.OK() != ok {
		t.Errorf("OK() = %v, want %v", v.OK(), ok)
	}
}

// problems returns the kinds of the problems listed.
func problems(v *Verdict) []string {
	var out []string
	for _, q := range v.Queues {
		for _, p := range q.Problems {
			out = append(out, p.Kind+" "+p.Msg)
		}
	}
	return out
}

func TestCheckClean(t *testing.T) {
	b := newH(false).life("a", 0, 1, 0).life("b", 0, 2, 10).life("c", 1, 1, 20)
	v := b.check(CheckOptions{})
	want(t, v, Counts{EnqueuedOK: 3, Delivered: 3, Acked: 3})
	if !v.Queues[0].OrderChecked || len(v.Queues[0].Partitions) != 2 || v.Queues[0].Partitions[0].EnqueuedOK != 2 {
		t.Errorf("queue verdict %+v", v.Queues[0])
	}
	if len(problems(v)) != 0 {
		t.Errorf("problems %v", problems(v))
	}
	var text bytes.Buffer
	if err := v.WriteText(&text); err != nil || !strings.Contains(text.String(), "verify: PASS") {
		t.Errorf("text %q, %v", text.String(), err)
	}
}

func TestCheckLost(t *testing.T) {
	b := newH(false).life("a", 0, 1, 0).
		enq("lost", OK, 1, 7, 10, 11).
		// A dead letter is not lost.
		enq("dead", OK, 1, 8, 12, 13).dead("dead", 1, 8, 100).
		// An enqueue of unknown or failed outcome may be missing.
		enq("maybe", Unknown, 0, 0, 14, 15).enq("no", Failed, 0, 0, 16, 17)
	v := b.check(CheckOptions{})
	want(t, v, Counts{EnqueuedOK: 3, EnqueuedUnknown: 1, EnqueueFailed: 1, Delivered: 1, Acked: 1, DeadLettered: 1, Lost: 1})
	if got := problems(v); !reflect.DeepEqual(got, []string{"lost lost"}) {
		t.Errorf("problems %v", got)
	}
	if p := v.Queues[0].Problems[0]; p.Partition != 1 || p.Seq != 7 {
		t.Errorf("lost problem %+v, want partition 1 seq 7", p)
	}
	if v.Queues[0].Partitions[1].Lost != 1 {
		t.Errorf("partition 1 counts %+v", v.Queues[0].Partitions[1])
	}
	var text bytes.Buffer
	if err := v.WriteText(&text); err != nil || !strings.Contains(text.String(), "FAIL: 1 lost") || !strings.Contains(text.String(), "msg lost") {
		t.Errorf("text %q, %v", text.String(), err)
	}
}

func TestCheckUnexpected(t *testing.T) {
	b := newH(false).
		del("ghost", 0, 1, 1, "r1", 0, 1). // never enqueued
		enq("refused", Failed, 0, 0, 2, 3).del("refused", 0, 2, 1, "r2", 4, 5).
		add(Op{Kind: KindDeliver, Partition: 1, Seq: 1, DeliveryCount: 1, Receipt: "r3", Invoke: ms(6), Complete: ms(7), Outcome: OK}). // not ours
		dead("ghost2", 1, 2, 8).
		// Unknown, then seen: recovered, not unexpected.
		enq("maybe", Unknown, 0, 0, 10, 11).del("maybe", 0, 3, 1, "r4", 12, 13)
	v := b.check(CheckOptions{})
	want(t, v, Counts{EnqueuedUnknown: 1, EnqueueFailed: 1, Recovered: 1, Delivered: 4, DeadLettered: 1, Unexpected: 4})
	got := problems(v)
	if len(got) != 4 || !strings.Contains(strings.Join(got, ","), "unexpected refused") {
		t.Errorf("problems %v", got)
	}
}

func TestCheckResurrected(t *testing.T) {
	b := newH(true).
		// Acked ok (completed at 5), delivered again by a receive invoked at 20.
		enq("a", OK, 0, 1, 0, 1).del("a", 0, 1, 1, "r1", 2, 3).fin(KindAck, "a", 0, 1, "r1", OK, 4, 5).
		del("a", 0, 1, 2, "r2", 20, 21).
		// Acked ok, then listed as a dead letter.
		enq("b", OK, 0, 2, 0, 1).del("b", 0, 2, 1, "r3", 2, 3).fin(KindAck, "b", 0, 2, "r3", OK, 4, 5).dead("b", 0, 2, 30).
		// The ack completed after the next receive began: they overlap, so
		// the redelivery is a duplicate (failover), not a resurrection.
		enq("c", OK, 1, 1, 0, 1).del("c", 1, 1, 1, "r5", 2, 3).fin(KindAck, "c", 1, 1, "r5", OK, 4, 25).
		del("c", 1, 1, 2, "r6", 20, 21)
	v := b.check(CheckOptions{})
	want(t, v, Counts{EnqueuedOK: 3, Delivered: 5, Acked: 3, DeadLettered: 1, Resurrected: 2,
		Duplicates: Duplicates{Failover: 1}})
	if got := problems(v); !reflect.DeepEqual(got, []string{"resurrected a", "resurrected b"}) {
		t.Errorf("problems %v", got)
	}
}

func TestCheckOrder(t *testing.T) {
	// Partition 0: seq 2's first delivery completed (5) before seq 1's
	// was invoked (10). Partition 1: deliveries overlap in time, so either
	// order is possible.
	b := newH(false).
		enq("a", OK, 0, 1, 0, 1).enq("b", OK, 0, 2, 0, 1).enq("c", OK, 1, 1, 0, 1).enq("d", OK, 1, 2, 0, 1).
		del("b", 0, 2, 1, "r1", 2, 5).del("a", 0, 1, 1, "r2", 10, 11).
		del("d", 1, 2, 1, "r3", 2, 12).del("c", 1, 1, 1, "r4", 10, 11)
	for _, r := range []string{"r1", "r2", "r3", "r4"} {
		b.fin(KindAck, "", 0, 0, r, OK, 30, 31)
	}
	v := b.check(CheckOptions{})
	want(t, v, Counts{EnqueuedOK: 4, Delivered: 4, Acked: 4, OrderViolations: 1})
	if got := problems(v); !reflect.DeepEqual(got, []string{"order a"}) {
		t.Errorf("problems %v", got)
	}
	if v.Queues[0].Partitions[0].OrderViolations != 1 || v.Queues[0].Partitions[1].OrderViolations != 0 {
		t.Errorf("partitions %+v", v.Queues[0].Partitions)
	}

	// Redeliveries (count 2) are not first deliveries.
	b2 := newH(false).enq("a", OK, 0, 1, 0, 1).enq("b", OK, 0, 2, 0, 1).
		del("a", 0, 1, 1, "r1", 2, 3).del("b", 0, 2, 1, "r2", 4, 5).del("a", 0, 1, 2, "r3", 10, 11)
	if v := b2.check(CheckOptions{}); v.Total.OrderViolations != 0 {
		t.Errorf("a redelivery counted as out of order: %+v", v.Total)
	}

	// A queue where the workload requeued: skipped, and said so, unless
	// asked to check anyway.
	b.ops[0].Unordered = true
	v = b.check(CheckOptions{})
	if v.Total.OrderViolations != 0 || v.Queues[0].OrderChecked || v.Queues[0].OrderNote == "" {
		t.Errorf("unordered queue checked: %+v", v.Queues[0])
	}
	if v := b.check(CheckOptions{Order: OrderAlways}); v.Total.OrderViolations != 1 {
		t.Errorf("OrderAlways: %d violations, want 1", v.Total.OrderViolations)
	}
	if v := b.check(CheckOptions{Order: OrderNever}); v.Queues[0].OrderChecked {
		t.Error("OrderNever checked order")
	}
	// A requeue in the history also makes a queue unordered.
	b.ops[0].Unordered = false
	b.fin(KindRequeue, "a", 0, 1, "r9", OK, 40, 41)
	if v := b.check(CheckOptions{}); v.Queues[0].OrderChecked {
		t.Error("a queue with a requeue was checked for order")
	}
}

func TestCheckDuplicateCauses(t *testing.T) {
	for _, c := range []struct {
		name string
		b    *h
		want Duplicates
	}{
		{"expired on purpose", newH(true).enq("a", OK, 0, 1, 0, 1).del("a", 0, 1, 1, "r1", 2, 3).fin(KindExpire, "a", 0, 1, "r1", OK, 3, 3).
			del("a", 0, 1, 2, "r2", 10, 11), Duplicates{LeaseExpiry: 1}},
		{"never finished", newH(true).enq("a", OK, 0, 1, 0, 1).del("a", 0, 1, 1, "r1", 2, 3).
			del("a", 0, 1, 2, "r2", 10, 11), Duplicates{LeaseExpiry: 1}},
		{"requeued", newH(true).enq("a", OK, 0, 1, 0, 1).del("a", 0, 1, 1, "r1", 2, 3).fin(KindRequeue, "a", 0, 1, "r1", OK, 4, 5).
			del("a", 0, 1, 2, "r2", 10, 11), Duplicates{Requeue: 1}},
		{"requeue refused, lease over", newH(true).enq("a", OK, 0, 1, 0, 1).del("a", 0, 1, 1, "r1", 2, 3).fin(KindRequeue, "a", 0, 1, "r1", Failed, 4, 5).
			del("a", 0, 1, 2, "r2", 10, 11), Duplicates{LeaseExpiry: 1}},
		{"ack unknown", newH(true).enq("a", OK, 0, 1, 0, 1).del("a", 0, 1, 1, "r1", 2, 3).fin(KindAck, "a", 0, 1, "r1", Unknown, 4, 5).
			del("a", 0, 1, 2, "r2", 10, 11), Duplicates{Failover: 1}},
		{"ack failed", newH(true).enq("a", OK, 0, 1, 0, 1).del("a", 0, 1, 1, "r1", 2, 3).fin(KindAck, "a", 0, 1, "r1", Failed, 4, 5).
			del("a", 0, 1, 2, "r2", 10, 11), Duplicates{Failover: 1}},
		{"lease unseen in between", newH(true).enq("a", OK, 0, 1, 0, 1).del("a", 0, 1, 1, "r1", 2, 3).fin(KindExpire, "a", 0, 1, "r1", OK, 3, 3).
			del("a", 0, 1, 3, "r3", 10, 11), Duplicates{Failover: 1}},
		{"stored twice", newH(true).enq("a", OK, 0, 2, 0, 1).del("a", 0, 1, 1, "r1", 2, 3).fin(KindAck, "a", 0, 1, "r1", OK, 4, 5).
			del("a", 0, 2, 1, "r2", 2, 3), Duplicates{DoubleStore: 1}},
		{"all at once", newH(true).enq("a", OK, 0, 1, 0, 1).
			del("a", 0, 1, 1, "r1", 2, 3).fin(KindRequeue, "a", 0, 1, "r1", OK, 4, 5).
			del("a", 0, 1, 2, "r2", 10, 11).fin(KindExpire, "a", 0, 1, "r2", OK, 11, 11).
			del("a", 0, 1, 3, "r3", 20, 21).fin(KindAck, "a", 0, 1, "r3", Unknown, 22, 23).
			del("a", 0, 1, 4, "r4", 30, 31).fin(KindAck, "a", 0, 1, "r4", OK, 32, 33),
			Duplicates{Requeue: 1, LeaseExpiry: 1, Failover: 1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			v := c.b.check(CheckOptions{})
			if v.Total.Duplicates != c.want {
				t.Errorf("duplicates %+v, want %+v", v.Total.Duplicates, c.want)
			}
			if !v.OK() {
				t.Errorf("duplicates failed the verdict: %v", problems(v))
			}
		})
	}
}

func TestCheckRecovered(t *testing.T) {
	b := newH(false).
		enq("a", Unknown, 0, 0, 0, 1).del("a", 0, 1, 1, "r1", 2, 3).
		enq("b", Unknown, 0, 0, 0, 1).dead("b", 1, 1, 10).
		enq("c", Unknown, 0, 0, 0, 1)
	v := b.check(CheckOptions{})
	want(t, v, Counts{EnqueuedUnknown: 3, Recovered: 2, Delivered: 1, DeadLettered: 1})
	if p := v.Queues[0].Partitions; p[0].Recovered != 1 || p[1].Recovered != 1 {
		t.Errorf("partitions %+v", p)
	}
}

// Queues are judged apart, and a message id of one queue says nothing of
// another.
func TestCheckQueuesApart(t *testing.T) {
	b := newH(false).life("a", 0, 1, 0)
	b.add(Op{Kind: KindDeliver, Queue: "other", Msg: "a", Partition: 0, Seq: 1, DeliveryCount: 1, Invoke: ms(50), Complete: ms(51), Outcome: OK})
	v := b.check(CheckOptions{})
	if len(v.Queues) != 2 || v.Queues[1].Queue != "q" || v.Queues[0].Unexpected != 1 || v.Queues[1].Violations() != 0 {
		t.Errorf("verdict %+v", v.Queues)
	}
}

func TestCheckExamplesCapped(t *testing.T) {
	b := newH(false)
	for i := range 30 {
		b.enq(fmt.Sprint("m", i), OK, 0, uint64(i+1), 0, 1)
	}
	v := b.check(CheckOptions{Examples: 3})
	if v.Total.Lost != 30 || len(v.Queues[0].Problems) != 3 {
		t.Errorf("lost %d with %d examples, want 30 and 3", v.Total.Lost, len(v.Queues[0].Problems))
	}
}

func TestVerdictJSON(t *testing.T) {
	v := newH(false).enq("a", OK, 0, 1, 0, 1).check(CheckOptions{})
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		OK     bool `json:"ok"`
		Total  Counts
		Queues []QueueVerdict
	}
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if got.OK || got.Total.Lost != 1 || len(got.Queues) != 1 || len(got.Queues[0].Problems) != 1 {
		t.Errorf("JSON %s", data)
	}
}

// A history survives the trip through a JSON-lines file, and judges the
// same after it.
func TestHistoryRoundTrip(t *testing.T) {
	src := newH(true).life("a", 0, 1, 0).enq("lost", OK, 1, 3, 5, 6).
		del("b", 1, 2, 3, "rb", 7, 8).fin(KindExpire, "b", 1, 2, "rb", OK, 8, 8).dead("b", 1, 2, 9)
	src.ops[2].Duplicate = true
	src.ops[3].Presumed = true
	src.ops[4].Err = "quorumq: Enqueue: deadline exceeded: \"quoted\"\nline"
	hist := NewHistory()
	for _, op := range src.ops {
		hist.Add(op)
	}
	if n := hist.Count(KindEnqueue, OK); n != 2 {
		t.Errorf("Count(enqueue, ok) = %d, want 2", n)
	}
	path := filepath.Join(t.TempDir(), "history.jsonl")
	if err := hist.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	got, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, src.ops) {
		t.Fatalf("read back\n%+v\nwant\n%+v", got, src.ops)
	}
	if a, b := Check(got, CheckOptions{}), Check(src.ops, CheckOptions{}); !reflect.DeepEqual(a, b) || a.Total.Lost != 1 {
		t.Errorf("verdict after the round trip %+v, before %+v", a.Total, b.Total)
	}

	if _, err := ReadOps(strings.NewReader("{\"kind\":\"ack\"}\nnot json\n")); err == nil || !strings.Contains(err.Error(), "operation 2") {
		t.Errorf("garbage: %v, want an error naming operation 2", err)
	}
	if _, err := ReadOps(strings.NewReader("{}\n")); err == nil {
		t.Error("an operation without a kind was accepted")
	}
}

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		err  error
		want Outcome
	}{
		{nil, OK},
		{status.Error(codes.InvalidArgument, "bad"), Failed},
		{status.Error(codes.NotFound, "no queue"), Failed},
		{status.Error(codes.FailedPrecondition, "x"), Failed},
		{status.Error(codes.ResourceExhausted, "queue full"), Failed},
		{status.Error(codes.AlreadyExists, "x"), Failed},
		{fmt.Errorf("ack: %w", client.ErrStaleReceipt), Failed},
		{fmt.Errorf("x: %w", client.ErrQueueFull), Failed},
		{status.Error(codes.Unavailable, "no leader"), Unknown},
		{fmt.Errorf("x: %w", client.ErrUnavailable), Unknown},
		{status.Error(codes.DeadlineExceeded, "x"), Unknown},
		{context.DeadlineExceeded, Unknown},
		{context.Canceled, Unknown},
		{status.Error(codes.Canceled, "x"), Unknown},
		{status.Error(codes.Unknown, "x"), Unknown},
		{status.Error(codes.Internal, "x"), Unknown},
		{client.ErrClosed, Unknown},
		{errors.New("server answered a different number of results"), Unknown},
	} {
		if got := Classify(c.err); got != c.want {
			t.Errorf("Classify(%v) = %s, want %s", c.err, got, c.want)
		}
	}
}
