package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/hashicorp/raft"
)

// The shared log stores a raft.Log as key = the index, 8 bytes big-endian
// (so bolt's byte order is index order), and value =
//
//	[0]   codec version (logCodecV1)
//	[1]   raft.LogType
//	[2]   flags: bit 0 set when AppendedAt is not the zero time
//	      uvarint Term
//	      if flag bit 0: varint AppendedAt.Unix(), uvarint AppendedAt.Nanosecond()
//	      uvarint len(Extensions), Extensions
//	      Data: the rest of the value
//
// Every field of raft.Log survives a round trip; AppendedAt comes back in
// UTC without a monotonic reading (time.Time.Equal holds, == does not), and
// an empty Data or Extensions comes back nil. It is about 10 bytes of
// framing per entry where raft-boltdb's msgpack spends about 60, and
// encoding is a single copy of Data.
const (
	logCodecV1       = 1
	flagAppendedAt   = 1 << 0
	logHeaderMaxSize = 3 + binary.MaxVarintLen64*4
)

var errCorruptLog = errors.New("storage: corrupt log entry")

// encodedLogSize is an upper bound of appendLog's output for l.
func encodedLogSize(l *raft.Log) int {
	return logHeaderMaxSize + len(l.Extensions) + len(l.Data)
}

// appendLog appends the encoding of l (without its index, which is the key)
// to dst.
func appendLog(dst []byte, l *raft.Log) []byte {
	var flags byte
	if !l.AppendedAt.IsZero() {
		flags |= flagAppendedAt
	}
	dst = append(dst, logCodecV1, byte(l.Type), flags)
	dst = binary.AppendUvarint(dst, l.Term)
	if flags&flagAppendedAt != 0 {
		dst = binary.AppendVarint(dst, l.AppendedAt.Unix())
		dst = binary.AppendUvarint(dst, uint64(l.AppendedAt.Nanosecond()))
	}
	dst = binary.AppendUvarint(dst, uint64(len(l.Extensions)))
	dst = append(dst, l.Extensions...)
	return append(dst, l.Data...)
}

// decodeLog decodes val, the stored value of index, into l. Data and
// Extensions are copied out of val (bolt's memory is valid only during its
// transaction), into one allocation.
func decodeLog(index uint64, val []byte, l *raft.Log) error {
	if len(val) < 3 {
		return fmt.Errorf("%w: index %d: %d bytes", errCorruptLog, index, len(val))
	}
	if val[0] != logCodecV1 {
		return fmt.Errorf("%w: index %d: unknown codec version %d", errCorruptLog, index, val[0])
	}
	typ, flags := raft.LogType(val[1]), val[2]
	if flags&^flagAppendedAt != 0 {
		return fmt.Errorf("%w: index %d: unknown flags %#x", errCorruptLog, index, flags)
	}
	rest := val[3:]
	term, n := binary.Uvarint(rest)
	if n <= 0 {
		return fmt.Errorf("%w: index %d: term", errCorruptLog, index)
	}
	rest = rest[n:]
	var appendedAt time.Time
	if flags&flagAppendedAt != 0 {
		sec, n := binary.Varint(rest)
		if n <= 0 {
			return fmt.Errorf("%w: index %d: appended_at", errCorruptLog, index)
		}
		rest = rest[n:]
		nsec, n := binary.Uvarint(rest)
		if n <= 0 || nsec >= uint64(time.Second) {
			return fmt.Errorf("%w: index %d: appended_at", errCorruptLog, index)
		}
		rest = rest[n:]
		appendedAt = time.Unix(sec, int64(nsec)).UTC()
	}
	extLen, n := binary.Uvarint(rest)
	if n <= 0 || extLen > uint64(len(rest)-n) || extLen > math.MaxInt {
		return fmt.Errorf("%w: index %d: extensions", errCorruptLog, index)
	}
	rest = rest[n:]

	var ext, data []byte
	if len(rest) > 0 {
		buf := make([]byte, len(rest))
		copy(buf, rest)
		e := int(extLen)
		if e > 0 {
			ext = buf[:e:e]
		}
		if e < len(buf) {
			data = buf[e:]
		}
	}
	*l = raft.Log{
		Index:      index,
		Term:       term,
		Type:       typ,
		Data:       data,
		Extensions: ext,
		AppendedAt: appendedAt,
	}
	return nil
}

// indexKey returns the bolt key of a log index.
func indexKey(index uint64) []byte {
	return indexKeyAppend(make([]byte, 0, 8), index)
}

// indexKeyAppend appends the bolt key of a log index to dst.
func indexKeyAppend(dst []byte, index uint64) []byte {
	return binary.BigEndian.AppendUint64(dst, index)
}

// keyIndex reverses indexKey.
func keyIndex(k []byte) uint64 { return binary.BigEndian.Uint64(k) }
