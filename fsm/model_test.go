package fsm

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"
	"testing"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"pgregory.net/rapid"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

// TestPartitionModel drives a Partition with random command sequences and
// compares it, after every command, with partitionModel: a deliberately
// naive reference (a slice of every message ever stored, scanned in full
// by every operation) written from the contracts in the code's comments,
// not from its data structures. On top of that comparison it checks
// properties that need no model at all: an acked message is never delivered
// again, epochs grow, and first deliveries of plain messages are FIFO.
func TestPartitionModel(t *testing.T) {
	runPartitionModel(t, NewPartition)
}

// runPartitionModel runs the model test on partitions newPart makes (in
// memory, or in a disk store: model_disk_test.go).
func runPartitionModel(t *testing.T, newPart func() *Partition) {
	rapid.Check(t, func(t *rapid.T) {
		h := newModelHarness()
		h.newPart = newPart
		h.p = newPart()
		// One run in ten works in bulk (batches and receives of up to a
		// thousand messages), so that the partition's ring, heaps and maps
		// grow past their initial sizes and shrink back.
		minCmds, maxCmds := 1, 200
		if rapid.IntRange(0, 9).Draw(t, "bulk") == 9 {
			h.scale, minCmds, maxCmds = 100, 40, 80
		}
		n := rapid.IntRange(minCmds, maxCmds).Draw(t, "commands")
		for i := range n {
			h.step(t, i)
			// The Raft adapter commits once per batch of commands; here a
			// batch is one to three commands.
			if rapid.IntRange(0, 2).Draw(t, "commit") == 0 {
				h.commit(t)
			}
			h.check(t)
		}
	})
}

// commit commits the partition's writes as the Raft adapter does after a
// batch, then, one time in ten, reopens the partition from its store (a
// restart).
func (h *modelHarness) commit(t *rapid.T) {
	h.applied++
	if err := h.p.commit(h.applied); err != nil {
		t.Fatalf("commit: %v", err)
	}
	if rapid.IntRange(0, 9).Draw(t, "reopen") == 0 {
		before := h.p.Stats()
		p, err := OpenPartition(h.p.kv)
		if err != nil {
			t.Fatalf("reopen: %v", err)
		}
		if p.Stats() != before || p.Checksum() != h.p.Checksum() || p.applied != h.applied {
			t.Fatalf("reopened partition differs: %+v / %+v", p.Stats(), before)
		}
		h.p = p
	}
}

type mdlReceipt struct {
	seq   uint64
	epoch uint32
}

type modelHarness struct {
	scale    int // 1, or larger in bulk runs: scales sizes and limits
	p        *Partition
	newPart  func() *Partition
	applied  uint64 // index of the last commit
	m        *partitionModel
	receipts []mdlReceipt // every receipt ever handed out

	// Model-free observations.
	acked     map[uint64]bool
	lastEpoch map[uint64]uint32 // seq → epoch of its latest delivery
	// plain: enqueued without delay. Their first deliveries must come in
	// sequence order: until then such a message is ready (a requeued,
	// redriven or dead message has been delivered before), so a later one
	// can overtake it only once it is gone (purged, deleted).
	plain     map[uint64]bool
	lastPlain uint64 // highest plain message first-delivered so far
}

func newModelHarness() *modelHarness {
	return &modelHarness{
		scale: 1, p: NewPartition(), m: newPartitionModel(),
		acked: map[uint64]bool{}, lastEpoch: map[uint64]uint32{}, plain: map[uint64]bool{},
	}
}

type mdlOp struct {
	name   string
	weight int
	run    func(h *modelHarness, t *rapid.T, i int)
}

// Ops in shrinking order: rapid shrinks the choice towards the first.
var modelOps = []mdlOp{
	{"tick", 2, (*modelHarness).opTick},
	{"enqueue", 6, (*modelHarness).opEnqueue},
	{"receive", 5, (*modelHarness).opReceive},
	{"ack", 3, (*modelHarness).opAck},
	{"requeue", 2, (*modelHarness).opRequeue},
	{"extend", 1, (*modelHarness).opExtend},
	{"reject", 1, (*modelHarness).opReject},
	{"redrive", 1, (*modelHarness).opRedrive},
	{"configure", 1, (*modelHarness).opConfigure},
	{"purge", 1, (*modelHarness).opPurge},
	{"snapshot", 1, (*modelHarness).opSnapshot},
	{"invalid", 1, (*modelHarness).opInvalid},
}

