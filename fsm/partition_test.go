package fsm

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

// tp drives one partition through commands in a test.
type tp struct {
	t testing.TB
	p *Partition
}

func newTP(t testing.TB, s *fsmv1.Settings) *tp {
	h := &tp{t: t, p: NewPartition()}
	if s != nil {
		h.ok(0, &fsmv1.Command_Configure{Configure: &fsmv1.Configure{Settings: s}})
	}
	return h
}

func settings(mod func(*fsmv1.Settings)) *fsmv1.Settings {
	s := DefaultSettings()
	mod(s)
	return s
}

// command wraps an operation (a *fsmv1.Command_X) in a current-version
// command stamped at stamp.
func command(stamp int64, op any) *fsmv1.Command {
	c := &fsmv1.Command{Version: CommandVersion, Stamp: stamp}
	switch o := op.(type) {
	case *fsmv1.Command_Enqueue:
		c.Op = o
	case *fsmv1.Command_Receive:
		c.Op = o
	case *fsmv1.Command_Ack:
		c.Op = o
	case *fsmv1.Command_Requeue:
		c.Op = o
	case *fsmv1.Command_ExtendLease:
		c.Op = o
	case *fsmv1.Command_Reject:
		c.Op = o
	case *fsmv1.Command_Redrive:
		c.Op = o
	case *fsmv1.Command_Purge:
		c.Op = o
	case *fsmv1.Command_Configure:
		c.Op = o
	case *fsmv1.Command_Tick:
		c.Op = o
	default:
		panic(fmt.Sprintf("unknown op %T", op))
	}
	return c
}

func (h *tp) do(stamp int64, op any) *Result {
	h.t.Helper()
	// Always go through the encoded form, as Raft does.
	data, err := proto.Marshal(command(stamp, op))
	if err != nil {
		h.t.Fatal(err)
	}
	return h.p.ApplyEncoded(data)
}

func (h *tp) ok(stamp int64, op any) *Result {
	h.t.Helper()
	r := h.do(stamp, op)
	if r.Code != OK {
		h.t.Fatalf("code %v: %s", r.Code, r.Detail)
	}
	return r
}

func enq(msgs ...*fsmv1.NewMessage) *fsmv1.Command_Enqueue {
	return &fsmv1.Command_Enqueue{Enqueue: &fsmv1.Enqueue{Messages: msgs}}
}

func msg(payload string) *fsmv1.NewMessage { return &fsmv1.NewMessage{Payload: []byte(payload)} }

func dmsg(payload, dedup string) *fsmv1.NewMessage {
	return &fsmv1.NewMessage{Payload: []byte(payload), DedupId: dedup}
}

func recv(max uint32, vis time.Duration) *fsmv1.Command_Receive {
	return &fsmv1.Command_Receive{Receive: &fsmv1.Receive{Consumer: "c", Max: max, VisibilityTimeout: int64(vis)}}
}

func refs(ds ...Delivery) []*fsmv1.LeaseRef {
	out := make([]*fsmv1.LeaseRef, len(ds))
	for i, d := range ds {
		out[i] = &fsmv1.LeaseRef{Seq: d.Seq, Epoch: d.Epoch}
	}
	return out
}

func ack(ls ...*fsmv1.LeaseRef) *fsmv1.Command_Ack {
	return &fsmv1.Command_Ack{Ack: &fsmv1.Ack{Leases: ls}}
}

func requeue(delay time.Duration, ls ...*fsmv1.LeaseRef) *fsmv1.Command_Requeue {
	return &fsmv1.Command_Requeue{Requeue: &fsmv1.Requeue{Leases: ls, Delay: int64(delay)}}
}

func tick() *fsmv1.Command_Tick { return &fsmv1.Command_Tick{Tick: &fsmv1.Tick{}} }

func seqs(ds []Delivery) []uint64 {
	out := make([]uint64, len(ds))
	for i, d := range ds {
		out[i] = d.Seq
	}
	return out
}

func eqSeqs(t testing.TB, what string, got, want []uint64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: got %v, want %v", what, got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s: got %v, want %v", what, got, want)
		}
	}
}

