package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/hashicorp/raft"
)

// Raft logs in the state engine (storage/DESIGN.md, "Raft logs in the
// engine? (measured)"). The engine's key space gains two ranges:
//
//	l<group id>\x00<index, 8 bytes BE>   a group's Raft log entry (logcodec.go's encoding)
//	s<group id>\x00<key>                 the group's Raft stable store (CurrentTerm, LastVoteTerm, ...)
//
// 'l' < 'm' < 'p' < 's', so neither range meets the engine's own m records
// or the partition state [p, q): Groups and DropGroup never see a log key,
// and LogGroups and DropLogGroup never see a state key. As for the state, a
// group id never contains NUL, so a group's log keys are exactly
// [l<group>\x00, l<group>\x01) and its stable keys [s<group>\x00,
// s<group>\x01), whatever other ids extend it.
var (
	logKeysLower    = []byte("l")
	logKeysUpper    = []byte("m")
	stableKeysLower = []byte("s")
	stableKeysUpper = []byte("t")
)

// engineLogs is the Engine's part for Raft logs: the handed-out groups and
// the lock that keeps Close from closing pebble under a log call.
type engineLogs struct {
	// ops is held shared by every EngineLog call while it uses the
	// database, and exclusively by Engine.Close while it marks the engine
	// closed. It is always the innermost lock: a caller holding it never
	// waits for another lock, or a Close waiting for it would block new
	// readers in a cycle.
	ops sync.RWMutex

	mu     sync.Mutex // guards groups; held through DropLogGroup
	groups map[string]*EngineLog
}

// EngineLog is one partition group's Raft log and stable store inside the
// state engine, handed to raft.NewRaft as both (normally behind a
// raft.LogCache). It has SharedGroup's contract:
//
//   - StoreLogs, DeleteRange, Set and SetUint64 return nil only once their
//     change is durable: each is one pebble batch committed with
//     pebble.Sync, and pebble's WAL writer makes every batch queued while it
//     flushes durable with its next fsync, so concurrent appends of many
//     groups share fsyncs (group commit) without a committer of ours;
//   - GetLog of a missing index is raft.ErrLogNotFound; Get and GetUint64 of
//     a missing key are ErrKeyNotFound (raft-boltdb's value, "not found");
//   - index gaps are allowed (not a raft.MonotonicLogStore);
//   - FirstIndex and LastIndex come from memory: loaded when the group is
//     first handed out, replaced after each write that changes them;
//   - writes of one group are applied in call order (they are serialised:
//     Raft calls StoreLogs and DeleteRange from different goroutines);
//   - after DropLogGroup, writes through the old handle fail with
//     ErrGroupDropped; after Engine.Close every call fails with
//     ErrEngineClosed (Close waits for calls in flight).
//
// Differences from SharedGroup: a failed WAL write or fsync is not a
// sticky error but a panic (pebble's commit pipeline cannot go on after it
// and calls its logger's Fatalf), and a synced batch is visible to readers
// (GetLog) a moment before it is durable (pebble publishes a batch when it
// is in the memtable, and waits for the fsync only before returning to the
// writer); LastIndex moves only once it is durable.
type EngineLog struct {
	e        *Engine
	group    string
	logLo    []byte // l<group>\x00
	logHi    []byte // l<group>\x01
	stableLo []byte // s<group>\x00
	stableHi []byte // s<group>\x01

	// mu serialises the group's writes with the update of ix that follows
	// each, so that ix always describes the committed log.
	mu      sync.Mutex
	dropped bool // guarded by mu

	// ix holds the first and last index (0, 0 for an empty log), one
	// pointer so that a reader sees a consistent pair.
	ix atomic.Pointer[indexes]
}

var (
	_ raft.LogStore    = (*EngineLog)(nil)
	_ raft.StableStore = (*EngineLog)(nil)
)

// LogGroup returns the Raft log and stable store of group (its id,
// GroupName.String()) in the engine. Calls with the same id return the
// same *EngineLog until DropLogGroup; one Raft instance at a time may use
// it. Nothing is written until the first write. An empty id or one
// containing NUL is ErrInvalidGroup.
func (e *Engine) LogGroup(group string) (*EngineLog, error) {
	if err := validGroup(group); err != nil {
		return nil, err
	}
	e.logs.mu.Lock()
	defer e.logs.mu.Unlock()
	if g := e.logs.groups[group]; g != nil {
		if e.closed.Load() {
			return nil, ErrEngineClosed
		}
		return g, nil
	}
	logLo := append([]byte{'l'}, group...)
	logLo = append(logLo, 0)
	stableLo := append([]byte{'s'}, group...)
	stableLo = append(stableLo, 0)
	g := &EngineLog{
		e: e, group: group,
		logLo: logLo, logHi: prefixEnd(logLo),
		stableLo: stableLo, stableHi: prefixEnd(stableLo),
	}
	// Holding logs.mu, nobody else has a handle for group, so no write can
	// change the indexes read here.
	if err := g.enter(); err != nil {
		return nil, err
	}
	ix, err := g.readIndexes()
	g.leave()
	if err != nil {
		return nil, err
	}
	g.ix.Store(&ix)
	if e.logs.groups == nil {
		e.logs.groups = make(map[string]*EngineLog)
	}
	e.logs.groups[group] = g
	return g, nil
}