func (h *modelHarness) step(t *rapid.T, i int) {
	total := 0
	for _, op := range modelOps {
		total += op.weight
	}
	k := rapid.IntRange(0, total-1).Draw(t, "op")
	for _, op := range modelOps {
		if k < op.weight {
			op.run(h, t, i)
			return
		}
		k -= op.weight
	}
}

// drawStamp picks the next command's stamp: usually a little later than
// now, sometimes earlier (the partition must keep its time), sometimes
// exactly at (or 1 ns around) an instant where something falls due.
func (h *modelHarness) drawStamp(t *rapid.T) int64 {
	ref := max(h.m.now, mdlBase)
	switch rapid.IntRange(0, 9).Draw(t, "stampKind") {
	case 6:
		return ref - rapid.Int64Range(1, 3000).Draw(t, "backMs")*mdlMs
	case 7, 8:
		ts := h.m.pendingTimes()
		if len(ts) == 0 {
			return ref
		}
		return rapid.SampledFrom(ts).Draw(t, "due") + rapid.Int64Range(-1, 1).Draw(t, "dueOffset")
	case 9:
		return ref + rapid.Int64Range(2, 20).Draw(t, "jumpSec")*mdlSec
	default:
		return ref + rapid.Int64Range(0, 1500).Draw(t, "stepMs")*mdlMs
	}
}

// apply stamps and applies c to the partition and the model's clock, and
// logs it (rapid prints the log of the minimal failing run).
func (h *modelHarness) apply(t *rapid.T, i int, c *fsmv1.Command) *Result {
	c.Version = CommandVersion
	// Half the commands go in encoded, as Raft hands them over: Enqueue
	// then takes the partition's own decoder rather than proto.Unmarshal.
	var res *Result
	if rapid.Bool().Draw(t, "encoded") {
		data, err := proto.Marshal(c)
		if err != nil {
			t.Fatalf("#%d: marshal: %v", i, err)
		}
		t.Logf("#%d stamp=%+d (encoded) %s", i, c.Stamp-mdlBase, prototext.MarshalOptions{}.Format(c))
		res = h.p.ApplyEncoded(data)
	} else {
		t.Logf("#%d stamp=%+d %s", i, c.Stamp-mdlBase, prototext.MarshalOptions{}.Format(c))
		res = h.p.Apply(c)
	}
	if res.Code == Invalid || res.Code == Unsupported {
		t.Fatalf("#%d: valid command refused: %v %s", i, res.Code, res.Detail)
	}
	h.m.advance(c.Stamp)
	if res.Now != h.m.now {
		t.Fatalf("#%d: result Now %d, model %d", i, res.Now, h.m.now)
	}
	return res
}

func (h *modelHarness) opTick(t *rapid.T, i int) {
	h.apply(t, i, &fsmv1.Command{Stamp: h.drawStamp(t), Op: &fsmv1.Command_Tick{Tick: &fsmv1.Tick{}}})
}

