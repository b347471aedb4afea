package fsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"math"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

// fzMaxCommands bounds the commands one fuzz input may carry, so that each
// run stays fast.
const fzMaxCommands = 64

// fzSplit cuts fuzz input into encoded commands: each is a uvarint length
// and that many bytes (or what is left). The fuzzer can so build, reorder
// and splice command sequences.
func fzSplit(data []byte) [][]byte {
	var out [][]byte
	for len(data) > 0 && len(out) < fzMaxCommands {
		n, k := binary.Uvarint(data)
		if k <= 0 {
			return append(out, data)
		}
		data = data[k:]
		n = min(n, uint64(len(data)))
		out = append(out, data[:n])
		data = data[n:]
	}
	return out
}

func fzJoin(cmds ...[]byte) []byte {
	var b []byte
	for _, c := range cmds {
		b = binary.AppendUvarint(b, uint64(len(c)))
		b = append(b, c...)
	}
	return b
}

func fzMarshal(tb testing.TB, c *fsmv1.Command) []byte {
	tb.Helper()
	b, err := proto.Marshal(c)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// fzCmd builds a command at mdlBase+ms milliseconds.
func fzCmd(ms int64, op any) *fsmv1.Command {
	c := &fsmv1.Command{Version: CommandVersion, Stamp: mdlBase + ms*mdlMs}
	switch op := op.(type) {
	case *fsmv1.Enqueue:
		c.Op = &fsmv1.Command_Enqueue{Enqueue: op}
	case *fsmv1.Receive:
		c.Op = &fsmv1.Command_Receive{Receive: op}
	case *fsmv1.Ack:
		c.Op = &fsmv1.Command_Ack{Ack: op}
	case *fsmv1.Requeue:
		c.Op = &fsmv1.Command_Requeue{Requeue: op}
	case *fsmv1.ExtendLease:
		c.Op = &fsmv1.Command_ExtendLease{ExtendLease: op}
	case *fsmv1.Reject:
		c.Op = &fsmv1.Command_Reject{Reject: op}
	case *fsmv1.Redrive:
		c.Op = &fsmv1.Command_Redrive{Redrive: op}
	case *fsmv1.Purge:
		c.Op = &fsmv1.Command_Purge{Purge: op}
	case *fsmv1.Settings:
		c.Op = &fsmv1.Command_Configure{Configure: &fsmv1.Configure{Settings: op}}
	case *fsmv1.Tick:
		c.Op = &fsmv1.Command_Tick{Tick: op}
	default:
		panic("fzCmd: unknown op")
	}
	return c
}

func fzRef(seq uint64, epoch uint32) []*fsmv1.LeaseRef {
	return []*fsmv1.LeaseRef{{Seq: seq, Epoch: epoch}}
}

// fzScenario is a run that uses every operation with receipts that match,
// and leaves messages in every state and dedup entries behind.
func fzScenario() []*fsmv1.Command {
	return []*fsmv1.Command{
		fzCmd(0, &fsmv1.Settings{
			VisibilityTimeout: 1000 * mdlMs, MaxDeliveries: 2, DedupWindow: 5 * mdlSec,
			Retention: 20 * mdlSec, MaxMessages: 100, MaxBytes: 10000, Partition: 1,
		}),
		fzCmd(10, &fsmv1.Enqueue{Messages: []*fsmv1.NewMessage{
			{Payload: []byte("one"), DedupId: "a"},
			{Payload: []byte("two"), Key: "k", Headers: []*fsmv1.Header{{Key: "h", Value: []byte("v")}}},
			{Payload: []byte("three"), Delay: 500 * mdlMs},
			{Payload: []byte("four")},
		}}),
		fzCmd(20, &fsmv1.Enqueue{Messages: []*fsmv1.NewMessage{{Payload: []byte("again"), DedupId: "a"}}}),
		fzCmd(30, &fsmv1.Receive{Consumer: "c1", Max: 2}),
		fzCmd(40, &fsmv1.Ack{Leases: fzRef(1, 1)}),
		fzCmd(50, &fsmv1.Requeue{Leases: fzRef(2, 1), Delay: 100 * mdlMs}),
		fzCmd(600, &fsmv1.Receive{Consumer: "c2", Max: 3, VisibilityTimeout: 2 * mdlSec}),
		fzCmd(700, &fsmv1.ExtendLease{Leases: fzRef(2, 2), VisibilityTimeout: 3 * mdlSec}),
		fzCmd(800, &fsmv1.Reject{Leases: fzRef(3, 1), Reason: "bad"}),
		fzCmd(900, &fsmv1.Redrive{Seqs: []uint64{3}}),
		fzCmd(1000, &fsmv1.Receive{Max: 1}),
		fzCmd(3000, &fsmv1.Tick{}),
		fzCmd(3100, &fsmv1.Receive{Max: 5}),
		fzCmd(5000, &fsmv1.Tick{}),
		fzCmd(5100, &fsmv1.Enqueue{Messages: []*fsmv1.NewMessage{{Payload: []byte("five"), DedupId: "b"}}}),
		fzCmd(5200, &fsmv1.Redrive{Max: 1}),
		fzCmd(5300, &fsmv1.Receive{Max: 1, VisibilityTimeout: 10 * mdlSec}),
		fzCmd(5400, &fsmv1.Enqueue{Messages: []*fsmv1.NewMessage{{Payload: []byte("six"), Delay: 60 * mdlSec, DedupId: "c"}}}),
	}
}

// fzPopulated returns a partition holding messages in every state.
func fzPopulated(tb testing.TB) *Partition {
	p := NewPartition()
	for _, c := range fzScenario() {
		if res := p.Apply(c); res.Code != OK {
			tb.Fatalf("scenario: %v %s", res.Code, res.Detail)
		}
	}
	return p
}

// fzExtraCommands are commands beyond the scenario, valid and not.
func fzExtraCommands() []*fsmv1.Command {
	return []*fsmv1.Command{
		fzCmd(6000, &fsmv1.Purge{Dead: true}),
		fzCmd(6000, &fsmv1.Purge{Ready: true}),
		fzCmd(6000, &fsmv1.Purge{Ready: true, Dead: true}),
		fzCmd(6000, &fsmv1.Redrive{}),
		fzCmd(6000, &fsmv1.Ack{Leases: []*fsmv1.LeaseRef{{Seq: 5, Epoch: 1}, {Seq: 5, Epoch: 1}, {Seq: 99}}}),
		fzCmd(6000, &fsmv1.Requeue{Leases: fzRef(5, 1)}),
		fzCmd(6000, &fsmv1.Reject{Leases: fzRef(5, 1)}),
		fzCmd(6000, &fsmv1.Settings{VisibilityTimeout: mdlMs, MaxMessages: 1, MaxBytes: 1}),
		fzCmd(6000, &fsmv1.Settings{VisibilityTimeout: mdlSec, MaxDeliveries: 1, Retention: mdlSec}),
		fzCmd(-mdlBase/mdlMs, &fsmv1.Tick{}), // stamp 0: time must not go back
		fzCmd(30*mdlSec/mdlMs, &fsmv1.Tick{}),
		fzCmd(5*24*3600*1000, &fsmv1.Tick{}),
		fzCmd(6000, &fsmv1.Enqueue{Messages: []*fsmv1.NewMessage{{DedupId: "b"}, {DedupId: "d"}, {DedupId: "d"}}}),
		// Refused ones.
		fzCmd(6000, &fsmv1.Receive{}),
		fzCmd(6000, &fsmv1.Purge{}),
		fzCmd(6000, &fsmv1.Enqueue{}),
		fzCmd(6000, &fsmv1.Settings{}),
		fzCmd(6000, &fsmv1.Requeue{Leases: fzRef(1, 1), Delay: -1}),
		{Version: CommandVersion + 1, Stamp: mdlBase, Op: &fsmv1.Command_Tick{Tick: &fsmv1.Tick{}}},
		{Version: CommandVersion, Stamp: mdlBase},
	}
}

// FuzzPartitionApplyEncoded applies sequences of encoded commands. Nothing
// may panic; after every command the counts must be sane; at the end the
// partition must agree with its own snapshot, and a partition restored from
// it must be indistinguishable. A second partition is fed the same commands
// through proto.Unmarshal and Apply: the encoded path (which decodes Enqueue
// by hand) must give the same results and state.
func FuzzPartitionApplyEncoded(f *testing.F) {
	var all [][]byte
	for _, c := range fzScenario() {
		all = append(all, fzMarshal(f, c))
	}
	f.Add(fzJoin(all...))
	for _, c := range fzExtraCommands() {
		f.Add(fzJoin(append(all[:len(all):len(all)], fzMarshal(f, c))...))
	}
	for _, c := range append(fzScenario(), fzExtraCommands()...) {
		f.Add(fzJoin(fzMarshal(f, c)))
	}
	f.Add(fzJoin(all[1:]...)) // default settings
	f.Fuzz(func(t *testing.T, data []byte) {
		p, q := NewPartition(), NewPartition()
		for i, cmd := range fzSplit(data) {
			res := p.ApplyEncoded(cmd)
			var c fsmv1.Command
			var ref *Result
			if err := proto.Unmarshal(cmd, &c); err != nil {
				ref = &Result{Code: Invalid, Now: q.Stats().Now}
			} else {
				ref = q.Apply(&c)
			}
			if err := fzSameResult(res, ref); err != nil {
				t.Fatalf("command %d: ApplyEncoded and Apply differ: %v\nencoded: %+v\napply:   %+v", i, err, res, ref)
			}
			fzCheckCounts(t, p, res)
		}
		if a, b := mdlSnapBytes(t, p), mdlSnapBytes(t, q); !bytes.Equal(a, b) {
			t.Fatalf("ApplyEncoded and Apply left different states (%d vs %d snapshot bytes)", len(a), len(b))
		}
		fzCheckConsistent(t, p)
	})
}

// fzSameResult compares two results, all but Detail.
func fzSameResult(a, b *Result) error {
	switch {
	case a.Code != b.Code:
		return errors.New("code")
	case a.Now != b.Now:
		return errors.New("now")
	case len(a.Enqueued) != len(b.Enqueued) || len(a.Delivered) != len(b.Delivered) || len(a.Leases) != len(b.Leases):
		return errors.New("item counts")
	case a.DeadLettered != b.DeadLettered || a.Moved != b.Moved || a.PurgedReady != b.PurgedReady || a.PurgedDead != b.PurgedDead:
		return errors.New("totals")
	}
	for i := range a.Enqueued {
		if a.Enqueued[i] != b.Enqueued[i] {
			return errors.New("enqueued")
		}
	}
	for i := range a.Leases {
		if a.Leases[i] != b.Leases[i] {
			return errors.New("leases")
		}
	}
	for i := range a.Delivered {
		x, y := a.Delivered[i], b.Delivered[i]
		if x.Seq != y.Seq || x.Epoch != y.Epoch || x.Deliveries != y.Deliveries || x.Deadline != y.Deadline ||
			x.EnqueuedAt != y.EnqueuedAt || !bytes.Equal(x.Payload, y.Payload) || x.Key != y.Key || len(x.Headers) != len(y.Headers) {
			return errors.New("delivered")
		}
		// Key and value only: a header decoded by proto.Unmarshal keeps
		// unknown fields, which snapshots (rightly) do not carry.
		for j, h := range x.Headers {
			if h.GetKey() != y.Headers[j].GetKey() || !bytes.Equal(h.GetValue(), y.Headers[j].GetValue()) {
				return errors.New("delivered headers")
			}
		}
	}
	return nil
}

// fzCheckCounts checks what must hold after any command on a partition
// built from empty by commands alone: no count has wrapped below zero (a
// wrapped count is far above the number of messages ever enqueued), and
// the result agrees with the partition.
func fzCheckCounts(t *testing.T, p *Partition, res *Result) {
	t.Helper()
	if res == nil || res.Code > QueueFull {
		t.Fatalf("bad result %+v", res)
	}
	s := p.Stats()
	if res.Now != s.Now {
		t.Fatalf("result Now %d, partition %d", res.Now, s.Now)
	}
	if res.Code != OK && (len(res.Enqueued) > 0 || len(res.Delivered) > 0 || len(res.Leases) > 0) {
		t.Fatalf("refused command (%v) has item results: %+v", res.Code, res)
	}
	if s.Ready > s.EnqueuedTotal || s.Delayed > s.EnqueuedTotal || s.Leased > s.EnqueuedTotal ||
		s.Dead > s.EnqueuedTotal || s.Messages() > s.EnqueuedTotal || s.Bytes > s.EnqueuedTotal*MaxBatchBytes ||
		s.Messages()+s.AckedTotal+s.ExpiredTotal > s.EnqueuedTotal || s.NextSeq != s.EnqueuedTotal+1 {
		t.Fatalf("counts out of range: %+v", s)
	}
}

// fzCheckConsistent checks that the partition's counts agree with the
// messages its snapshot holds, that the snapshot restores to a partition
// with equal stats and equal snapshot bytes, and that both then go on
// identically.
func fzCheckConsistent(t *testing.T, p *Partition) {
	t.Helper()
	s := p.Stats()
	snap := mdlSnapBytes(t, p)
	_, msgs, _, err := mdlDecodeSnapshot(snap)
	if err != nil {
		t.Fatalf("own snapshot does not decode: %v", err)
	}
	var byState [5]uint64
	var size uint64
	oldest := int64(0)
	for _, m := range msgs {
		st := m.GetState()
		if st < fsmv1.MessageState_MESSAGE_STATE_READY || st > fsmv1.MessageState_MESSAGE_STATE_DEAD {
			t.Fatalf("snapshot message %d in state %v", m.GetSeq(), st)
		}
		if st == fsmv1.MessageState_MESSAGE_STATE_READY && byState[st] == 0 {
			oldest = m.GetEnqueuedAt()
		}
		byState[st]++
		size += messageSize(m.GetPayload(), m.GetKey(), m.GetHeaders())
	}
	if got := [4]uint64{s.Ready, s.Delayed, s.Leased, s.Dead}; got != [4]uint64(byState[1:]) || s.Bytes != size || s.OldestReadyAt != oldest {
		t.Fatalf("stats %+v, but the snapshot holds %v messages (ready, delayed, leased, dead) of %d bytes, oldest ready at %d",
			s, byState[1:], size, oldest)
	}
	if uint64(len(msgs)) != s.Messages() {
		t.Fatalf("stats count %d messages, snapshot %d", s.Messages(), len(msgs))
	}
	if n := uint64(len(p.DeadLetters(0, math.MaxInt))); n != s.Dead {
		t.Fatalf("DeadLetters lists %d, stats count %d", n, s.Dead)
	}
	q := NewPartition()
	if err := q.Restore(bytes.NewReader(snap)); err != nil {
		t.Fatalf("own snapshot refused: %v", err)
	}
	if q.Stats() != s || q.NextDue() != p.NextDue() {
		t.Fatalf("restored stats %+v, next due %d; original %+v, %d", q.Stats(), q.NextDue(), s, p.NextDue())
	}
	if got := mdlSnapBytes(t, q); !bytes.Equal(got, snap) {
		t.Fatalf("restored partition's snapshot differs (%d vs %d bytes)", len(got), len(snap))
	}
	// Let every lease, delay and retention period run out on both.
	later := s.Now
	if later < math.MaxInt64-fzLongAfter {
		later += fzLongAfter
	}
	for _, c := range []*fsmv1.Command{
		{Version: CommandVersion, Stamp: s.Now, Op: &fsmv1.Command_Receive{Receive: &fsmv1.Receive{Max: MaxReceive}}},
		{Version: CommandVersion, Stamp: later, Op: &fsmv1.Command_Tick{Tick: &fsmv1.Tick{}}},
	} {
		a, b := p.Apply(c), q.Apply(c)
		if err := fzSameResult(a, b); err != nil {
			t.Fatalf("original and restored partitions differ on %v: %v", c, err)
		}
	}
	if a, b := mdlSnapBytes(t, p), mdlSnapBytes(t, q); !bytes.Equal(a, b) {
		t.Fatalf("original and restored partitions diverged")
	}
}

// fzLongAfter is past every lease, delay, dedup window and retention period.
const fzLongAfter = int64(400 * 24 * 3600 * 1e9)

// FuzzSnapshotRestore feeds arbitrary bytes to Restore. It must never
// panic; an error must wrap ErrCorruptSnapshot and leave the partition
// empty (its old state is deleted before the stream is read: see Restore); a success must give a partition that agrees with its
// own snapshot. Because a mutated snapshot almost never keeps a valid
// checksum, each input is also tried "resealed": if it frames as records
// ending in a trailer, the trailer is rewritten to match, so that the
// fuzzer reaches the checks that run on well-sealed but ill-formed content.
func FuzzSnapshotRestore(f *testing.F) {
	empty := mdlSnapBytes(f, NewPartition())
	full := mdlSnapBytes(f, fzPopulated(f))
	aged := fzPopulated(f)
	aged.Apply(fzCmd(30*mdlSec/mdlMs, &fsmv1.Tick{}))
	for _, s := range [][]byte{empty, full, mdlSnapBytes(f, aged)} {
		f.Add(s)
		f.Add(s[:len(s)/2])
		f.Add(s[:len(s)-1])
		f.Add(append(bytes.Clone(s), 0))
		for _, i := range []int{len(snapshotMagic), len(s) / 3, len(s) - 3} {
			flipped := bytes.Clone(s)
			flipped[i] ^= 0x10
			f.Add(flipped)
		}
	}
	f.Add([]byte(snapshotMagic))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		fzRestore(t, data)
		if sealed, ok := fzReseal(data); ok && !bytes.Equal(sealed, data) {
			fzRestore(t, sealed)
		}
	})
}

