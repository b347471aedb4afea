package fsm

import "crypto/sha256"

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
	if len(v) != 16 {
		badValue("dedup", 0)
	}
	cur = dedupRecord{key: key, seq: u64at(v, 0), expiresAt: int64(u64at(v, 8))}
	return cur, cur.expiresAt > p.now, true
}

// dedupRemember records key for seq for the queue's dedup window; old is
// the table's expired entry for key, if it still holds one.
func (p *Partition) dedupRemember(key dedupKey, seq uint64, old *dedupRecord) {
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
}

// dedupExpire forgets the dedup ids whose window has passed, oldest first.
func (p *Partition) dedupExpire() {
	for {
		k, v, ok := p.fifo.min(p.kv, p.fifoHead == p.fifoTail)
		if !ok {
			return
		}
		r := decodeFIFO(v)
		if r.expiresAt > p.now {
			return
		}
		p.fifo.del(p.kv, k)
		p.fifoHead++
		if cur, _, known := p.dedupLookup(r.key); known && cur.expiresAt == r.expiresAt && cur.seq == r.seq {
			p.kv.Delete(dedupKeyOf(r.key))
			p.dedupLive--
			p.dedupFactOut(&r)
		}
	}
}
