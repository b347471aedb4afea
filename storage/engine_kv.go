package storage

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
)

// ErrViewClosed means a PartitionView was read after Close.
var ErrViewClosed = errors.New("storage: state view is closed")

// PartitionKV is one partition replica's state in the engine: the ordered
// key-value store package fsm keeps a partition in (it has the method set
// of fsm.KV, except that View returns the concrete *PartitionView; see
// below). Its keys live under the group's prefix, p<group>\x00, so the
// partition sees only its own keys, and an upper bound of nil means the end
// of them.
//
// Writes go into a pebble indexed batch, created by the first write after
// a Commit, which Get and Scan read through (batch over database); with no
// pending writes reads go to the database directly. Commit applies the
// batch atomically without waiting for the disk (pebble.NoSync); Sync
// makes every commit so far durable.
//
// A PartitionKV is used by one goroutine. Its views may be read from
// others while it goes on writing.
//
// Reads cannot fail: the state machine applies the same commands to the
// same state on every replica, and a read that failed (an I/O error, a
// corrupt block) could only be answered by guessing — a missing key or an
// empty range — and the replica would then decide differently from the
// others, silently and for good. So a failed read panics ("storage:
// reading partition state of <group>: ..."), the process stops, and the
// replica recovers on restart from its last snapshot and log, or is
// replaced. The same holds for the writes, which pebble only buffers.
//
// Package storage does not import package fsm, so PartitionKV cannot name
// fsm.KVView in View's signature; the code that hands a PartitionKV to fsm
// wraps it:
//
//	type stateKV struct{ *storage.PartitionKV }
//
//	func (k stateKV) View() fsm.KVView { return k.PartitionKV.View() }
type PartitionKV struct {
	e      *Engine
	group  string
	prefix []byte // p<group>\x00
	end    []byte // p<group>\x01: the first key after the group's keys

	batch    *pebble.Batch // writes since the last Commit; nil if none
	unsynced bool          // a Commit since the last Sync

	key   []byte // scratch: a prefixed key, or a lower bound
	upper []byte // scratch: a prefixed upper bound
	val   []byte // Get's answer, valid until the next call
}

// Partition returns the state of group (its id, GroupName.String()). Use
// one PartitionKV per group at a time. The group is created by its first
// commit; an empty group or one containing NUL panics (a programming
// error: group ids come from GroupName).
func (e *Engine) Partition(group string) *PartitionKV {
	if err := validGroup(group); err != nil {
		panic(err.Error())
	}
	p := groupPrefix(group)
	return &PartitionKV{e: e, group: group, prefix: p, end: prefixEnd(p)}
}

// Group returns the group id.
func (p *PartitionKV) Group() string { return p.group }

// prefixed returns prefix+key in *buf.
func (p *PartitionKV) prefixed(buf *[]byte, key []byte) []byte {
	*buf = append(append((*buf)[:0], p.prefix...), key...)
	return *buf
}

// bounds returns the prefixed [lower, upper) of a Scan or DeleteRange, or
// ok=false when the range is empty. A nil upper is the end of the group.
func (p *PartitionKV) bounds(lower, upper []byte) (lo, hi []byte, ok bool) {
	if upper != nil && bytes.Compare(lower, upper) >= 0 {
		return nil, nil, false
	}
	lo = p.prefixed(&p.key, lower)
	hi = p.end
	if upper != nil {
		hi = p.prefixed(&p.upper, upper)
	}
	return lo, hi, true
}

// writer returns the pending batch, starting one if needed.
func (p *PartitionKV) writer() *pebble.Batch {
	if p.batch == nil {
		p.batch = p.e.db.NewIndexedBatch()
	}
	return p.batch
}

func (p *PartitionKV) readFailed(err error) {
	panic(fmt.Sprintf("storage: reading partition state of %s: %v", p.group, err))
}

func (p *PartitionKV) writeFailed(err error) {
	// A batch write fails only on a broken invariant (an index that cannot
	// grow); there is nothing the state machine could do differently.
	panic(fmt.Sprintf("storage: writing partition state of %s: %v", p.group, err))
}

// Get returns the value under key, seeing uncommitted writes. The value is
// valid until the next call on the PartitionKV and must not be modified.
func (p *PartitionKV) Get(key []byte) ([]byte, bool) {
	k := p.prefixed(&p.key, key)
	var (
		v   []byte
		c   io.Closer
		err error
	)
	if p.batch != nil {
		v, c, err = p.batch.Get(k)
	} else {
		v, c, err = p.e.db.Get(k)
	}
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false
	}
	if err != nil {
		p.readFailed(err)
	}
	// pebble's value is valid until the closer is closed, and an unclosed
	// closer pins memtables and sstables: copy, then close. The buffer is
	// reused, but not kept huge after one large value.
	if cap(p.val) > 1<<20 && len(v) < cap(p.val)/4 {
		p.val = nil
	}
	p.val = append(p.val[:0], v...)
	if err := c.Close(); err != nil {
		p.readFailed(err)
	}
	return p.val, true
}

// Set stores value under key; both are copied.
func (p *PartitionKV) Set(key, value []byte) {
	if err := p.writer().Set(p.prefixed(&p.key, key), value, nil); err != nil {
		p.writeFailed(err)
	}
}

// Delete removes key; deleting a missing key does nothing.
func (p *PartitionKV) Delete(key []byte) {
	if err := p.writer().Delete(p.prefixed(&p.key, key), nil); err != nil {
		p.writeFailed(err)
	}
}

// DeleteRange removes every key in [lower, upper) (upper nil: to the end
// of the group) with one range tombstone, whatever the number of keys.
func (p *PartitionKV) DeleteRange(lower, upper []byte) {
	lo, hi, ok := p.bounds(lower, upper)
	if !ok {
		return
	}
	if err := p.writer().DeleteRange(lo, hi, nil); err != nil {
		p.writeFailed(err)
	}
}

