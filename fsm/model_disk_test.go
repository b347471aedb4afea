package fsm

import (
	"fmt"
	"log/slog"
	"testing"

	"github.com/quorumq/quorumq/storage"
)

// diskKV hands a partition of the disk engine to fsm, as the cluster does.
type diskKV struct{ *storage.PartitionKV }

func (k diskKV) View() KVView { return k.PartitionKV.View() }

// TestPartitionModelOnDisk runs the model test with every partition in the
// node's disk engine (Pebble) instead of memory: the same commands must
// give the same results, states and snapshots whichever store holds them.
func TestPartitionModelOnDisk(t *testing.T) {
	if testing.Short() {
		t.Skip("disk model test in -short")
	}
	e, err := storage.OpenEngine(t.TempDir(), storage.EngineOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	n := 0
	runPartitionModel(t, func() *Partition {
		n++
		p, err := OpenPartition(diskKV{e.Partition(fmt.Sprintf("q/model/1/%d", n))})
		if err != nil {
			t.Fatal(err)
		}
		return p
	})
}

// benchDiskFSM returns the adapter around an empty partition in a disk
// engine of its own (64 MiB cache, as a node's default).
func benchDiskFSM(b *testing.B) *RaftFSM[*Partition] {
	e, err := storage.OpenEngine(b.TempDir(), storage.EngineOptions{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.Close() })
	p, err := OpenPartition(diskKV{e.Partition("q/bench/1/0")})
	if err != nil {
		b.Fatal(err)
	}
	return NewRaftFSM(p)
}
