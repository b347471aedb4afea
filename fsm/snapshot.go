package fsm

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"slices"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

// snapshotMagic starts every partition snapshot; the 1 is the format version.
const snapshotMagic = "QQPSNAP1"

// snapshotFormat is SnapshotHeader.version.
const snapshotFormat = 1

// maxRecordBytes bounds one snapshot record, so a corrupt length cannot make
// Restore allocate without limit. A message is at most MaxPayloadBytes plus
// its key and headers.
const maxRecordBytes = MaxPayloadBytes + MaxKeyBytes + MaxHeaders*(MaxHeaderKeyBytes+MaxHeaderValBytes) + 4096

// ErrCorruptSnapshot is wrapped by every error Restore returns for input
// that is not a whole, well-formed snapshot.
var ErrCorruptSnapshot = errors.New("corrupt partition snapshot")

// PartitionSnapshot is a point-in-time copy of a partition's state, taken
// by Snapshot and written by WriteTo while the partition goes on applying
// commands. It holds each message's small mutable fields by value and
// shares the immutable rest (see snapMsg), so taking it costs O(messages)
// time and about 48 bytes per message, never the payloads.
type PartitionSnapshot struct {
	header fsmv1.SnapshotHeader
	msgs   []snapMsg
	dedup  []dedupRecord
}

// Snapshot captures the partition's state.
func (p *Partition) Snapshot() *PartitionSnapshot {
	s := &PartitionSnapshot{}
	s.header = fsmv1.SnapshotHeader{
		Version:           snapshotFormat,
		Settings:          proto.CloneOf(p.settings),
		NextSeq:           p.nextSeq,
		Now:               p.now,
		EnqueuedTotal:     p.enqueuedTotal,
		AckedTotal:        p.ackedTotal,
		DeadLetteredTotal: p.deadLetteredTotal,
		ExpiredTotal:      p.expiredTotal,
		DeadOrder:         p.deadOrder,
	}

	// The ready ring is in sequence order; everything else is gathered and
	// sorted, then the two runs are merged.
	var rest []*message
	rest = append(rest, p.returned.items...)
	rest = append(rest, p.delayed.items...)
	rest = append(rest, p.leases.items...)
	p.dead.Ascend(func(m *message) bool { rest = append(rest, m); return true })
	slices.SortFunc(rest, func(a, b *message) int {
		if a.seq < b.seq {
			return -1
		}
		return 1
	})
	n := p.ready.len()
	s.msgs = make([]snapMsg, 0, n+len(rest))
	i, j := 0, 0
	for i < n || j < len(rest) {
		var m *message
		if j == len(rest) || (i < n && p.ready.at(i).seq < rest[j].seq) {
			m = p.ready.at(i)
			i++
		} else {
			m = rest[j]
			j++
		}
		s.msgs = append(s.msgs, captureMsg(m))
	}

	s.dedup = make([]dedupRecord, 0, p.dedupFIFO.len()-p.dedupStale)
	for k := 0; k < p.dedupFIFO.len(); k++ {
		r := p.dedupFIFO.at(k)
		// Only records that are still an id's current entry: superseded ones
		// are no-ops, and leaving them out keeps equal states byte-equal.
		if p.dedupStale > 0 {
			if e, ok := p.dedup[r.key]; !ok || e.expiresAt != r.expiresAt {
				continue
			}
		}
		s.dedup = append(s.dedup, r)
	}
	s.header.Messages = uint64(len(s.msgs))
	s.header.DedupEntries = uint64(len(s.dedup))
	return s
}

// WriteTo streams the snapshot to w in bounded memory: one record at a time
// through a fixed buffer. Equal partition states give equal bytes.
func (s *PartitionSnapshot) WriteTo(w io.Writer) (int64, error) {
	cw := &countingWriter{w: w, crc: crc32.New(castagnoli)}
	bw := bufio.NewWriterSize(cw, 256<<10)
	enc := recordEncoder{w: bw}

	enc.raw([]byte(snapshotMagic))
	enc.record(&fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Header{Header: &s.header}})

	for i := range s.msgs {
		enc.messageRecord(&s.msgs[i])
	}
	for i := range s.dedup {
		enc.dedupRecord(&s.dedup[i])
	}
	if enc.err == nil {
		enc.err = bw.Flush()
	}
	// The trailer's checksum covers every byte before it.
	enc.record(&fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Trailer{Trailer: &fsmv1.SnapshotTrailer{
		Records: 1 + s.header.Messages + s.header.DedupEntries,
		Crc32C:  cw.crc.Sum32(),
	}}})
	if enc.err == nil {
		enc.err = bw.Flush()
	}
	return cw.n, enc.err
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

