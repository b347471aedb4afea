package fsm

import (
	"io"
	"sync"

	"github.com/hashicorp/raft"
)

// This file is the only one in fsm that knows hashicorp/raft: a thin adapter
// from raft.BatchingFSM to the pure state machines.

// Machine is a state machine the Raft adapter can drive: Partition or Catalog.
type Machine interface {
	// applyEncoded applies one encoded command and returns its result.
	applyEncoded(data []byte) any
	// capture returns a point-in-time copy that can be written while the
	// machine goes on applying commands.
	capture() io.WriterTo
	// restore replaces the state with a snapshot, or leaves it unchanged
	// and returns an error.
	restore(r io.Reader) error
}

func (p *Partition) applyEncoded(data []byte) any { return p.ApplyEncoded(data) }
func (p *Partition) capture() io.WriterTo         { return p.Snapshot() }
func (p *Partition) restore(r io.Reader) error    { return p.Restore(r) }

// RaftFSM adapts a Machine to hashicorp/raft. Raft applies whole batches of
// committed entries through ApplyBatch, one call and one lock per batch;
// readers use Read, which may run alongside snapshot writing.
type RaftFSM[M Machine] struct {
	mu      sync.RWMutex
	m       M
	applied uint64
}

var _ raft.BatchingFSM = (*RaftFSM[*Partition])(nil)

// NewRaftFSM wraps m. The adapter owns m from now on.
func NewRaftFSM[M Machine](m M) *RaftFSM[M] { return &RaftFSM[M]{m: m} }

// NewPartitionFSM returns the adapter around an empty partition.
func NewPartitionFSM() *RaftFSM[*Partition] { return NewRaftFSM(NewPartition()) }

// ApplyBatch applies committed entries in order. Each command entry's
// response is the machine's result (*Result for a partition); other entry
// types get nil.
func (f *RaftFSM[M]) ApplyBatch(logs []*raft.Log) []any {
	out := make([]any, len(logs))
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, l := range logs {
		if l.Type == raft.LogCommand {
			out[i] = f.m.applyEncoded(l.Data)
		}
		f.applied = l.Index
	}
	return out
}

// Apply applies one committed entry.
func (f *RaftFSM[M]) Apply(l *raft.Log) any { return f.ApplyBatch([]*raft.Log{l})[0] }

// Snapshot captures the state; Raft writes it with Persist while applying on.
func (f *RaftFSM[M]) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return raftSnapshot{f.m.capture()}, nil
}

// Restore replaces the state with the snapshot in rc.
func (f *RaftFSM[M]) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.m.restore(rc)
}

// Read calls fn with the machine while no command is being applied. fn must
// not modify the machine or keep it after returning.
func (f *RaftFSM[M]) Read(fn func(m M)) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	fn(f.m)
}

// AppliedIndex is the Raft index of the last entry applied.
func (f *RaftFSM[M]) AppliedIndex() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.applied
}

type raftSnapshot struct{ w io.WriterTo }

func (s raftSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := s.w.WriteTo(sink); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (raftSnapshot) Release() {}
