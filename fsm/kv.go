package fsm

import (
	"bytes"

	"github.com/google/btree"
)

// KV is the ordered key-value storage a partition keeps its whole state in:
// messages, their orderings, the dedup table and the partition's own
// record. The partition chooses the keys and values (the logical layout,
// kvlayout.go); the store decides how they are kept (memory here, a disk
// engine in the storage package). A partition's memory then holds only
// counters and a few cached keys, whatever the backlog.
//
// Reads see every write made before them, committed or not. Writes become
// durable, and visible to views, at Commit. A KV is used by one goroutine
// (the partition's); views may be read from others.
//
// A KV cannot fail a read or a write the partition could act on: the
// partition is deterministic and must apply the same commands to the same
// state on every replica, so a store that cannot read what it wrote (a disk
// failing) stops the process (panics) rather than answer differently.
type KV interface {
	// Get returns the value under key. It is valid until the next call on
	// the KV and must not be modified.
	Get(key []byte) (value []byte, ok bool)
	// GetMany looks up keys (in increasing order) at once, calling fn once
	// per key, in any order, with its index in keys; value is valid only
	// during fn, and fn must not call the KV. A store may answer many
	// keys faster this way than one Get each (one iterator, not many).
	GetMany(keys [][]byte, fn func(i int, value []byte, ok bool))
	// Set stores value under key; the KV copies both.
	Set(key, value []byte)
	// Delete removes key; deleting a missing key does nothing.
	Delete(key []byte)
	// DeleteRange removes every key in [lower, upper).
	DeleteRange(lower, upper []byte)
	// Scan calls fn for each pair with lower <= key < upper in key order
	// until fn returns false. The slices are valid only during fn, and fn
	// must not call the KV.
	Scan(lower, upper []byte, fn func(key, value []byte) bool)
	// Commit makes the writes so far one atomic unit: after a crash either
	// all of them are there or none. It need not make them durable at once
	// (the Raft log is the durable record; see Sync).
	Commit() error
	// Sync makes everything committed so far durable.
	Sync() error
	// View returns a read-only view of the committed state as of now,
	// unaffected by later writes. The caller must Close it.
	View() KVView
}

// KVView is a consistent read-only view of a KV, for snapshots: it may be
// read from another goroutine while the KV goes on.
type KVView interface {
	Get(key []byte) (value []byte, ok bool, err error)
	Scan(lower, upper []byte, fn func(key, value []byte) bool) error
	Close()
}

// MemKV is a KV in memory (a B-tree), for tests and tools. Its views are
// copy-on-write clones, O(1) to take.
type MemKV struct {
	t *btree.BTreeG[kvPair]
}

type kvPair struct{ k, v []byte }

func kvLess(a, b kvPair) bool { return bytes.Compare(a.k, b.k) < 0 }

// NewMemKV returns an empty in-memory KV.
func NewMemKV() *MemKV { return &MemKV{t: btree.NewG(32, kvLess)} }

func (m *MemKV) Get(key []byte) ([]byte, bool) {
	p, ok := m.t.Get(kvPair{k: key})
	return p.v, ok
}

func (m *MemKV) GetMany(keys [][]byte, fn func(i int, value []byte, ok bool)) {
	for i, k := range keys {
		v, ok := m.Get(k)
		fn(i, v, ok)
	}
}

func (m *MemKV) Set(key, value []byte) {
	m.t.ReplaceOrInsert(kvPair{k: bytes.Clone(key), v: bytes.Clone(value)})
}

func (m *MemKV) Delete(key []byte) { m.t.Delete(kvPair{k: key}) }

func (m *MemKV) DeleteRange(lower, upper []byte) {
	var keys [][]byte
	m.Scan(lower, upper, func(k, _ []byte) bool { keys = append(keys, k); return true })
	for _, k := range keys {
		m.t.Delete(kvPair{k: k})
	}
}

func (m *MemKV) Scan(lower, upper []byte, fn func(k, v []byte) bool) {
	scanTree(m.t, lower, upper, fn)
}

func scanTree(t *btree.BTreeG[kvPair], lower, upper []byte, fn func(k, v []byte) bool) {
	t.AscendGreaterOrEqual(kvPair{k: lower}, func(p kvPair) bool {
		if upper != nil && bytes.Compare(p.k, upper) >= 0 {
			return false
		}
		return fn(p.k, p.v)
	})
}

func (m *MemKV) Commit() error { return nil }
func (m *MemKV) Sync() error   { return nil }

// Len is the number of pairs stored.
func (m *MemKV) Len() int { return m.t.Len() }

func (m *MemKV) View() KVView { return memView{m.t.Clone()} }

type memView struct{ t *btree.BTreeG[kvPair] }

func (v memView) Get(key []byte) ([]byte, bool, error) {
	p, ok := v.t.Get(kvPair{k: key})
	return p.v, ok, nil
}

func (v memView) Scan(lower, upper []byte, fn func(k, v []byte) bool) error {
	scanTree(v.t, lower, upper, fn)
	return nil
}

func (memView) Close() {}