func snapBytes(t testing.TB, p *Partition) []byte {
	t.Helper()
	var b bytes.Buffer
	if _, err := p.Snapshot().WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

const sec = int64(time.Second)

func TestEnqueueAssignsSequences(t *testing.T) {
	h := newTP(t, nil)
	r := h.ok(1, enq(msg("a"), msg("bb"), &fsmv1.NewMessage{Payload: []byte("c"), Key: "k", Headers: []*fsmv1.Header{{Key: "h", Value: []byte("vv")}}}))
	for i, e := range r.Enqueued {
		if e.Seq != uint64(i+1) || e.Duplicate {
			t.Fatalf("enqueued[%d] = %+v", i, e)
		}
	}
	r = h.ok(2, enq(msg("d")))
	if r.Enqueued[0].Seq != 4 {
		t.Fatalf("next batch starts at %d, want 4", r.Enqueued[0].Seq)
	}
	s := h.p.Stats()
	if s.Ready != 4 || s.Bytes != 1+2+(1+1+1+2)+1 || s.OldestReadyAt != 1 || s.NextSeq != 5 || s.EnqueuedTotal != 4 {
		t.Fatalf("stats %+v", s)
	}
}

func TestReceiveLeasesInFIFOOrder(t *testing.T) {
	h := newTP(t, nil)
	h.ok(1, enq(msg("a"), msg("b"), msg("c")))
	r := h.ok(10, recv(2, 5*time.Second))
	eqSeqs(t, "first receive", seqs(r.Delivered), []uint64{1, 2})
	d := r.Delivered[0]
	if d.Epoch != 1 || d.Deliveries != 1 || d.Deadline != 10+5*sec || string(d.Payload) != "a" || d.EnqueuedAt != 1 {
		t.Fatalf("delivery %+v", d)
	}
	r = h.ok(11, recv(10, 0))
	eqSeqs(t, "second receive", seqs(r.Delivered), []uint64{3})
	if r.Delivered[0].Deadline != 11+int64(DefaultVisibility) {
		t.Fatalf("default visibility not used: deadline %d", r.Delivered[0].Deadline)
	}
	if r := h.ok(12, recv(10, 0)); len(r.Delivered) != 0 {
		t.Fatalf("leased messages delivered again: %v", seqs(r.Delivered))
	}
	if s := h.p.Stats(); s.Ready != 0 || s.Leased != 3 || s.OldestReadyAt != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestLeaseExpiryAtDeadline(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ackAt   int64
		outcome LeaseOutcome
	}{
		{"one nanosecond before the deadline", 100 + sec - 1, LeaseOK},
		{"exactly at the deadline", 100 + sec, LeaseUnknown},
		{"after the deadline", 100 + 2*sec, LeaseUnknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTP(t, nil)
			h.ok(1, enq(msg("a")))
			d := h.ok(100, recv(1, time.Second)).Delivered[0]
			r := h.ok(tc.ackAt, ack(refs(d)...))
			if r.Leases[0] != tc.outcome {
				t.Fatalf("ack at %d: %v, want %v", tc.ackAt, r.Leases[0], tc.outcome)
			}
			s := h.p.Stats()
			if tc.outcome == LeaseOK && (s.Messages() != 0 || s.AckedTotal != 1) {
				t.Fatalf("acked message still stored: %+v", s)
			}
			if tc.outcome != LeaseOK && (s.Ready != 1 || s.Leased != 0) {
				t.Fatalf("expired lease not released to ready: %+v", s)
			}
		})
	}
}

func TestExpiredLeaseKeepsFIFOPlace(t *testing.T) {
	h := newTP(t, nil)
	h.ok(1, enq(msg("a"), msg("b"), msg("c")))
	h.ok(2, recv(1, time.Second)) // leases 1
	h.ok(3, enq(msg("d")))
	r := h.ok(2+sec, recv(10, time.Second))
	eqSeqs(t, "after expiry", seqs(r.Delivered), []uint64{1, 2, 3, 4})
	if r.Delivered[0].Epoch != 2 || r.Delivered[0].Deliveries != 2 {
		t.Fatalf("redelivery %+v", r.Delivered[0])
	}
}

