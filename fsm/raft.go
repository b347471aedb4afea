package fsm

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc64"
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

// A Raft snapshot is the applied index framed before the machine's own
// snapshot: indexMagic, then the index as 8 big-endian bytes. Raft does not
// tell an FSM the index of a snapshot it restores; the frame does, so that
// AppliedIndex and StateChecksum stay paired after a restore. A snapshot
// without the frame (written before it existed) restores with index 0
// until the next entry is applied.
const indexMagic = "QQA1"

// Snapshot captures the state; Raft writes it with Persist while applying on.
func (f *RaftFSM[M]) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return raftSnapshot{applied: f.applied, w: f.m.capture()}, nil
}

// Restore replaces the state with the snapshot in rc.
func (f *RaftFSM[M]) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	br := bufio.NewReader(rc)
	var applied uint64
	if head, err := br.Peek(len(indexMagic) + 8); err == nil && string(head[:len(indexMagic)]) == indexMagic {
		applied = binary.BigEndian.Uint64(head[len(indexMagic):])
		if _, err := br.Discard(len(head)); err != nil {
			return fmt.Errorf("snapshot frame: %w", err)
		}
	} else if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("snapshot frame: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.m.restore(br); err != nil {
		return err
	}
	f.applied = applied
	return nil
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

// StateChecksum returns the applied index and a CRC-64 of the machine's
// state at that index. Equal states give equal checksums (the snapshot
// encoding is canonical), so replicas at the same index must agree. It
// costs a snapshot capture under the read lock, then hashing outside it:
// cheap enough to answer on request, not to run per command.
func (f *RaftFSM[M]) StateChecksum() (applied, sum uint64, err error) {
	f.mu.RLock()
	applied, w := f.applied, f.m.capture()
	f.mu.RUnlock()
	h := crc64.New(crc64Table)
	if _, err := w.WriteTo(h); err != nil {
		return 0, 0, fmt.Errorf("state checksum: %w", err)
	}
	return applied, h.Sum64(), nil
}

var crc64Table = crc64.MakeTable(crc64.ECMA)

type raftSnapshot struct {
	applied uint64
	w       io.WriterTo
}

func (s raftSnapshot) Persist(sink raft.SnapshotSink) error {
	var frame bytes.Buffer
	frame.WriteString(indexMagic)
	_ = binary.Write(&frame, binary.BigEndian, s.applied)
	if _, err := sink.Write(frame.Bytes()); err != nil {
		_ = sink.Cancel()
		return err
	}
	if _, err := s.w.WriteTo(sink); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (raftSnapshot) Release() {}
