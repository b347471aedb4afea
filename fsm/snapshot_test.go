package fsm

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// scenario is a fixed command stream that leaves messages in every state,
// dedup entries, superseded dedup records and counters behind.
func scenario() []*fsmv1.Command {
	var cs []*fsmv1.Command
	add := func(stamp int64, op any) { cs = append(cs, command(stamp, op)) }
	lr := func(seq uint64, epoch uint32) *fsmv1.LeaseRef { return &fsmv1.LeaseRef{Seq: seq, Epoch: epoch} }
	add(1, &fsmv1.Command_Configure{Configure: &fsmv1.Configure{Settings: settings(func(s *fsmv1.Settings) {
		s.MaxDeliveries, s.DedupWindow, s.Retention, s.Partition = 2, 50*sec, 1000*sec, 3
	})}})
	add(2, enq(dmsg("a", "id-a"), &fsmv1.NewMessage{Payload: []byte("b"), Key: "k", Headers: []*fsmv1.Header{{Key: "x", Value: []byte("y")}, {Key: "z"}}}, dmsg("c", "id-c")))
	add(3, enq(&fsmv1.NewMessage{Payload: []byte("delayed"), Delay: 500 * sec, DedupId: "id-d"}, msg("e"), msg("f"), msg("g")))
	add(4, recv(3, time.Second)) // 1, 2, 3
	add(5, ack(lr(2, 1)))        // 2 acked
	add(6, &fsmv1.Command_Reject{Reject: &fsmv1.Reject{Leases: []*fsmv1.LeaseRef{lr(3, 1)}, Reason: "nope"}})
	add(4+sec, recv(1, time.Second))               // 1 again (epoch 2)
	add(4+2*sec, tick())                           // 1 expires: max deliveries -> dead
	add(4+2*sec, recv(1, time.Minute))             // 5
	add(10*sec, requeue(30*time.Second, lr(5, 1))) // 5 delayed
	add(11*sec, &fsmv1.Command_Configure{Configure: &fsmv1.Configure{Settings: settings(func(s *fsmv1.Settings) {
		s.MaxDeliveries, s.DedupWindow, s.Retention, s.Partition = 2, 5*sec, 1000*sec, 3
	})}})
	add(12*sec, enq(dmsg("h", "id-h"), msg("i"))) // id-h expires at 17 s, before id-a (52 s)
	add(20*sec, enq(dmsg("h2", "id-h")))          // id-h again: its first record is superseded
	add(21*sec, &fsmv1.Command_Redrive{Redrive: &fsmv1.Redrive{Seqs: []uint64{3}}})
	add(22*sec, recv(2, time.Hour))
	return cs
}

func runScenario(t testing.TB, p *Partition, cs []*fsmv1.Command) {
	t.Helper()
	for i, c := range cs {
		data, err := proto.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		if r := p.ApplyEncoded(data); r.Code != OK {
			t.Fatalf("command %d: %v %s", i, r.Code, r.Detail)
		}
	}
}

// TestSnapshotGolden: the scenario's snapshot is byte for byte the one in
// testdata. A change to the format or to any semantics shows up here; after
// a deliberate change, regenerate with -update and bump the format version
// if old snapshots no longer restore to the same state.
func TestSnapshotGolden(t *testing.T) {
	p := NewPartition()
	runScenario(t, p, scenario())
	got := snapBytes(t, p)
	again := NewPartition()
	runScenario(t, again, scenario())
	if !bytes.Equal(got, snapBytes(t, again)) {
		t.Fatal("the same command stream gave different snapshots")
	}
	path := filepath.Join("testdata", "partition.snap")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("snapshot differs from %s (%d bytes, want %d)", path, len(got), len(want))
	}
	s := p.Stats()
	if stale := p.fifoTail - p.fifoHead - p.dedupLive; s.Ready == 0 || s.Delayed == 0 || s.Leased == 0 || s.Dead == 0 || p.dedupLive == 0 || stale == 0 {
		t.Fatalf("scenario does not cover every state: %+v, dedup %d, stale %d", s, p.dedupLive, stale)
	}
}

// TestRestoreThenContinue: snapshotting after any prefix of the stream,
// restoring into a new partition and applying the rest gives the same bytes
// as never snapshotting.
func TestRestoreThenContinue(t *testing.T) {
	cs := scenario()
	// Continue past the scenario so that restored indexes are exercised.
	more := []*fsmv1.Command{
		{Version: CommandVersion, Stamp: 210 * sec, Op: recv(10, time.Second)},
		{Version: CommandVersion, Stamp: 2000 * sec, Op: tick()},
		{Version: CommandVersion, Stamp: 2001 * sec, Op: &fsmv1.Command_Redrive{Redrive: &fsmv1.Redrive{}}},
		{Version: CommandVersion, Stamp: 2002 * sec, Op: recv(10, time.Second)},
	}
	all := append(append([]*fsmv1.Command{}, cs...), more...)
	straight := NewPartition()
	runScenario(t, straight, all)
	want := snapBytes(t, straight)
	for k := 0; k <= len(all); k++ {
		p := NewPartition()
		runScenario(t, p, all[:k])
		q := NewPartition()
		if err := q.Restore(bytes.NewReader(snapBytes(t, p))); err != nil {
			t.Fatalf("restore after %d commands: %v", k, err)
		}
		if q.Stats() != p.Stats() {
			t.Fatalf("after %d commands: restored stats %+v, want %+v", k, q.Stats(), p.Stats())
		}
		runScenario(t, q, all[k:])
		if !bytes.Equal(snapBytes(t, q), want) {
			t.Fatalf("restore after %d commands then continue differs from never snapshotting", k)
		}
	}
}