func (h *modelHarness) opEnqueue(t *rapid.T, i int) {
	stamp := h.drawStamp(t)
	n := h.drawSize(t, "batch")
	msgs := make([]*fsmv1.NewMessage, n)
	for j := range msgs {
		nm := &fsmv1.NewMessage{
			Payload: rapid.SliceOfN(rapid.Byte(), 0, 6).Draw(t, "payload"),
			Key:     rapid.SampledFrom([]string{"", "", "k1", "key-2"}).Draw(t, "key"),
			DedupId: rapid.SampledFrom([]string{"", "", "", "a", "b", "c"}).Draw(t, "dedup"),
		}
		if rapid.IntRange(0, 5).Draw(t, "withHeader") == 0 {
			nm.Headers = []*fsmv1.Header{{Key: "h", Value: []byte("v")}}
		}
		if rapid.IntRange(0, 3).Draw(t, "delayed") == 0 {
			nm.Delay = rapid.Int64Range(1, 3000).Draw(t, "delayMs") * mdlMs
		}
		msgs[j] = nm
	}
	res := h.apply(t, i, &fsmv1.Command{Stamp: stamp, Op: &fsmv1.Command_Enqueue{Enqueue: &fsmv1.Enqueue{Messages: msgs}}})
	code, want := h.m.enqueue(msgs)
	if res.Code != code {
		t.Fatalf("#%d enqueue: code %v (%s), model %v", i, res.Code, res.Detail, code)
	}
	if !slices.Equal(res.Enqueued, want) {
		t.Fatalf("#%d enqueue: got %+v, model %+v", i, res.Enqueued, want)
	}
	for j, e := range res.Enqueued {
		if !e.Duplicate {
			h.plain[e.Seq] = msgs[j].GetDelay() == 0
		}
	}
}

// drawSize draws a batch or receive size: 1-5, or in bulk runs up to 1000.
func (h *modelHarness) drawSize(t *rapid.T, label string) int {
	if h.scale > 1 {
		return rapid.SampledFrom([]int{1000, 300, 50, 5, 1}).Draw(t, label)
	}
	return rapid.IntRange(1, 5).Draw(t, label)
}

func (h *modelHarness) drawVis(t *rapid.T, label string) int64 {
	if rapid.IntRange(0, 2).Draw(t, label+"Default") == 0 {
		return 0
	}
	return rapid.Int64Range(1, 3000).Draw(t, label+"Ms") * mdlMs
}

func (h *modelHarness) opReceive(t *rapid.T, i int) {
	stamp := h.drawStamp(t)
	r := &fsmv1.Receive{
		Consumer:          rapid.SampledFrom([]string{"", "c1", "c2"}).Draw(t, "consumer"),
		Max:               uint32(h.drawSize(t, "max")),
		VisibilityTimeout: h.drawVis(t, "vis"),
	}
	res := h.apply(t, i, &fsmv1.Command{Stamp: stamp, Op: &fsmv1.Command_Receive{Receive: r}})
	want, dl := h.m.receive(r.Consumer, r.Max, r.VisibilityTimeout)
	if res.Code != OK || res.DeadLettered != dl || len(res.Delivered) != len(want) {
		t.Fatalf("#%d receive: code %v, delivered %v, dead-lettered %d; model delivers %v, dead-letters %d",
			i, res.Code, mdlDeliveredSeqs(res.Delivered), res.DeadLettered, mdlSeqs(want), dl)
	}
	var prev uint64
	for j, d := range res.Delivered {
		x := want[j]
		if d.Seq != x.seq || d.Epoch != x.epoch || d.Deliveries != x.deliveries || d.Deadline != x.until ||
			d.EnqueuedAt != x.enqAt || !bytes.Equal(d.Payload, x.payload) || d.Key != x.key || len(d.Headers) != len(x.headers) {
			t.Fatalf("#%d receive: delivery %d is %+v, model %+v", i, j, d, *x)
		}
		// Model-free properties.
		if h.acked[d.Seq] {
			t.Fatalf("#%d receive: message %d delivered after it was acked", i, d.Seq)
		}
		if d.Seq <= prev {
			t.Fatalf("#%d receive: sequences not increasing: %v", i, mdlDeliveredSeqs(res.Delivered))
		}
		prev = d.Seq
		last, seen := h.lastEpoch[d.Seq]
		if d.Epoch <= last {
			t.Fatalf("#%d receive: message %d delivered with epoch %d after epoch %d", i, d.Seq, d.Epoch, last)
		}
		if !seen && h.plain[d.Seq] {
			if d.Seq <= h.lastPlain {
				t.Fatalf("#%d receive: first delivery of message %d after that of later message %d", i, d.Seq, h.lastPlain)
			}
			h.lastPlain = d.Seq
		}
		h.lastEpoch[d.Seq] = d.Epoch
		h.receipts = append(h.receipts, mdlReceipt{d.Seq, d.Epoch})
	}
}

