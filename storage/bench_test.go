package storage

import (
	"testing"

	"github.com/hashicorp/raft"
)

// BenchmarkStoreLogs measures durable appends on this disk the way Raft
// issues them: batches of 64 entries of 12,800 bytes (128 messages of 100
// bytes) in one StoreLogs call, which is one bolt commit. It reports
// entries/s and commits/s; each commit is two fdatasyncs (pages, then the
// meta page), so commits/s is what the disk's flush latency allows.
func BenchmarkStoreLogs(b *testing.B) {
	const (
		batch     = 64
		entrySize = 128 * 100
	)
	d := mustOpen(b, b.TempDir())
	g := mustOpenGroup(b, d, PartitionGroup("bench", 1, 0))

	data := make([]byte, entrySize)
	for i := range data {
		data[i] = byte(i)
	}
	logs := make([]*raft.Log, batch)
	for i := range logs {
		logs[i] = &raft.Log{Term: 1, Type: raft.LogCommand, Data: data}
	}
	b.SetBytes(batch * entrySize)
	next := uint64(1)
	commits := 0
	for b.Loop() {
		for _, l := range logs {
			l.Index = next
			next++
		}
		if err := g.Log.StoreLogs(logs); err != nil {
			b.Fatal(err)
		}
		commits++
	}
	sec := b.Elapsed().Seconds()
	b.ReportMetric(float64(commits*batch)/sec, "entries/s")
	b.ReportMetric(float64(commits)/sec, "commits/s")
}