func TestCorruptSnapshotRefused(t *testing.T) {
	p := NewPartition()
	runScenario(t, p, scenario())
	good := snapBytes(t, p)
	target := NewPartition()
	empty := snapBytes(t, NewPartition())

	rng := rand.New(rand.NewPCG(1, 2))
	cases := map[string][]byte{
		"empty":       nil,
		"magic only":  []byte(snapshotMagic),
		"wrong magic": append([]byte("QQPSNAP9"), good[8:]...),
		"truncated":   good[:len(good)-1],
		"trailing":    append(append([]byte{}, good...), 0),
	}
	for i := 0; i < 200; i++ {
		b := append([]byte{}, good...)
		b[8+rng.IntN(len(b)-8)] ^= byte(1 + rng.IntN(255))
		cases["flipped "+string(rune('a'+i%26))+string(rune('0'+i/26))] = b
	}
	for name, b := range cases {
		err := target.Restore(bytes.NewReader(b))
		if !errors.Is(err, ErrCorruptSnapshot) {
			t.Fatalf("%s: restore error %v", name, err)
		}
		if !bytes.Equal(empty, snapBytes(t, target)) {
			t.Fatalf("%s: a refused snapshot left state behind", name)
		}
		runScenario(t, target, scenario()[:3])
	}
}

// TestSnapshotEncoderMatchesProto: the hand-written record encoder produces
// exactly what proto.Marshal produces for the same record.
func TestSnapshotEncoderMatchesProto(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	str := func() string {
		if rng.IntN(3) == 0 {
			return ""
		}
		b := make([]byte, rng.IntN(300))
		for i := range b {
			b[i] = byte('a' + rng.IntN(26))
		}
		return string(b)
	}
	i64 := func() int64 {
		switch rng.IntN(4) {
		case 0:
			return 0
		case 1:
			return -rng.Int64()
		}
		return rng.Int64()
	}
	for i := 0; i < 2000; i++ {
		payload, key := []byte(str()), str()
		var headers []*fsmv1.Header
		for range rng.IntN(3) {
			headers = append(headers, &fsmv1.Header{Key: str(), Value: []byte(str())})
		}
		body, _ := encodeBody(0, 0, payload, key, headers)
		s := snapMsg{msgState: msgState{seq: rng.Uint64(), enqueuedAt: i64(), deadReason: str(), deadAt: i64(), deadOrder: uint64(i64()),
			until: i64(), consumer: str(), deliveries: rng.Uint32(), epoch: rng.Uint32(), state: state(1 + rng.IntN(4))},
			body: body[bodyHead:]}
		if rng.IntN(5) == 0 {
			s.deliveries, s.epoch = 0, 0
		}
		sm := &fsmv1.SnapshotMessage{Seq: s.seq, State: s.state.proto(), Payload: payload, Key: key,
			Headers: headers, EnqueuedAt: s.enqueuedAt, Deliveries: s.deliveries, Epoch: s.epoch,
			Until: s.until, Consumer: s.consumer}
		if s.state == stateDead {
			sm.DeadReason, sm.DeadAt, sm.DeadOrder = s.deadReason, s.deadAt, s.deadOrder
		}
		want := recordBytes(t, &fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Message{Message: sm}})
		if got := appendMessageRecord(nil, &s); !bytes.Equal(got, want) {
			t.Fatalf("message record %d:\n got %x\nwant %x", i, got, want)
		}
		d := &dedupRecord{key: keyOf(str()), seq: uint64(i64()), expiresAt: i64()}
		want = recordBytes(t, &fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Dedup{Dedup: &fsmv1.SnapshotDedup{IdHash: d.key[:], Seq: d.seq, ExpiresAt: d.expiresAt}}})
		if got := appendDedupRecord(nil, d); !bytes.Equal(got, want) {
			t.Fatalf("dedup record %d:\n got %x\nwant %x", i, got, want)
		}
	}
}

func recordBytes(t *testing.T, m proto.Message) []byte {
	b, err := deterministic.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return append(protowire.AppendVarint(nil, uint64(len(b))), b...)
}