// Scan calls fn for each pair with lower <= key < upper (upper nil: to the
// end of the group) in key order until fn returns false, seeing
// uncommitted writes. The slices point into pebble's blocks (no copy) and
// are valid only during fn; fn must not call the PartitionKV.
func (p *PartitionKV) Scan(lower, upper []byte, fn func(key, value []byte) bool) {
	lo, hi, ok := p.bounds(lower, upper)
	if !ok {
		return
	}
	o := &pebble.IterOptions{LowerBound: lo, UpperBound: hi}
	var (
		it  *pebble.Iterator
		err error
	)
	if p.batch != nil {
		it, err = p.batch.NewIter(o)
	} else {
		it, err = p.e.db.NewIter(o)
	}
	if err != nil {
		p.readFailed(err)
	}
	if err := scanIter(it, len(p.prefix), fn); err != nil {
		p.readFailed(err)
	}
}

// scanIter runs fn over it, keys without their first n bytes, and closes
// it.
func scanIter(it *pebble.Iterator, n int, fn func(key, value []byte) bool) error {
	var err error
	for ok := it.First(); ok; ok = it.Next() {
		var v []byte
		if v, err = it.ValueAndErr(); err != nil || !fn(it.Key()[n:], v) {
			break
		}
	}
	return errors.Join(err, it.Error(), it.Close())
}

// Commit applies the writes since the last Commit as one atomic unit:
// after a crash all of them are there or none. It does not wait for the
// disk (the Raft log is the durable record; see Sync). Commit with no
// writes does nothing. After an error the writes are discarded and the
// state machine must stop: its state no longer matches what it applied.
func (p *PartitionKV) Commit() error {
	b := p.batch
	if b == nil {
		return nil
	}
	p.batch = nil
	// pebble.Batch.Commit returns an error only for a misuse it detects
	// (read-only or closed database); a failed WAL write reaches the
	// Logger's Fatalf, which panics.
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("storage: commit state of %s: %w", p.group, err)
	}
	p.unsynced = true
	// A committed batch cannot be reused (pebble may keep a large batch's
	// data as a flushable); closing returns it to pebble's pool.
	return b.Close()
}

// Sync makes everything committed so far durable: it appends an empty
// LogData record to the WAL with pebble.Sync, which fsyncs the WAL up to
// and including that record, and so every commit before it, of this
// partition and of all the others (one WAL; concurrent Syncs share
// fsyncs). A synced empty batch would not do: pebble's commit pipeline
// returns at once for an empty batch, without writing or syncing anything.
// Sync does nothing if there was no Commit since the last Sync.
func (p *PartitionKV) Sync() error {
	if !p.unsynced {
		return nil
	}
	if err := p.e.db.LogData(nil, pebble.Sync); err != nil {
		return fmt.Errorf("storage: sync state of %s: %w", p.group, err)
	}
	p.unsynced = false
	return nil
}

// View returns a read-only view of the group's committed state as of now
// (a pebble snapshot); writes not yet committed are not in it, and later
// commits do not change it. Close it: an open view keeps the engine from
// closing and keeps compactions from dropping the data it can see.
func (p *PartitionKV) View() *PartitionView {
	v := &PartitionView{e: p.e, group: p.group, prefix: p.prefix, end: p.end, snap: p.e.db.NewSnapshot()}
	p.e.views.Add(1)
	return v
}

// PartitionView is a consistent read-only view of a group's committed state
// (fsm.KVView), for streaming snapshots. It is safe for concurrent use.
// Unlike PartitionKV's, its reads return errors: a failed snapshot
// transfer is retried, it changes no state.
type PartitionView struct {
	e      *Engine
	group  string
	prefix []byte // shared with the PartitionKV, read-only
	end    []byte
	snap   *pebble.Snapshot
	closed atomic.Bool
}

// Get returns a copy of the value under key.
func (v *PartitionView) Get(key []byte) ([]byte, bool, error) {
	if v.closed.Load() {
		return nil, false, ErrViewClosed
	}
	k := append(bytes.Clone(v.prefix), key...)
	val, c, err := v.snap.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("storage: reading state view of %s: %w", v.group, err)
	}
	val = bytes.Clone(val)
	if err := c.Close(); err != nil {
		return nil, false, fmt.Errorf("storage: reading state view of %s: %w", v.group, err)
	}
	return val, true, nil
}

// Scan calls fn for each pair with lower <= key < upper (upper nil: to the
// end of the group) in key order until fn returns false. The slices are
// valid only during fn.
func (v *PartitionView) Scan(lower, upper []byte, fn func(key, value []byte) bool) error {
	if v.closed.Load() {
		return ErrViewClosed
	}
	if upper != nil && bytes.Compare(lower, upper) >= 0 {
		return nil
	}
	o := &pebble.IterOptions{LowerBound: append(bytes.Clone(v.prefix), lower...), UpperBound: v.end}
	if upper != nil {
		o.UpperBound = append(bytes.Clone(v.prefix), upper...)
	}
	it, err := v.snap.NewIter(o)
	if err == nil {
		err = scanIter(it, len(v.prefix), fn)
	}
	if err != nil {
		return fmt.Errorf("storage: reading state view of %s: %w", v.group, err)
	}
	return nil
}

// Close releases the snapshot; later reads fail with ErrViewClosed.
// Calling it again does nothing. Do not call it while a read of the view
// is in progress.
func (v *PartitionView) Close() {
	if v.closed.Swap(true) {
		return
	}
	if err := v.snap.Close(); err != nil {
		v.e.log.Error("closing state view", "group", v.group, "err", err)
	}
	v.e.views.Add(-1)
}