// drawRefs picks 1-4 receipts: current leases, receipts handed out earlier
// (often stale), and made-up ones.
func (h *modelHarness) drawRefs(t *rapid.T) []*fsmv1.LeaseRef {
	n := rapid.IntRange(1, 4).Draw(t, "refs")
	refs := make([]*fsmv1.LeaseRef, n)
	for j := range refs {
		leased := h.m.in(mdlLeased)
		switch kind := rapid.IntRange(0, 3).Draw(t, "refKind"); {
		case kind <= 1 && len(leased) > 0:
			x := rapid.SampledFrom(leased).Draw(t, "current")
			refs[j] = &fsmv1.LeaseRef{Seq: x.seq, Epoch: x.epoch}
		case kind == 2 && len(h.receipts) > 0:
			r := rapid.SampledFrom(h.receipts).Draw(t, "old")
			refs[j] = &fsmv1.LeaseRef{Seq: r.seq, Epoch: r.epoch}
		default:
			refs[j] = &fsmv1.LeaseRef{
				Seq:   rapid.Uint64Range(0, uint64(len(h.m.msgs))+2).Draw(t, "madeSeq"),
				Epoch: rapid.Uint32Range(0, 3).Draw(t, "madeEpoch"),
			}
		}
	}
	return refs
}

func (h *modelHarness) checkLeases(t *rapid.T, i int, what string, res *Result, want []LeaseOutcome) {
	if res.Code != OK || !slices.Equal(res.Leases, want) {
		t.Fatalf("#%d %s: code %v, outcomes %v; model %v", i, what, res.Code, res.Leases, want)
	}
}

func (h *modelHarness) opAck(t *rapid.T, i int) {
	stamp := h.drawStamp(t)
	refs := h.drawRefs(t)
	res := h.apply(t, i, &fsmv1.Command{Stamp: stamp, Op: &fsmv1.Command_Ack{Ack: &fsmv1.Ack{Leases: refs}}})
	want := h.m.forLeases(refs, func(x *mdlMsg) {
		x.state, x.until, x.consumer = mdlAcked, 0, ""
		h.m.acked++
	})
	h.checkLeases(t, i, "ack", res, want)
	for j, o := range res.Leases {
		if o == LeaseOK {
			h.acked[refs[j].GetSeq()] = true
		}
	}
}

func (h *modelHarness) opRequeue(t *rapid.T, i int) {
	stamp := h.drawStamp(t)
	refs := h.drawRefs(t)
	var delay int64
	if rapid.Bool().Draw(t, "requeueDelayed") {
		delay = rapid.Int64Range(1, 2000).Draw(t, "requeueDelayMs") * mdlMs
	}
	res := h.apply(t, i, &fsmv1.Command{Stamp: stamp, Op: &fsmv1.Command_Requeue{Requeue: &fsmv1.Requeue{Leases: refs, Delay: delay}}})
	want := h.m.forLeases(refs, func(x *mdlMsg) { h.m.release(x, delay) })
	h.checkLeases(t, i, "requeue", res, want)
}

func (h *modelHarness) opExtend(t *rapid.T, i int) {
	stamp := h.drawStamp(t)
	refs := h.drawRefs(t)
	vis := h.drawVis(t, "extendVis")
	res := h.apply(t, i, &fsmv1.Command{Stamp: stamp, Op: &fsmv1.Command_ExtendLease{ExtendLease: &fsmv1.ExtendLease{Leases: refs, VisibilityTimeout: vis}}})
	if vis == 0 {
		vis = h.m.set.vis
	}
	want := h.m.forLeases(refs, func(x *mdlMsg) { x.until = h.m.now + vis })
	h.checkLeases(t, i, "extend", res, want)
}

func (h *modelHarness) opReject(t *rapid.T, i int) {
	stamp := h.drawStamp(t)
	refs := h.drawRefs(t)
	reason := rapid.SampledFrom([]string{"", "poison"}).Draw(t, "reason")
	res := h.apply(t, i, &fsmv1.Command{Stamp: stamp, Op: &fsmv1.Command_Reject{Reject: &fsmv1.Reject{Leases: refs, Reason: reason}}})
	if reason == "" {
		reason = ReasonRejected
	}
	want := h.m.forLeases(refs, func(x *mdlMsg) { h.m.deadLetter(x, reason) })
	h.checkLeases(t, i, "reject", res, want)
}

