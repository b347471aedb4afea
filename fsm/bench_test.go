package fsm

import (
	"fmt"
	"io"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

// The benchmarks drive the partition the way Raft does: encoded log entries
// in batches through the adapter's ApplyBatch, decoding included. Raft hands
// the FSM up to MaxAppendEntries (64) entries at a time.
const benchBatch = 64

func encodeLog(b testing.TB, index uint64, c *fsmv1.Command) *raft.Log {
	c.Version = CommandVersion
	data, err := proto.Marshal(c)
	if err != nil {
		b.Fatal(err)
	}
	return &raft.Log{Index: index, Type: raft.LogCommand, Data: data}
}

func enqueueCmd(stamp int64, n, size int, dedupPrefix string) *fsmv1.Command {
	msgs := make([]*fsmv1.NewMessage, n)
	for i := range msgs {
		msgs[i] = &fsmv1.NewMessage{Payload: make([]byte, size)}
		if dedupPrefix != "" {
			msgs[i].DedupId = fmt.Sprintf("%s-%d", dedupPrefix, i)
		}
	}
	return &fsmv1.Command{Stamp: stamp, Op: &fsmv1.Command_Enqueue{Enqueue: &fsmv1.Enqueue{Messages: msgs}}}
}

// benchStores are the stores the benchmarks run on: memory, and the disk
// engine (benchDiskFSM, in model_disk_test.go).
var benchStores = []struct {
	name string
	new  func(b *testing.B) *RaftFSM[*Partition]
}{
	{"mem", func(*testing.B) *RaftFSM[*Partition] { return NewPartitionFSM() }},
	{"disk", benchDiskFSM},
}

// renumber gives logs the indexes after *index: a stored machine skips
// entries at or below the index it holds.
func renumber(logs []*raft.Log, index *uint64) {
	for _, l := range logs {
		*index++
		l.Index = *index
	}
}

func applyAll(b *testing.B, f *RaftFSM[*Partition], logs []*raft.Log) {
	for len(logs) > 0 {
		n := min(benchBatch, len(logs))
		for _, r := range f.ApplyBatch(logs[:n]) {
			if res := r.(*Result); res.Code != OK {
				b.Fatalf("apply: %v %s", res.Code, res.Detail)
			}
		}
		logs = logs[n:]
	}
}

// BenchmarkApplyEnqueue: one op is one log entry of 100 messages of 128 B.
// The partition is replaced every million messages so memory stays flat.
func BenchmarkApplyEnqueue(b *testing.B) {
	for _, store := range benchStores {
		for _, dedup := range []bool{false, true} {
			b.Run(fmt.Sprintf("store=%s/dedup=%v", store.name, dedup), func(b *testing.B) {
				benchApplyEnqueue(b, store.new, dedup)
			})
		}
	}
}

func benchApplyEnqueue(b *testing.B, newFSM func(*testing.B) *RaftFSM[*Partition], dedup bool) {
	{
		{
			const perLog, size, pool = 100, 128, 1024
			var logs []*raft.Log
			gen := 0
			refill := func() {
				logs = logs[:0]
				for i := range pool {
					prefix := ""
					if dedup {
						prefix = fmt.Sprintf("g%d-%d", gen, i)
					}
					logs = append(logs, encodeLog(b, uint64(i+1), enqueueCmd(int64(i+1), perLog, size, prefix)))
				}
				gen++
			}
			refill()
			f := newFSM(b)
			var index uint64
			b.ReportAllocs()
			b.SetBytes(perLog * size)
			b.ResetTimer()
			for done := 0; done < b.N; {
				n := min(pool, b.N-done)
				renumber(logs[:n], &index)
				applyAll(b, f, logs[:n])
				done += n
				if done < b.N {
					b.StopTimer()
					if dedup {
						refill()
					}
					var s Stats
					f.Read(func(p *Partition) { s = p.Stats() })
					if s.Messages() >= 1_000_000 {
						f, index = newFSM(b), 0
					}
					b.StartTimer()
				}
			}
			b.ReportMetric(float64(b.N*perLog)/b.Elapsed().Seconds(), "msgs/s")
		}
	}
}

// BenchmarkApplyReceiveAck: one op is a Receive of 100 messages and the Ack
// of those 100 receipts, two log entries.
func BenchmarkApplyReceiveAck(b *testing.B) {
	for _, store := range benchStores {
		b.Run("store="+store.name, func(b *testing.B) { benchApplyReceiveAck(b, store.new(b)) })
	}
}

func benchApplyReceiveAck(b *testing.B, f *RaftFSM[*Partition]) {
	const perOp, prefill = 100, 200_000
	index := uint64(0)
	next := func() uint64 { index++; return index }
	fill := func() {
		var logs []*raft.Log
		for range prefill / 1000 {
			logs = append(logs, encodeLog(b, next(), enqueueCmd(1, 1000, 128, "")))
		}
		applyAll(b, f, logs)
	}
	fill()
	// Receipts are predictable: delivery is in sequence order and a first
	// delivery has lease epoch 1.
	seq := uint64(1)
	var logs []*raft.Log
	build := func(ops int) {
		logs = logs[:0]
		for range ops {
			logs = append(logs, encodeLog(b, next(), &fsmv1.Command{Stamp: 2, Op: &fsmv1.Command_Receive{Receive: &fsmv1.Receive{Consumer: "c1", Max: perOp}}}))
			refs := make([]*fsmv1.LeaseRef, perOp)
			for i := range refs {
				refs[i] = &fsmv1.LeaseRef{Seq: seq, Epoch: 1}
				seq++
			}
			logs = append(logs, encodeLog(b, next(), &fsmv1.Command{Stamp: 2, Op: &fsmv1.Command_Ack{Ack: &fsmv1.Ack{Leases: refs}}}))
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; {
		b.StopTimer()
		var ready uint64
		f.Read(func(p *Partition) { ready = p.Stats().Ready })
		if ready < 1000*perOp {
			fill()
		}
		n := min(1000, b.N-done)
		build(n)
		b.StartTimer()
		applyAll(b, f, logs)
		done += n
	}
	b.StopTimer()
	var s Stats
	f.Read(func(p *Partition) { s = p.Stats() })
	if s.AckedTotal != uint64(b.N*perOp) || s.Leased != 0 {
		b.Fatalf("acked %d of %d, %d still leased", s.AckedTotal, b.N*perOp, s.Leased)
	}
	b.ReportMetric(float64(b.N*perOp)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkSnapshot: one op captures and writes a snapshot of a partition
// holding 1,000,000 messages of 128 B (some leased, some delayed, some dead).
func BenchmarkSnapshot(b *testing.B) {
	const total = 1_000_000
	p := NewPartition()
	for i := 0; i < total/1000; i++ {
		c := enqueueCmd(int64(i+1), 1000, 128, fmt.Sprintf("d%d", i))
		if i%10 == 0 {
			for _, m := range c.GetEnqueue().GetMessages() {
				m.Delay = int64(DefaultVisibility)
			}
		}
		c.Version = CommandVersion
		mustOK(b, p.Apply(c))
	}
	mustOK(b, p.Apply(&fsmv1.Command{Version: CommandVersion, Stamp: total, Op: &fsmv1.Command_Receive{Receive: &fsmv1.Receive{Max: 1000}}}))
	b.ReportAllocs()
	b.ResetTimer()
	var n int64
	for range b.N {
		var err error
		n, err = p.Snapshot().WriteTo(io.Discard)
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*total)/b.Elapsed().Seconds(), "msgs/s")
	b.ReportMetric(float64(n), "snapshot-bytes")
}

func mustOK(tb testing.TB, r *Result) {
	tb.Helper()
	if r.Code != OK {
		tb.Fatalf("result %v: %s", r.Code, r.Detail)
	}
}
