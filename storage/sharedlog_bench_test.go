package storage

import (
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/raft"
)

// BenchmarkSharedLogStoreLogs measures durable appends from many groups at
// once, as a node hosting many partition replicas issues them: each of
// `groups` goroutines appends, to its own group, batches of entries of
// 12,800 bytes (128 messages of 100 bytes). One op is one StoreLogs call.
// "shared" is the SharedLog (one file, group commit across groups);
// "pergroup" is OpenGroup's raft-boltdb file per group (one commit per
// call). It reports entries/s, commits/s and, for the shared log,
// StoreLogs calls per commit.
//
// batch=64 (Raft's MaxAppendEntries, as BenchmarkStoreLogs) moves 820 KB
// per call and mostly measures the disk's bandwidth; batch=4 is what a
// partition leader appends under a steady stream of producer batches, and
// measures what fsync latency allows.
//
//	go test -run '^$' -bench SharedLogStoreLogs -benchtime 2s ./storage
func BenchmarkSharedLogStoreLogs(b *testing.B) {
	for _, batch := range []int{64, 4} {
		for _, impl := range []string{"shared", "pergroup"} {
			for _, groups := range []int{1, 8, 64} {
				b.Run(fmt.Sprintf("batch=%d/%s/groups=%d", batch, impl, groups), func(b *testing.B) {
					benchConcurrentAppends(b, impl, groups, batch)
				})
			}
		}
	}
}

func benchConcurrentAppends(b *testing.B, impl string, groups, batch int) {
	const entrySize = 128 * 100
	stores := make([]raft.LogStore, groups)
	var shared *SharedLog
	switch impl {
	case "shared":
		shared = mustOpenShared(b, filepath.Join(b.TempDir(), SharedLogFile))
		for i := range stores {
			stores[i] = mustGroup(b, shared, PartitionGroup("bench", 1, uint32(i)).String())
		}
	case "pergroup":
		d := mustOpen(b, b.TempDir())
		for i := range stores {
			stores[i] = mustOpenGroup(b, d, PartitionGroup("bench", 1, uint32(i))).Log
		}
	}
	data := make([]byte, entrySize)
	for i := range data {
		data[i] = byte(i)
	}

	b.SetBytes(int64(batch * entrySize))
	b.ResetTimer()
	var ops atomic.Int64 // StoreLogs calls started, across goroutines
	var wg sync.WaitGroup
	errs := make(chan error, groups)
	for _, st := range stores {
		wg.Go(func() {
			logs := make([]*raft.Log, batch)
			for i := range logs {
				logs[i] = &raft.Log{Term: 1, Type: raft.LogCommand, Data: data}
			}
			next := uint64(1)
			for ops.Add(1) <= int64(b.N) {
				for _, l := range logs {
					l.Index = next
					next++
				}
				if err := st.StoreLogs(logs); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}

	sec := b.Elapsed().Seconds()
	commits := float64(b.N) // raft-boltdb: one commit per StoreLogs
	if shared != nil {
		commits = float64(shared.commits.Load())
		b.ReportMetric(float64(shared.requests.Load())/commits, "calls/commit")
	}
	b.ReportMetric(float64(b.N*batch)/sec, "entries/s")
	b.ReportMetric(commits/sec, "commits/s")
}