func TestStaleAndUnknownReceipts(t *testing.T) {
	h := newTP(t, nil)
	h.ok(1, enq(msg("a")))
	first := h.ok(2, recv(1, time.Second)).Delivered[0]
	second := h.ok(2+sec, recv(1, time.Second)).Delivered[0]
	if second.Seq != first.Seq || second.Epoch == first.Epoch {
		t.Fatalf("re-lease %+v after %+v", second, first)
	}
	r := h.ok(3+sec, ack(refs(first)[0], &fsmv1.LeaseRef{Seq: 99, Epoch: 1}, &fsmv1.LeaseRef{Seq: 1, Epoch: 77}))
	want := []LeaseOutcome{LeaseStale, LeaseUnknown, LeaseStale}
	for i := range want {
		if r.Leases[i] != want[i] {
			t.Fatalf("outcome %d: %v, want %v", i, r.Leases[i], want[i])
		}
	}
	if s := h.p.Stats(); s.Leased != 1 {
		t.Fatalf("stale ack removed a message leased to someone else: %+v", s)
	}
	// The same receipt twice in one batch: the second finds nothing.
	r = h.ok(4+sec, ack(refs(second, second)...))
	if r.Leases[0] != LeaseOK || r.Leases[1] != LeaseUnknown {
		t.Fatalf("double ack: %v", r.Leases)
	}
	if s := h.p.Stats(); s.Messages() != 0 || s.AckedTotal != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestDedupWindow(t *testing.T) {
	w := 10 * sec
	h := newTP(t, settings(func(s *fsmv1.Settings) { s.DedupWindow = w }))
	r := h.ok(100, enq(dmsg("a", "x"), dmsg("b", "y"), dmsg("a again", "x")))
	if r.Enqueued[2] != (Enqueued{Seq: 1, Duplicate: true}) {
		t.Fatalf("repeat within a batch: %+v", r.Enqueued[2])
	}
	// Acked or not, the id is remembered for the whole window.
	d := h.ok(101, recv(10, 0)).Delivered
	h.ok(102, ack(refs(d...)...))
	r = h.ok(100+w-1, enq(dmsg("late", "x")))
	if r.Enqueued[0] != (Enqueued{Seq: 1, Duplicate: true}) {
		t.Fatalf("one nanosecond inside the window: %+v", r.Enqueued[0])
	}
	if s := h.p.Stats(); s.Messages() != 0 || s.EnqueuedTotal != 2 {
		t.Fatalf("a duplicate was stored: %+v", s)
	}
	r = h.ok(100+w, enq(dmsg("new", "x")))
	if r.Enqueued[0] != (Enqueued{Seq: 3}) {
		t.Fatalf("at the window's end the id is new: %+v", r.Enqueued[0])
	}
	// A dedup window of 0 turns dedup off.
	h.ok(200+w, &fsmv1.Command_Configure{Configure: &fsmv1.Configure{Settings: settings(func(s *fsmv1.Settings) { s.DedupWindow = 0 })}})
	r = h.ok(201+w, enq(dmsg("p", "z"), dmsg("q", "z")))
	if r.Enqueued[0].Duplicate || r.Enqueued[1].Duplicate {
		t.Fatalf("dedup with window 0: %+v", r.Enqueued)
	}
}

// TestDedupForgotten: ids past their window leave the store, table and
// order both.
func TestDedupForgotten(t *testing.T) {
	h := newTP(t, settings(func(s *fsmv1.Settings) { s.DedupWindow = sec }))
	for i := range 20 {
		var ms []*fsmv1.NewMessage
		for j := range 1000 {
			ms = append(ms, dmsg("p", strings.Repeat("x", 1+i%3)+string(rune('a'+j%26))+string(rune(j))+string(rune(i))))
		}
		h.ok(int64(i+1), enq(ms...))
	}
	if countKeys(h.p.kv, kDedup) == 0 || countKeys(h.p.kv, kFIFO) == 0 {
		t.Fatal("no dedup entries")
	}
	h.ok(10*sec, tick())
	if n, f := countKeys(h.p.kv, kDedup), countKeys(h.p.kv, kFIFO); n != 0 || f != 0 || h.p.dedupLive != 0 {
		t.Fatalf("dedup ids not forgotten: %d entries, %d records, %d counted", n, f, h.p.dedupLive)
	}
}

// countKeys counts the keys under one prefix of the layout.
func countKeys(kv KV, prefix byte) int {
	n := 0
	kv.Scan([]byte{prefix}, prefixEnd(prefix), func(_, _ []byte) bool { n++; return true })
	return n
}

func TestMaxDepthRejectsWholeBatch(t *testing.T) {
	for _, tc := range []struct {
		name  string
		mod   func(*fsmv1.Settings)
		batch []*fsmv1.NewMessage
		code  Code
	}{
		{"fits exactly", func(s *fsmv1.Settings) { s.MaxMessages = 3 }, []*fsmv1.NewMessage{msg("a"), msg("b")}, OK},
		{"one too many", func(s *fsmv1.Settings) { s.MaxMessages = 3 }, []*fsmv1.NewMessage{msg("a"), msg("b"), msg("c")}, QueueFull},
		{"duplicates take no space", func(s *fsmv1.Settings) { s.MaxMessages = 3 }, []*fsmv1.NewMessage{dmsg("a", "1"), dmsg("a", "1"), dmsg("b", "seen")}, OK},
		{"bytes fit exactly", func(s *fsmv1.Settings) { s.MaxBytes = 10 }, []*fsmv1.NewMessage{msg("abcd"), msg("ef")}, OK},
		{"bytes one over", func(s *fsmv1.Settings) { s.MaxBytes = 10 }, []*fsmv1.NewMessage{msg("abcd"), msg("efg")}, QueueFull},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newTP(t, settings(tc.mod))
			h.ok(1, enq(dmsg("four", "seen"))) // 1 message, 4 bytes
			h.ok(2, tick())                    // time passes even for a refused batch
			before := snapBytes(t, h.p)
			r := h.do(2, enq(tc.batch...))
			if r.Code != tc.code {
				t.Fatalf("code %v (%s), want %v", r.Code, r.Detail, tc.code)
			}
			if tc.code != OK && !bytes.Equal(before, snapBytes(t, h.p)) {
				t.Fatal("a refused batch changed the partition")
			}
		})
	}
}