type countingWriter struct {
	w   io.Writer
	crc hash.Hash32
	n   int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.crc.Write(b[:n])
	c.n += int64(n)
	return n, err
}

func (e *recordEncoder) messageRecord(m *snapMsg) {
	if e.err == nil {
		e.buf = appendMessageRecord(e.buf[:0], m)
		e.flush()
	}
}

func (e *recordEncoder) dedupRecord(d *dedupRecord) {
	if e.err == nil {
		e.buf = appendDedupRecord(e.buf[:0], d)
		e.flush()
	}
}

func (e *recordEncoder) flush() {
	_, e.err = e.w.Write(e.buf)
	if cap(e.buf) > 4<<20 {
		e.buf = nil // do not keep a buffer grown by one huge message
	}
}

// recordEncoder writes length-prefixed records, keeping the first error.
type recordEncoder struct {
	w   *bufio.Writer
	buf []byte
	err error
}

var deterministic = proto.MarshalOptions{Deterministic: true}

func (e *recordEncoder) raw(b []byte) {
	if e.err == nil {
		_, e.err = e.w.Write(b)
	}
}

func (e *recordEncoder) record(m proto.Message) {
	if e.err != nil {
		return
	}
	size := deterministic.Size(m)
	e.buf = protowire.AppendVarint(e.buf[:0], uint64(size))
	e.buf, e.err = deterministic.MarshalAppend(e.buf, m)
	if e.err == nil {
		e.flush()
	}
}

// Restore replaces the partition's state with the snapshot read from r. On
// error the partition is left as it was.
func (p *Partition) Restore(r io.Reader) error {
	np, err := readSnapshot(r)
	if err != nil {
		return err
	}
	*p = *np
	return nil
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrCorruptSnapshot}, args...)...)
}

func readSnapshot(r io.Reader) (*Partition, error) {
	br := bufio.NewReaderSize(r, 256<<10)
	magic := make([]byte, len(snapshotMagic))
	if _, err := io.ReadFull(br, magic); err != nil || !bytes.Equal(magic, []byte(snapshotMagic)) {
		return nil, corrupt("bad magic")
	}
	dec := recordDecoder{r: br, run: crc32.Checksum(magic, castagnoli)}
	var rec fsmv1.SnapshotRecord
	if err := dec.next(&rec); err != nil {
		return nil, err
	}
	h := rec.GetHeader()
	if h == nil {
		return nil, corrupt("first record is not a header")
	}
	if h.GetVersion() != snapshotFormat {
		return nil, corrupt("snapshot format %d, want %d", h.GetVersion(), snapshotFormat)
	}
	if err := ValidateSettings(h.GetSettings()); err != nil {
		return nil, corrupt("settings: %v", err)
	}
	p := NewPartition()
	p.settings = proto.CloneOf(h.GetSettings())
	p.nextSeq, p.now, p.deadOrder = h.GetNextSeq(), h.GetNow(), h.GetDeadOrder()
	p.enqueuedTotal, p.ackedTotal = h.GetEnqueuedTotal(), h.GetAckedTotal()
	p.deadLetteredTotal, p.expiredTotal = h.GetDeadLetteredTotal(), h.GetExpiredTotal()
	if p.nextSeq == 0 {
		return nil, corrupt("next sequence 0")
	}

	// The partition relies on invariants that its commands keep: enqueue
	// stamps never decrease with the sequence (the oldest ready message is
	// the lowest), nothing happened after now, and dead-letter times never
	// decrease with the dead-letter order. A snapshot that breaks them is
	// not one a partition wrote.
	var lastSeq uint64
	var lastEnqueued int64
	for i := uint64(0); i < h.GetMessages(); i++ {
		if err := dec.next(&rec); err != nil {
			return nil, err
		}
		sm := rec.GetMessage()
		if sm == nil {
			return nil, corrupt("record %d is not a message", i+1)
		}
		if sm.GetSeq() <= lastSeq || sm.GetSeq() >= p.nextSeq {
			return nil, corrupt("message sequence %d out of order", sm.GetSeq())
		}
		if sm.GetEnqueuedAt() < lastEnqueued || sm.GetEnqueuedAt() > p.now || sm.GetDeadAt() > p.now {
			return nil, corrupt("message %d: enqueue or dead-letter time out of order", sm.GetSeq())
		}
		lastSeq, lastEnqueued = sm.GetSeq(), sm.GetEnqueuedAt()
		if err := p.restoreMessage(sm); err != nil {
			return nil, err
		}
	}
	for i := uint64(0); i < h.GetDedupEntries(); i++ {
		if err := dec.next(&rec); err != nil {
			return nil, err
		}
		d := rec.GetDedup()
		if d == nil || len(d.GetIdHash()) != len(dedupKey{}) {
			return nil, corrupt("bad dedup record")
		}
		key := dedupKey(d.GetIdHash())
		if _, dup := p.dedup[key]; dup {
			return nil, corrupt("dedup id hash %x twice", key)
		}
		p.dedup[key] = dedupEntry{seq: d.GetSeq(), expiresAt: d.GetExpiresAt()}
		p.dedupFIFO.pushBack(dedupRecord{key: key, seq: d.GetSeq(), expiresAt: d.GetExpiresAt()})
	}
	var lastDeadAt int64
	ordered := true
	p.dead.Ascend(func(m *message) bool {
		ordered = m.deadAt >= lastDeadAt
		lastDeadAt = m.deadAt
		return ordered
	})
	if !ordered {
		return nil, corrupt("dead-letter times out of order")
	}
	p.dedupPeak = len(p.dedup)
	p.bySeqPeak = len(p.bySeq)

	if err := dec.next(&rec); err != nil {
		return nil, err
	}
	t := rec.GetTrailer()
	if t == nil {
		return nil, corrupt("no trailer")
	}
	if t.GetRecords() != 1+h.GetMessages()+h.GetDedupEntries() {
		return nil, corrupt("trailer counts %d records", t.GetRecords())
	}
	if t.GetCrc32C() != dec.crc {
		return nil, corrupt("checksum mismatch")
	}
	if _, err := br.ReadByte(); err != io.EOF {
		return nil, corrupt("data after the trailer")
	}
	return p, nil
}