func fzRestore(t *testing.T, data []byte) {
	t.Helper()
	p := fzPopulated(t)
	if err := p.Restore(bytes.NewReader(data)); err != nil {
		if !errors.Is(err, ErrCorruptSnapshot) {
			t.Fatalf("Restore error does not wrap ErrCorruptSnapshot: %v", err)
		}
		empty := NewPartition()
		if !bytes.Equal(mdlSnapBytes(t, p), mdlSnapBytes(t, empty)) || p.Stats() != empty.Stats() || p.kv.(*MemKV).Len() != 1 {
			t.Fatalf("failed Restore (%v) left state behind: %d keys", err, p.kv.(*MemKV).Len())
		}
		return
	}
	fzCheckRestored(t, p)
	// Work on what was restored: deliver, settle and redrive everything.
	now := p.Stats().Now
	res := p.Apply(&fsmv1.Command{Version: CommandVersion, Stamp: now, Op: &fsmv1.Command_Receive{Receive: &fsmv1.Receive{Max: MaxReceive}}})
	fzCheckRestored(t, p)
	var refs []*fsmv1.LeaseRef
	for _, d := range res.Delivered {
		refs = append(refs, &fsmv1.LeaseRef{Seq: d.Seq, Epoch: d.Epoch})
	}
	if len(refs) > 0 {
		p.Apply(&fsmv1.Command{Version: CommandVersion, Stamp: now, Op: &fsmv1.Command_Reject{Reject: &fsmv1.Reject{Leases: refs[:len(refs)/2+1]}}})
		fzCheckRestored(t, p)
		p.Apply(&fsmv1.Command{Version: CommandVersion, Stamp: now, Op: &fsmv1.Command_Ack{Ack: &fsmv1.Ack{Leases: refs}}})
		fzCheckRestored(t, p)
	}
	p.Apply(&fsmv1.Command{Version: CommandVersion, Stamp: now, Op: &fsmv1.Command_Redrive{Redrive: &fsmv1.Redrive{}}})
	fzCheckRestored(t, p)
	p.Apply(&fsmv1.Command{Version: CommandVersion, Stamp: now, Op: &fsmv1.Command_Enqueue{Enqueue: &fsmv1.Enqueue{
		Messages: []*fsmv1.NewMessage{{Payload: []byte("x"), DedupId: "a"}, {DedupId: "b"}},
	}}})
	fzCheckRestored(t, p)
	fzCheckConsistent(t, p)
}