// DropLogGroup durably deletes group's Raft log and stable store (two
// range deletions, one synced batch). It is separate from DropGroup, which
// drops the group's state machine state only: the two are dropped at
// different moments (a new member drops stale state before Raft starts,
// with its term and vote possibly already recorded; removing a replica
// drops its log, through the directory, before its state), and a drop of
// the term and vote where only state was meant would let the member vote
// twice in a term. Writes through a handle of group in flight are applied
// first; later ones fail with ErrGroupDropped, and LogGroup then returns a
// new, empty handle. Dropping a group with nothing stored returns nil.
func (e *Engine) DropLogGroup(group string) error {
	if err := validGroup(group); err != nil {
		return err
	}
	e.logs.mu.Lock()
	defer e.logs.mu.Unlock()
	g := e.logs.groups[group]
	if g != nil {
		g.mu.Lock()
		defer g.mu.Unlock()
	}
	e.logs.ops.RLock()
	defer e.logs.ops.RUnlock()
	if e.closed.Load() {
		return ErrEngineClosed
	}
	logLo := append([]byte{'l'}, group...)
	logLo = append(logLo, 0)
	stableLo := append([]byte{'s'}, group...)
	stableLo = append(stableLo, 0)
	b := e.db.NewBatch()
	defer b.Close()
	err := errors.Join(b.DeleteRange(logLo, prefixEnd(logLo), nil), b.DeleteRange(stableLo, prefixEnd(stableLo), nil))
	if err == nil {
		err = b.Commit(pebble.Sync)
	}
	if err != nil {
		return fmt.Errorf("storage: drop raft log of %s: %w", group, err)
	}
	if g != nil {
		g.dropped = true
		delete(e.logs.groups, group)
	}
	return nil
}

// LogGroups returns the groups that have a log entry or a stable key in
// the engine, in byte order (one seek per group, as Groups). A node prunes
// with it the logs of groups it no longer hosts.
func (e *Engine) LogGroups() ([]string, error) {
	e.logs.ops.RLock()
	defer e.logs.ops.RUnlock()
	if e.closed.Load() {
		return nil, ErrEngineClosed
	}
	logs, err := e.prefixGroups(logKeysLower, logKeysUpper)
	if err != nil {
		return nil, fmt.Errorf("storage: list raft log groups: %w", err)
	}
	stables, err := e.prefixGroups(stableKeysLower, stableKeysUpper)
	if err != nil {
		return nil, fmt.Errorf("storage: list raft log groups: %w", err)
	}
	var groups []string
	for len(logs) > 0 || len(stables) > 0 {
		switch {
		case len(stables) == 0 || (len(logs) > 0 && logs[0] < stables[0]):
			groups, logs = append(groups, logs[0]), logs[1:]
		case len(logs) == 0 || stables[0] < logs[0]:
			groups, stables = append(groups, stables[0]), stables[1:]
		default:
			groups, logs, stables = append(groups, logs[0]), logs[1:], stables[1:]
		}
	}
	return groups, nil
}

// prefixGroups lists the group ids of the keys <c><group>\x00... in [lower,
// upper), lower being the one byte c: after a group's first key it seeks
// past the group's range.
func (e *Engine) prefixGroups(lower, upper []byte) ([]string, error) {
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, err
	}
	var groups []string
	var seek []byte
	for ok := it.First(); ok; ok = it.SeekGE(seek) {
		k := it.Key()
		i := bytes.IndexByte(k, 0)
		if i < 2 {
			err = fmt.Errorf("malformed key %q", k)
			break
		}
		groups = append(groups, string(k[1:i]))
		seek = append(append(seek[:0], k[:i]...), 1)
	}
	return groups, errors.Join(err, it.Error(), it.Close())
}

// Group returns the group id.
func (l *EngineLog) Group() string { return l.group }

// enter takes the engine's shared lock for a call that uses the database;
// ErrEngineClosed once the engine is closed. Call leave after.
func (l *EngineLog) enter() error {
	l.e.logs.ops.RLock()
	if l.e.closed.Load() {
		l.e.logs.ops.RUnlock()
		return ErrEngineClosed
	}
	return nil
}

