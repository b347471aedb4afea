package storage

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/hashicorp/raft"
)

// BenchmarkEngineLogStoreLogs is BenchmarkSharedLogStoreLogs's grid for
// EngineLog: `groups` goroutines each append, to their own group, batches
// of `batch` entries of 12,800 bytes; one op is one StoreLogs call.
// "engine" is EngineLog in a state engine with the default options (one
// pebble WAL, group commit by pebble's WAL writer); "shared" is the
// SharedLog, run by BenchmarkSharedLogStoreLogs's own code, in the same
// run and right after each engine row, so that the pair sees the same
// machine (the disk's speed drifts between runs). It reports entries/s,
// commits/s (the shared log's bolt commits, the engine's WAL fsyncs, both
// one durable flush) and StoreLogs calls per commit; for the engine also
// the memtable flushes, compactions and write stalls the run caused; for
// both the bytes the process wrote to the disk per byte of log entries
// (write_bytes of /proc/self/io; 0 where that is not available).
//
//	go test -run '^$' -bench EngineLogStoreLogs -benchtime 2s ./storage
func BenchmarkEngineLogStoreLogs(b *testing.B) {
	for _, batch := range []int{64, 4} {
		for _, groups := range []int{1, 8, 64} {
			for _, impl := range []string{"engine", "shared"} {
				b.Run(fmt.Sprintf("batch=%d/groups=%d/impl=%s", batch, groups, impl), func(b *testing.B) {
					written := processWrittenBytes()
					if impl == "shared" {
						benchConcurrentAppends(b, impl, groups, batch)
					} else {
						benchEngineAppends(b, groups, batch)
					}
					// What reached the disk per byte of log entries appended,
					// flushes and compactions included (setup is a few KiB).
					if w := processWrittenBytes() - written; w > 0 {
						b.ReportMetric(float64(w)/float64(b.N*batch*128*100), "disk-bytes/log-byte")
					}
				})
			}
		}
	}
}

// openBenchEngine opens an engine with the default options on the real
// file system, counting its WAL syncs.
func openBenchEngine(b *testing.B) (*Engine, *walSyncFS) {
	fs := &walSyncFS{FS: vfs.Default}
	e, err := OpenEngine(filepath.Join(b.TempDir(), StateDir), EngineOptions{Logger: quietLogger(), fs: fs})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = e.Close() })
	return e, fs
}

func benchEngineAppends(b *testing.B, groups, batch int) {
	const entrySize = 128 * 100
	e, fs := openBenchEngine(b)
	stores := make([]*EngineLog, groups)
	for i := range stores {
		stores[i] = mustLogGroup(b, e, PartitionGroup("bench", 1, uint32(i)).String())
	}
	data := make([]byte, entrySize)
	for i := range data {
		data[i] = byte(i)
	}
	before := e.Stats()
	syncs0 := fs.syncs.Load()

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
	syncs := float64(fs.syncs.Load() - syncs0)
	after := e.Stats()
	b.ReportMetric(float64(b.N)/syncs, "calls/commit")
	b.ReportMetric(float64(b.N*batch)/sec, "entries/s")
	b.ReportMetric(syncs/sec, "commits/s")
	b.ReportMetric(float64(after.Flushes-before.Flushes), "flushes")
	b.ReportMetric(float64(after.Compactions-before.Compactions), "compactions")
	b.ReportMetric(float64(after.WriteStalls-before.WriteStalls), "stalls")
}

// BenchmarkEngineLogAppendLatency measures what a lone producer waits for:
// one group alone appending 4 entries of 12,800 bytes per StoreLogs, one
// call at a time, and reports the latency percentiles of a call. "engine"
// and "shared" as in BenchmarkEngineLogStoreLogs, interleaved likewise.
//
//	go test -run '^$' -bench EngineLogAppendLatency -benchtime 2s ./storage
func BenchmarkEngineLogAppendLatency(b *testing.B) {
	for _, impl := range []string{"engine", "shared"} {
		b.Run("impl="+impl, func(b *testing.B) {
			const batch, entrySize = 4, 128 * 100
			var st raft.LogStore
			if impl == "engine" {
				e, _ := openBenchEngine(b)
				st = mustLogGroup(b, e, PartitionGroup("bench", 1, 0).String())
			} else {
				s := mustOpenShared(b, filepath.Join(b.TempDir(), SharedLogFile))
				st = mustGroup(b, s, PartitionGroup("bench", 1, 0).String())
			}
			data := make([]byte, entrySize)
			for i := range data {
				data[i] = byte(i)
			}
			logs := make([]*raft.Log, batch)
			for i := range logs {
				logs[i] = &raft.Log{Term: 1, Type: raft.LogCommand, Data: data}
			}
			var lat []time.Duration
			next := uint64(1)
			b.SetBytes(batch * entrySize)
			for b.Loop() {
				for _, l := range logs {
					l.Index = next
					next++
				}
				start := time.Now()
				if err := st.StoreLogs(logs); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			slices.Sort(lat)
			pct := func(p float64) float64 {
				return float64(lat[int(p*float64(len(lat)-1))].Microseconds())
			}
			b.ReportMetric(pct(0.5), "p50-µs")
			b.ReportMetric(pct(0.9), "p90-µs")
			b.ReportMetric(pct(0.99), "p99-µs")
		})
	}
}

// processWrittenBytes returns the bytes this process has caused to be
// written to storage (write_bytes in /proc/self/io), or 0.
func processWrittenBytes() int64 {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "write_bytes: "); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}
