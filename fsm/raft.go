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
	// restore replaces the state with a snapshot, or returns an error.
	restore(r io.Reader) error
}

// stored is a Machine whose state lives in a KV with the index of the last
// entry applied to it: it survives a restart without a snapshot, and a
// snapshot of it is a mark in the log, not a copy of the state.
type stored interface {
	Machine
	appliedIndex() uint64
	commit(applied uint64) error
	sync() error
	checksum() uint64
}

func (p *Partition) applyEncoded(data []byte) any { return p.ApplyEncoded(data) }
func (p *Partition) capture() io.WriterTo         { return p.Snapshot() }
func (p *Partition) restore(r io.Reader) error    { return p.Restore(r) }
func (p *Partition) appliedIndex() uint64         { return p.applied }
func (p *Partition) sync() error                  { return p.kv.Sync() }
func (p *Partition) checksum() uint64             { return p.Checksum() }

// RaftFSM adapts a Machine to hashicorp/raft. Raft applies whole batches of
// committed entries through ApplyBatch, one call and one lock per batch;
// readers use Read.
//
// For a stored machine (a partition) every batch ends with one commit of
// the KV carrying the batch's writes and its last index, without a sync of
// its own: the Raft log is the durable record. After a restart the machine
// holds the state of some applied index, possibly behind what had been
// applied before the crash; Raft replays the log from its last snapshot and
// entries at or below the machine's index are skipped, the rest applied
// again in order. A snapshot (Snapshot, Persist) syncs the KV and records
// only the index; the state itself is streamed from the KV when a follower
// needs it (SnapshotStore).
type RaftFSM[M Machine] struct {
	mu      sync.Mutex
	m       M
	applied uint64
	// broken is set when a restore failed half-way: the machine's state is
	// gone and applying anything more would make this replica differ.
	broken error
}

var _ raft.BatchingFSM = (*RaftFSM[*Partition])(nil)

// NewRaftFSM wraps m. The adapter owns m from now on.
func NewRaftFSM[M Machine](m M) *RaftFSM[M] {
	f := &RaftFSM[M]{m: m}
	if s, ok := any(m).(stored); ok {
		f.applied = s.appliedIndex()
	}
	return f
}

// NewPartitionFSM returns the adapter around an empty partition in memory.
func NewPartitionFSM() *RaftFSM[*Partition] { return NewRaftFSM(NewPartition()) }

// ErrStateLost: a stored machine's state is behind a snapshot that said it
// was durable, or a restore failed half-way. This replica's state is not
// what it acknowledged: it must not serve.
var ErrStateLost = errors.New("partition state lost")

// ApplyBatch applies committed entries in order. Each command entry's
// response is the machine's result (*Result for a partition); other entry
// types, and entries a stored machine already holds, get nil.
func (f *RaftFSM[M]) ApplyBatch(logs []*raft.Log) []any {
	out := make([]any, len(logs))
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.broken != nil {
		panic(fmt.Sprintf("fsm: applying entries to a replica whose state is gone: %v", f.broken))
	}
	s, isStored := any(f.m).(stored)
	changed := false
	for i, l := range logs {
		if isStored && l.Index <= f.applied {
			continue
		}
		if l.Type == raft.LogCommand {
			out[i] = f.m.applyEncoded(l.Data)
		}
		f.applied = l.Index
		changed = true
	}
	if isStored && changed {
		if err := s.commit(f.applied); err != nil {
			// The state in memory is ahead of the store: going on would
			// lose writes at the next restart without the log knowing.
			panic(fmt.Sprintf("fsm: committing the partition's state at index %d: %v", f.applied, err))
		}
	}
	return out
}

// Apply applies one committed entry.
func (f *RaftFSM[M]) Apply(l *raft.Log) any { return f.ApplyBatch([]*raft.Log{l})[0] }

// A Raft snapshot stream is the applied index framed before the machine's
// own snapshot: indexMagic, then the index as 8 big-endian bytes. Raft does
// not tell an FSM the index of a snapshot it restores; the frame does. A
// stream without the frame (written before it existed) restores with index
// 0 until the next entry is applied.
const indexMagic = "QQA1"

// localMagic starts what Persist writes for a stored machine: a mark that
// the state at the index after it is in the machine's own store (synced
// before the mark was written). It is never sent: SnapshotStore streams the
// store instead.
const localMagic = "QQL1"