func (l *EngineLog) leave() { l.e.logs.ops.RUnlock() }

// logKey returns l<group>\x00<index>.
func (l *EngineLog) logKey(index uint64) []byte {
	return indexKeyAppend(append(make([]byte, 0, len(l.logLo)+8), l.logLo...), index)
}

// readIndexes reads the first and last index of the committed log.
func (l *EngineLog) readIndexes() (indexes, error) {
	it, err := l.e.db.NewIter(&pebble.IterOptions{LowerBound: l.logLo, UpperBound: l.logHi})
	if err != nil {
		return indexes{}, fmt.Errorf("storage: raft log of %s: %w", l.group, err)
	}
	var ix indexes
	index := func() {
		if k := it.Key()[len(l.logLo):]; len(k) == 8 {
			ix.last = keyIndex(k)
		} else if err == nil {
			err = fmt.Errorf("%w: key %q", errCorruptLog, it.Key())
		}
	}
	if it.First() {
		index()
		ix.first = ix.last
	}
	if it.Last() {
		index()
	}
	if err := errors.Join(err, it.Error(), it.Close()); err != nil {
		return indexes{}, fmt.Errorf("storage: raft log of %s: %w", l.group, err)
	}
	return ix, nil
}

// FirstIndex returns the first index in the log, 0 if it is empty.
func (l *EngineLog) FirstIndex() (uint64, error) {
	if l.e.closed.Load() {
		return 0, ErrEngineClosed
	}
	return l.ix.Load().first, nil
}

// LastIndex returns the last index in the log, 0 if it is empty.
func (l *EngineLog) LastIndex() (uint64, error) {
	if l.e.closed.Load() {
		return 0, ErrEngineClosed
	}
	return l.ix.Load().last, nil
}

// GetLog reads the entry at index into log; raft.ErrLogNotFound if there is
// none.
func (l *EngineLog) GetLog(index uint64, log *raft.Log) error {
	if err := l.enter(); err != nil {
		return err
	}
	defer l.leave()
	v, c, err := l.e.db.Get(l.logKey(index))
	if errors.Is(err, pebble.ErrNotFound) {
		return raft.ErrLogNotFound
	}
	if err != nil {
		return fmt.Errorf("storage: raft log of %s: %w", l.group, err)
	}
	// decodeLog copies Data and Extensions out of pebble's value, which is
	// valid only until the closer is closed.
	err = decodeLog(index, v, log)
	return errors.Join(err, c.Close())
}

// StoreLog stores one entry durably.
func (l *EngineLog) StoreLog(log *raft.Log) error {
	return l.StoreLogs([]*raft.Log{log})
}

// StoreLogs stores the entries durably, in one pebble batch committed with
// pebble.Sync: when it returns nil they are in the WAL and fsynced,
// possibly by the same fsync as other groups' appends. The batch is
// encoded on the caller's goroutine before the group's lock is taken.
func (l *EngineLog) StoreLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	size := 0
	lo, hi := logs[0].Index, logs[0].Index
	for _, g := range logs {
		size += batchRecordOverhead + len(l.logLo) + 8 + encodedLogSize(g)
		lo, hi = min(lo, g.Index), max(hi, g.Index)
	}
	// A batch only buffers until Commit (pebble checks nothing of the
	// database here), so it is built without any lock.
	b := l.e.db.NewBatchWithSize(batchHeaderLen + size)
	defer b.Close()
	key := make([]byte, 0, len(l.logLo)+8)
	var val []byte
	for _, g := range logs {
		key = indexKeyAppend(append(key[:0], l.logLo...), g.Index)
		val = appendLog(val[:0], g)
		if err := b.Set(key, val, nil); err != nil {
			return fmt.Errorf("storage: raft log of %s: %w", l.group, err)
		}
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.writable(); err != nil {
		return err
	}
	defer l.leave()
	// pebble.Commit returns an error only for misuse it detects (a batch
	// too large); a failed WAL write or fsync reaches the Logger's Fatalf,
	// which panics.
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("storage: raft log of %s: %w", l.group, err)
	}
	// StoreLogs only adds keys: the bounds widen. An empty log (or one
	// holding index 0 alone, which Raft never writes) is read back instead.
	cur := l.ix.Load()
	next := indexes{first: min(cur.first, lo), last: max(cur.last, hi)}
	if cur.last == 0 {
		var err error
		if next, err = l.readIndexes(); err != nil {
			return err
		}
	}
	l.ix.Store(&next)
	return nil
}

// batchRecordOverhead bounds what a pebble batch adds to a record: the
// kind byte and the varint lengths of key and value;
// batchHeaderLen is its header (sequence number and count).
const (
	batchRecordOverhead = 1 + 2*binary.MaxVarintLen32
	batchHeaderLen      = 12
)

