package fsm

import fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"

// enqueue stores a batch of messages, or none of them when the batch does
// not fit under max_messages/max_bytes.
func (p *Partition) enqueue(msgs []newMsg, res *Result) {
	if !p.fits(msgs) {
		res.Code = QueueFull
		res.Detail = "queue partition is full"
		return
	}
	res.Enqueued = make([]Enqueued, len(msgs))
	// Allocate the batch's messages in one block: one allocation instead of
	// one per message. A block lives as long as any of its messages.
	block := make([]message, len(msgs))
	for i := range msgs {
		nm := &msgs[i]
		dedup := p.dedupOn(nm.dedupID)
		var key dedupKey
		var known bool
		if dedup {
			key = keyOf(nm.dedupID)
			var seq uint64
			var dup bool
			if seq, dup, known = p.dedupLookup(key); dup {
				res.Enqueued[i] = Enqueued{Seq: seq, Duplicate: true}
				continue
			}
		}
		seq := p.nextSeq
		p.nextSeq++
		m := &block[i]
		*m = message{
			seq:        seq,
			enqueuedAt: p.now,
			payload:    nm.payload,
			key:        nm.key,
			headers:    nm.headers,
			size:       uint32(nm.size()),
			hidx:       -1,
		}
		p.bytes += uint64(m.size)
		p.enqueuedTotal++
		if d := nm.delay; d > 0 {
			m.state = stateDelayed
			m.until = p.now + d
			p.delayed.push(m)
			p.nDelayed++
		} else {
			p.makeReady(m)
		}
		if dedup {
			p.dedupRemember(key, seq, known)
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
		if next := p.peekReady(); next == nil ||
			r.GetMaxBytes() > 0 && len(res.Delivered) > 0 && size+uint64(next.size) > r.GetMaxBytes() {
			break
		}
		m := p.popReady()
		// max_deliveries may have been lowered since m was released.
		if p.maxedOut(m) {
			p.deadLetter(m, ReasonMaxDeliveries)
			res.DeadLettered++
			continue
		}
		size += uint64(m.size)
		m.state = stateLeased
		m.deliveries++
		m.epoch++
		m.until = p.now + vis
		m.consumer = r.GetConsumer()
		p.leases.push(m)
		p.bySeq[m.seq] = m
		p.nLeased++
		res.Delivered = append(res.Delivered, Delivery{
			Seq:        m.seq,
			Epoch:      m.epoch,
			Deliveries: m.deliveries,
			Deadline:   m.until,
			EnqueuedAt: m.enqueuedAt,
			Payload:    m.payload,
			Key:        m.key,
			Headers:    m.headers,
		})
	}
	if len(p.bySeq) > p.bySeqPeak {
		p.bySeqPeak = len(p.bySeq)
	}
}

// lease finds the message a receipt names and whether the receipt is its
// current lease.
func (p *Partition) lease(ref *fsmv1.LeaseRef) (*message, LeaseOutcome) {
	m, ok := p.bySeq[ref.GetSeq()]
	switch {
	case !ok:
		return nil, LeaseUnknown
	case m.state != stateLeased || m.epoch != ref.GetEpoch():
		return nil, LeaseStale
	}
	return m, LeaseOK
}

// forLeases calls fn for every receipt that matches a current lease, and
// records each receipt's outcome.
func (p *Partition) forLeases(refs []*fsmv1.LeaseRef, res *Result, fn func(*message)) {
	res.Leases = make([]LeaseOutcome, len(refs))
	for i, ref := range refs {
		m, out := p.lease(ref)
		res.Leases[i] = out
		if out == LeaseOK {
			fn(m)
		}
	}
}

func (p *Partition) ack(a *fsmv1.Ack, res *Result) {
	p.forLeases(a.GetLeases(), res, func(m *message) {
		p.unlease(m)
		p.drop(m)
		p.ackedTotal++
	})
}

func (p *Partition) requeue(r *fsmv1.Requeue, res *Result) {
	p.forLeases(r.GetLeases(), res, func(m *message) {
		p.unlease(m)
		p.release(m, r.GetDelay())
	})
}

func (p *Partition) extend(x *fsmv1.ExtendLease, res *Result) {
	vis := x.GetVisibilityTimeout()
	if vis == 0 {
		vis = p.settings.GetVisibilityTimeout()
	}
	p.forLeases(x.GetLeases(), res, func(m *message) {
		m.until = p.now + vis
		p.leases.fix(m)
	})
}

func (p *Partition) reject(r *fsmv1.Reject, res *Result) {
	reason := r.GetReason()
	if reason == "" {
		reason = ReasonRejected
	}
	p.forLeases(r.GetLeases(), res, func(m *message) {
		p.unlease(m)
		p.deadLetter(m, reason)
	})
}

// redrive moves dead messages back to ready with their delivery count reset:
// the named sequences, or else the oldest dead messages up to r.Max (0 = all).
func (p *Partition) redrive(r *fsmv1.Redrive, res *Result) {
	var move []*message
	if seqs := r.GetSeqs(); len(seqs) > 0 {
		for _, seq := range seqs {
			if m, ok := p.bySeq[seq]; ok && m.state == stateDead {
				p.undead(m) // undead now, so a repeated seq is moved once
				move = append(move, m)
			}
		}
	} else {
		p.dead.Ascend(func(m *message) bool {
			move = append(move, m)
			return r.GetMax() == 0 || uint64(len(move)) < r.GetMax()
		})
		for _, m := range move {
			p.undead(m)
		}
	}
	for _, m := range move {
		m.deliveries = 0
		p.makeReady(m)
	}
	res.Moved = uint64(len(move))
}

// purge deletes every ready and delayed message, and/or every dead one.
// Leased messages are left to their consumers.
func (p *Partition) purge(x *fsmv1.Purge, res *Result) {
	if x.GetReady() {
		for p.ready.len() > 0 {
			p.drop(p.ready.popFront())
		}
		p.ready.reset()
		p.returned.clear(p.drop)
		p.delayed.clear(p.drop)
		res.PurgedReady = p.nReady + p.nDelayed
		p.nReady, p.nDelayed = 0, 0
	}
	if x.GetDead() {
		p.dead.Ascend(func(m *message) bool {
			p.delBySeq(m.seq)
			p.drop(m)
			return true
		})
		p.dead.Clear(false)
		res.PurgedDead = p.nDead
		p.nDead = 0
	}
}