func (h *modelHarness) opRedrive(t *rapid.T, i int) {
	stamp := h.drawStamp(t)
	r := &fsmv1.Redrive{}
	switch rapid.IntRange(0, 2).Draw(t, "redriveKind") {
	case 1:
		r.Max = rapid.Uint64Range(1, 3*uint64(h.scale)).Draw(t, "redriveMax")
	case 2:
		n := rapid.IntRange(1, 4).Draw(t, "redriveSeqs")
		for range n {
			if dead := h.m.in(mdlDead); len(dead) > 0 && rapid.Bool().Draw(t, "redriveDead") {
				r.Seqs = append(r.Seqs, rapid.SampledFrom(dead).Draw(t, "deadSeq").seq)
			} else {
				r.Seqs = append(r.Seqs, rapid.Uint64Range(0, uint64(len(h.m.msgs))+2).Draw(t, "anySeq"))
			}
		}
	}
	res := h.apply(t, i, &fsmv1.Command{Stamp: stamp, Op: &fsmv1.Command_Redrive{Redrive: r}})
	want := h.m.redrive(r.Seqs, r.Max)
	if res.Code != OK || res.Moved != want {
		t.Fatalf("#%d redrive: code %v, moved %d; model %d", i, res.Code, res.Moved, want)
	}
}

func (h *modelHarness) opPurge(t *rapid.T, i int) {
	stamp := h.drawStamp(t)
	which := rapid.SampledFrom([][2]bool{{false, true}, {true, false}, {true, true}}).Draw(t, "purge")
	res := h.apply(t, i, &fsmv1.Command{Stamp: stamp, Op: &fsmv1.Command_Purge{Purge: &fsmv1.Purge{Ready: which[0], Dead: which[1]}}})
	pr, pd := h.m.purge(which[0], which[1])
	if res.Code != OK || res.PurgedReady != pr || res.PurgedDead != pd {
		t.Fatalf("#%d purge: code %v, purged %d ready %d dead; model %d, %d", i, res.Code, res.PurgedReady, res.PurgedDead, pr, pd)
	}
}

func (h *modelHarness) opConfigure(t *rapid.T, i int) {
	stamp := h.drawStamp(t)
	s := mdlSettings{
		vis:       rapid.Int64Range(1, 5000).Draw(t, "cfgVisMs") * mdlMs,
		maxDel:    rapid.Uint32Range(0, 3).Draw(t, "cfgMaxDeliveries"),
		window:    rapid.SampledFrom([]int64{0, 500 * mdlMs, 2 * mdlSec, 5 * mdlSec, 60 * mdlSec}).Draw(t, "cfgWindow"),
		partition: rapid.Uint32Range(0, 3).Draw(t, "cfgPartition"),
	}
	if rapid.Bool().Draw(t, "cfgRetention") {
		s.retention = rapid.Int64Range(1000, 10000).Draw(t, "cfgRetentionMs") * mdlMs
	}
	if rapid.IntRange(0, 2).Draw(t, "cfgMaxMessages") == 0 {
		s.maxMsgs = rapid.Uint64Range(1, 20*uint64(h.scale)).Draw(t, "cfgMaxMessagesN")
	}
	if rapid.IntRange(0, 2).Draw(t, "cfgMaxBytes") == 0 {
		s.maxBytes = rapid.Uint64Range(1, 100*uint64(h.scale)).Draw(t, "cfgMaxBytesN")
	}
	res := h.apply(t, i, &fsmv1.Command{Stamp: stamp, Op: &fsmv1.Command_Configure{Configure: &fsmv1.Configure{Settings: s.proto()}}})
	if res.Code != OK {
		t.Fatalf("#%d configure: %v %s", i, res.Code, res.Detail)
	}
	h.m.set = s // after the advance, which ran under the old settings
}

