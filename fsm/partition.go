// Package fsm holds quorumq's replicated state machines: the queue partition
// and the controller catalogue. They are pure and deterministic: no clock, no
// network, no goroutines, no randomness. Time comes only from the stamps of
// the commands they apply. See DESIGN.md in this folder for the contract.
package fsm

import (
	"errors"
	"fmt"

	"github.com/google/btree"
	"google.golang.org/protobuf/proto"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

// Dead-letter reasons the partition records itself.
const (
	ReasonMaxDeliveries = "max deliveries reached"
	ReasonRejected      = "rejected"
)

// Partition is the state of one queue partition. It is not safe for
// concurrent use; the Raft adapter (RaftFSM) serialises access.
type Partition struct {
	settings *fsmv1.Settings
	now      int64
	nextSeq  uint64

	// Ready messages live in ready (appended in sequence order) or, when they
	// come back behind its tail (lease expiry, requeue, redrive, a delay
	// ending), in returned. Receive takes the lower sequence of the two
	// fronts, so delivery is in sequence order.
	ready        ring[*message]
	returned     msgHeap
	lastAppended uint64

	delayed msgHeap // by due time
	leases  msgHeap // by lease deadline

	// bySeq finds leased and dead messages, the ones a receipt or a redrive
	// names. Ready and delayed messages are never looked up by sequence.
	bySeq     map[uint64]*message
	bySeqPeak int

	dead      *btree.BTreeG[*message] // by deadOrder; deadAt grows with it
	deadOrder uint64

	dedup     map[dedupKey]dedupEntry
	dedupPeak int
	dedupFIFO ring[dedupRecord]
	// dedupStale counts FIFO records superseded by a newer entry for the
	// same id; while it is 0 every record is its id's current entry.
	dedupStale int

	nReady, nDelayed, nLeased, nDead uint64
	bytes                            uint64

	enqueuedTotal, ackedTotal, deadLetteredTotal, expiredTotal uint64
}

type dedupEntry struct {
	seq       uint64
	expiresAt int64
}

// NewPartition returns an empty partition with DefaultSettings.
func NewPartition() *Partition {
	p := &Partition{}
	p.reset()
	return p
}

func (p *Partition) reset() {
	*p = Partition{
		settings: DefaultSettings(),
		nextSeq:  1,
		returned: msgHeap{},
		delayed:  msgHeap{byUntil: true},
		leases:   msgHeap{byUntil: true},
		bySeq:    make(map[uint64]*message),
		dead:     btree.NewG(16, func(a, b *message) bool { return a.deadOrder < b.deadOrder }),
		dedup:    make(map[dedupKey]dedupEntry),
	}
}

// ApplyEncoded decodes and applies one encoded Command. Input that does not
// decode is refused as Invalid and changes nothing. Stored messages may
// share memory with data (payloads are not copied), so the caller must not
// modify data afterwards; Raft never modifies a committed entry.
func (p *Partition) ApplyEncoded(data []byte) *Result {
	if version, stamp, msgs, ok := decodeEnqueue(data); ok {
		if version != CommandVersion {
			return &Result{Code: Unsupported, Detail: fmt.Sprintf("%v: command version %d, want %d", ErrUnsupportedVersion, version, CommandVersion), Now: p.now}
		}
		if stamp < 0 || stamp > MaxStamp {
			return &Result{Code: Invalid, Detail: fmt.Sprintf("%v: stamp %d outside [0, %d]", ErrInvalid, stamp, int64(MaxStamp)), Now: p.now}
		}
		if err := validateEnqueue(msgs); err != nil {
			return &Result{Code: Invalid, Detail: err.Error(), Now: p.now}
		}
		p.advance(stamp)
		res := &Result{Now: p.now}
		p.enqueue(msgs, res)
		return res
	}
	var c fsmv1.Command
	if err := proto.Unmarshal(data, &c); err != nil {
		return &Result{Code: Invalid, Detail: "undecodable command: " + err.Error(), Now: p.now}
	}
	return p.Apply(&c)
}

// Apply applies one command. The partition keeps no reference to c, but a
// stored message shares its payload, key and headers, which the caller must
// not modify afterwards.
func (p *Partition) Apply(c *fsmv1.Command) *Result {
	if err := ValidateCommand(c); err != nil {
		code := Invalid
		if errors.Is(err, ErrUnsupportedVersion) || errors.Is(err, ErrUnknownCommand) {
			code = Unsupported
		}
		return &Result{Code: code, Detail: err.Error(), Now: p.now}
	}
	p.advance(c.GetStamp())
	res := &Result{Now: p.now}
	switch op := c.GetOp().(type) {
	case *fsmv1.Command_Enqueue:
		p.enqueue(newMsgsFromProto(op.Enqueue.GetMessages()), res)
	case *fsmv1.Command_Receive:
		p.receive(op.Receive, res)
	case *fsmv1.Command_Ack:
		p.ack(op.Ack, res)
	case *fsmv1.Command_Requeue:
		p.requeue(op.Requeue, res)
	case *fsmv1.Command_ExtendLease:
		p.extend(op.ExtendLease, res)
	case *fsmv1.Command_Reject:
		p.reject(op.Reject, res)
	case *fsmv1.Command_Redrive:
		p.redrive(op.Redrive, res)
	case *fsmv1.Command_Purge:
		p.purge(op.Purge, res)
	case *fsmv1.Command_Configure:
		p.settings = proto.CloneOf(op.Configure.GetSettings())
	case *fsmv1.Command_Tick:
	default:
		// ValidateCommand refuses every other operation.
		panic(fmt.Sprintf("fsm: validated command with operation %T", op))
	}
	return res
}

// advance moves the partition's clock to stamp (never backwards) and does
// what that time makes due: expired leases go back to ready (or to
// dead-letter), delays end, retention deletes, dedup entries are forgotten.
func (p *Partition) advance(stamp int64) {
	if stamp > p.now {
		p.now = stamp
	}
	now := p.now
	for m := p.leases.min(); m != nil && m.until <= now; m = p.leases.min() {
		p.unlease(m)
		p.release(m, 0)
	}
	for m := p.delayed.min(); m != nil && m.until <= now; m = p.delayed.min() {
		p.delayed.remove(m)
		p.nDelayed--
		if p.expired(m) {
			p.expire(m)
		} else {
			p.makeReady(m)
		}
	}
	if p.settings.GetRetention() > 0 {
		for m, ok := p.ready.front(); ok && p.expired(m); m, ok = p.ready.front() {
			p.ready.popFront()
			p.nReady--
			p.expire(m)
		}
		for m := p.returned.min(); m != nil && p.expired(m); m = p.returned.min() {
			p.returned.remove(m)
			p.nReady--
			p.expire(m)
		}
		// Dead messages are kept for a retention period counted from when
		// they were dead-lettered, so that they can be inspected.
		for m, ok := p.dead.Min(); ok && m.deadAt+p.settings.GetRetention() <= now; m, ok = p.dead.Min() {
			p.undead(m)
			p.expire(m)
		}
	}
	p.dedupExpire()
}

// expired reports whether m has outlived the retention period.
func (p *Partition) expired(m *message) bool {
	r := p.settings.GetRetention()
	return r > 0 && m.enqueuedAt <= p.now-r
}

// makeReady puts m (in no state) into ready, in sequence order.
func (p *Partition) makeReady(m *message) {
	m.state = stateReady
	m.until = 0
	p.nReady++
	if m.seq > p.lastAppended {
		p.ready.pushBack(m)
		p.lastAppended = m.seq
	} else {
		p.returned.push(m)
	}
}

// peekReady returns the ready message with the lowest sequence, or nil.
func (p *Partition) peekReady() *message {
	f, _ := p.ready.front()
	if r := p.returned.min(); r != nil && (f == nil || r.seq < f.seq) {
		return r
	}
	return f
}

// popReady removes and returns the ready message with the lowest sequence.
func (p *Partition) popReady() *message {
	m := p.peekReady()
	if m == nil {
		return nil
	}
	if m.hidx >= 0 {
		p.returned.remove(m)
	} else {
		p.ready.popFront()
	}
	p.nReady--
	return m
}

// unlease takes a leased message out of the lease index; it is then in no state.
func (p *Partition) unlease(m *message) {
	p.leases.remove(m)
	p.delBySeq(m.seq)
	p.nLeased--
	m.consumer = ""
}

// release places a message whose lease ended: deleted if past retention,
// dead-lettered if it has been delivered max_deliveries times, else ready
// (or delayed by delay nanoseconds).
func (p *Partition) release(m *message, delay int64) {
	switch {
	case p.expired(m):
		p.expire(m)
	case p.maxedOut(m):
		p.deadLetter(m, ReasonMaxDeliveries)
	case delay > 0:
		m.state = stateDelayed
		m.until = p.now + delay
		p.delayed.push(m)
		p.nDelayed++
	default:
		p.makeReady(m)
	}
}

func (p *Partition) maxedOut(m *message) bool {
	max := p.settings.GetMaxDeliveries()
	return max > 0 && m.deliveries >= max
}

// deadLetter puts m (in no state) on the dead-letter list. Messages are
// allocated in blocks per Enqueue batch; a dead message may stay for a whole
// retention period, so it moves to its own allocation rather than keep its
// block alive. The caller must not use m afterwards.
func (p *Partition) deadLetter(m *message, reason string) {
	own := new(message)
	*own = *m
	m = own
	m.detach()
	p.deadOrder++
	m.state = stateDead
	m.until = 0
	m.deadReason = reason
	m.deadAt = p.now
	m.deadOrder = p.deadOrder
	p.dead.ReplaceOrInsert(m)
	p.bySeq[m.seq] = m
	p.nDead++
	p.deadLetteredTotal++
}

// undead takes m off the dead-letter list; it is then in no state.
func (p *Partition) undead(m *message) {
	p.dead.Delete(m)
	p.delBySeq(m.seq)
	p.nDead--
	// m keeps its dead-letter fields: a snapshot being written may still
	// read them, and they mean nothing outside the dead state. Dead-lettering
	// m again makes a new struct.
}

// drop forgets m (already in no state): acked or purged.
func (p *Partition) drop(m *message) {
	p.bytes -= uint64(m.size)
}

// expire forgets m (already in no state) because retention deleted it.
func (p *Partition) expire(m *message) {
	p.drop(m)
	p.expiredTotal++
}

func (p *Partition) delBySeq(seq uint64) {
	delete(p.bySeq, seq)
	p.bySeq = shrinkMap(p.bySeq, &p.bySeqPeak)
}

// shrinkMap returns m, or a smaller copy once m has emptied to an eighth of
// the size it had grown to: Go maps never give memory back by themselves,
// and the partition's indexes must shrink as entries go.
func shrinkMap[K comparable, V any](m map[K]V, peak *int) map[K]V {
	n := len(m)
	if n > *peak {
		*peak = n
		return m
	}
	if *peak < 4096 || n > *peak/8 {
		return m
	}
	c := make(map[K]V, n)
	for k, v := range m {
		c[k] = v
	}
	*peak = n
	return c
}
