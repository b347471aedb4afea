package fsm

import (
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

// newMsg is one message of an Enqueue as the partition reads it.
type newMsg struct {
	payload []byte
	key     string
	headers []*fsmv1.Header
	delay   int64
	dedupID string
}

func (m *newMsg) size() uint64 { return messageSize(m.payload, m.key, m.headers) }

func newMsgsFromProto(ms []*fsmv1.NewMessage) []newMsg {
	out := make([]newMsg, len(ms))
	for i, m := range ms {
		out[i] = newMsg{payload: m.GetPayload(), key: m.GetKey(), headers: plainHeaders(m.GetHeaders()), delay: m.GetDelay(), dedupID: m.GetDedupId()}
	}
	return out
}

// plainHeaders drops unknown fields a newer writer may have put in headers,
// so that a replica that applied the log and one restored from a snapshot
// (which keeps key and value only) hold the same headers.
func plainHeaders(hs []*fsmv1.Header) []*fsmv1.Header {
	for i, h := range hs {
		if len(h.ProtoReflect().GetUnknown()) > 0 {
			out := make([]*fsmv1.Header, len(hs))
			copy(out, hs[:i])
			for j := i; j < len(hs); j++ {
				out[j] = &fsmv1.Header{Key: hs[j].GetKey(), Value: hs[j].GetValue()}
			}
			return out
		}
	}
	return hs
}

// Field numbers read by the Enqueue fast path (partition.proto).
const (
	fCmdVersion = 1
	fCmdStamp   = 2
	fCmdEnqueue = 10

	fEnqMessages = 1

	fNewPayload = 1
	fNewKey     = 2
	fNewHeaders = 3
	fNewDelay   = 4
	fNewDedupID = 5
)

// decodeEnqueue decodes an encoded Command holding an Enqueue without
// building protobuf messages: it is the partition's hottest path. Payloads
// and header values alias data. It handles the plain encoding a marshaller
// produces; for anything else (another operation, repeated or unexpected
// top-level fields, malformed input) it returns ok=false and the caller
// falls back to proto.Unmarshal, which stays the one definition of what a
// command means. Where it succeeds it agrees with proto.Unmarshal
// (FuzzDecodeEnqueue checks this).
func decodeEnqueue(data []byte) (version uint32, stamp int64, msgs []newMsg, ok bool) {
	var enq []byte
	seen := false
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return 0, 0, nil, false
		}
		data = data[n:]
		switch {
		case num == fCmdVersion && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(data)
			if n < 0 {
				return 0, 0, nil, false
			}
			version, data = uint32(v), data[n:]
		case num == fCmdStamp && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(data)
			if n < 0 {
				return 0, 0, nil, false
			}
			stamp, data = int64(v), data[n:]
		case num == fCmdEnqueue && typ == protowire.BytesType && !seen:
			v, n := protowire.ConsumeBytes(data)
			if n < 0 {
				return 0, 0, nil, false
			}
			enq, data, seen = v, data[n:], true
		default:
			return 0, 0, nil, false
		}
	}
	if !seen {
		return 0, 0, nil, false
	}
	// Count first, so the batch is one allocation.
	count := 0
	for rest := enq; len(rest) > 0; count++ {
		num, typ, n := protowire.ConsumeTag(rest)
		if n < 0 || num != fEnqMessages || typ != protowire.BytesType {
			return 0, 0, nil, false
		}
		_, m := protowire.ConsumeBytes(rest[n:])
		if m < 0 {
			return 0, 0, nil, false
		}
		rest = rest[n+m:]
	}
	msgs = make([]newMsg, count)
	for i := range msgs {
		_, _, n := protowire.ConsumeTag(enq)
		v, m := protowire.ConsumeBytes(enq[n:])
		enq = enq[n+m:]
		if !decodeNewMessage(v, &msgs[i]) {
			return 0, 0, nil, false
		}
	}
	return version, stamp, msgs, true
}

func decodeNewMessage(b []byte, m *newMsg) bool {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		switch {
		case num == fNewPayload && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return false
			}
			m.payload, b = v, b[n:]
		case num == fNewKey && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 || !utf8.Valid(v) {
				return false
			}
			m.key, b = string(v), b[n:]
		case num == fNewHeaders && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return false
			}
			h, ok := decodeHeader(v)
			if !ok {
				return false
			}
			m.headers, b = append(m.headers, h), b[n:]
		case num == fNewDelay && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return false
			}
			m.delay, b = int64(v), b[n:]
		case num == fNewDedupID && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 || !utf8.Valid(v) {
				return false
			}
			m.dedupID, b = string(v), b[n:]
		default:
			return false
		}
	}
	return true
}

func decodeHeader(b []byte) (*fsmv1.Header, bool) {
	h := &fsmv1.Header{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, false
		}
		b = b[n:]
		switch {
		case num == fHeaderKey && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 || !utf8.Valid(v) {
				return nil, false
			}
			h.Key, b = string(v), b[n:]
		case num == fHeaderValue && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return nil, false
			}
			h.Value, b = v, b[n:]
		default:
			return nil, false
		}
	}
	return h, true
}
