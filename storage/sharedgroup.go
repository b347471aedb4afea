package storage

import (
	"fmt"
	"sync/atomic"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
)

// ErrKeyNotFound is returned by SharedGroup.Get and GetUint64 for a key
// that was never set. It is raft-boltdb's own error value, whose text
// "not found" raft compares against (raft.NewRaft, HasExistingState and
// vote handling treat err.Error() == "not found" as "never set").
var ErrKeyNotFound = raftboltdb.ErrKeyNotFound

// SharedGroup is one group's Raft log and stable store inside a SharedLog,
// handed to raft.NewRaft as both (normally behind a raft.LogCache).
//
// It keeps raft-boltdb's contract: StoreLogs, DeleteRange, Set and
// SetUint64 return only once their change is durable (committed, with
// fsync, by the shared committer, possibly together with other groups'
// writes); GetLog of a missing index returns raft.ErrLogNotFound; Get and
// GetUint64 of a missing key return ErrKeyNotFound. FirstIndex and
// LastIndex are served from memory, updated after each commit. Writes of
// one group are applied in the order they were called; Raft calls
// StoreLogs and DeleteRange from different goroutines, which is fine.
//
// Log indexes need not be contiguous (it does not implement
// raft.MonotonicLogStore), as with raft-boltdb.
type SharedGroup struct {
	s    *SharedLog
	id   string
	name []byte // the bucket name: id

	// ix holds the log's first and last index as of the last commit that
	// changed them, one pointer so that a reader sees a consistent pair.
	// Only the committer (and Group, before the handle is shared) stores it.
	ix atomic.Pointer[indexes]

	dropped bool // guarded by s.mu
}

func newSharedGroup(s *SharedLog, id string) *SharedGroup {
	g := &SharedGroup{s: s, id: id, name: []byte(id)}
	g.ix.Store(&indexes{})
	return g
}

var (
	_ raft.LogStore    = (*SharedGroup)(nil)
	_ raft.StableStore = (*SharedGroup)(nil)
)

// ID returns the group's id.
func (g *SharedGroup) ID() string { return g.id }

// FirstIndex returns the first index in the log, 0 if it is empty.
func (g *SharedGroup) FirstIndex() (uint64, error) {
	if g.s.isClosed.Load() {
		return 0, ErrLogClosed
	}
	return g.ix.Load().first, nil
}

// LastIndex returns the last index in the log, 0 if it is empty.
func (g *SharedGroup) LastIndex() (uint64, error) {
	if g.s.isClosed.Load() {
		return 0, ErrLogClosed
	}
	return g.ix.Load().last, nil
}

// GetLog reads the entry at index into log; raft.ErrLogNotFound if there is
// none.
func (g *SharedGroup) GetLog(index uint64, log *raft.Log) error {
	if g.s.isClosed.Load() {
		return ErrLogClosed
	}
	return g.s.db.View(func(tx *bbolt.Tx) error {
		b := logBucket(tx, g.name)
		if b == nil {
			return raft.ErrLogNotFound
		}
		v := b.Get(indexKey(index))
		if v == nil {
			return raft.ErrLogNotFound
		}
		return decodeLog(index, v, log)
	})
}

// StoreLog stores one entry durably.
func (g *SharedGroup) StoreLog(log *raft.Log) error {
	return g.StoreLogs([]*raft.Log{log})
}

// StoreLogs stores the entries durably: when it returns nil they are
// committed with fsync. The entries are encoded by the caller's goroutine;
// the committer only copies them into pages.
func (g *SharedGroup) StoreLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	size := 0
	for _, l := range logs {
		n := encodedLogSize(l)
		if n > bbolt.MaxValueSize {
			return fmt.Errorf("storage: log entry %d of group %s: %d bytes is too large", l.Index, g.id, n)
		}
		size += n
	}
	// One allocation for the keys and one for the values: the request keeps
	// them alive until the commit, as bolt requires.
	keyBuf := make([]byte, 0, 8*len(logs))
	valBuf := make([]byte, 0, size)
	keys := make([][]byte, len(logs))
	vals := make([][]byte, len(logs))
	for i, l := range logs {
		keyBuf = indexKeyAppend(keyBuf, l.Index)
		keys[i] = keyBuf[len(keyBuf)-8:]
		start := len(valBuf)
		valBuf = appendLog(valBuf, l)
		vals[i] = valBuf[start:len(valBuf):len(valBuf)]
	}
	return g.s.submit(&sharedReq{
		g: g, kind: reqAppend, keys: keys, vals: vals,
		size: len(valBuf) + len(keyBuf), done: make(chan error, 1),
	})
}

// DeleteRange durably deletes the entries with indexes in [min, max].
func (g *SharedGroup) DeleteRange(min, max uint64) error {
	// Nothing of the committed log is in range: the delete is a no-op, and
	// skipping it saves a commit. (A StoreLogs racing with this call may
	// still be queued; this call is then ordered before it.)
	if ix := g.ix.Load(); min > max || ix.last == 0 || max < ix.first || min > ix.last {
		if g.s.isClosed.Load() {
			return ErrLogClosed
		}
		return nil
	}
	return g.s.submit(&sharedReq{g: g, kind: reqDelete, min: min, max: max, size: 16, done: make(chan error, 1)})
}

// Set durably stores val under key.
func (g *SharedGroup) Set(key, val []byte) error {
	if len(key) == 0 || len(key) > bbolt.MaxKeySize || len(val) > bbolt.MaxValueSize {
		return fmt.Errorf("storage: stable key of group %s: key of %d bytes or value of %d bytes out of range", g.id, len(key), len(val))
	}
	k := append([]byte(nil), key...)
	v := append(make([]byte, 0, len(val)), val...)
	return g.s.submit(&sharedReq{
		g: g, kind: reqSet, keys: [][]byte{k}, vals: [][]byte{v},
		size: len(k) + len(v), done: make(chan error, 1),
	})
}

// Get returns a copy of the value of key, or ErrKeyNotFound.
func (g *SharedGroup) Get(key []byte) ([]byte, error) {
	if g.s.isClosed.Load() {
		return nil, ErrLogClosed
	}
	var val []byte
	err := g.s.db.View(func(tx *bbolt.Tx) error {
		b := stableBucket(tx, g.name)
		if b == nil {
			return ErrKeyNotFound
		}
		v := b.Get(key)
		if v == nil {
			return ErrKeyNotFound
		}
		val = append([]byte(nil), v...)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return val, nil
}

// SetUint64 durably stores val (8 bytes big-endian, as raft-boltdb) under
// key.
func (g *SharedGroup) SetUint64(key []byte, val uint64) error {
	return g.Set(key, indexKey(val))
}

// GetUint64 returns the value of key set by SetUint64, or 0 and
// ErrKeyNotFound.
func (g *SharedGroup) GetUint64(key []byte) (uint64, error) {
	v, err := g.Get(key)
	if err != nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("storage: stable key %q of group %s holds %d bytes, not a uint64", key, g.id, len(v))
	}
	return keyIndex(v), nil
}

// ForEachStable calls fn with every key and value of the group's stable
// store, in key order, inside one read transaction (fn must not keep the
// slices). It is how a migration copies the store.
func (g *SharedGroup) ForEachStable(fn func(key, val []byte) error) error {
	if g.s.isClosed.Load() {
		return ErrLogClosed
	}
	return g.s.db.View(func(tx *bbolt.Tx) error {
		b := stableBucket(tx, g.name)
		if b == nil {
			return nil
		}
		return b.ForEach(fn)
	})
}
