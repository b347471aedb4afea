package fsm

import (
	"google.golang.org/protobuf/proto"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

// Stats is a partition's state summed up. Every count is exact after each
// command.
type Stats struct {
	Ready, Delayed, Leased, Dead uint64
	// Bytes: payloads, keys and headers of every stored message.
	Bytes uint64
	// OldestReadyAt is the enqueue stamp of the oldest ready message, 0 if none.
	OldestReadyAt int64
	// Now is the partition's time: the largest stamp applied.
	Now     int64
	NextSeq uint64

	EnqueuedTotal, AckedTotal, DeadLetteredTotal, ExpiredTotal uint64
}

// Messages is the number of stored messages, in every state.
func (s Stats) Messages() uint64 { return s.Ready + s.Delayed + s.Leased + s.Dead }

// OldestReadyAge is how long the oldest ready message has waited at time
// now (Unix nanoseconds), 0 if none is ready.
func (s Stats) OldestReadyAge(now int64) int64 {
	if s.OldestReadyAt == 0 || now < s.OldestReadyAt {
		return 0
	}
	return now - s.OldestReadyAt
}

// Stats returns the partition's counts.
func (p *Partition) Stats() Stats {
	s := Stats{
		Ready: p.nReady, Delayed: p.nDelayed, Leased: p.nLeased, Dead: p.nDead,
		Bytes: p.bytes, Now: p.now, NextSeq: p.nextSeq,
		EnqueuedTotal: p.enqueuedTotal, AckedTotal: p.ackedTotal,
		DeadLetteredTotal: p.deadLetteredTotal, ExpiredTotal: p.expiredTotal,
	}
	// Ready order is sequence order and enqueue stamps never decrease with
	// the sequence, so the lowest ready sequence is the oldest.
	if _, v, ok := p.ready.min(p.kv, p.nReady == 0); ok {
		s.OldestReadyAt = decodeReady(0, v).enqueuedAt
	}
	return s
}

// Settings returns a copy of the settings in force.
func (p *Partition) Settings() *fsmv1.Settings { return proto.CloneOf(p.settings) }

// DeadLetter is one message on the dead-letter list.
type DeadLetter struct {
	Seq        uint64
	Order      uint64 // position on the list; pages continue after it
	Reason     string
	DeadAt     int64
	EnqueuedAt int64
	Deliveries uint32
	Payload    []byte
	Key        string
	Headers    []*fsmv1.Header
}

// DeadLetters lists up to limit dead messages, oldest first, starting after
// list position after (0 = from the start). Listing changes nothing.
func (p *Partition) DeadLetters(after uint64, limit int) []DeadLetter {
	if limit <= 0 || p.nDead == 0 {
		return nil
	}
	var seqs []uint64
	p.dead.scan(p.kv, key1(kDead, after+1), func(_, v []byte) bool {
		seqs = append(seqs, u64at(v, 0))
		return len(seqs) < limit
	})
	out := make([]DeadLetter, 0, len(seqs))
	for _, seq := range seqs {
		m := p.loadState(seq)
		body, ok := p.kv.Get(key1(kBody, seq))
		if !ok {
			badValue("missing body", seq)
		}
		payload, key, headers := decodeBody(seq, body)
		out = append(out, DeadLetter{
			Seq: seq, Order: m.deadOrder, Reason: m.deadReason, DeadAt: m.deadAt,
			EnqueuedAt: m.enqueuedAt, Deliveries: m.deliveries,
			Payload: payload, Key: key, Headers: headers,
		})
	}
	return out
}

// NextDue is the earliest time at which the passage of time alone changes
// the partition (a lease ends, a delay ends, a message or dead letter
// expires, a dedup id is forgotten), or 0 if nothing is due. The leader
// proposes a Tick then, so an idle partition still releases leases and
// delays.
func (p *Partition) NextDue() int64 {
	var due int64
	earliest := func(t int64) {
		if due == 0 || t < due {
			due = t
		}
	}
	if k, _, ok := p.leases.min(p.kv, p.nLeased == 0); ok {
		earliest(int64(u64at(k, 1)))
	}
	if k, _, ok := p.delayed.min(p.kv, p.nDelayed == 0); ok {
		earliest(int64(u64at(k, 1)))
	}
	if r := p.settings.GetRetention(); r > 0 {
		if _, v, ok := p.ready.min(p.kv, p.nReady == 0); ok {
			earliest(decodeReady(0, v).enqueuedAt + r)
		}
		if _, v, ok := p.dead.min(p.kv, p.nDead == 0); ok {
			earliest(int64(u64at(v, 8)) + r)
		}
	}
	if _, v, ok := p.fifo.min(p.kv, p.fifoHead == p.fifoTail); ok {
		earliest(decodeFIFO(v).expiresAt)
	}
	return due
}
