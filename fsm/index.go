package fsm

import "bytes"

// ordIndex is one ordering of the partition's KV (ready, delayed, leases,
// dead, the dedup FIFO): the keys under one prefix byte. It caches the first
// pair, and keeps lo, a key below which the ordering holds nothing. Keys
// leave an ordering mostly from its front (deliveries, expiries, acks in
// lease order), and a deleted key stays in a log-structured store as a
// tombstone until compaction: scanning from the prefix would walk every one
// of them, scanning from lo walks only those deleted out of order.
//
// Nothing here is state: two replicas with different caches hold the same
// keys and answer the same.
type ordIndex struct {
	prefix byte
	lo     []byte // nil: the prefix itself
	// first and firstVal are the smallest pair when known; known with
	// first == nil means the ordering is empty.
	known    bool
	first    []byte
	firstVal []byte
}

func newIndex(p byte) ordIndex { return ordIndex{prefix: p} }

// reset forgets everything cached (after the KV changed underneath).
func (x *ordIndex) reset() { *x = ordIndex{prefix: x.prefix} }

// min returns the smallest pair of the ordering, or ok false. empty, when
// true, says the caller's count knows it holds nothing.
func (x *ordIndex) min(kv KV, empty bool) (k, v []byte, ok bool) {
	if empty {
		return nil, nil, false
	}
	if !x.known {
		lower := x.lo
		if lower == nil {
			lower = []byte{x.prefix}
		}
		x.first, x.firstVal = nil, nil
		kv.Scan(lower, prefixEnd(x.prefix), func(k, v []byte) bool {
			x.first, x.firstVal = bytes.Clone(k), bytes.Clone(v)
			return false
		})
		x.known = true
		if x.first != nil {
			x.lo = x.first
		}
	}
	return x.first, x.firstVal, x.first != nil
}

// put records that k (with value v) was set.
func (x *ordIndex) put(kv KV, k, v []byte) {
	kv.Set(k, v)
	if x.lo != nil && bytes.Compare(k, x.lo) < 0 {
		x.lo = k
	}
	if x.known && (x.first == nil || bytes.Compare(k, x.first) <= 0) {
		x.first, x.firstVal = k, v
	}
}

// del deletes k, which must be in the ordering.
func (x *ordIndex) del(kv KV, k []byte) {
	kv.Delete(k)
	if x.known && x.first != nil && bytes.Equal(k, x.first) {
		// k was the smallest: everything left is above it.
		x.known = false
		x.lo = append(bytes.Clone(k), 0)
		x.first, x.firstVal = nil, nil
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
	x.known = true
}
