package fsm

import (
	"bytes"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

// state is where a stored message is. Every stored message is in exactly
// one state; an acked or deleted message is no longer stored.
type state uint8

const (
	stateReady state = iota + 1
	stateDelayed
	stateLeased
	stateDead
)

func (s state) proto() fsmv1.MessageState {
	switch s {
	case stateReady:
		return fsmv1.MessageState_MESSAGE_STATE_READY
	case stateDelayed:
		return fsmv1.MessageState_MESSAGE_STATE_DELAYED
	case stateLeased:
		return fsmv1.MessageState_MESSAGE_STATE_LEASED
	case stateDead:
		return fsmv1.MessageState_MESSAGE_STATE_DEAD
	}
	panic("fsm: message in no state")
}

// message is one stored message. payload, key and headers are never
// modified after enqueue, so results and snapshots may share them.
type message struct {
	seq        uint64
	enqueuedAt int64
	payload    []byte
	key        string
	headers    []*fsmv1.Header

	// until is the due time of a delayed message or the lease deadline of a
	// leased one.
	until      int64
	consumer   string
	deadReason string
	deadAt     int64
	deadOrder  uint64
	deliveries uint32
	epoch      uint32
	size       uint32
	state      state
	// hidx is the message's index in the heap that holds it (delayed,
	// leased or returned-ready), or -1.
	hidx int32
}

// detach gives m its own copy of the payload and header values, which may
// share the memory of the Raft entry that enqueued it, so that a message kept
// long (dead-letter) does not keep its whole entry alive.
func (m *message) detach() {
	m.payload = bytes.Clone(m.payload)
	if len(m.headers) > 0 {
		hs := make([]*fsmv1.Header, len(m.headers))
		for i, h := range m.headers {
			hs[i] = &fsmv1.Header{Key: h.GetKey(), Value: bytes.Clone(h.GetValue())}
		}
		m.headers = hs
	}
}

// messageSize is what a message counts against max_bytes.
func messageSize(payload []byte, key string, headers []*fsmv1.Header) uint64 {
	n := uint64(len(payload)) + uint64(len(key))
	for _, h := range headers {
		n += uint64(len(h.GetKey())) + uint64(len(h.GetValue()))
	}
	return n
}
