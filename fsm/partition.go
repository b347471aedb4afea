// Package fsm holds quorumq's replicated state machines: the queue partition
// and the controller catalogue. They are pure and deterministic: no clock, no
// network, no goroutines, no randomness. Time comes only from the stamps of
// the commands they apply. See DESIGN.md in this folder for the contract.
package fsm

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/proto"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

// Dead-letter reasons the partition records itself.
const (
	ReasonMaxDeliveries = "max deliveries reached"
	ReasonRejected      = "rejected"
)

// Partition is the state of one queue partition, kept in a KV (kvlayout.go):
// its memory is a few hundred bytes whatever it stores. It is not safe for
// concurrent use; the Raft adapter (RaftFSM) serialises access.
type Partition struct {
	kv       KV
	settings *fsmv1.Settings
	meta

	ready, delayed, leases, dead, fifo ordIndex
}

// NewPartition returns an empty partition with DefaultSettings, in memory.
func NewPartition() *Partition {
	p, err := OpenPartition(NewMemKV())
	if err != nil {
		panic(err) // an empty KV always opens
	}
	return p
}

// OpenPartition returns the partition whose state kv holds, or an empty one
// with DefaultSettings if kv holds none.
func OpenPartition(kv KV) (*Partition, error) {
	p := &Partition{kv: kv}
	p.initIndexes()
	v, ok := kv.Get(metaKey)
	if !ok {
		p.resetMeta()
		return p, nil
	}
	m, err := decodeMeta(v)
	if err != nil {
		return nil, err
	}
	var s fsmv1.Settings
	if err := proto.Unmarshal(m.settings, &s); err != nil {
		return nil, fmt.Errorf("partition record: settings: %w", err)
	}
	m.settings = nil
	p.meta, p.settings = m, &s
	return p, nil
}

func (p *Partition) initIndexes() {
	p.ready, p.delayed, p.leases, p.dead, p.fifo = newIndex(kReady), newIndex(kDelayed), newIndex(kLeased), newIndex(kDead), newIndex(kFIFO)
}

func (p *Partition) resetMeta() {
	p.meta = meta{nextSeq: 1}
	p.settings = DefaultSettings()
}

// commit writes the partition record (with applied, the Raft index of the
// last entry applied) and commits the KV's writes as one unit.
func (p *Partition) commit(applied uint64) error {
	p.applied = applied
	m := p.meta
	m.settings, _ = deterministic.Marshal(p.settings)
	p.kv.Set(metaKey, m.encode())
	return p.kv.Commit()
}

// ApplyEncoded decodes and applies one encoded Command. Input that does not
// decode is refused as Invalid and changes nothing.
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

// Apply applies one command. The partition keeps no reference to c.
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
	p.now = max(p.now, stamp)
	now := p.now
	for {
		k, _, ok := p.leases.min(p.kv, p.nLeased == 0)
		if !ok || int64(u64at(k, 1)) > now {
			break
		}
		m := p.loadState(u64at(k, 9))
		p.unlease(&m)
		p.release(&m, 0)
	}
	for {
		k, _, ok := p.delayed.min(p.kv, p.nDelayed == 0)
		if !ok || int64(u64at(k, 1)) > now {
			break
		}
		m := p.loadState(u64at(k, 9))
		p.factOut(&m)
		p.delayed.del(p.kv, k)
		p.nDelayed--
		if p.expired(&m) {
			p.expire(&m)
		} else {
			p.makeReady(&m)
		}
	}
	if p.settings.GetRetention() > 0 {
		for {
			k, v, ok := p.ready.min(p.kv, p.nReady == 0)
			if !ok {
				break
			}
			m := decodeReady(u64at(k, 1), v)
			if !p.expired(&m) {
				break
			}
			if !m.fresh {
				m = p.loadState(m.seq)
			}
			p.factOut(&m)
			p.ready.del(p.kv, k)
			p.nReady--
			p.expire(&m)
		}
		// Dead messages are kept for a retention period counted from when
		// they were dead-lettered, so that they can be inspected.
		for {
			k, v, ok := p.dead.min(p.kv, p.nDead == 0)
			if !ok || int64(u64at(v, 8))+p.settings.GetRetention() > now {
				break
			}
			m := p.loadState(u64at(v, 0))
			p.factOut(&m)
			p.dead.del(p.kv, k)
			p.nDead--
			p.expire(&m)
		}
	}
	p.dedupExpire()
}

// loadState reads the state of a message that has a state record.
func (p *Partition) loadState(seq uint64) msgState {
	v, ok := p.kv.Get(key1(kState, seq))
	if !ok {
		badValue("missing state", seq)
	}
	return decodeState(seq, v)
}

// expired reports whether m has outlived the retention period.
func (p *Partition) expired(m *msgState) bool {
	r := p.settings.GetRetention()
	return r > 0 && m.enqueuedAt <= p.now-r
}

// makeReady puts m (in no state, its fact out) into ready, in sequence
// order.
func (p *Partition) makeReady(m *msgState) {
	m.state, m.until, m.consumer = stateReady, 0, ""
	m.deadAt, m.deadOrder, m.deadReason = 0, 0, ""
	m.fresh = false
	p.kv.Set(key1(kState, m.seq), m.encode())
	p.ready.put(p.kv, key1(kReady, m.seq), readyValue(m))
	p.nReady++
	p.factIn(m)
}

// unlease takes a leased message out of the lease index; it is then in no
// state, its fact out of the sum.
func (p *Partition) unlease(m *msgState) {
	p.factOut(m)
	p.leases.del(p.kv, key2(kLeased, uint64(m.until), m.seq))
	p.nLeased--
	m.consumer = ""
}

// release places a message whose lease ended: deleted if past retention,
// dead-lettered if it has been delivered max_deliveries times, else ready
// (or delayed by delay nanoseconds).
func (p *Partition) release(m *msgState, delay int64) {
	switch {
	case p.expired(m):
		p.expire(m)
	case p.maxedOut(m):
		p.deadLetter(m, ReasonMaxDeliveries)
	case delay > 0:
		m.state, m.until = stateDelayed, p.now+delay
		p.kv.Set(key1(kState, m.seq), m.encode())
		p.delayed.put(p.kv, key2(kDelayed, uint64(m.until), m.seq), nil)
		p.nDelayed++
		p.factIn(m)
	default:
		p.makeReady(m)
	}
}

func (p *Partition) maxedOut(m *msgState) bool {
	max := p.settings.GetMaxDeliveries()
	return max > 0 && m.deliveries >= max
}

// deadLetter puts m (in no state, its fact out) on the dead-letter list.
func (p *Partition) deadLetter(m *msgState, reason string) {
	p.deadOrder++
	m.state, m.until, m.consumer = stateDead, 0, ""
	m.deadReason, m.deadAt, m.deadOrder = reason, p.now, p.deadOrder
	m.fresh = false
	p.kv.Set(key1(kState, m.seq), m.encode())
	p.dead.put(p.kv, key1(kDead, m.deadOrder), deadValue(m.seq, m.deadAt))
	p.nDead++
	p.deadLetteredTotal++
	p.factIn(m)
}

// drop deletes m (in no state, its fact out): acked, purged or expired.
func (p *Partition) drop(m *msgState) {
	p.bytes -= uint64(m.size)
	p.kv.Delete(key1(kBody, m.seq))
	if !m.fresh {
		p.kv.Delete(key1(kState, m.seq))
	}
}

// expire deletes m because retention did.
func (p *Partition) expire(m *msgState) {
	p.drop(m)
	p.expiredTotal++
}
