package fsm

import (
	"google.golang.org/protobuf/encoding/protowire"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

// snapMsg is one message as a snapshot writes it: its state, and its body
// as stored (SnapshotMessage fields 3-5, already encoded).
type snapMsg struct {
	msgState
	body []byte
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
	n := sizeVarint(fSeq, s.seq) + sizeVarint(fState, uint64(s.state.proto())) + len(s.body)
	n += sizeVarint(fEnqueuedAt, uint64(s.enqueuedAt)) + sizeVarint(fDeliveries, uint64(s.deliveries)) +
		sizeVarint(fEpoch, uint64(s.epoch)) + sizeVarint(fUntil, uint64(s.until)) +
		sizeBytes(fConsumer, len(s.consumer))
	if s.dead() {
		n += sizeBytes(fDeadReason, len(s.deadReason)) + sizeVarint(fDeadAt, uint64(s.deadAt)) +
			sizeVarint(fDeadOrder, s.deadOrder)
	}
	return n
}

func (s *snapMsg) append(b []byte) []byte {
	b = appendVarint(b, fSeq, s.seq)
	b = appendVarint(b, fState, uint64(s.state.proto()))
	b = append(b, s.body...)
	b = appendVarint(b, fEnqueuedAt, uint64(s.enqueuedAt))
	b = appendVarint(b, fDeliveries, uint64(s.deliveries))
	b = appendVarint(b, fEpoch, uint64(s.epoch))
	b = appendVarint(b, fUntil, uint64(s.until))
	b = appendString(b, fConsumer, s.consumer)
	if s.dead() {
		b = appendString(b, fDeadReason, s.deadReason)
		b = appendVarint(b, fDeadAt, uint64(s.deadAt))
		b = appendVarint(b, fDeadOrder, s.deadOrder)
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
