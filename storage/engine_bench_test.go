package storage

import (
	"encoding/binary"
	"path/filepath"
	"testing"
)

// BenchmarkEngineApply measures the state engine under a queue's apply
// load: per iteration one partition enqueues 100 messages of 1 KiB (for
// each a body key and an index key, then one meta record) and commits
// (NoSync), as the state machine does for one Raft batch.
//
//   - enqueue: the backlog only grows (flushes and compactions of ever
//     more data).
//   - enqueue+consume: the same, and the 100 messages of the previous
//     iteration are consumed (both keys deleted), so the memtable sees each
//     message set then deleted; the backlog stays at 100.
//   - enqueue+sync: enqueue, then Sync after each Commit: what an fsync of
//     the WAL per batch would cost.
func BenchmarkEngineApply(b *testing.B) {
	for _, bc := range []struct {
		name          string
		consume, sync bool
	}{
		{"enqueue", false, false},
		{"enqueue+consume", true, false},
		{"enqueue+sync", false, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			benchmarkApply(b, bc.consume, bc.sync)
		})
	}
}

func benchmarkApply(b *testing.B, consume, sync bool) {
	const batch, size = 100, 1024
	e := openTestEngine(b, filepath.Join(b.TempDir(), "state"), nil)
	defer closeEngine(b, e)
	kv := e.Partition("q/orders/17/3")
	body := make([]byte, size)
	for i := range body {
		body[i] = byte(i * 7) // not all zeros: snappy would make it nothing
	}
	bodyKey := func(seq uint64) []byte { return binary.BigEndian.AppendUint64([]byte("m"), seq) }
	// The index orders by priority, then enqueue sequence.
	indexKey := func(seq uint64) []byte {
		return binary.BigEndian.AppendUint64([]byte{'i', 0, 0, 0, 4}, seq)
	}
	meta := make([]byte, 48)
	idxVal := make([]byte, 16)

	b.SetBytes(batch * size)
	var seq uint64
	for b.Loop() {
		for range batch {
			seq++
			binary.BigEndian.PutUint64(body, seq)
			binary.BigEndian.PutUint64(idxVal, seq)
			kv.Set(bodyKey(seq), body)
			kv.Set(indexKey(seq), idxVal)
		}
		if consume && seq > batch {
			for s := seq - 2*batch + 1; s <= seq-batch; s++ {
				kv.Delete(bodyKey(s))
				kv.Delete(indexKey(s))
			}
		}
		binary.BigEndian.PutUint64(meta, seq)
		kv.Set([]byte("meta"), meta)
		if err := kv.Commit(); err != nil {
			b.Fatal(err)
		}
		if sync {
			if err := kv.Sync(); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(seq)/b.Elapsed().Seconds(), "msgs/s")
	s := e.Stats()
	b.ReportMetric(float64(s.Compactions), "compactions")
	b.ReportMetric(float64(s.WriteStalls), "stalls")
}
