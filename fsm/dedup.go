package fsm

import "crypto/sha256"

// dedupKey identifies a dedup id by the first 16 bytes of its SHA-256. At
// tens of millions of remembered ids per node (a five-minute window at
// 100,000 messages/s), fixed-size keys without pointers keep the table
// compact and invisible to the garbage collector. A cryptographic hash means
// no producer can craft an id that collides with another's (2^-128 per pair
// by chance).
type dedupKey [16]byte

func keyOf(id string) dedupKey {
	sum := sha256.Sum256([]byte(id))
	return dedupKey(sum[:16])
}

// dedupRecord is a dedup id in the order it was first seen. Entries are
// forgotten from the front once their window has passed.
type dedupRecord struct {
	key       dedupKey
	seq       uint64
	expiresAt int64
}

// dedupOn reports whether dedup id is to be checked and remembered.
func (p *Partition) dedupOn(id string) bool { return id != "" && p.settings.GetDedupWindow() > 0 }

// dedupLookup returns the sequence first stored under key, if it is still
// within its window; known says whether the table holds key at all.
func (p *Partition) dedupLookup(key dedupKey) (seq uint64, dup, known bool) {
	e, ok := p.dedup[key]
	if !ok || e.expiresAt <= p.now {
		return 0, false, ok
	}
	return e.seq, true, true
}

// dedupRemember records key for seq for the queue's dedup window; known is
// dedupLookup's answer for key.
func (p *Partition) dedupRemember(key dedupKey, seq uint64, known bool) {
	exp := p.now + p.settings.GetDedupWindow()
	if known {
		// An expired entry not yet forgotten (its window was longer than
		// those after it): its record in the FIFO is superseded.
		p.dedupStale++
	}
	p.dedup[key] = dedupEntry{seq: seq, expiresAt: exp}
	p.dedupFIFO.pushBack(dedupRecord{key: key, seq: seq, expiresAt: exp})
	if len(p.dedup) > p.dedupPeak {
		p.dedupPeak = len(p.dedup)
	}
}

// dedupExpire forgets the dedup ids whose window has passed, oldest first.
func (p *Partition) dedupExpire() {
	for e, ok := p.dedupFIFO.front(); ok && e.expiresAt <= p.now; e, ok = p.dedupFIFO.front() {
		p.dedupFIFO.popFront()
		if cur, ok := p.dedup[e.key]; ok && cur.expiresAt == e.expiresAt {
			delete(p.dedup, e.key)
		} else {
			p.dedupStale--
		}
	}
	p.dedup = shrinkMap(p.dedup, &p.dedupPeak)
}
