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

// PartitionSnapshot is a point-in-time view of a partition's state, taken
// by Snapshot and written by WriteTo while the partition goes on applying
// commands. It is the record and a read-only view of the KV: O(1) to take
// and no copy of anything. Close releases the view.
type PartitionSnapshot struct {
	header fsmv1.SnapshotHeader
	view   KVView
}

// Snapshot captures the partition's committed state: call it between
// batches (the Raft adapter does), never with writes pending.
func (p *Partition) Snapshot() *PartitionSnapshot {
	return &PartitionSnapshot{
		header: fsmv1.SnapshotHeader{
			Version:           snapshotFormat,
			Settings:          proto.CloneOf(p.settings),
			NextSeq:           p.nextSeq,
			Now:               p.now,
			EnqueuedTotal:     p.enqueuedTotal,
			AckedTotal:        p.ackedTotal,
			DeadLetteredTotal: p.deadLetteredTotal,
			ExpiredTotal:      p.expiredTotal,
			DeadOrder:         p.deadOrder,
			Messages:          p.nReady + p.nDelayed + p.nLeased + p.nDead,
			DedupEntries:      p.dedupLive,
		},
		view: p.kv.View(),
	}
}

// Close releases the snapshot's view of the store.
func (s *PartitionSnapshot) Close() { s.view.Close() }

// WriteTo streams the snapshot to w in bounded memory: one record at a time
// through a fixed buffer. Equal partition states give equal bytes.
func (s *PartitionSnapshot) WriteTo(w io.Writer) (int64, error) {
	cw := &countingWriter{w: w, crc: crc32.New(castagnoli)}
	bw := bufio.NewWriterSize(cw, 256<<10)
	enc := recordEncoder{w: bw}

	enc.raw([]byte(snapshotMagic))
	enc.record(&fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Header{Header: &s.header}})

	var msgs, dedups uint64
	if err := s.view.Scan([]byte{kBody}, prefixEnd(kBody), func(k, body []byte) bool {
		seq := u64at(k, 1)
		sm := snapMsg{body: body[bodyHead:]}
		if v, ok, err := s.view.Get(key1(kState, seq)); err != nil {
			enc.err = err
		} else if ok {
			sm.msgState = decodeState(seq, v)
		} else {
			sm.msgState = msgState{seq: seq, state: stateReady, enqueuedAt: int64(u64at(body, 0))}
		}
		enc.messageRecord(&sm)
		msgs++
		return enc.err == nil
	}); err != nil && enc.err == nil {
		enc.err = err
	}
	if err := s.view.Scan([]byte{kFIFO}, prefixEnd(kFIFO), func(_, v []byte) bool {
		r := decodeFIFO(v)
		// Only records that are still an id's current entry: superseded
		// ones are no-ops, and leaving them out keeps equal states
		// byte-equal.
		cur, ok, err := s.view.Get(dedupKeyOf(r.key))
		if err != nil {
			enc.err = err
		} else if ok && u64at(cur, 0) == r.seq && int64(u64at(cur, 8)) == r.expiresAt {
			enc.dedupRecord(&r)
			dedups++
		}
		return enc.err == nil
	}); err != nil && enc.err == nil {
		enc.err = err
	}
	if enc.err == nil && (msgs != s.header.Messages || dedups != s.header.DedupEntries) {
		enc.err = fmt.Errorf("snapshot: the store holds %d messages and %d dedup entries, the partition counts %d and %d", msgs, dedups, s.header.Messages, s.header.DedupEntries)
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

// restoreChunk is how many bytes of state Restore writes between commits,
// so that a large snapshot never sits whole in the store's write batch.
const restoreChunk = 4 << 20

// Restore replaces the partition's state with the snapshot read from r,
// one record at a time, committing every restoreChunk bytes. The old state
// is deleted first: on error the partition is left empty (not as it was)
// and the error says why; the Raft adapter then refuses to apply anything
// more (see RaftFSM.Restore).
func (p *Partition) Restore(r io.Reader) error {
	p.kv.DeleteRange([]byte{0}, []byte{0xff})
	p.initIndexes()
	p.resetMeta()
	if err := p.readSnapshot(r); err != nil {
		p.kv.DeleteRange([]byte{0}, []byte{0xff})
		p.initIndexes()
		p.resetMeta()
		return errors.Join(err, p.commit(0))
	}
	return nil
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrCorruptSnapshot}, args...)...)
}