// opSnapshot snapshots the partition, restores the bytes into a new one,
// and half the time carries on with the copy.
func (h *modelHarness) opSnapshot(t *rapid.T, i int) {
	orig := mdlSnapBytes(t, h.p)
	q := h.newPart()
	if err := q.Restore(bytes.NewReader(orig)); err != nil {
		t.Fatalf("#%d restore: %v", i, err)
	}
	if got := mdlSnapBytes(t, q); !bytes.Equal(got, orig) {
		t.Fatalf("#%d: snapshot of the restored partition differs (%d vs %d bytes)", i, len(got), len(orig))
	}
	if q.Stats() != h.p.Stats() || q.NextDue() != h.p.NextDue() {
		t.Fatalf("#%d: restored stats %+v, next due %d; original %+v, %d", i, q.Stats(), q.NextDue(), h.p.Stats(), h.p.NextDue())
	}
	if rapid.Bool().Draw(t, "continueOnRestored") {
		t.Logf("#%d snapshot, restore, continue on the copy", i)
		h.p = q
	} else {
		t.Logf("#%d snapshot, restore, compare", i)
	}
}

// opInvalid applies a command the partition must refuse without changing
// anything, its clock included.
func (h *modelHarness) opInvalid(t *rapid.T, i int) {
	stamp := h.drawStamp(t) + mdlSec
	ref := []*fsmv1.LeaseRef{{Seq: 1, Epoch: 1}}
	cases := []struct {
		c    *fsmv1.Command
		want Code
	}{
		{&fsmv1.Command{Op: &fsmv1.Command_Receive{Receive: &fsmv1.Receive{Max: 0}}}, Invalid},
		{&fsmv1.Command{Op: &fsmv1.Command_Receive{Receive: &fsmv1.Receive{Max: MaxReceive + 1}}}, Invalid},
		{&fsmv1.Command{Op: &fsmv1.Command_Receive{Receive: &fsmv1.Receive{Max: 1, VisibilityTimeout: 1}}}, Invalid},
		{&fsmv1.Command{Op: &fsmv1.Command_Purge{Purge: &fsmv1.Purge{}}}, Invalid},
		{&fsmv1.Command{Op: &fsmv1.Command_Ack{Ack: &fsmv1.Ack{}}}, Invalid},
		{&fsmv1.Command{Op: &fsmv1.Command_Requeue{Requeue: &fsmv1.Requeue{Leases: ref, Delay: -1}}}, Invalid},
		{&fsmv1.Command{Op: &fsmv1.Command_Enqueue{Enqueue: &fsmv1.Enqueue{}}}, Invalid},
		{&fsmv1.Command{Op: &fsmv1.Command_Enqueue{Enqueue: &fsmv1.Enqueue{Messages: []*fsmv1.NewMessage{{Delay: int64(MaxDelay) + 1}}}}}, Invalid},
		{&fsmv1.Command{Op: &fsmv1.Command_Configure{Configure: &fsmv1.Configure{Settings: &fsmv1.Settings{}}}}, Invalid},
		{&fsmv1.Command{Op: &fsmv1.Command_Configure{Configure: &fsmv1.Configure{Settings: &fsmv1.Settings{VisibilityTimeout: mdlSec, Retention: mdlMs}}}}, Invalid},
		{&fsmv1.Command{Version: CommandVersion + 1, Op: &fsmv1.Command_Tick{Tick: &fsmv1.Tick{}}}, Unsupported},
		{&fsmv1.Command{}, Unsupported},
	}
	k := rapid.IntRange(0, len(cases)-1).Draw(t, "invalidKind")
	c, want := cases[k].c, cases[k].want
	c.Stamp = stamp
	if c.Version == 0 {
		c.Version = CommandVersion
	}
	t.Logf("#%d stamp=%+d (refused) %s", i, c.Stamp-mdlBase, prototext.MarshalOptions{}.Format(c))
	before := mdlSnapBytes(t, h.p)
	res := h.p.Apply(c)
	if res.Code != want || res.Now != h.m.now {
		t.Fatalf("#%d: refused command gave code %v, Now %d; want %v, %d", i, res.Code, res.Now, want, h.m.now)
	}
	if !bytes.Equal(mdlSnapBytes(t, h.p), before) {
		t.Fatalf("#%d: refused command changed the partition", i)
	}
}

