package cluster

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// receipt is what a consumer holds for one lease. On the wire it is opaque:
// "r1." + base64url(uvarint queue id, partition, seq, epoch). The queue id
// makes a receipt of a deleted queue unknown to one re-created with the
// same name.
type receipt struct {
	queueID   uint64
	partition uint32
	seq       uint64
	epoch     uint32
}

const receiptPrefix = "r1."

var errBadReceipt = errors.New("malformed receipt")

func (r receipt) String() string {
	var b [4 * binary.MaxVarintLen64]byte
	n := binary.PutUvarint(b[:], r.queueID)
	n += binary.PutUvarint(b[n:], uint64(r.partition))
	n += binary.PutUvarint(b[n:], r.seq)
	n += binary.PutUvarint(b[n:], uint64(r.epoch))
	return receiptPrefix + base64.RawURLEncoding.EncodeToString(b[:n])
}

func parseReceipt(s string) (receipt, error) {
	if !strings.HasPrefix(s, receiptPrefix) || len(s) > 64 {
		return receipt{}, fmt.Errorf("%w %q", errBadReceipt, s)
	}
	b, err := base64.RawURLEncoding.DecodeString(s[len(receiptPrefix):])
	if err != nil {
		return receipt{}, fmt.Errorf("%w %q", errBadReceipt, s)
	}
	var v [4]uint64
	for i := range v {
		x, n := binary.Uvarint(b)
		if n <= 0 {
			return receipt{}, fmt.Errorf("%w %q", errBadReceipt, s)
		}
		v[i], b = x, b[n:]
	}
	if len(b) != 0 || v[1] > 1<<31 || v[3] > 1<<32-1 {
		return receipt{}, fmt.Errorf("%w %q", errBadReceipt, s)
	}
	return receipt{queueID: v[0], partition: uint32(v[1]), seq: v[2], epoch: uint32(v[3])}, nil
}

// messageID is "<partition>-<seq>".
func messageID(partition uint32, seq uint64) string {
	return strconv.FormatUint(uint64(partition), 10) + "-" + strconv.FormatUint(seq, 10)
}

func parseMessageID(s string) (uint32, uint64, error) {
	p, q, ok := strings.Cut(s, "-")
	if !ok {
		return 0, 0, fmt.Errorf("malformed message id %q (want <partition>-<seq>)", s)
	}
	pn, err1 := strconv.ParseUint(p, 10, 32)
	seq, err2 := strconv.ParseUint(q, 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("malformed message id %q (want <partition>-<seq>)", s)
	}
	return uint32(pn), seq, nil
}
