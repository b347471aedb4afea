package storage

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/google/btree"
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

	// mu guards the overlay (engine_overlay.go): the owner writes and
	// reads it, the engine's flusher flushes its committed layer.
	mu       sync.Mutex
	ov       overlay
	ovBytes  atomic.Int64 // ov.bytes, for the flusher's ordering
	unsynced bool         // a flush since the last Sync

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
	kv := &PartitionKV{e: e, group: group, prefix: p, end: prefixEnd(p), ov: newOverlay()}
	e.register(kv)
	return kv
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

func (p *PartitionKV) readFailed(err error) {
	panic(fmt.Sprintf("storage: reading partition state of %s: %v", p.group, err))
}

// Get returns the value under key, seeing uncommitted writes. The value is
// valid until the next call on the PartitionKV and must not be modified.
func (p *PartitionKV) Get(key []byte) ([]byte, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	o := &p.ov
	if e, ok := o.pend.Get(ovEntry{k: key}); ok {
		return e.v, !e.del
	}
	if covered(o.pendDels, key) {
		return nil, false
	}
	if e, ok := o.t.Get(ovEntry{k: key}); ok {
		return e.v, !e.del
	}
	if covered(o.dels, key) {
		return nil, false
	}
	v, c, err := p.e.db.Get(p.prefixed(&p.key, key))
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

// GetMany looks keys (in increasing order) up at once: the overlay for
// each, then one pebble iterator seeking from one missing key to the next,
// instead of a Get (and its iterator) each. fn is called once per key, in
// any order; the value is valid only during fn, and fn must not call the
// PartitionKV.
func (p *PartitionKV) GetMany(keys [][]byte, fn func(i int, value []byte, ok bool)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	o := &p.ov
	var miss []int
	for i, key := range keys {
		if e, ok := o.pend.Get(ovEntry{k: key}); ok {
			fn(i, e.v, !e.del)
			continue
		}
		if covered(o.pendDels, key) {
			fn(i, nil, false)
			continue
		}
		if e, ok := o.t.Get(ovEntry{k: key}); ok {
			fn(i, e.v, !e.del)
			continue
		}
		if covered(o.dels, key) {
			fn(i, nil, false)
			continue
		}
		miss = append(miss, i)
	}
	if len(miss) == 0 {
		return
	}
	// UseL6Filters: the keys asked for are mostly absent (dedup ids of new
	// messages), and pebble by default skips the bottom level's filters,
	// which made each such miss a data block read: 11 µs a key against a
	// partition of 1M dedup entries, 1.2–1.4 µs with them
	// (BenchmarkEngineGetMany).
	it, err := p.e.db.NewIter(&pebble.IterOptions{LowerBound: p.prefixed(&p.key, keys[miss[0]]), UpperBound: p.end, UseL6Filters: true})
	if err != nil {
		p.readFailed(err)
	}
	for _, i := range miss {
		k := p.prefixed(&p.upper, keys[i])
		// A prefix seek (the whole key is the prefix) consults the
		// sstables' bloom filters, as a Get does; a plain seek would not.
		if it.SeekPrefixGE(k) && bytes.Equal(it.Key(), k) {
			v, err := it.ValueAndErr()
			if err != nil {
				p.readFailed(errors.Join(err, it.Close()))
			}
			fn(i, v, true)
		} else {
			fn(i, nil, false)
		}
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		p.readFailed(err)
	}
}

// Set stores value under key; both are copied.
func (p *PartitionKV) Set(key, value []byte) {
	p.mu.Lock()
	p.put(key, value, false)
	p.mu.Unlock()
}

// Delete removes key; deleting a missing key does nothing.
func (p *PartitionKV) Delete(key []byte) {
	p.mu.Lock()
	p.put(key, nil, true)
	p.mu.Unlock()
}

// DeleteRange removes every key in [lower, upper) (upper nil: to the end
// of the group): one range tombstone when flushed, whatever the number of
// keys.
func (p *PartitionKV) DeleteRange(lower, upper []byte) {
	if upper != nil && bytes.Compare(lower, upper) >= 0 {
		return
	}
	p.mu.Lock()
	p.deleteRange(lower, upper)
	p.mu.Unlock()
}

// Scan calls fn for each pair with lower <= key < upper (upper nil: to the
// end of the group) in key order until fn returns false, seeing
// uncommitted writes: the overlay's two layers merged over pebble. The
// slices are valid only during fn; fn must not call the PartitionKV.
func (p *PartitionKV) Scan(lower, upper []byte, fn func(key, value []byte) bool) {
	lo, hi, ok := p.bounds(lower, upper)
	if !ok {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	it, err := p.e.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		p.readFailed(err)
	}
	if err := p.mergeScan(it, lower, upper, fn); err != nil {
		p.readFailed(err)
	}
}

// mergeScan merges the pending layer, the committed layer and pebble's
// iterator (positioned nowhere yet), newest first for equal keys, hiding
// what range deletions of newer layers cover, and closes it.
func (p *PartitionKV) mergeScan(it *pebble.Iterator, lower, upper []byte, fn func(key, value []byte) bool) error {
	o := &p.ov
	pend := newTreeIter(o.pend, lower, upper)
	comm := newTreeIter(o.t, lower, upper)
	n := len(p.prefix)
	valid := it.First()
	for {
		// Drop what a newer layer's range deletion hides.
		for valid && (covered(o.dels, it.Key()[n:]) || covered(o.pendDels, it.Key()[n:])) {
			valid = it.Next()
		}
		for e, ok := comm.peek(); ok && covered(o.pendDels, e.k); e, ok = comm.peek() {
			comm.next()
		}
		var best []byte
		pe, pok := pend.peek()
		ce, cok := comm.peek()
		if pok {
			best = pe.k
		}
		if cok && (best == nil || bytes.Compare(ce.k, best) < 0) {
			best = ce.k
		}
		if valid && (best == nil || bytes.Compare(it.Key()[n:], best) < 0) {
			v, err := it.ValueAndErr()
			if err != nil {
				return errors.Join(err, it.Close())
			}
			if !fn(it.Key()[n:], v) {
				break
			}
			valid = it.Next()
			continue
		}
		if best == nil {
			break
		}
		// An overlay entry wins over the older versions of its key.
		var e ovEntry
		if pok && bytes.Equal(pe.k, best) {
			e = pe
			pend.next()
			if cok && bytes.Equal(ce.k, best) {
				comm.next()
			}
		} else {
			e = ce
			comm.next()
		}
		if valid && bytes.Equal(it.Key()[n:], best) {
			valid = it.Next()
		}
		if !e.del && !fn(e.k, e.v) {
			break
		}
	}
	return errors.Join(it.Error(), it.Close())
}

// treeIter walks an overlay layer from lower to upper in chunks (the
// btree's iteration is push-style).
type treeIter struct {
	t     *btree.BTreeG[ovEntry]
	upper []byte
	buf   []ovEntry
	i     int
	from  []byte
	done  bool
}

func newTreeIter(t *btree.BTreeG[ovEntry], lower, upper []byte) *treeIter {
	it := &treeIter{t: t, upper: upper, from: lower}
	if t.Len() == 0 {
		it.done = true
	}
	return it
}

const treeChunk = 64

func (it *treeIter) peek() (ovEntry, bool) {
	if it.i == len(it.buf) {
		if it.done {
			return ovEntry{}, false
		}
		it.buf, it.i = it.buf[:0], 0
		it.t.AscendGreaterOrEqual(ovEntry{k: it.from}, func(e ovEntry) bool {
			if it.upper != nil && bytes.Compare(e.k, it.upper) >= 0 {
				return false
			}
			it.buf = append(it.buf, e)
			return len(it.buf) < treeChunk
		})
		if len(it.buf) < treeChunk {
			it.done = true
		} else {
			it.from = append(bytes.Clone(it.buf[len(it.buf)-1].k), 0)
		}
		if len(it.buf) == 0 {
			return ovEntry{}, false
		}
	}
	return it.buf[it.i], true
}

func (it *treeIter) next() { it.i++ }

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

// Commit makes the writes since the last Commit one atomic unit: after a
// crash either all of them are there or none. They stay in the overlay
// (engine_overlay.go) and reach pebble with a later flush — here once the
// overlay holds overlayFlushBytes, or by the engine's flusher — never
// split. It does not wait for the disk (the Raft log is the durable
// record; see Sync). After an error the state machine must stop: its
// state no longer matches what it applied.
func (p *PartitionKV) Commit() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.commitPending()
	if p.ov.bytes >= overlayFlushBytes {
		return p.flushLocked()
	}
	return nil
}

// commitBatch applies a flush's batch without waiting for the disk.
func (p *PartitionKV) commitBatch(b *pebble.Batch) error {
	// pebble.Batch.Commit returns an error only for a misuse it detects
	// (read-only or closed database); a failed WAL write reaches the
	// Logger's Fatalf, which panics.
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("storage: commit state of %s: %w", p.group, err)
	}
	p.unsynced = true
	return nil
}

// Sync makes everything committed so far durable: it flushes the overlay's
// committed layer, then appends an empty LogData record to the WAL with
// pebble.Sync, which fsyncs the WAL up to and including that record, and
// so every write before it, of this partition and of all the others (one
// WAL; concurrent Syncs share fsyncs). A synced empty batch would not do:
// pebble's commit pipeline returns at once for an empty batch, without
// writing or syncing anything. Writes not yet committed are not made
// durable.
func (p *PartitionKV) Sync() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.ov.committedEmpty() {
		if err := p.flushLocked(); err != nil {
			return err
		}
	}
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
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.ov.committedEmpty() {
		if err := p.flushLocked(); err != nil {
			panic(fmt.Sprintf("storage: flushing partition state of %s: %v", p.group, err))
		}
	}
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