// check compares the partition's whole observable state with the model.
func (h *modelHarness) check(t *rapid.T) {
	got, want := h.p.Stats(), h.m.stats()
	if got != want {
		t.Fatalf("stats:\n got   %+v\n model %+v", got, want)
	}

	// NextDue is the model's next due instant, or earlier for a dedup id
	// to be forgotten. Which dedup record the partition looks at is its own
	// business, so any expiry of an entry it made will do.
	due, have := h.m.nextDue()
	switch nd := h.p.NextDue(); {
	case have && nd == due:
	case (!have || nd < due) && h.m.dedupExps[nd] && nd > h.m.now:
	case !have && nd == 0:
	default:
		t.Fatalf("NextDue %d (%+d after now); model %d (%+d after now, any: %v)", nd, nd-h.m.now, due, due-h.m.now, have)
	}

	var wantDead []DeadLetter
	for _, x := range h.m.in(mdlDead) {
		wantDead = append(wantDead, DeadLetter{
			Seq: x.seq, Order: x.deadOrder, Reason: x.reason, DeadAt: x.deadAt,
			EnqueuedAt: x.enqAt, Deliveries: x.deliveries,
		})
	}
	slices.SortFunc(wantDead, func(a, b DeadLetter) int { return cmp.Compare(a.Order, b.Order) })
	gotDead := h.p.DeadLetters(0, 1<<20)
	if len(gotDead) != len(wantDead) {
		t.Fatalf("dead letters: got %d, model %d", len(gotDead), len(wantDead))
	}
	for j := range gotDead {
		g, w := gotDead[j], wantDead[j]
		if g.Seq != w.Seq || g.Order != w.Order || g.Reason != w.Reason || g.DeadAt != w.DeadAt ||
			g.EnqueuedAt != w.EnqueuedAt || g.Deliveries != w.Deliveries {
			t.Fatalf("dead letter %d:\n got   %+v\n model %+v", j, g, wantDead[j])
		}
	}

	// The snapshot shows every stored message's full state.
	hdr, msgs, dedup, err := mdlDecodeSnapshot(mdlSnapBytes(t, h.p))
	if err != nil {
		t.Fatalf("decoding snapshot: %v", err)
	}
	if !proto.Equal(hdr.GetSettings(), h.m.set.proto()) || hdr.GetDeadOrder() != h.m.deadOrder {
		t.Fatalf("snapshot header %v; model settings %v, dead order %d", hdr, h.m.set.proto(), h.m.deadOrder)
	}
	var stored []*mdlMsg
	for _, x := range h.m.msgs {
		if x.state.stored() {
			stored = append(stored, x)
		}
	}
	if len(msgs) != len(stored) {
		t.Fatalf("snapshot has %d messages %v, model %d %v", len(msgs), mdlSnapSeqs(msgs), len(stored), mdlSeqs(stored))
	}
	for j, sm := range msgs {
		x := stored[j]
		w := &fsmv1.SnapshotMessage{
			Seq: x.seq, State: fsmv1.MessageState(x.state), Payload: x.payload, Key: x.key, Headers: x.headers,
			EnqueuedAt: x.enqAt, Deliveries: x.deliveries, Epoch: x.epoch, Until: x.until, Consumer: x.consumer,
		}
		if x.state == mdlDead {
			w.DeadReason, w.DeadAt, w.DeadOrder = x.reason, x.deadAt, x.deadOrder
		}
		if !proto.Equal(sm, w) {
			t.Fatalf("message %d:\n got   %v\n model %v", x.seq, sm, w)
		}
	}
	// The partition may still hold expired dedup ids it has not got round
	// to forgetting, but each entry it holds is the id's latest, and every
	// live one is there.
	// Snapshots hold the first 16 bytes of each id's SHA-256.
	byHash := map[string]string{}
	for id := range h.m.dedup {
		sum := sha256.Sum256([]byte(id))
		byHash[string(sum[:16])] = id
	}
	live := 0
	for _, d := range dedup {
		id, known := byHash[string(d.GetIdHash())]
		e := h.m.dedup[id]
		if !known || e.seq != d.GetSeq() || e.exp != d.GetExpiresAt() {
			t.Fatalf("snapshot dedup entry %v (id %q); model %+v", d, id, e)
		}
		if e.exp > h.m.now {
			live++
		}
	}
	for _, e := range h.m.dedup {
		if e.exp > h.m.now {
			live--
		}
	}
	if live != 0 {
		t.Fatalf("snapshot lacks %d live dedup entries", -live)
	}
}