func TestMaxDeliveriesDeadLetters(t *testing.T) {
	h := newTP(t, settings(func(s *fsmv1.Settings) { s.MaxDeliveries = 2 }))
	h.ok(1, enq(msg("poison"), msg("fine")))
	h.ok(2, recv(1, time.Second))     // delivery 1 of seq 1
	h.ok(2+sec, recv(1, time.Second)) // expired, delivery 2 of seq 1
	r := h.ok(2+2*sec, recv(10, time.Second))
	eqSeqs(t, "after the second expiry", seqs(r.Delivered), []uint64{2})
	s := h.p.Stats()
	if s.Dead != 1 || s.DeadLetteredTotal != 1 || s.Leased != 1 {
		t.Fatalf("stats %+v", s)
	}
	dl := h.p.DeadLetters(0, 10)
	if len(dl) != 1 || dl[0].Seq != 1 || dl[0].Reason != ReasonMaxDeliveries || dl[0].Deliveries != 2 || string(dl[0].Payload) != "poison" {
		t.Fatalf("dead letters %+v", dl)
	}
	// Lowering max deliveries sends a ready message straight to dead-letter
	// at its next receive.
	h.ok(3*sec, requeue(0, refs(r.Delivered...)...))
	h.ok(3*sec, &fsmv1.Command_Configure{Configure: &fsmv1.Configure{Settings: settings(func(s *fsmv1.Settings) { s.MaxDeliveries = 1 })}})
	r = h.ok(3*sec, recv(10, time.Second))
	if len(r.Delivered) != 0 || r.DeadLettered != 1 || h.p.Stats().Dead != 2 {
		t.Fatalf("receive after lowering max: delivered %v, dead-lettered %d, %+v", seqs(r.Delivered), r.DeadLettered, h.p.Stats())
	}
}