// Snapshot captures the state; Raft writes it with Persist while applying on.
func (f *RaftFSM[M]) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok := any(f.m).(stored); ok {
		return localSnapshot{applied: f.applied, sync: s.sync}, nil
	}
	return raftSnapshot{applied: f.applied, w: f.m.capture()}, nil
}

// Restore replaces the state with the snapshot in rc. A stored machine that
// already holds the snapshot's index or later keeps its state (the log
// replays the rest).
func (f *RaftFSM[M]) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	br := bufio.NewReader(rc)
	var applied uint64
	if head, err := br.Peek(len(indexMagic) + 8); err == nil && string(head[:len(indexMagic)]) == indexMagic {
		applied = binary.BigEndian.Uint64(head[len(indexMagic):])
		if _, err := br.Discard(len(head)); err != nil {
			return fmt.Errorf("snapshot frame: %w", err)
		}
	} else if err == nil && string(head[:len(localMagic)]) == localMagic {
		return errors.New("a local snapshot mark is not a snapshot: open it through the SnapshotStore")
	} else if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("snapshot frame: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	s, isStored := any(f.m).(stored)
	if isStored && applied != 0 && applied <= f.applied && f.broken == nil {
		return nil
	}
	if err := f.m.restore(br); err != nil {
		if isStored {
			f.broken = fmt.Errorf("%w: restoring a snapshot failed half-way: %w", ErrStateLost, err)
		}
		return err
	}
	f.applied = applied
	f.broken = nil
	if isStored {
		if err := s.commit(applied); err != nil {
			f.broken = fmt.Errorf("%w: %w", ErrStateLost, err)
			return err
		}
	}
	return nil
}

// Read calls fn with the machine while no command is being applied. fn must
// not modify the machine or keep it after returning.
func (f *RaftFSM[M]) Read(fn func(m M)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f.m)
}

// AppliedIndex is the Raft index of the last entry applied.
func (f *RaftFSM[M]) AppliedIndex() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.applied
}

// StateChecksum returns the applied index and a CRC-64 of the machine's
// state at that index. Equal states give equal checksums, so replicas at
// the same index must agree. A stored machine keeps it incrementally
// (O(1)); the catalogue hashes a capture of itself.
func (f *RaftFSM[M]) StateChecksum() (applied, sum uint64, err error) {
	f.mu.Lock()
	if s, ok := any(f.m).(stored); ok {
		defer f.mu.Unlock()
		return f.applied, s.checksum(), nil
	}
	applied, w := f.applied, f.m.capture()
	f.mu.Unlock()
	h := crc64.New(crc64Table)
	if _, err := w.WriteTo(h); err != nil {
		return 0, 0, fmt.Errorf("state checksum: %w", err)
	}
	return applied, h.Sum64(), nil
}

// Stream returns the machine's state as a snapshot stream (the frame and
// the machine's snapshot) and its exact length. The state is a view taken
// now; the stream is produced as it is read, in bounded memory, and its
// length by a first pass over the same view. Close the reader to release
// the view.
func (f *RaftFSM[M]) Stream() (int64, io.ReadCloser, error) {
	f.mu.Lock()
	if f.broken != nil {
		f.mu.Unlock()
		return 0, nil, f.broken
	}
	applied, w := f.applied, f.m.capture()
	f.mu.Unlock()
	snap := raftSnapshot{applied: applied, w: w}
	var count countWriter
	if err := snap.writeTo(&count); err != nil {
		snap.Release()
		return 0, nil, err
	}
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := snap.writeTo(pw)
		// The view is released before the reader sees the end, so that a
		// reader done with the stream may close the store at once.
		snap.Release()
		pw.CloseWithError(err)
	}()
	return count.n, pipeReader{pr, done}, nil
}

// pipeReader is a stream's reading end; Close stops the writer and waits
// for it, so the view is released when Close returns.
type pipeReader struct {
	*io.PipeReader
	done chan struct{}
}

