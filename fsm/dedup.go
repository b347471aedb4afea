package fsm

import (
	"bytes"
	"crypto/sha256"
	"slices"
)

// dedupKey identifies a dedup id by the first 16 bytes of its SHA-256:
// fixed-size keys, and no producer can craft an id that collides with
// another's (2^-128 per pair by chance).
type dedupKey [16]byte

func keyOf(id string) dedupKey {
	sum := sha256.Sum256([]byte(id))
	return dedupKey(sum[:16])
}

// dedupRecord is a dedup id in the order it was first seen (the f
// ordering). Entries are forgotten from the front once their window has
// passed; a record whose id has a newer entry in u is superseded and
// skipped.
type dedupRecord struct {
	key       dedupKey
	seq       uint64
	expiresAt int64
}

// dedupOn reports whether dedup id is to be checked and remembered.
func (p *Partition) dedupOn(id string) bool { return id != "" && p.settings.GetDedupWindow() > 0 }

// dedupLookup returns the entry under key, whether it is still within its
// window (dup), and whether the table holds key at all (known).
func (p *Partition) dedupLookup(key dedupKey) (cur dedupRecord, dup, known bool) {
	v, ok := p.kv.Get(dedupKeyOf(key))
	if !ok {
		return dedupRecord{}, false, false
	}
	cur = decodeDedup(key, v)
	return cur, cur.expiresAt > p.now, true
}

// decodeDedup is the table entry of key (value: seq, expiry).
func decodeDedup(key dedupKey, v []byte) dedupRecord {
	if len(v) != 16 {
		badValue("dedup", 0)
	}
	return dedupRecord{key: key, seq: u64at(v, 0), expiresAt: int64(u64at(v, 8))}
}

// dedupRemember records key for seq for the queue's dedup window; old is
// the table's expired entry for key, if it still holds one.
func (p *Partition) dedupRemember(key dedupKey, seq uint64, old *dedupRecord) *dedupRecord {
	r := dedupRecord{key: key, seq: seq, expiresAt: p.now + p.settings.GetDedupWindow()}
	if old != nil {
		// An expired entry not yet forgotten (its window was longer than
		// those after it): its FIFO record is superseded.
		p.dedupFactOut(old)
	} else {
		p.dedupLive++
	}
	p.kv.Set(dedupKeyOf(key), dedupValue(seq, r.expiresAt))
	p.fifo.put(p.kv, key1(kFIFO, p.fifoTail), fifoValue(r))
	p.fifoTail++
	p.dedupFactIn(&r)
	return &r
}

// dedupExpire forgets the dedup ids whose window has passed, oldest first.
// It takes the due FIFO records in chunks of dedupExpireChunk and looks up
// their table entries with one GetMany per chunk: every message enqueued
// with an id is one expiry a window later, at the enqueue rate.
func (p *Partition) dedupExpire() {
	for {
		var due []dedupRecord
		for len(due) < dedupExpireChunk {
			k, v, ok := p.fifo.min(p.kv, p.fifoHead == p.fifoTail)
			if !ok {
				break
			}
			r := decodeFIFO(v)
			if r.expiresAt > p.now {
				break
			}
			p.fifo.del(p.kv, k)
			p.fifoHead++
			due = append(due, r)
		}
		if len(due) == 0 {
			return
		}
		keys := make([][]byte, 0, len(due))
		for _, r := range due {
			keys = append(keys, dedupKeyOf(r.key))
		}
		slices.SortFunc(keys, bytes.Compare)
		keys = slices.CompactFunc(keys, bytes.Equal)
		cur := make(map[dedupKey]dedupRecord, len(keys))
		p.kv.GetMany(keys, func(i int, v []byte, ok bool) {
			if !ok {
				return
			}
			r := decodeDedup(dedupKey(keys[i][1:]), v)
			cur[r.key] = r
		})
		for i := range due {
			r := &due[i]
			// A record superseded by a newer entry of its id is skipped; the
			// entry it matches is deleted once.
			if c, known := cur[r.key]; known && c.expiresAt == r.expiresAt && c.seq == r.seq {
				p.kv.Delete(dedupKeyOf(r.key))
				delete(cur, r.key)
				p.dedupLive--
				p.dedupFactOut(r)
			}
		}
		if len(due) < dedupExpireChunk {
			return
		}
	}
}

// dedupExpireChunk is how many due dedup records dedupExpire handles with
// one lookup.
const dedupExpireChunk = 1024

// dedupCache holds a command's dedup entries, read in one GetMany before
// its messages are stored and updated as they are: a nil entry is an id
// the table does not hold.
type dedupCache map[dedupKey]*dedupRecord

// dedupPrefetch reads the entries of every dedup id of msgs at once.
func (p *Partition) dedupPrefetch(msgs []newMsg) dedupCache {
	var keys [][]byte
	for i := range msgs {
		if p.dedupOn(msgs[i].dedupID) {
			k := keyOf(msgs[i].dedupID)
			keys = append(keys, dedupKeyOf(k))
		}
	}
	if len(keys) == 0 {
		return nil
	}
	slices.SortFunc(keys, bytes.Compare)
	keys = slices.CompactFunc(keys, bytes.Equal)
	c := make(dedupCache, len(keys))
	for _, k := range keys {
		c[dedupKey(k[1:])] = nil
	}
	p.kv.GetMany(keys, func(i int, v []byte, ok bool) {
		if !ok {
			return
		}
		r := decodeDedup(dedupKey(keys[i][1:]), v)
		c[r.key] = &r
	})
	return c
}

// lookup is dedupLookup through the cache.
func (p *Partition) cachedLookup(c dedupCache, key dedupKey) (cur dedupRecord, dup, known bool) {
	r, ok := c[key]
	if !ok {
		return p.dedupLookup(key)
	}
	if r == nil {
		return dedupRecord{}, false, false
	}
	return *r, r.expiresAt > p.now, true
}