func (p *Partition) readSnapshot(r io.Reader) error {
	br := bufio.NewReaderSize(r, 256<<10)
	magic := make([]byte, len(snapshotMagic))
	if _, err := io.ReadFull(br, magic); err != nil || !bytes.Equal(magic, []byte(snapshotMagic)) {
		return corrupt("bad magic")
	}
	dec := recordDecoder{r: br, run: crc32.Checksum(magic, castagnoli)}
	var rec fsmv1.SnapshotRecord
	if err := dec.next(&rec); err != nil {
		return err
	}
	h := rec.GetHeader()
	if h == nil {
		return corrupt("first record is not a header")
	}
	if h.GetVersion() != snapshotFormat {
		return corrupt("snapshot format %d, want %d", h.GetVersion(), snapshotFormat)
	}
	if err := ValidateSettings(h.GetSettings()); err != nil {
		return corrupt("settings: %v", err)
	}
	p.settings = proto.CloneOf(h.GetSettings())
	p.nextSeq, p.now, p.deadOrder = h.GetNextSeq(), h.GetNow(), h.GetDeadOrder()
	p.enqueuedTotal, p.ackedTotal = h.GetEnqueuedTotal(), h.GetAckedTotal()
	p.deadLetteredTotal, p.expiredTotal = h.GetDeadLetteredTotal(), h.GetExpiredTotal()
	if p.nextSeq == 0 {
		return corrupt("next sequence 0")
	}

	// The partition relies on invariants that its commands keep: enqueue
	// stamps never decrease with the sequence (the oldest ready message is
	// the lowest), nothing happened after now, and dead-letter times never
	// decrease with the dead-letter order. A snapshot that breaks them is
	// not one a partition wrote.
	var lastSeq uint64
	var lastEnqueued int64
	written := 0
	for i := uint64(0); i < h.GetMessages(); i++ {
		if err := dec.next(&rec); err != nil {
			return err
		}
		sm := rec.GetMessage()
		if sm == nil {
			return corrupt("record %d is not a message", i+1)
		}
		if sm.GetSeq() <= lastSeq || sm.GetSeq() >= p.nextSeq {
			return corrupt("message sequence %d out of order", sm.GetSeq())
		}
		if sm.GetEnqueuedAt() < lastEnqueued || sm.GetEnqueuedAt() > p.now || sm.GetDeadAt() > p.now {
			return corrupt("message %d: enqueue or dead-letter time out of order", sm.GetSeq())
		}
		lastSeq, lastEnqueued = sm.GetSeq(), sm.GetEnqueuedAt()
		n, err := p.restoreMessage(sm)
		if err != nil {
			return err
		}
		if written += n; written >= restoreChunk {
			if err := p.kv.Commit(); err != nil {
				return err
			}
			written = 0
		}
	}
	for i := uint64(0); i < h.GetDedupEntries(); i++ {
		if err := dec.next(&rec); err != nil {
			return err
		}
		d := rec.GetDedup()
		if d == nil || len(d.GetIdHash()) != len(dedupKey{}) {
			return corrupt("bad dedup record")
		}
		key := dedupKey(d.GetIdHash())
		if _, _, known := p.dedupLookup(key); known {
			return corrupt("dedup id hash %x twice", key)
		}
		dr := dedupRecord{key: key, seq: d.GetSeq(), expiresAt: d.GetExpiresAt()}
		p.kv.Set(dedupKeyOf(key), dedupValue(dr.seq, dr.expiresAt))
		p.fifo.put(p.kv, key1(kFIFO, p.fifoTail), fifoValue(dr))
		p.fifoTail++
		p.dedupLive++
		p.dedupFactIn(&dr)
		if written += 64; written >= restoreChunk {
			if err := p.kv.Commit(); err != nil {
				return err
			}
			written = 0
		}
	}
	var lastDeadAt int64
	ordered := true
	p.dead.scan(p.kv, nil, func(_, v []byte) bool {
		deadAt := int64(u64at(v, 8))
		ordered = deadAt >= lastDeadAt
		lastDeadAt = deadAt
		return ordered
	})
	if !ordered {
		return corrupt("dead-letter times out of order")
	}

	if err := dec.next(&rec); err != nil {
		return err
	}
	t := rec.GetTrailer()
	if t == nil {
		return corrupt("no trailer")
	}
	if t.GetRecords() != 1+h.GetMessages()+h.GetDedupEntries() {
		return corrupt("trailer counts %d records", t.GetRecords())
	}
	if t.GetCrc32C() != dec.crc {
		return corrupt("checksum mismatch")
	}
	if _, err := br.ReadByte(); err != io.EOF {
		return corrupt("data after the trailer")
	}
	p.initIndexes()
	return nil
}