func (r pipeReader) Close() error {
	err := r.PipeReader.Close()
	<-r.done
	return err
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(b []byte) (int, error) { c.n += int64(len(b)); return len(b), nil }

type raftSnapshot struct {
	applied uint64
	w       io.WriterTo
}

func (s raftSnapshot) writeTo(w io.Writer) error {
	var frame bytes.Buffer
	frame.WriteString(indexMagic)
	_ = binary.Write(&frame, binary.BigEndian, s.applied)
	if _, err := w.Write(frame.Bytes()); err != nil {
		return err
	}
	_, err := s.w.WriteTo(w)
	return err
}

func (s raftSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.writeTo(sink); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s raftSnapshot) Release() {
	if c, ok := s.w.(interface{ Close() }); ok {
		c.Close()
	}
}

// localSnapshot is a stored machine's snapshot: sync the store, then write
// the mark.
type localSnapshot struct {
	applied uint64
	sync    func() error
}

func (s localSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.sync(); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("sync partition state: %w", err)
	}
	var mark [len(localMagic) + 8]byte
	copy(mark[:], localMagic)
	binary.BigEndian.PutUint64(mark[len(localMagic):], s.applied)
	if _, err := sink.Write(mark[:]); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (localSnapshot) Release() {}

// SnapshotStore wraps the group's snapshot store for a stored machine.
// Snapshots it receives (a leader's stream) are kept as inner keeps them;
// Open of a local mark streams the machine's current state instead (at an
// index at or after the mark's, which the log then continues from).
func (f *RaftFSM[M]) SnapshotStore(inner raft.SnapshotStore) raft.SnapshotStore {
	return &snapshotStore{SnapshotStore: inner, stream: f.Stream, applied: f.AppliedIndex}
}

type snapshotStore struct {
	raft.SnapshotStore
	stream  func() (int64, io.ReadCloser, error)
	applied func() uint64
}

func (s *snapshotStore) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	meta, rc, err := s.SnapshotStore.Open(id)
	if err != nil {
		return nil, nil, err
	}
	br := bufio.NewReader(rc)
	head, err := br.Peek(len(localMagic) + 8)
	if err != nil || string(head[:len(localMagic)]) != localMagic {
		return meta, readCloser{Reader: br, Closer: rc}, nil
	}
	mark := binary.BigEndian.Uint64(head[len(localMagic):])
	rc.Close()
	if a := s.applied(); a < mark {
		return nil, nil, fmt.Errorf("%w: the store is at index %d, behind its snapshot at %d", ErrStateLost, a, mark)
	}
	size, stream, err := s.stream()
	if err != nil {
		return nil, nil, err
	}
	m := *meta
	m.Size = size
	return &m, stream, nil
}

type readCloser struct {
	io.Reader
	io.Closer
}

// RestoreLatest brings a stored machine up to the store's newest snapshot
// when its own state is behind it: a data directory written before
// partition state was stored (its snapshots hold the state), or a received
// snapshot whose restore a crash interrupted. Call it before raft.NewRaft,
// which is then configured not to restore snapshots itself
// (NoSnapshotRestoreOnStart): a restart reads no snapshot at all. A local
// mark ahead of the state is ErrStateLost.
func (f *RaftFSM[M]) RestoreLatest(store raft.SnapshotStore) error {
	metas, err := store.List()
	if err != nil || len(metas) == 0 {
		return err
	}
	latest := metas[0]
	if latest.Index <= f.AppliedIndex() {
		return nil
	}
	_, rc, err := store.Open(latest.ID)
	if err != nil {
		return err
	}
	br := bufio.NewReader(rc)
	if head, err := br.Peek(len(localMagic)); err == nil && string(head) == localMagic {
		rc.Close()
		return fmt.Errorf("%w: the store is at index %d, behind its snapshot at %d", ErrStateLost, f.AppliedIndex(), latest.Index)
	}
	if err := f.Restore(readCloser{Reader: br, Closer: rc}); err != nil {
		return err
	}
	// A snapshot written before the frame existed restores with index 0:
	// its state is the one at its index.
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.applied < latest.Index {
		f.applied = latest.Index
		if s, ok := any(f.m).(stored); ok {
			return s.commit(f.applied)
		}
	}
	return nil
}

// HoldsMark reports whether the newest snapshot in store is a stored
// machine's mark (its state lives in the machine's own store, which must
// then hold it).
func HoldsMark(store raft.SnapshotStore) (bool, error) {
	metas, err := store.List()
	if err != nil || len(metas) == 0 {
		return false, err
	}
	_, rc, err := store.Open(metas[0].ID)
	if err != nil {
		return false, err
	}
	defer rc.Close()
	head := make([]byte, len(localMagic))
	if _, err := io.ReadFull(rc, head); err != nil {
		return false, nil
	}
	return string(head) == localMagic, nil
}
