package fsm

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

// The partition's logical layout in its KV. Every key starts with one byte
// naming what it holds; numbers in keys are 8-byte big-endian, so key order
// is numeric order. Values are this file's encodings, version-free: the
// layout as a whole is versioned by metaVersion.
//
//	m                      the partition record (metaValue): settings, clock,
//	                       counts, totals, the applied Raft index
//	b <seq>                a message's body: enqueue stamp, size, CRC, then
//	                       payload, key and headers as SnapshotMessage fields
//	                       3-5 (copied into a snapshot without decoding)
//	s <seq>                a message's state, when it is not a never-delivered
//	                       ready message (msgState)
//	r <seq>                ready, by sequence           -> readyValue
//	d <until> <seq>        delayed, by due time         -> empty
//	l <until> <seq>        leased, by deadline          -> empty
//	x <dead order>         dead-letter list, in order   -> seq, dead-at
//	u <id hash 16>         dedup table                  -> seq, expires-at
//	f <n>                  dedup ids in the order seen  -> id hash, seq, expires-at
//
// A partition keeps in memory only its record, the cached first key of
// each ordering and a lower bound below which an ordering holds no key (so
// that deleted keys at its front are skipped, not scanned).
const (
	kMeta    = 'm'
	kBody    = 'b'
	kState   = 's'
	kReady   = 'r'
	kDelayed = 'd'
	kLeased  = 'l'
	kDead    = 'x'
	kDedup   = 'u'
	kFIFO    = 'f'
)

// metaVersion is the layout version the partition record carries; a KV
// holding another is refused.
const metaVersion = 1

var metaKey = []byte{kMeta}

func key1(p byte, a uint64) []byte {
	b := make([]byte, 9)
	b[0] = p
	binary.BigEndian.PutUint64(b[1:], a)
	return b
}

func key2(p byte, a, c uint64) []byte {
	b := make([]byte, 17)
	b[0] = p
	binary.BigEndian.PutUint64(b[1:], a)
	binary.BigEndian.PutUint64(b[9:], c)
	return b
}

func dedupKeyOf(k dedupKey) []byte { return append([]byte{kDedup}, k[:]...) }

// prefixEnd is the first key after every key starting with p.
func prefixEnd(p byte) []byte { return []byte{p + 1} }

func u64at(b []byte, i int) uint64 { return binary.BigEndian.Uint64(b[i:]) }

// --- message state -------------------------------------------------------

// msgState is everything about a stored message but its body: what the
// orderings, receipts and the checksum need.
type msgState struct {
	seq        uint64
	enqueuedAt int64
	size       uint32
	bodyCRC    uint32
	state      state
	deliveries uint32
	epoch      uint32
	until      int64
	deadAt     int64
	deadOrder  uint64
	consumer   string
	deadReason string
	// fresh: a ready message never delivered, which has no state record
	// (its r value says all of the above).
	fresh bool
}

func (m *msgState) encode() []byte {
	b := make([]byte, 0, 48+len(m.consumer)+len(m.deadReason))
	b = append(b, byte(m.state))
	b = binary.BigEndian.AppendUint64(b, uint64(m.enqueuedAt))
	b = binary.BigEndian.AppendUint32(b, m.size)
	b = binary.BigEndian.AppendUint32(b, m.bodyCRC)
	b = binary.AppendUvarint(b, uint64(m.deliveries))
	b = binary.AppendUvarint(b, uint64(m.epoch))
	b = binary.AppendUvarint(b, uint64(m.until))
	b = binary.AppendUvarint(b, uint64(m.deadAt))
	b = binary.AppendUvarint(b, m.deadOrder)
	b = binary.AppendUvarint(b, uint64(len(m.consumer)))
	b = append(b, m.consumer...)
	b = append(b, m.deadReason...)
	return b
}

func decodeState(seq uint64, b []byte) msgState {
	m := msgState{seq: seq}
	if len(b) < 17 {
		badValue("state", seq)
	}
	m.state = state(b[0])
	m.enqueuedAt = int64(u64at(b, 1))
	m.size = binary.BigEndian.Uint32(b[9:])
	m.bodyCRC = binary.BigEndian.Uint32(b[13:])
	r := b[17:]
	next := func() uint64 {
		v, n := binary.Uvarint(r)
		if n <= 0 {
			badValue("state", seq)
		}
		r = r[n:]
		return v
	}
	m.deliveries = uint32(next())
	m.epoch = uint32(next())
	m.until = int64(next())
	m.deadAt = int64(next())
	m.deadOrder = next()
	n := next()
	if n > uint64(len(r)) {
		badValue("state", seq)
	}
	m.consumer = string(r[:n])
	m.deadReason = string(r[n:])
	if m.state < stateReady || m.state > stateDead {
		badValue("state", seq)
	}
	return m
}

// readyValue is what r <seq> holds: enough to deliver the message's
// metadata, expire it, and know whether a state record exists.
func readyValue(m *msgState) []byte {
	b := make([]byte, 17)
	binary.BigEndian.PutUint64(b, uint64(m.enqueuedAt))
	binary.BigEndian.PutUint32(b[8:], m.size)
	binary.BigEndian.PutUint32(b[12:], m.bodyCRC)
	if !m.fresh {
		b[16] = 1
	}
	return b
}

func decodeReady(seq uint64, b []byte) msgState {
	if len(b) != 17 {
		badValue("ready entry", seq)
	}
	return msgState{
		seq: seq, state: stateReady, enqueuedAt: int64(u64at(b, 0)),
		size: binary.BigEndian.Uint32(b[8:]), bodyCRC: binary.BigEndian.Uint32(b[12:]),
		fresh: b[16] == 0,
	}
}

