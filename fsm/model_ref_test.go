package fsm

import (
	"cmp"
	"maps"
	"slices"
	"time"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

// partitionModel is the reference TestPartitionModel (model_test.go)
// compares the Partition with. Every operation scans every message ever
// stored; each rule is taken from a contract stated in the partition's doc
// comments, with the comment's words next to the code where it matters.

const (
	mdlMs   = int64(time.Millisecond)
	mdlSec  = int64(time.Second)
	mdlBase = 1_700_000_000 * mdlSec // a realistic Unix time in nanoseconds
)

type mdlState uint8

const (
	mdlReady mdlState = iota + 1
	mdlDelayed
	mdlLeased
	mdlDead
	mdlAcked
	mdlDeleted // by retention or purge
)

func (s mdlState) String() string {
	return [...]string{"none", "ready", "delayed", "leased", "dead", "acked", "deleted"}[s]
}

func (s mdlState) stored() bool { return s >= mdlReady && s <= mdlDead }

type mdlMsg struct {
	seq     uint64
	enqAt   int64
	payload []byte
	key     string
	headers []*fsmv1.Header
	size    uint64

	state      mdlState
	deliveries uint32
	epoch      uint32
	until      int64 // delayed: due; leased: deadline
	consumer   string
	deadAt     int64
	deadOrder  uint64
	reason     string
}

type mdlDedup struct {
	seq uint64
	exp int64
}

type mdlSettings struct {
	vis       int64
	maxDel    uint32
	window    int64
	retention int64
	maxMsgs   uint64
	maxBytes  uint64
	partition uint32
}

func (s mdlSettings) proto() *fsmv1.Settings {
	return &fsmv1.Settings{
		VisibilityTimeout: s.vis, MaxDeliveries: s.maxDel, DedupWindow: s.window,
		Retention: s.retention, MaxMessages: s.maxMsgs, MaxBytes: s.maxBytes, Partition: s.partition,
	}
}

// partitionModel is the reference. msgs[i] is the message with sequence i+1;
// acked and deleted messages stay in it with their final state.
type partitionModel struct {
	set       mdlSettings
	now       int64
	msgs      []*mdlMsg
	dedup     map[string]mdlDedup // latest entry per id; never forgotten, only compared
	dedupExps map[int64]bool      // the expiry of every dedup entry ever made
	deadOrder uint64

	enqueued, acked, deadLettered, expired uint64
}

func newPartitionModel() *partitionModel {
	return &partitionModel{
		set: mdlSettings{
			vis: int64(30 * time.Second), maxDel: 10,
			window: int64(5 * time.Minute), retention: int64(4 * 24 * time.Hour),
		},
		dedup: map[string]mdlDedup{}, dedupExps: map[int64]bool{},
	}
}

func (m *partitionModel) in(st mdlState) []*mdlMsg {
	var out []*mdlMsg
	for _, x := range m.msgs {
		if x.state == st {
			out = append(out, x)
		}
	}
	return out
}

func (m *partitionModel) stored() (n, b uint64) {
	for _, x := range m.msgs {
		if x.state.stored() {
			n++
			b += x.size
		}
	}
	return n, b
}

// pastRetention: "a message older than this (since enqueue) is deleted".
func (m *partitionModel) pastRetention(x *mdlMsg) bool {
	return m.set.retention > 0 && m.now-x.enqAt >= m.set.retention
}

func (m *partitionModel) maxedOut(x *mdlMsg) bool {
	return m.set.maxDel > 0 && x.deliveries >= m.set.maxDel
}

func (m *partitionModel) deadLetter(x *mdlMsg, reason string) {
	m.deadOrder++
	x.state, x.until, x.consumer = mdlDead, 0, ""
	x.deadAt, x.deadOrder, x.reason = m.now, m.deadOrder, reason
	m.deadLettered++
}

func (m *partitionModel) delete(x *mdlMsg) {
	x.state, x.until, x.consumer = mdlDeleted, 0, ""
	m.expired++
}

// release places a message whose lease ended, in the documented order:
// past retention → deleted; delivered max_deliveries times → dead; else
// ready, or delayed when delay > 0.
func (m *partitionModel) release(x *mdlMsg, delay int64) {
	x.consumer = ""
	switch {
	case m.pastRetention(x):
		m.delete(x)
	case m.maxedOut(x):
		m.deadLetter(x, ReasonMaxDeliveries)
	case delay > 0:
		x.state, x.until = mdlDelayed, m.now+delay
	default:
		x.state, x.until = mdlReady, 0
	}
}

func byUntilSeq(a, b *mdlMsg) int {
	if c := cmp.Compare(a.until, b.until); c != 0 {
		return c
	}
	return cmp.Compare(a.seq, b.seq)
}

// advance: the clock is max(previous, stamp); then leases whose deadline is
// <= now end (earliest deadline first), delays that are due end, and
// retention deletes old ready and dead messages.
func (m *partitionModel) advance(stamp int64) {
	m.now = max(m.now, stamp)
	var due []*mdlMsg
	for _, x := range m.in(mdlLeased) {
		if x.until <= m.now {
			due = append(due, x)
		}
	}
	slices.SortFunc(due, byUntilSeq) // dead-letter order depends on it
	for _, x := range due {
		m.release(x, 0)
	}
	for _, x := range m.in(mdlDelayed) {
		if x.until <= m.now {
			if m.pastRetention(x) {
				m.delete(x)
			} else {
				x.state, x.until = mdlReady, 0
			}
		}
	}
	if r := m.set.retention; r > 0 {
		for _, x := range m.in(mdlReady) {
			if m.pastRetention(x) {
				m.delete(x)
			}
		}
		for _, x := range m.in(mdlDead) {
			if m.now-x.deadAt >= r {
				m.delete(x)
			}
		}
	}
}

// dedupHit: a dedup id hits iff dedup is on and now < first_seen + window
// (the window in force when the id was first seen).
func dedupHit(d map[string]mdlDedup, set mdlSettings, now int64, id string) (uint64, bool) {
	if id == "" || set.window <= 0 {
		return 0, false
	}
	e, ok := d[id]
	if !ok || now >= e.exp {
		return 0, false
	}
	return e.seq, true
}

func mdlSize(nm *fsmv1.NewMessage) uint64 {
	n := uint64(len(nm.GetPayload()) + len(nm.GetKey()))
	for _, h := range nm.GetHeaders() {
		n += uint64(len(h.GetKey()) + len(h.GetValue()))
	}
	return n
}

func (m *partitionModel) enqueue(msgs []*fsmv1.NewMessage) (Code, []Enqueued) {
	if m.set.maxMsgs > 0 || m.set.maxBytes > 0 {
		// Play the batch on a copy of the dedup table to learn what it
		// would store; duplicates take no space.
		d := maps.Clone(m.dedup)
		var n, b uint64
		for _, nm := range msgs {
			if _, hit := dedupHit(d, m.set, m.now, nm.GetDedupId()); hit {
				continue
			}
			n++
			b += mdlSize(nm)
			if nm.GetDedupId() != "" && m.set.window > 0 {
				d[nm.GetDedupId()] = mdlDedup{exp: m.now + m.set.window}
			}
		}
		sn, sb := m.stored()
		if (m.set.maxMsgs > 0 && sn+n > m.set.maxMsgs) || (m.set.maxBytes > 0 && sb+b > m.set.maxBytes) {
			return QueueFull, nil
		}
	}
	out := make([]Enqueued, len(msgs))
	for i, nm := range msgs {
		if seq, hit := dedupHit(m.dedup, m.set, m.now, nm.GetDedupId()); hit {
			out[i] = Enqueued{Seq: seq, Duplicate: true}
			continue
		}
		x := &mdlMsg{
			seq: uint64(len(m.msgs) + 1), enqAt: m.now, payload: nm.GetPayload(), key: nm.GetKey(),
			headers: nm.GetHeaders(), size: mdlSize(nm), state: mdlReady,
		}
		if d := nm.GetDelay(); d > 0 {
			x.state, x.until = mdlDelayed, m.now+d
		}
		m.msgs = append(m.msgs, x)
		m.enqueued++
		if nm.GetDedupId() != "" && m.set.window > 0 {
			m.dedup[nm.GetDedupId()] = mdlDedup{seq: x.seq, exp: m.now + m.set.window}
			m.dedupExps[m.now+m.set.window] = true
		}
		out[i] = Enqueued{Seq: x.seq}
	}
	return OK, out
}

// receive leases up to max ready messages, lowest sequence first; a message
// already delivered max_deliveries times is dead-lettered instead.
func (m *partitionModel) receive(consumer string, max uint32, vis int64) ([]*mdlMsg, uint64) {
	if vis == 0 {
		vis = m.set.vis
	}
	var got []*mdlMsg
	var dl uint64
	for len(got) < int(max) {
		var next *mdlMsg
		for _, x := range m.msgs { // ascending sequence
			if x.state == mdlReady {
				next = x
				break
			}
		}
		if next == nil {
			break
		}
		if m.maxedOut(next) {
			m.deadLetter(next, ReasonMaxDeliveries)
			dl++
			continue
		}
		next.state = mdlLeased
		next.deliveries++
		next.epoch++
		next.until = m.now + vis
		next.consumer = consumer
		got = append(got, next)
	}
	return got, dl
}

// lease resolves a receipt. A receipt names a message a lease ended on only
// while that message is leased (under another epoch: stale) or dead (stale);
// a ready, delayed, acked, deleted or never-stored message is unknown.
func (m *partitionModel) lease(ref *fsmv1.LeaseRef) (*mdlMsg, LeaseOutcome) {
	s := ref.GetSeq()
	if s == 0 || s > uint64(len(m.msgs)) {
		return nil, LeaseUnknown
	}
	x := m.msgs[s-1]
	switch {
	case x.state == mdlDead:
		return nil, LeaseStale
	case x.state != mdlLeased:
		return nil, LeaseUnknown
	case x.epoch != ref.GetEpoch():
		return nil, LeaseStale
	}
	return x, LeaseOK
}

func (m *partitionModel) forLeases(refs []*fsmv1.LeaseRef, fn func(*mdlMsg)) []LeaseOutcome {
	out := make([]LeaseOutcome, len(refs))
	for i, ref := range refs {
		x, o := m.lease(ref)
		out[i] = o
		if o == LeaseOK {
			fn(x)
		}
	}
	return out
}

func (m *partitionModel) redrive(seqs []uint64, max uint64) uint64 {
	var move []*mdlMsg
	if len(seqs) > 0 {
		for _, s := range seqs {
			if s >= 1 && s <= uint64(len(m.msgs)) && m.msgs[s-1].state == mdlDead && !slices.Contains(move, m.msgs[s-1]) {
				move = append(move, m.msgs[s-1])
			}
		}
	} else {
		dead := m.in(mdlDead)
		slices.SortFunc(dead, func(a, b *mdlMsg) int { return cmp.Compare(a.deadOrder, b.deadOrder) })
		if max > 0 && uint64(len(dead)) > max {
			dead = dead[:max]
		}
		move = dead
	}
	for _, x := range move {
		x.state, x.deliveries, x.until = mdlReady, 0, 0
	}
	return uint64(len(move))
}

func (m *partitionModel) purge(ready, dead bool) (pr, pd uint64) {
	for _, x := range m.msgs {
		switch {
		case ready && (x.state == mdlReady || x.state == mdlDelayed):
			x.state, x.until = mdlDeleted, 0
			pr++
		case dead && x.state == mdlDead:
			x.state = mdlDeleted
			pd++
		}
	}
	return pr, pd
}

func (m *partitionModel) stats() Stats {
	s := Stats{
		Now: m.now, NextSeq: uint64(len(m.msgs) + 1),
		EnqueuedTotal: m.enqueued, AckedTotal: m.acked, DeadLetteredTotal: m.deadLettered, ExpiredTotal: m.expired,
	}
	for _, x := range m.msgs {
		switch x.state {
		case mdlReady:
			if s.Ready == 0 {
				s.OldestReadyAt = x.enqAt
			}
			s.Ready++
		case mdlDelayed:
			s.Delayed++
		case mdlLeased:
			s.Leased++
		case mdlDead:
			s.Dead++
		}
		if x.state.stored() {
			s.Bytes += x.size
		}
	}
	return s
}

// nextDue is the earliest instant at which a lease or delay ends or
// retention deletes a message (possibly already past, when a Configure
// shortened retention or a redrive brought back an old message), and
// whether there is one. Dedup expiries are left to the caller.
func (m *partitionModel) nextDue() (int64, bool) {
	var due int64
	have := false
	at := func(t int64) {
		if !have || t < due {
			due, have = t, true
		}
	}
	r := m.set.retention
	for _, x := range m.msgs {
		switch x.state {
		case mdlLeased, mdlDelayed:
			at(x.until)
		case mdlReady:
			if r > 0 {
				at(x.enqAt + r)
			}
		case mdlDead:
			if r > 0 {
				at(x.deadAt + r)
			}
		}
	}
	return due, have
}

// pendingTimes lists the future instants at which something is due: lease
// deadlines, delay ends, dedup expiries and retention boundaries.
func (m *partitionModel) pendingTimes() []int64 {
	var ts []int64
	r := m.set.retention
	for _, x := range m.msgs {
		switch x.state {
		case mdlLeased, mdlDelayed:
			ts = append(ts, x.until)
		}
		if r > 0 {
			switch x.state {
			case mdlReady, mdlDelayed, mdlLeased:
				ts = append(ts, x.enqAt+r)
			case mdlDead:
				ts = append(ts, x.deadAt+r)
			}
		}
	}
	for _, e := range m.dedup {
		ts = append(ts, e.exp)
	}
	ts = slices.DeleteFunc(ts, func(v int64) bool { return v <= m.now })
	slices.Sort(ts)
	return slices.Compact(ts)
}
