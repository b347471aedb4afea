package fsm

import (
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

// messageSize is what a message counts against max_bytes.
func messageSize(payload []byte, key string, headers []*fsmv1.Header) uint64 {
	n := uint64(len(payload)) + uint64(len(key))
	for _, h := range headers {
		n += uint64(len(h.GetKey())) + uint64(len(h.GetValue()))
	}
	return n
}