func TestRequeueExtendReject(t *testing.T) {
	h := newTP(t, nil)
	h.ok(1, enq(msg("a"), msg("b"), msg("c")))
	d := h.ok(2, recv(3, time.Second)).Delivered

	r := h.ok(3, requeue(5*time.Second, refs(d[0])...))
	if r.Leases[0] != LeaseOK || h.p.Stats().Delayed != 1 {
		t.Fatalf("requeue with delay: %v %+v", r.Leases, h.p.Stats())
	}
	h.ok(4, requeue(0, refs(d[1])...))
	if s := h.p.Stats(); s.Ready != 1 {
		t.Fatalf("requeue without delay: %+v", s)
	}
	x := h.ok(5, &fsmv1.Command_ExtendLease{ExtendLease: &fsmv1.ExtendLease{Leases: refs(d[2]), VisibilityTimeout: int64(10 * time.Second)}})
	if x.Leases[0] != LeaseOK {
		t.Fatalf("extend: %v", x.Leases)
	}
	// The original deadline passes; the extended lease holds.
	if r := h.ok(2+sec, recv(10, time.Hour)); len(r.Delivered) != 1 || r.Delivered[0].Seq != 2 {
		t.Fatalf("after the original deadline: %v", seqs(r.Delivered))
	}
	// The delayed message becomes ready when the stamp reaches its due time.
	if r := h.ok(3+5*sec-1, recv(10, time.Second)); len(r.Delivered) != 0 {
		t.Fatalf("delayed message delivered early: %v", seqs(r.Delivered))
	}
	if r := h.ok(3+5*sec, recv(10, time.Second)); len(r.Delivered) != 1 || r.Delivered[0].Seq != 1 {
		t.Fatalf("delayed message at its due time: %v", seqs(r.Delivered))
	}
	rj := h.ok(6*sec, &fsmv1.Command_Reject{Reject: &fsmv1.Reject{Leases: refs(d[2])}})
	if rj.Leases[0] != LeaseOK {
		t.Fatalf("reject: %v", rj.Leases)
	}
	dl := h.p.DeadLetters(0, 10)
	if len(dl) != 1 || dl[0].Seq != 3 || dl[0].Reason != ReasonRejected {
		t.Fatalf("dead letters after reject: %+v", dl)
	}
}

func TestRedrive(t *testing.T) {
	h := newTP(t, nil)
	if r := h.ok(1, &fsmv1.Command_Redrive{Redrive: &fsmv1.Redrive{}}); r.Moved != 0 {
		t.Fatalf("redrive of an empty list moved %d", r.Moved)
	}
	h.ok(1, enq(msg("a"), msg("b"), msg("c"), msg("d")))
	d := h.ok(2, recv(4, time.Second)).Delivered
	// Dead-letter in the order 3, 1, 4, 2.
	for _, i := range []int{2, 0, 3, 1} {
		h.ok(3, &fsmv1.Command_Reject{Reject: &fsmv1.Reject{Leases: refs(d[i]), Reason: "bad"}})
	}
	dl := h.p.DeadLetters(0, 10)
	eqSeqs(t, "dead-letter order", []uint64{dl[0].Seq, dl[1].Seq, dl[2].Seq, dl[3].Seq}, []uint64{3, 1, 4, 2})
	if page := h.p.DeadLetters(dl[1].Order, 1); len(page) != 1 || page[0].Seq != 4 {
		t.Fatalf("second page: %+v", page)
	}
	r := h.ok(4, &fsmv1.Command_Redrive{Redrive: &fsmv1.Redrive{Seqs: []uint64{4, 4, 99, 2}}})
	if r.Moved != 2 {
		t.Fatalf("redrive by sequence moved %d, want 2", r.Moved)
	}
	r = h.ok(5, &fsmv1.Command_Redrive{Redrive: &fsmv1.Redrive{Max: 1}})
	if r.Moved != 1 || h.p.Stats().Dead != 1 {
		t.Fatalf("redrive max 1 moved %d, stats %+v", r.Moved, h.p.Stats())
	}
	got := h.ok(6, recv(10, time.Second)).Delivered
	eqSeqs(t, "redriven in sequence order", seqs(got), []uint64{2, 3, 4})
	for _, g := range got {
		if g.Deliveries != 1 {
			t.Fatalf("delivery count not reset: %+v", g)
		}
	}
}