// writable checks that the group may be written, holding l.mu, and enters
// the engine (call leave after).
func (l *EngineLog) writable() error {
	if l.dropped {
		return fmt.Errorf("%w: %s", ErrGroupDropped, l.group)
	}
	return l.enter()
}

// DeleteRange durably deletes the entries with indexes in [min, max]: one
// range deletion, committed with pebble.Sync.
//
// Synced, as raft-boltdb and the shared log do, although pebble's WAL is
// ordered (a later synced write makes this one durable too, so a
// follower's truncation of conflicting entries followed by its synced
// append cannot be half lost): Raft also deletes with no synced write
// after it. A follower that installs a snapshot deletes its whole log;
// were that lost in a crash, the stale entries below the snapshot index
// would come back, with FirstIndex below them, and as leader the node
// would send them (uncommitted entries of an old term) to a follower that
// asks from there. A synced delete costs little: Raft deletes after a
// snapshot or on a conflict, and the fsync is shared with other groups'
// appends.
func (l *EngineLog) DeleteRange(min, max uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.writable(); err != nil {
		return err
	}
	defer l.leave()
	ix := l.ix.Load()
	// Nothing of the log is in range (as SharedGroup): no write.
	if min > max || ix.last == 0 || max < ix.first || min > ix.last {
		return nil
	}
	from := l.logKey(maxUint64(min, ix.first))
	to := l.logHi // max >= last: to the end of the group's log, no overflow at MaxUint64
	if max < ix.last {
		to = l.logKey(max + 1)
	}
	if err := l.e.db.DeleteRange(from, to, pebble.Sync); err != nil {
		return fmt.Errorf("storage: raft log of %s: %w", l.group, err)
	}
	if min > ix.first && max < ix.last {
		return nil // a hole inside: the bounds stay
	}
	next, err := l.readIndexes()
	if err != nil {
		return err
	}
	l.ix.Store(&next)
	return nil
}

func maxUint64(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}

// stableKey returns s<group>\x00<key>.
func (l *EngineLog) stableKey(key []byte) []byte {
	return append(append(make([]byte, 0, len(l.stableLo)+len(key)), l.stableLo...), key...)
}

// Set durably stores val under key (pebble.Sync).
func (l *EngineLog) Set(key, val []byte) error {
	if len(key) == 0 {
		return fmt.Errorf("storage: stable key of group %s: empty key", l.group)
	}
	k := l.stableKey(key)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.writable(); err != nil {
		return err
	}
	defer l.leave()
	if err := l.e.db.Set(k, val, pebble.Sync); err != nil {
		return fmt.Errorf("storage: stable store of %s: %w", l.group, err)
	}
	return nil
}

// Get returns a copy of the value of key, or ErrKeyNotFound.
func (l *EngineLog) Get(key []byte) ([]byte, error) {
	if err := l.enter(); err != nil {
		return nil, err
	}
	defer l.leave()
	v, c, err := l.e.db.Get(l.stableKey(key))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, ErrKeyNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("storage: stable store of %s: %w", l.group, err)
	}
	val := append([]byte(nil), v...)
	if err := c.Close(); err != nil {
		return nil, fmt.Errorf("storage: stable store of %s: %w", l.group, err)
	}
	return val, nil
}

// SetUint64 durably stores val (8 bytes big-endian, as raft-boltdb) under
// key.
func (l *EngineLog) SetUint64(key []byte, val uint64) error {
	return l.Set(key, indexKey(val))
}

// GetUint64 returns the value of key set by SetUint64, or 0 and
// ErrKeyNotFound.
func (l *EngineLog) GetUint64(key []byte) (uint64, error) {
	v, err := l.Get(key)
	if err != nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("storage: stable key %q of group %s holds %d bytes, not a uint64", key, l.group, len(v))
	}
	return keyIndex(v), nil
}

// ForEachStable calls fn with every key and value of the group's stable
// store, in key order (fn must not keep the slices).
func (l *EngineLog) ForEachStable(fn func(key, val []byte) error) error {
	if err := l.enter(); err != nil {
		return err
	}
	defer l.leave()
	it, err := l.e.db.NewIter(&pebble.IterOptions{LowerBound: l.stableLo, UpperBound: l.stableHi})
	if err != nil {
		return fmt.Errorf("storage: stable store of %s: %w", l.group, err)
	}
	for ok := it.First(); ok && err == nil; ok = it.Next() {
		err = fn(it.Key()[len(l.stableLo):], it.Value())
	}
	if err = errors.Join(err, it.Error(), it.Close()); err != nil {
		return fmt.Errorf("storage: stable store of %s: %w", l.group, err)
	}
	return nil
}