// fzCheckRestored checks a restored partition's counts against its own
// snapshot; unlike fzCheckCounts it assumes nothing about the totals a
// snapshot claims.
func fzCheckRestored(t *testing.T, p *Partition) {
	t.Helper()
	s := p.Stats()
	snap := mdlSnapBytes(t, p)
	_, msgs, _, err := mdlDecodeSnapshot(snap)
	if err != nil {
		t.Fatalf("snapshot of a restored partition does not decode: %v", err)
	}
	if uint64(len(msgs)) != s.Messages() {
		t.Fatalf("stats count %d messages (%+v), snapshot holds %d", s.Messages(), s, len(msgs))
	}
}

// fzReseal rewrites the trailer of something framed like a snapshot (magic,
// then length-prefixed records, the last a trailer) so that its record
// count and checksum match what precedes it.
func fzReseal(data []byte) ([]byte, bool) {
	if !bytes.HasPrefix(data, []byte(snapshotMagic)) {
		return nil, false
	}
	rest := data[len(snapshotMagic):]
	records, last := 0, -1
	for off := len(snapshotMagic); len(rest) > 0; records++ {
		n, k := binary.Uvarint(rest)
		if k <= 0 || uint64(len(rest)-k) < n {
			return nil, false
		}
		last = off
		off += k + int(n)
		rest = rest[k+int(n):]
	}
	if records < 2 {
		return nil, false
	}
	var rec fsmv1.SnapshotRecord
	n, k := binary.Uvarint(data[last:])
	if err := proto.Unmarshal(data[last+k:last+k+int(n)], &rec); err != nil || rec.GetTrailer() == nil {
		return nil, false
	}
	tr := &fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Trailer{Trailer: &fsmv1.SnapshotTrailer{
		Records: uint64(records - 1),
		Crc32C:  crc32.Checksum(data[:last], crc32.MakeTable(crc32.Castagnoli)),
	}}}
	b, err := proto.Marshal(tr)
	if err != nil {
		return nil, false
	}
	out := append(bytes.Clone(data[:last]), protowire.AppendVarint(nil, uint64(len(b)))...)
	return append(out, b...), true
}