// restoreMessage places one snapshot message into the partition's indexes.
func (p *Partition) restoreMessage(sm *fsmv1.SnapshotMessage) error {
	m := &message{
		seq: sm.GetSeq(), enqueuedAt: sm.GetEnqueuedAt(), payload: sm.GetPayload(),
		key: sm.GetKey(), headers: sm.GetHeaders(), deliveries: sm.GetDeliveries(),
		epoch: sm.GetEpoch(), hidx: -1,
	}
	m.size = uint32(messageSize(m.payload, m.key, m.headers))
	p.bytes += uint64(m.size)
	switch sm.GetState() {
	case fsmv1.MessageState_MESSAGE_STATE_READY:
		p.makeReady(m)
	case fsmv1.MessageState_MESSAGE_STATE_DELAYED:
		m.state, m.until = stateDelayed, sm.GetUntil()
		p.delayed.push(m)
		p.nDelayed++
	case fsmv1.MessageState_MESSAGE_STATE_LEASED:
		m.state, m.until, m.consumer = stateLeased, sm.GetUntil(), sm.GetConsumer()
		p.leases.push(m)
		p.bySeq[m.seq] = m
		p.nLeased++
	case fsmv1.MessageState_MESSAGE_STATE_DEAD:
		m.state, m.deadReason, m.deadAt, m.deadOrder = stateDead, sm.GetDeadReason(), sm.GetDeadAt(), sm.GetDeadOrder()
		if m.deadOrder == 0 || m.deadOrder > p.deadOrder {
			return corrupt("message %d: dead order %d", m.seq, m.deadOrder)
		}
		if _, dup := p.dead.ReplaceOrInsert(m); dup {
			return corrupt("message %d: dead order %d twice", m.seq, m.deadOrder)
		}
		p.bySeq[m.seq] = m
		p.nDead++
	default:
		return corrupt("message %d in state %v", m.seq, sm.GetState())
	}
	return nil
}

// recordDecoder reads length-prefixed records and keeps a checksum of every
// byte it consumed before the current record.
type recordDecoder struct {
	r   *bufio.Reader
	buf []byte
	crc uint32 // of the magic and every record before the last one read
	run uint32 // of the magic and every record read
}

func (d *recordDecoder) next(m proto.Message) error {
	d.crc = d.run
	size, err := binary.ReadUvarint(d.r)
	if err != nil {
		return corrupt("reading record length: %v", err)
	}
	if size > maxRecordBytes {
		return corrupt("record of %d bytes", size)
	}
	if uint64(cap(d.buf)) < size {
		d.buf = make([]byte, size)
	}
	d.buf = d.buf[:size]
	if _, err := io.ReadFull(d.r, d.buf); err != nil {
		return corrupt("reading record: %v", err)
	}
	proto.Reset(m)
	if err := proto.Unmarshal(d.buf, m); err != nil {
		return corrupt("decoding record: %v", err)
	}
	var lenBuf [binary.MaxVarintLen64]byte
	d.run = crc32.Update(d.run, castagnoli, lenBuf[:binary.PutUvarint(lenBuf[:], size)])
	d.run = crc32.Update(d.run, castagnoli, d.buf)
	return nil
}
