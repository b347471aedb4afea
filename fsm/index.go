package fsm

import (
	"bytes"
	"slices"
)

// ordIndex is one ordering of the partition's KV (ready, delayed, leases,
// dead, the dedup FIFO): the keys under one prefix byte. It caches a window
// of the smallest pairs, read with one scan, and keeps lo, a key below
// which the ordering holds nothing. Keys leave an ordering mostly from its
// front (deliveries, expiries, acks in lease order), one at a time: with
// the window, taking the next one is a slice operation, not a new store
// iterator each (against the state engine with dozens of sstables that
// was tens of µs a key, and the dedup FIFO's expiry, one key per message
// enqueued a window earlier, fell behind: issue 14's 4M run stalled when
// the first dedup window ended). A deleted key stays in a log-structured
// store as a tombstone until compaction: scanning from the prefix would
// walk every one of them, scanning from lo walks only those deleted out of
// order.
//
// Nothing here is state: two replicas with different caches hold the same
// keys and answer the same. Every change to an ordering's keys goes
// through put, del or clear, which keep the window true.
type ordIndex struct {
	prefix byte
	lo     []byte // nil: the prefix itself
	// known: win holds the len(win) smallest pairs of the ordering, in
	// order; full: and nothing else (the scan that filled it reached the
	// end). Not known: nothing is cached.
	known, full bool
	win         []ordPair
}

type ordPair struct{ k, v []byte }

const (
	// ordWindow is how many pairs one scan reads into the window.
	ordWindow = 64
	// ordWindowMax bounds the window as puts below its end grow it.
	ordWindowMax = 2 * ordWindow
)

func newIndex(p byte) ordIndex { return ordIndex{prefix: p} }

// reset forgets everything cached (after the KV changed underneath).
func (x *ordIndex) reset() { *x = ordIndex{prefix: x.prefix} }

// fill reads up to ordWindow pairs from lo into an empty window.
func (x *ordIndex) fill(kv KV) {
	lower := x.lo
	if lower == nil {
		lower = []byte{x.prefix}
	}
	x.win = x.win[:0]
	kv.Scan(lower, prefixEnd(x.prefix), func(k, v []byte) bool {
		x.win = append(x.win, ordPair{bytes.Clone(k), bytes.Clone(v)})
		return len(x.win) < ordWindow
	})
	x.known = true
	x.full = len(x.win) < ordWindow
	if len(x.win) > 0 {
		x.lo = x.win[0].k
	}
}

// min returns the smallest pair of the ordering, or ok false. empty, when
// true, says the caller's count knows it holds nothing.
func (x *ordIndex) min(kv KV, empty bool) (k, v []byte, ok bool) {
	if empty {
		return nil, nil, false
	}
	if !x.known || (len(x.win) == 0 && !x.full) {
		x.fill(kv)
	}
	if len(x.win) == 0 {
		return nil, nil, false
	}
	return x.win[0].k, x.win[0].v, true
}

// find returns where k is or would be in the window.
func (x *ordIndex) find(k []byte) (int, bool) {
	return slices.BinarySearchFunc(x.win, k, func(p ordPair, k []byte) int { return bytes.Compare(p.k, k) })
}

// put records that k (with value v) was set.
func (x *ordIndex) put(kv KV, k, v []byte) {
	kv.Set(k, v)
	if x.lo != nil && bytes.Compare(k, x.lo) < 0 {
		x.lo = k
	}
	if !x.known {
		return
	}
	i, found := x.find(k)
	switch {
	case found:
		x.win[i].v = v
	case i < len(x.win) || x.full:
		// Below the window's end, or the window is the whole ordering: k
		// belongs in it.
		x.win = slices.Insert(x.win, i, ordPair{k, v})
		if len(x.win) > ordWindowMax {
			x.win = x.win[:ordWindow]
			x.full = false
		}
	}
	// Above the end of a partial window: not cached, as before.
}

// del deletes k, which must be in the ordering.
func (x *ordIndex) del(kv KV, k []byte) {
	kv.Delete(k)
	if !x.known {
		return
	}
	i, found := x.find(k)
	if !found {
		return
	}
	x.win = slices.Delete(x.win, i, i+1)
	if i == 0 {
		// k was the smallest: everything left is above it.
		x.lo = append(bytes.Clone(k), 0)
	}
}

// scan calls fn for the ordering's pairs in order from its lower bound
// until fn returns false. fn must not change the KV.
func (x *ordIndex) scan(kv KV, from []byte, fn func(k, v []byte) bool) {
	lower := []byte{x.prefix}
	if x.lo != nil && bytes.Compare(x.lo, lower) > 0 {
		lower = x.lo
	}
	if from != nil && bytes.Compare(from, lower) > 0 {
		lower = from
	}
	kv.Scan(lower, prefixEnd(x.prefix), fn)
}

// clear deletes every key of the ordering.
func (x *ordIndex) clear(kv KV) {
	kv.DeleteRange([]byte{x.prefix}, prefixEnd(x.prefix))
	x.reset()
	x.known, x.full = true, true
}