// TestRaftAdapter drives the partition through hashicorp/raft's interfaces:
// a batch with a configuration entry, a snapshot persisted to a raft
// snapshot store (a mark: the state stays in the partition's store), a
// stream of it restored elsewhere, a restart that skips what the store
// already holds, and the refusals.
func TestRaftAdapter(t *testing.T) {
	kv := NewMemKV()
	p, err := OpenPartition(kv)
	if err != nil {
		t.Fatal(err)
	}
	f := NewRaftFSM(p)
	var logs []*raft.Log
	for i, c := range scenario() {
		logs = append(logs, &raft.Log{Index: uint64(i + 2), Type: raft.LogCommand, Data: mustMarshal(t, c)})
	}
	logs = append([]*raft.Log{{Index: 1, Type: raft.LogConfiguration}}, logs...)
	out := f.ApplyBatch(logs)
	if len(out) != len(logs) || out[0] != nil {
		t.Fatalf("responses: %d for %d logs, first %v", len(out), len(logs), out[0])
	}
	for i, r := range out[1:] {
		if res, ok := r.(*Result); !ok || res.Code != OK {
			t.Fatalf("response %d: %#v", i, r)
		}
	}
	if f.AppliedIndex() != uint64(len(logs)) {
		t.Fatalf("applied index %d", f.AppliedIndex())
	}

	inner := raft.NewInmemSnapshotStore()
	store := f.SnapshotStore(inner)
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink, err := store.Create(raft.SnapshotVersionMax, uint64(len(logs)), 1, raft.Configuration{}, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	// A command applied after the snapshot: the stream sent for it is the
	// state now, at the index now, which the log continues from.
	f.Apply(&raft.Log{Index: 100, Type: raft.LogCommand, Data: mustMarshal(t, &fsmv1.Command{Version: CommandVersion, Stamp: 300 * sec, Op: enq(msg("after"))})})
	var want []byte
	f.Read(func(p *Partition) { want = snapBytes(t, p) })
	metas, _ := store.List()
	meta, rc, err := store.Open(metas[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || int64(len(stream)) != meta.Size {
		t.Fatalf("stream of %d bytes, meta says %d (%v)", len(stream), meta.Size, err)
	}
	g := NewPartitionFSM()
	if err := g.Restore(io.NopCloser(bytes.NewReader(stream))); err != nil {
		t.Fatal(err)
	}
	g.Read(func(p *Partition) {
		if !bytes.Equal(snapBytes(t, p), want) {
			t.Fatal("restored state differs from the state streamed")
		}
	})
	if g.AppliedIndex() != 100 {
		t.Fatalf("restored at index %d, want 100", g.AppliedIndex())
	}
	// Restoring what it already holds changes nothing.
	if err := g.Restore(io.NopCloser(bytes.NewReader(stream))); err != nil {
		t.Fatal(err)
	}

	// A restart: the store holds the state at 100; the log replays from
	// the snapshot, and what the store holds is skipped.
	p2, err := OpenPartition(kv)
	if err != nil {
		t.Fatal(err)
	}
	f2 := NewRaftFSM(p2)
	if f2.AppliedIndex() != 100 {
		t.Fatalf("reopened at %d, want 100", f2.AppliedIndex())
	}
	if out := f2.ApplyBatch(logs[5:]); out[0] != nil {
		t.Fatalf("an entry the store holds was applied again: %+v", out[0])
	}
	f2.Read(func(p *Partition) {
		if !bytes.Equal(snapBytes(t, p), want) {
			t.Fatal("replayed entries changed the state")
		}
	})
	if err := f2.RestoreLatest(inner); err != nil {
		t.Fatalf("restore latest with the state ahead of the mark: %v", err)
	}

	// A store whose state is behind its mark lost it: refused.
	lost := NewPartitionFSM()
	lostStore := lost.SnapshotStore(inner)
	if _, _, err := lostStore.Open(metas[0].ID); !errors.Is(err, ErrStateLost) {
		t.Fatalf("open of a mark ahead of the state: %v", err)
	}
	if err := lost.RestoreLatest(inner); !errors.Is(err, ErrStateLost) {
		t.Fatalf("restore latest of a mark ahead of the state: %v", err)
	}

	// A snapshot that fails half-way leaves the replica refusing to apply.
	g = NewPartitionFSM()
	if err := g.Restore(io.NopCloser(bytes.NewReader(stream[:len(stream)-3]))); !errors.Is(err, ErrCorruptSnapshot) {
		t.Fatalf("restore of a truncated stream: %v", err)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("a replica whose restore failed applied an entry")
			}
		}()
		g.Apply(&raft.Log{Index: 101, Type: raft.LogNoop})
	}()
	if err := g.Restore(io.NopCloser(bytes.NewReader(stream))); err != nil {
		t.Fatalf("a whole snapshot after a failed one: %v", err)
	}
	g.Apply(&raft.Log{Index: 101, Type: raft.LogNoop})
}

func mustMarshal(t testing.TB, m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
