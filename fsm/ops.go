package fsm

import (
	"bytes"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

// enqueue stores a batch of messages, or none of them when the batch does
// not fit under max_messages/max_bytes.
func (p *Partition) enqueue(msgs []newMsg, res *Result) {
	if !p.fits(msgs) {
		res.Code = QueueFull
		res.Detail = "queue partition is full"
		return
	}
	res.Enqueued = make([]Enqueued, len(msgs))
	cache := p.dedupPrefetch(msgs)
	for i := range msgs {
		nm := &msgs[i]
		dedup := p.dedupOn(nm.dedupID)
		var key dedupKey
		var old *dedupRecord
		if dedup {
			key = keyOf(nm.dedupID)
			cur, dup, known := p.cachedLookup(cache, key)
			if dup {
				res.Enqueued[i] = Enqueued{Seq: cur.seq, Duplicate: true}
				continue
			}
			if known {
				old = &cur
			}
		}
		seq := p.nextSeq
		p.nextSeq++
		size := uint32(nm.size())
		body, crc := encodeBody(p.now, size, nm.payload, nm.key, nm.headers)
		p.kv.Set(key1(kBody, seq), body)
		m := msgState{seq: seq, enqueuedAt: p.now, size: size, bodyCRC: crc}
		p.bytes += uint64(size)
		p.enqueuedTotal++
		if d := nm.delay; d > 0 {
			m.state, m.until = stateDelayed, p.now+d
			p.kv.Set(key1(kState, seq), m.encode())
			p.delayed.put(p.kv, key2(kDelayed, uint64(m.until), seq), nil)
			p.nDelayed++
			p.factIn(&m)
		} else {
			m.state, m.fresh = stateReady, true
			p.ready.put(p.kv, key1(kReady, seq), readyValue(&m))
			p.nReady++
			p.factIn(&m)
		}
		if dedup {
			cache[key] = p.dedupRemember(key, seq, old)
		}
		res.Enqueued[i] = Enqueued{Seq: seq}
	}
}

// fits reports whether storing the new (non-duplicate) messages of a batch
// keeps the partition within max_messages and max_bytes.
func (p *Partition) fits(msgs []newMsg) bool {
	maxMsgs, maxBytes := p.settings.GetMaxMessages(), p.settings.GetMaxBytes()
	if maxMsgs == 0 && maxBytes == 0 {
		return true
	}
	stored := p.nReady + p.nDelayed + p.nLeased + p.nDead
	// First assume every message is new: the common case needs no lookups.
	var n, b uint64
	for i := range msgs {
		n++
		b += msgs[i].size()
	}
	within := func(n, b uint64) bool {
		return (maxMsgs == 0 || stored+n <= maxMsgs) && (maxBytes == 0 || p.bytes+b <= maxBytes)
	}
	if within(n, b) {
		return true
	}
	// Count exactly: duplicates of stored ids, and repeats within the batch,
	// take no space.
	n, b = 0, 0
	seen := make(map[dedupKey]struct{})
	for i := range msgs {
		if id := msgs[i].dedupID; p.dedupOn(id) {
			key := keyOf(id)
			if _, dup, _ := p.dedupLookup(key); dup {
				continue
			}
			if _, again := seen[key]; again {
				continue
			}
			seen[key] = struct{}{}
		}
		n++
		b += msgs[i].size()
	}
	return within(n, b)
}

// popReady removes and returns the ready message with the lowest sequence,
// its fact out of the sum.
func (p *Partition) popReady() (msgState, bool) {
	k, v, ok := p.ready.min(p.kv, p.nReady == 0)
	if !ok {
		return msgState{}, false
	}
	m := decodeReady(u64at(k, 1), v)
	if !m.fresh {
		m = p.loadState(m.seq)
	}
	p.factOut(&m)
	p.ready.del(p.kv, k)
	p.nReady--
	return m, true
}

// receive leases up to r.Max ready messages in sequence order.
func (p *Partition) receive(r *fsmv1.Receive, res *Result) {
	vis := r.GetVisibilityTimeout()
	if vis == 0 {
		vis = p.settings.GetVisibilityTimeout()
	}
	want := int(r.GetMax())
	res.Delivered = make([]Delivery, 0, min(uint64(want), p.nReady))
	var size uint64
	for len(res.Delivered) < want {
		_, v, ok := p.ready.min(p.kv, p.nReady == 0)
		if !ok {
			break
		}
		if next := decodeReady(0, v); r.GetMaxBytes() > 0 && len(res.Delivered) > 0 && size+uint64(next.size) > r.GetMaxBytes() {
			break
		}
		m, _ := p.popReady()
		// max_deliveries may have been lowered since m was released.
		if p.maxedOut(&m) {
			p.deadLetter(&m, ReasonMaxDeliveries)
			res.DeadLettered++
			continue
		}
		size += uint64(m.size)
		m.state = stateLeased
		m.fresh = false
		m.deliveries++
		m.epoch++
		m.until = p.now + vis
		m.consumer = r.GetConsumer()
		p.kv.Set(key1(kState, m.seq), m.encode())
		p.leases.put(p.kv, key2(kLeased, uint64(m.until), m.seq), nil)
		p.nLeased++
		p.factIn(&m)
		body, ok := p.kv.Get(key1(kBody, m.seq))
		if !ok {
			badValue("missing body", m.seq)
		}
		payload, key, headers := decodeBody(m.seq, body)
		res.Delivered = append(res.Delivered, Delivery{
			Seq:        m.seq,
			Epoch:      m.epoch,
			Deliveries: m.deliveries,
			Deadline:   m.until,
			EnqueuedAt: m.enqueuedAt,
			Payload:    payload,
			Key:        key,
			Headers:    headers,
		})
	}
}

// lease finds the message a receipt names and whether the receipt is its
// current lease.
func (p *Partition) lease(ref *fsmv1.LeaseRef) (msgState, LeaseOutcome) {
	v, ok := p.kv.Get(key1(kState, ref.GetSeq()))
	if !ok {
		return msgState{}, LeaseUnknown
	}
	m := decodeState(ref.GetSeq(), v)
	switch {
	case m.state != stateLeased && m.state != stateDead:
		// Ready or delayed messages are never named by a receipt.
		return msgState{}, LeaseUnknown
	case m.state != stateLeased || m.epoch != ref.GetEpoch():
		return msgState{}, LeaseStale
	}
	return m, LeaseOK
}

// forLeases calls fn for every receipt that matches a current lease, and
// records each receipt's outcome.
func (p *Partition) forLeases(refs []*fsmv1.LeaseRef, res *Result, fn func(*msgState)) {
	res.Leases = make([]LeaseOutcome, len(refs))
	for i, ref := range refs {
		m, out := p.lease(ref)
		res.Leases[i] = out
		if out == LeaseOK {
			fn(&m)
		}
	}
}

func (p *Partition) ack(a *fsmv1.Ack, res *Result) {
	p.forLeases(a.GetLeases(), res, func(m *msgState) {
		p.unlease(m)
		p.drop(m)
		p.ackedTotal++
	})
}

func (p *Partition) requeue(r *fsmv1.Requeue, res *Result) {
	p.forLeases(r.GetLeases(), res, func(m *msgState) {
		p.unlease(m)
		p.release(m, r.GetDelay())
	})
}

func (p *Partition) extend(x *fsmv1.ExtendLease, res *Result) {
	vis := x.GetVisibilityTimeout()
	if vis == 0 {
		vis = p.settings.GetVisibilityTimeout()
	}
	p.forLeases(x.GetLeases(), res, func(m *msgState) {
		p.factOut(m)
		p.leases.del(p.kv, key2(kLeased, uint64(m.until), m.seq))
		m.until = p.now + vis
		p.kv.Set(key1(kState, m.seq), m.encode())
		p.leases.put(p.kv, key2(kLeased, uint64(m.until), m.seq), nil)
		p.factIn(m)
	})
}

func (p *Partition) reject(r *fsmv1.Reject, res *Result) {
	reason := r.GetReason()
	if reason == "" {
		reason = ReasonRejected
	}
	p.forLeases(r.GetLeases(), res, func(m *msgState) {
		p.unlease(m)
		p.deadLetter(m, reason)
	})
}

// undead takes m off the dead-letter list (its fact out); it is then in no
// state.
func (p *Partition) undead(m *msgState) {
	p.factOut(m)
	p.dead.del(p.kv, key1(kDead, m.deadOrder))
	p.nDead--
}

// redrive moves dead messages back to ready with their delivery count reset:
// the named sequences, or else the oldest dead messages up to r.Max (0 = all).
func (p *Partition) redrive(r *fsmv1.Redrive, res *Result) {
	var moved uint64
	if seqs := r.GetSeqs(); len(seqs) > 0 {
		for _, seq := range seqs {
			v, ok := p.kv.Get(key1(kState, seq))
			if !ok {
				continue
			}
			if m := decodeState(seq, v); m.state == stateDead {
				p.undead(&m) // undead now, so a repeated seq is moved once
				m.deliveries = 0
				p.makeReady(&m)
				moved++
			}
		}
	} else {
		for r.GetMax() == 0 || moved < r.GetMax() {
			_, v, ok := p.dead.min(p.kv, p.nDead == 0)
			if !ok {
				break
			}
			m := p.loadState(u64at(v, 0))
			p.undead(&m)
			m.deliveries = 0
			p.makeReady(&m)
			moved++
		}
	}
	res.Moved = moved
}

// purge deletes every ready and delayed message, and/or every dead one.
// Leased messages are left to their consumers. It reads every purged
// message's state (to keep the checksum and byte count), in bounded chunks.
func (p *Partition) purge(x *fsmv1.Purge, res *Result) {
	if x.GetReady() {
		res.PurgedReady = p.nReady + p.nDelayed
		p.purgeIndex(&p.ready, &p.nReady, func(k, v []byte) msgState {
			m := decodeReady(u64at(k, 1), v)
			if !m.fresh {
				m = p.loadState(m.seq)
			}
			return m
		})
		p.purgeIndex(&p.delayed, &p.nDelayed, func(k, _ []byte) msgState { return p.loadState(u64at(k, 9)) })
	}
	if x.GetDead() {
		res.PurgedDead = p.nDead
		p.purgeIndex(&p.dead, &p.nDead, func(_, v []byte) msgState { return p.loadState(u64at(v, 0)) })
	}
}

// purgeIndex drops every message of one ordering.
func (p *Partition) purgeIndex(x *ordIndex, n *uint64, load func(k, v []byte) msgState) {
	const chunk = 1024
	var from []byte
	for *n > 0 {
		type kvp struct{ k, v []byte }
		var batch []kvp
		x.scan(p.kv, from, func(k, v []byte) bool {
			batch = append(batch, kvp{bytes.Clone(k), bytes.Clone(v)})
			return len(batch) < chunk
		})
		if len(batch) == 0 {
			badValue("ordering shorter than its count", 0)
		}
		for _, e := range batch {
			m := load(e.k, e.v)
			p.factOut(&m)
			x.del(p.kv, e.k)
			*n--
			p.drop(&m)
		}
		from = append(batch[len(batch)-1].k, 0)
	}
	x.clear(p.kv)
}
