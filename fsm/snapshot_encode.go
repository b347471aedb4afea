package fsm

import (
	"google.golang.org/protobuf/encoding/protowire"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

// snapMsg is one message as a snapshot captured it: the fields that change
// while a message is stored are copied; the rest (sequence, enqueue stamp,
// payload, key, headers and, for a dead message, its dead-letter fields)
// never change once the struct is published and are read from m.
type snapMsg struct {
	m          *message
	until      int64
	consumer   string
	deliveries uint32
	epoch      uint32
	state      state
}

func captureMsg(m *message) snapMsg {
	return snapMsg{m: m, until: m.until, consumer: m.consumer, deliveries: m.deliveries, epoch: m.epoch, state: m.state}
}

// Field numbers of SnapshotRecord.message, SnapshotMessage and Header.
const (
	fRecordMessage = 2
	fRecordDedup   = 3

	fDedupIDHash    = 1
	fDedupSeq       = 2
	fDedupExpiresAt = 3

	fSeq        = 1
	fState      = 2
	fPayload    = 3
	fKey        = 4
	fHeaders    = 5
	fEnqueuedAt = 6
	fDeliveries = 7
	fEpoch      = 8
	fUntil      = 9
	fConsumer   = 10
	fDeadReason = 11
	fDeadAt     = 12
	fDeadOrder  = 13

	fHeaderKey   = 1
	fHeaderValue = 2
)

// appendMessageRecord appends one length-prefixed SnapshotRecord holding s
// as a SnapshotMessage, byte for byte what proto.Marshal would produce, but
// without building a protobuf message per stored message: the snapshot of
// a large partition is dominated by this loop.
func appendMessageRecord(b []byte, s *snapMsg) []byte {
	inner := s.size()
	rec := protowire.SizeTag(fRecordMessage) + protowire.SizeBytes(inner)
	b = protowire.AppendVarint(b, uint64(rec))
	b = protowire.AppendTag(b, fRecordMessage, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(inner))
	return s.append(b)
}

// appendDedupRecord appends one length-prefixed SnapshotRecord holding d as
// a SnapshotDedup, as proto.Marshal would.
func appendDedupRecord(b []byte, d *dedupRecord) []byte {
	inner := sizeBytes(fDedupIDHash, len(d.key)) + sizeVarint(fDedupSeq, d.seq) + sizeVarint(fDedupExpiresAt, uint64(d.expiresAt))
	rec := protowire.SizeTag(fRecordDedup) + protowire.SizeBytes(inner)
	b = protowire.AppendVarint(b, uint64(rec))
	b = protowire.AppendTag(b, fRecordDedup, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(inner))
	b = appendBytes(b, fDedupIDHash, d.key[:])
	b = appendVarint(b, fDedupSeq, d.seq)
	return appendVarint(b, fDedupExpiresAt, uint64(d.expiresAt))
}

func (s *snapMsg) dead() bool { return s.state == stateDead }

func (s *snapMsg) size() int {
	m := s.m
	n := sizeVarint(fSeq, m.seq) + sizeVarint(fState, uint64(s.state.proto())) +
		sizeBytes(fPayload, len(m.payload)) + sizeBytes(fKey, len(m.key))
	for _, h := range m.headers {
		n += protowire.SizeTag(fHeaders) + protowire.SizeBytes(headerSize(h))
	}
	n += sizeVarint(fEnqueuedAt, uint64(m.enqueuedAt)) + sizeVarint(fDeliveries, uint64(s.deliveries)) +
		sizeVarint(fEpoch, uint64(s.epoch)) + sizeVarint(fUntil, uint64(s.until)) +
		sizeBytes(fConsumer, len(s.consumer))
	if s.dead() {
		n += sizeBytes(fDeadReason, len(m.deadReason)) + sizeVarint(fDeadAt, uint64(m.deadAt)) +
			sizeVarint(fDeadOrder, m.deadOrder)
	}
	return n
}

func (s *snapMsg) append(b []byte) []byte {
	m := s.m
	b = appendVarint(b, fSeq, m.seq)
	b = appendVarint(b, fState, uint64(s.state.proto()))
	b = appendBytes(b, fPayload, m.payload)
	b = appendString(b, fKey, m.key)
	for _, h := range m.headers {
		b = protowire.AppendTag(b, fHeaders, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(headerSize(h)))
		b = appendString(b, fHeaderKey, h.GetKey())
		b = appendBytes(b, fHeaderValue, h.GetValue())
	}
	b = appendVarint(b, fEnqueuedAt, uint64(m.enqueuedAt))
	b = appendVarint(b, fDeliveries, uint64(s.deliveries))
	b = appendVarint(b, fEpoch, uint64(s.epoch))
	b = appendVarint(b, fUntil, uint64(s.until))
	b = appendString(b, fConsumer, s.consumer)
	if s.dead() {
		b = appendString(b, fDeadReason, m.deadReason)
		b = appendVarint(b, fDeadAt, uint64(m.deadAt))
		b = appendVarint(b, fDeadOrder, m.deadOrder)
	}
	return b
}

func headerSize(h *fsmv1.Header) int {
	return sizeBytes(fHeaderKey, len(h.GetKey())) + sizeBytes(fHeaderValue, len(h.GetValue()))
}

// Proto3 leaves zero values out; these helpers do the same.

func sizeVarint(num protowire.Number, v uint64) int {
	if v == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeVarint(v)
}

func sizeBytes(num protowire.Number, n int) int {
	if n == 0 {
		return 0
	}
	return protowire.SizeTag(num) + protowire.SizeBytes(n)
}

func appendVarint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func appendBytes(b []byte, num protowire.Number, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func appendString(b []byte, num protowire.Number, v string) []byte {
	if len(v) == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, v)
}