// badValue: a value the partition wrote does not decode. The store returned
// something else than was written (a disk fault); going on could make this
// replica answer differently from the others.
func badValue(what string, seq uint64) {
	panic(fmt.Sprintf("fsm: corrupt %s record for message %d in the partition's store", what, seq))
}

// --- bodies --------------------------------------------------------------

// bodyHead is the fixed part of a body value: enqueue stamp, size, CRC-32C
// of the fields after it.
const bodyHead = 16

// encodeBody encodes payload, key and headers as SnapshotMessage fields 3-5.
func encodeBody(enqueuedAt int64, size uint32, payload []byte, key string, headers []*fsmv1.Header) ([]byte, uint32) {
	n := bodyHead + sizeBytes(fPayload, len(payload)) + sizeBytes(fKey, len(key))
	for _, h := range headers {
		n += protowire.SizeTag(fHeaders) + protowire.SizeBytes(headerSize(h))
	}
	b := make([]byte, bodyHead, n)
	b = appendBytes(b, fPayload, payload)
	b = appendString(b, fKey, key)
	for _, h := range headers {
		b = protowire.AppendTag(b, fHeaders, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(headerSize(h)))
		b = appendString(b, fHeaderKey, h.GetKey())
		b = appendBytes(b, fHeaderValue, h.GetValue())
	}
	crc := crc32.Checksum(b[bodyHead:], castagnoli)
	binary.BigEndian.PutUint64(b, uint64(enqueuedAt))
	binary.BigEndian.PutUint32(b[8:], size)
	binary.BigEndian.PutUint32(b[12:], crc)
	return b, crc
}

// decodeBody returns the payload, key and headers of a body value, copied
// out of it (the value belongs to the store).
func decodeBody(seq uint64, b []byte) (payload []byte, key string, headers []*fsmv1.Header) {
	if len(b) < bodyHead {
		badValue("body", seq)
	}
	var sm fsmv1.SnapshotMessage
	if err := proto.Unmarshal(b[bodyHead:], &sm); err != nil {
		badValue("body", seq)
	}
	return sm.GetPayload(), sm.GetKey(), sm.GetHeaders()
}

// --- dedup and dead-letter values ----------------------------------------

func dedupValue(seq uint64, exp int64) []byte {
	b := make([]byte, 16)
	binary.BigEndian.PutUint64(b, seq)
	binary.BigEndian.PutUint64(b[8:], uint64(exp))
	return b
}

func fifoValue(r dedupRecord) []byte {
	b := make([]byte, 32)
	copy(b, r.key[:])
	binary.BigEndian.PutUint64(b[16:], r.seq)
	binary.BigEndian.PutUint64(b[24:], uint64(r.expiresAt))
	return b
}

func decodeFIFO(b []byte) dedupRecord {
	if len(b) != 32 {
		badValue("dedup", 0)
	}
	var r dedupRecord
	copy(r.key[:], b)
	r.seq = u64at(b, 16)
	r.expiresAt = int64(u64at(b, 24))
	return r
}

func deadValue(seq uint64, deadAt int64) []byte {
	b := make([]byte, 16)
	binary.BigEndian.PutUint64(b, seq)
	binary.BigEndian.PutUint64(b[8:], uint64(deadAt))
	return b
}

// --- the partition record ------------------------------------------------

// meta is the partition's own record: everything but messages and dedup
// entries, written once per applied batch.
type meta struct {
	applied                          uint64
	nextSeq                          uint64
	now                              int64
	deadOrder                        uint64
	nReady, nDelayed, nLeased, nDead uint64
	bytes                            uint64
	enqueuedTotal, ackedTotal        uint64
	deadLetteredTotal, expiredTotal  uint64
	fifoHead, fifoTail               uint64 // f keys in [head, tail)
	dedupLive                        uint64 // current entries in u
	sum                              uint64 // the state's fact sum (checksum.go)
	settings                         []byte // fsmv1.Settings, deterministic encoding
}

func (m *meta) encode() []byte {
	b := make([]byte, 0, 160+len(m.settings))
	b = append(b, metaVersion)
	for _, v := range []uint64{m.applied, m.nextSeq, uint64(m.now), m.deadOrder,
		m.nReady, m.nDelayed, m.nLeased, m.nDead, m.bytes,
		m.enqueuedTotal, m.ackedTotal, m.deadLetteredTotal, m.expiredTotal,
		m.fifoHead, m.fifoTail, m.dedupLive, m.sum} {
		b = binary.AppendUvarint(b, v)
	}
	return append(b, m.settings...)
}

func decodeMeta(b []byte) (meta, error) {
	var m meta
	if len(b) == 0 || b[0] != metaVersion {
		return m, fmt.Errorf("partition record of layout %v, want %d", b[:min(1, len(b))], metaVersion)
	}
	r := b[1:]
	vals := []*uint64{&m.applied, &m.nextSeq, nil, &m.deadOrder,
		&m.nReady, &m.nDelayed, &m.nLeased, &m.nDead, &m.bytes,
		&m.enqueuedTotal, &m.ackedTotal, &m.deadLetteredTotal, &m.expiredTotal,
		&m.fifoHead, &m.fifoTail, &m.dedupLive, &m.sum}
	for i, p := range vals {
		v, n := binary.Uvarint(r)
		if n <= 0 {
			return m, fmt.Errorf("partition record: field %d does not decode", i)
		}
		r = r[n:]
		if p == nil {
			m.now = int64(v)
		} else {
			*p = v
		}
	}
	m.settings = r
	return m, nil
}
