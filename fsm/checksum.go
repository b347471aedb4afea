package fsm

import (
	"encoding/binary"
	"hash/crc64"
)

// The state checksum is kept incrementally: the partition record holds the
// sum (mod 2^64) of a hash of every stored fact — each message as a
// snapshot would show it (sequence, state, times, counts, consumer,
// dead-letter fields, size and the CRC of its body) and each current dedup
// entry. A change takes the old fact's hash out and puts the new one in, so
// the sum never needs a pass over the messages, and equal states give
// equal sums however they were reached (log, snapshot, another store).

var crc64Table = crc64.MakeTable(crc64.ECMA)

const (
	factMessage = 1
	factDedup   = 2
)

func messageFact(m *msgState) uint64 {
	var buf [96]byte
	b := buf[:0]
	b = append(b, factMessage)
	b = binary.BigEndian.AppendUint64(b, m.seq)
	b = append(b, byte(m.state))
	b = binary.BigEndian.AppendUint64(b, uint64(m.enqueuedAt))
	b = binary.BigEndian.AppendUint32(b, m.size)
	b = binary.BigEndian.AppendUint32(b, m.bodyCRC)
	b = binary.BigEndian.AppendUint32(b, m.deliveries)
	b = binary.BigEndian.AppendUint32(b, m.epoch)
	b = binary.BigEndian.AppendUint64(b, uint64(m.until))
	if m.state == stateDead {
		b = binary.BigEndian.AppendUint64(b, uint64(m.deadAt))
		b = binary.BigEndian.AppendUint64(b, m.deadOrder)
		b = binary.AppendUvarint(b, uint64(len(m.deadReason)))
		b = append(b, m.deadReason...)
	}
	b = append(b, m.consumer...)
	return crc64.Checksum(b, crc64Table)
}

func dedupFact(r *dedupRecord) uint64 {
	var buf [33]byte
	buf[0] = factDedup
	copy(buf[1:], r.key[:])
	binary.BigEndian.PutUint64(buf[17:], r.seq)
	binary.BigEndian.PutUint64(buf[25:], uint64(r.expiresAt))
	return crc64.Checksum(buf[:], crc64Table)
}

func (p *Partition) factIn(m *msgState)          { p.sum += messageFact(m) }
func (p *Partition) factOut(m *msgState)         { p.sum -= messageFact(m) }
func (p *Partition) dedupFactIn(r *dedupRecord)  { p.sum += dedupFact(r) }
func (p *Partition) dedupFactOut(r *dedupRecord) { p.sum -= dedupFact(r) }

// Checksum is a CRC-64 of the partition's state: its settings, clock,
// counts and totals, and the sum of its facts. Replicas in equal states
// agree; it costs O(1).
func (p *Partition) Checksum() uint64 {
	m := p.meta
	m.applied, m.fifoHead, m.fifoTail = 0, 0, 0 // not state
	m.settings, _ = deterministic.Marshal(p.settings)
	return crc64.Checksum(m.encode(), crc64Table)
}