func TestPurge(t *testing.T) {
	h := newTP(t, nil)
	h.ok(1, enq(msg("a"), msg("b"), msg("c"), msg("d")))
	h.ok(1, enq(&fsmv1.NewMessage{Payload: []byte("later"), Delay: int64(time.Hour)}))
	d := h.ok(2, recv(2, time.Minute)).Delivered
	h.ok(3, &fsmv1.Command_Reject{Reject: &fsmv1.Reject{Leases: refs(d[0])}})
	r := h.ok(4, &fsmv1.Command_Purge{Purge: &fsmv1.Purge{Ready: true}})
	if r.PurgedReady != 3 {
		t.Fatalf("purged %d ready+delayed, want 3", r.PurgedReady)
	}
	s := h.p.Stats()
	if s.Ready != 0 || s.Delayed != 0 || s.Leased != 1 || s.Dead != 1 || s.Bytes != 2 {
		t.Fatalf("after purging ready: %+v", s)
	}
	r = h.ok(5, &fsmv1.Command_Purge{Purge: &fsmv1.Purge{Dead: true}})
	if r.PurgedDead != 1 || h.p.Stats().Dead != 0 {
		t.Fatalf("purge dead: %d, %+v", r.PurgedDead, h.p.Stats())
	}
	if a := h.ok(6, ack(refs(d[1])...)); a.Leases[0] != LeaseOK {
		t.Fatal("purge took a leased message from its consumer")
	}
}

func TestRetention(t *testing.T) {
	ret := 100 * sec
	h := newTP(t, settings(func(s *fsmv1.Settings) { s.Retention = ret }))
	h.ok(10, enq(msg("old"), msg("rejected")))
	h.ok(20, enq(msg("young")))
	d := h.ok(30, recv(1, time.Second)).Delivered // leases seq 1
	h.ok(40, requeue(0, refs(d...)...))
	d = h.ok(50, recv(2, time.Second)).Delivered // seq 1, 2
	h.ok(60, &fsmv1.Command_Reject{Reject: &fsmv1.Reject{Leases: refs(d[1])}})
	h.ok(70, requeue(0, refs(d[0])...))
	h.ok(10+ret-1, tick())
	if s := h.p.Stats(); s.Ready != 2 || s.Dead != 1 {
		t.Fatalf("before retention: %+v", s)
	}
	h.ok(10+ret, tick())
	s := h.p.Stats()
	if s.Ready != 1 || s.Dead != 1 || s.ExpiredTotal != 1 || s.OldestReadyAt != 20 {
		t.Fatalf("at retention of the first message: %+v", s)
	}
	// Dead messages are kept for the retention period from when they died.
	h.ok(60+ret-1, tick())
	if s := h.p.Stats(); s.Dead != 1 || s.Ready != 0 {
		t.Fatalf("dead letter expired early: %+v", s)
	}
	h.ok(60+ret, tick())
	if s := h.p.Stats(); s.Messages() != 0 || s.Bytes != 0 || s.ExpiredTotal != 3 {
		t.Fatalf("after all retention: %+v", s)
	}
}

func TestTimeNeverGoesBack(t *testing.T) {
	h := newTP(t, nil)
	h.ok(1, enq(msg("a")))
	d := h.ok(1000, recv(1, time.Second)).Delivered[0]
	r := h.ok(5, tick())
	if r.Now != 1000 {
		t.Fatalf("now went back to %d", r.Now)
	}
	if a := h.ok(7, ack(refs(d)...)); a.Leases[0] != LeaseOK {
		t.Fatal("ack with an older stamp")
	}
}

func TestRefusedCommandsChangeNothing(t *testing.T) {
	h := newTP(t, nil)
	h.ok(1, enq(msg("a")))
	before := snapBytes(t, h.p)
	check := func(name string, r *Result, code Code) {
		t.Helper()
		if r.Code != code {
			t.Fatalf("%s: code %v (%s), want %v", name, r.Code, r.Detail, code)
		}
		if !bytes.Equal(before, snapBytes(t, h.p)) {
			t.Fatalf("%s changed the partition", name)
		}
	}
	newer := &fsmv1.Command{Version: CommandVersion + 1, Stamp: 99, Op: enq(msg("x"))}
	check("newer version", h.p.Apply(newer), Unsupported)
	check("no operation", h.p.Apply(&fsmv1.Command{Version: CommandVersion, Stamp: 99}), Unsupported)
	check("undecodable", h.p.ApplyEncoded([]byte{0xff, 0xff, 0xff}), Invalid)
	check("too large", h.do(99, enq(&fsmv1.NewMessage{Payload: make([]byte, MaxPayloadBytes+1)})), Invalid)
	check("empty batch", h.do(99, enq()), Invalid)
	check("receive 0", h.do(99, recv(0, 0)), Invalid)
	check("negative delay", h.do(99, enq(&fsmv1.NewMessage{Delay: -1})), Invalid)
	check("bad settings", h.do(99, &fsmv1.Command_Configure{Configure: &fsmv1.Configure{Settings: &fsmv1.Settings{}}}), Invalid)
	check("ack of nothing", h.do(99, ack()), Invalid)
	// A field from a newer format inside a known command decodes as unknown
	// and is carried, not refused: proto3 skips unknown fields.
	data, _ := proto.Marshal(&fsmv1.Command{Version: CommandVersion, Stamp: 2, Op: tick()})
	data = append(data, 0xa8, 0x1f, 0x01) // field 501, varint 1
	if r := h.p.ApplyEncoded(data); r.Code != OK {
		t.Fatalf("unknown field: %v %s", r.Code, r.Detail)
	}
}