func mdlSeqs(xs []*mdlMsg) []uint64 {
	out := make([]uint64, len(xs))
	for i, x := range xs {
		out[i] = x.seq
	}
	return out
}

func mdlDeliveredSeqs(ds []Delivery) []uint64 {
	out := make([]uint64, len(ds))
	for i, d := range ds {
		out[i] = d.Seq
	}
	return out
}

func mdlSnapSeqs(ms []*fsmv1.SnapshotMessage) []uint64 {
	out := make([]uint64, len(ms))
	for i, m := range ms {
		out[i] = m.GetSeq()
	}
	return out
}

func mdlSnapBytes(t interface{ Fatalf(string, ...any) }, p *Partition) []byte {
	var b bytes.Buffer
	// A snapshot is of the committed state (the adapter takes it between
	// batches).
	if err := p.kv.Commit(); err != nil {
		t.Fatalf("commit: %v", err)
	}
	s := p.Snapshot()
	defer s.Close()
	if _, err := s.WriteTo(&b); err != nil {
		t.Fatalf("writing snapshot: %v", err)
	}
	return b.Bytes()
}

// mdlDecodeSnapshot splits a snapshot into its records independently of
// Restore, checking the framing the proto file documents: magic, header,
// messages in increasing sequence order, dedup entries, trailer.
func mdlDecodeSnapshot(b []byte) (*fsmv1.SnapshotHeader, []*fsmv1.SnapshotMessage, []*fsmv1.SnapshotDedup, error) {
	if !bytes.HasPrefix(b, []byte(snapshotMagic)) {
		return nil, nil, nil, fmt.Errorf("no magic")
	}
	b = b[len(snapshotMagic):]
	var recs []*fsmv1.SnapshotRecord
	for len(b) > 0 {
		n, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < n {
			return nil, nil, nil, fmt.Errorf("bad record length")
		}
		r := &fsmv1.SnapshotRecord{}
		if err := proto.Unmarshal(b[k:k+int(n)], r); err != nil {
			return nil, nil, nil, err
		}
		recs = append(recs, r)
		b = b[k+int(n):]
	}
	if len(recs) < 2 || recs[0].GetHeader() == nil || recs[len(recs)-1].GetTrailer() == nil {
		return nil, nil, nil, fmt.Errorf("no header or trailer")
	}
	hdr := recs[0].GetHeader()
	var msgs []*fsmv1.SnapshotMessage
	var dedup []*fsmv1.SnapshotDedup
	for _, r := range recs[1 : len(recs)-1] {
		switch {
		case r.GetMessage() != nil && dedup == nil:
			if len(msgs) > 0 && r.GetMessage().GetSeq() <= msgs[len(msgs)-1].GetSeq() {
				return nil, nil, nil, fmt.Errorf("messages out of order")
			}
			msgs = append(msgs, r.GetMessage())
		case r.GetDedup() != nil:
			dedup = append(dedup, r.GetDedup())
		default:
			return nil, nil, nil, fmt.Errorf("unexpected record %v", r)
		}
	}
	if uint64(len(msgs)) != hdr.GetMessages() || uint64(len(dedup)) != hdr.GetDedupEntries() ||
		recs[len(recs)-1].GetTrailer().GetRecords() != uint64(len(recs)-1) {
		return nil, nil, nil, fmt.Errorf("record counts disagree with header/trailer")
	}
	return hdr, msgs, dedup, nil
}