// FuzzValidateCommand: a command ValidateCommand accepts is never refused
// as Invalid or Unsupported by Apply; one it refuses is refused, with the
// matching code, and changes nothing. The same bytes through ApplyEncoded
// must give the same result and state.
func FuzzValidateCommand(f *testing.F) {
	for _, c := range append(fzScenario(), fzExtraCommands()...) {
		f.Add(fzMarshal(f, c))
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var c fsmv1.Command
		if proto.Unmarshal(data, &c) != nil {
			return
		}
		verr := ValidateCommand(&c)
		p, q := fzPopulated(t), fzPopulated(t)
		before := mdlSnapBytes(t, p)
		res := p.Apply(&c)
		switch {
		case verr == nil && (res.Code == Invalid || res.Code == Unsupported):
			t.Fatalf("valid command refused: %v %s", res.Code, res.Detail)
		case verr != nil:
			want := Invalid
			if errors.Is(verr, ErrUnsupportedVersion) || errors.Is(verr, ErrUnknownCommand) {
				want = Unsupported
			} else if !errors.Is(verr, ErrInvalid) {
				t.Fatalf("validation error wraps neither ErrInvalid nor a version error: %v", verr)
			}
			if res.Code != want {
				t.Fatalf("command refused by ValidateCommand (%v) gave %v from Apply", verr, res.Code)
			}
			if !bytes.Equal(mdlSnapBytes(t, p), before) {
				t.Fatalf("refused command changed the partition")
			}
		}
		enc := q.ApplyEncoded(data)
		if err := fzSameResult(res, enc); err != nil {
			t.Fatalf("Apply and ApplyEncoded differ: %v\napply:   %+v\nencoded: %+v", err, res, enc)
		}
		if !bytes.Equal(mdlSnapBytes(t, p), mdlSnapBytes(t, q)) {
			t.Fatalf("Apply and ApplyEncoded left different states")
		}
		fzCheckCounts(t, p, res)
		fzCheckConsistent(t, p)
	})
}