func TestValidateCommandMatchesApply(t *testing.T) {
	bad := []*fsmv1.Command{
		nil,
		{Version: CommandVersion, Op: enq(&fsmv1.NewMessage{Key: strings.Repeat("k", MaxKeyBytes+1)})},
		{Version: CommandVersion, Op: enq(&fsmv1.NewMessage{Headers: []*fsmv1.Header{{Key: ""}}})},
		{Version: CommandVersion, Op: &fsmv1.Command_Purge{Purge: &fsmv1.Purge{}}},
		{Version: CommandVersion, Op: &fsmv1.Command_Receive{Receive: &fsmv1.Receive{Max: 1, VisibilityTimeout: int64(13 * time.Hour)}}},
	}
	for i, c := range bad {
		if err := ValidateCommand(c); err == nil {
			t.Errorf("command %d: validated", i)
		}
		if r := NewPartition().Apply(c); r.Code == OK {
			t.Errorf("command %d: applied", i)
		}
	}
}

func TestNextDue(t *testing.T) {
	h := newTP(t, settings(func(s *fsmv1.Settings) { s.DedupWindow = 0; s.Retention = 0 }))
	if d := h.p.NextDue(); d != 0 {
		t.Fatalf("empty partition due at %d", d)
	}
	h.ok(10, enq(msg("a"), &fsmv1.NewMessage{Payload: []byte("b"), Delay: 50 * sec}))
	if d := h.p.NextDue(); d != 10+50*sec {
		t.Fatalf("due %d, want the delay's end", d)
	}
	h.ok(20, recv(1, 30*time.Second))
	if d := h.p.NextDue(); d != 20+30*sec {
		t.Fatalf("due %d, want the lease's end", d)
	}
	h.ok(20+30*sec, tick())
	if d := h.p.NextDue(); d != 10+50*sec {
		t.Fatalf("after the lease ended: due %d, want the delay's end", d)
	}
}

// TestStampBounds: a stamp that could overflow a deadline is refused on
// both decoding paths.
func TestStampBounds(t *testing.T) {
	for _, stamp := range []int64{-1, MaxStamp + 1} {
		c := &fsmv1.Command{Version: CommandVersion, Stamp: stamp, Op: enq(msg("a"))}
		if r := NewPartition().ApplyEncoded(mustMarshal(t, c)); r.Code != Invalid {
			t.Errorf("stamp %d through the fast path: %v", stamp, r.Code)
		}
		if r := NewPartition().Apply(c); r.Code != Invalid {
			t.Errorf("stamp %d: %v", stamp, r.Code)
		}
	}
}

func TestReceiveMaxBytes(t *testing.T) {
	h := newTP(t, nil)
	h.ok(1, enq(msg("aaaa"), msg("bbbb"), msg("cccc")))
	r := h.ok(2, &fsmv1.Command_Receive{Receive: &fsmv1.Receive{Max: 10, MaxBytes: 9}})
	eqSeqs(t, "within 9 bytes", seqs(r.Delivered), []uint64{1, 2})
	r = h.ok(3, &fsmv1.Command_Receive{Receive: &fsmv1.Receive{Max: 10, MaxBytes: 1}})
	eqSeqs(t, "the first message always", seqs(r.Delivered), []uint64{3})
}