// restoreMessage stores one snapshot message and places it in its
// ordering; it returns about how many bytes it wrote.
func (p *Partition) restoreMessage(sm *fsmv1.SnapshotMessage) (int, error) {
	m := msgState{
		seq: sm.GetSeq(), enqueuedAt: sm.GetEnqueuedAt(), deliveries: sm.GetDeliveries(),
		epoch: sm.GetEpoch(),
	}
	m.size = uint32(messageSize(sm.GetPayload(), sm.GetKey(), sm.GetHeaders()))
	body, crc := encodeBody(m.enqueuedAt, m.size, sm.GetPayload(), sm.GetKey(), sm.GetHeaders())
	m.bodyCRC = crc
	p.kv.Set(key1(kBody, m.seq), body)
	p.bytes += uint64(m.size)
	switch sm.GetState() {
	case fsmv1.MessageState_MESSAGE_STATE_READY:
		m.state = stateReady
		if m.deliveries == 0 && m.epoch == 0 && sm.GetUntil() == 0 && sm.GetConsumer() == "" {
			m.fresh = true
		} else {
			m.until, m.consumer = sm.GetUntil(), sm.GetConsumer()
			p.kv.Set(key1(kState, m.seq), m.encode())
		}
		p.ready.put(p.kv, key1(kReady, m.seq), readyValue(&m))
		p.nReady++
	case fsmv1.MessageState_MESSAGE_STATE_DELAYED:
		m.state, m.until, m.consumer = stateDelayed, sm.GetUntil(), sm.GetConsumer()
		p.kv.Set(key1(kState, m.seq), m.encode())
		p.delayed.put(p.kv, key2(kDelayed, uint64(m.until), m.seq), nil)
		p.nDelayed++
	case fsmv1.MessageState_MESSAGE_STATE_LEASED:
		m.state, m.until, m.consumer = stateLeased, sm.GetUntil(), sm.GetConsumer()
		p.kv.Set(key1(kState, m.seq), m.encode())
		p.leases.put(p.kv, key2(kLeased, uint64(m.until), m.seq), nil)
		p.nLeased++
	case fsmv1.MessageState_MESSAGE_STATE_DEAD:
		m.state, m.until, m.consumer = stateDead, sm.GetUntil(), sm.GetConsumer()
		m.deadReason, m.deadAt, m.deadOrder = sm.GetDeadReason(), sm.GetDeadAt(), sm.GetDeadOrder()
		if m.deadOrder == 0 || m.deadOrder > p.deadOrder {
			return 0, corrupt("message %d: dead order %d", m.seq, m.deadOrder)
		}
		dk := key1(kDead, m.deadOrder)
		if _, dup := p.kv.Get(dk); dup {
			return 0, corrupt("message %d: dead order %d twice", m.seq, m.deadOrder)
		}
		p.kv.Set(key1(kState, m.seq), m.encode())
		p.dead.put(p.kv, dk, deadValue(m.seq, m.deadAt))
		p.nDead++
	default:
		return 0, corrupt("message %d in state %v", m.seq, sm.GetState())
	}
	p.factIn(&m)
	return len(body) + 64, nil
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
