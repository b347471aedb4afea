package transport

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The Raft connection header, written once by the dialer before any Raft
// bytes:
//
//	"QQR2" | uint16 big-endian length n (1..MaxGroupIDLen) | n bytes of group id
//	       | uint16 big-endian length m (1..MaxServerIDLen) | m bytes of target server id
//
// The "2" in the magic is the header version. Version 1 had no target: a
// node handed the connection to whatever member of the group it ran, which
// let a new, empty replica answer for a wiped one's old identity. A version
// 1 header is refused like any bad header. gRPC connections need no header
// of ours: every HTTP/2 client starts with http2Preface.
const (
	raftMagic = "QQR2"
	// MaxGroupIDLen is the longest group id, in bytes, a header may carry.
	MaxGroupIDLen = 256
	// MaxServerIDLen is the longest target server id, in bytes.
	MaxServerIDLen = 256

	http2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
)

// errBadHeader is the cause of every header that is neither ours nor HTTP/2.
var errBadHeader = errors.New("transport: bad connection header")

type connKind uint8

const (
	kindGRPC connKind = iota + 1
	kindRaft
)

func (k connKind) String() string {
	switch k {
	case kindGRPC:
		return "grpc"
	case kindRaft:
		return "raft"
	}
	return "unknown"
}

// header is what readHeader learnt from a connection's first bytes.
type header struct {
	kind   connKind
	group  string // kindRaft
	target string // kindRaft: the server id the dialer meant to reach
	replay []byte // kindGRPC: the bytes read, to be replayed to gRPC
}

// appendHeader appends the Raft header of group, addressed to the member
// target, to b. group must be a valid group id (1..MaxGroupIDLen bytes) and
// target a valid server id (1..MaxServerIDLen bytes).
func appendHeader(b []byte, group, target string) []byte {
	b = append(b, raftMagic...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(group)))
	b = append(b, group...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(target)))
	return append(b, target...)
}

// readHeader reads exactly the bytes that identify a connection: the 24-byte
// HTTP/2 preface, or a Raft header. It never reads past them, so a Raft
// connection needs no replay.
func readHeader(r io.Reader) (header, error) {
	var buf [len(http2Preface)]byte
	magic := buf[:len(raftMagic)]
	if _, err := io.ReadFull(r, magic); err != nil {
		return header{}, err
	}
	switch {
	case string(magic) == raftMagic:
		group, err := readString(r, "group id", MaxGroupIDLen)
		if err != nil {
			return header{}, err
		}
		target, err := readString(r, "server id", MaxServerIDLen)
		if err != nil {
			return header{}, err
		}
		return header{kind: kindRaft, group: group, target: target}, nil
	case string(magic) == http2Preface[:len(raftMagic)]:
		if _, err := io.ReadFull(r, buf[len(raftMagic):]); err != nil {
			return header{}, err
		}
		if string(buf[:]) != http2Preface {
			return header{}, fmt.Errorf("%w: %q", errBadHeader, buf[:])
		}
		return header{kind: kindGRPC, replay: bytes.Clone(buf[:])}, nil
	}
	return header{}, fmt.Errorf("%w: %q", errBadHeader, magic)
}

// readString reads one length-prefixed field of the Raft header.
func readString(r io.Reader, what string, maxLen int) (string, error) {
	var n [2]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return "", err
	}
	l := binary.BigEndian.Uint16(n[:])
	if l == 0 || int(l) > maxLen {
		return "", fmt.Errorf("%w: %s length %d", errBadHeader, what, l)
	}
	id := make([]byte, l)
	if _, err := io.ReadFull(r, id); err != nil {
		return "", err
	}
	return string(id), nil
}
