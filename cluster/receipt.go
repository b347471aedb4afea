package cluster

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// receipt is what a consumer holds for one lease. On the wire it is opaque:
// "r2." + base64url(uvarint queue id, partition, seq, epoch, key id, then
// the first 16 bytes of HMAC-SHA256 over those varints under receipt key
// key id). The queue id makes a receipt of a deleted queue unknown to one
// re-created with the same name; the MAC makes a receipt impossible to
// guess or alter without the cluster's receipt key (catalogue,
// RotateReceiptKey).
type receipt struct {
	queueID   uint64
	partition uint32
	seq       uint64
	epoch     uint32
	keyID     uint32
}

const (
	receiptPrefix = "r2."
	receiptMACLen = 16
	// maxReceiptLen bounds a receipt string: five varints and the MAC,
	// base64url, with room to spare. Longer is refused at the edge.
	maxReceiptLen = 128
)

var errBadReceipt = errors.New("malformed receipt")

// receiptKeys are the receipt keys of one catalogue state.
type receiptKeys struct {
	keys    map[uint32][]byte
	current uint32 // 0: none yet
}

func (k *receiptKeys) body(r receipt) []byte {
	b := make([]byte, 0, 5*binary.MaxVarintLen64+receiptMACLen)
	b = binary.AppendUvarint(b, r.queueID)
	b = binary.AppendUvarint(b, uint64(r.partition))
	b = binary.AppendUvarint(b, r.seq)
	b = binary.AppendUvarint(b, uint64(r.epoch))
	b = binary.AppendUvarint(b, uint64(r.keyID))
	return b
}

func receiptMAC(key, body []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(body)
	return m.Sum(nil)[:receiptMACLen]
}

// sign returns r's wire form under the current key; ok is false when
// the cluster has no receipt key yet.
func (k *receiptKeys) sign(r receipt) (string, bool) {
	key, ok := k.keys[k.current]
	if !ok {
		return "", false
	}
	r.keyID = k.current
	b := k.body(r)
	b = append(b, receiptMAC(key, b)...)
	return receiptPrefix + base64.RawURLEncoding.EncodeToString(b), true
}

// receiptVerdict is what open makes of a receipt string.
type receiptVerdict uint8

const (
	receiptValid receiptVerdict = iota
	// receiptForged: malformed, of an older format, signed by a key
	// retired or never made, or altered: refused like an unknown lease.
	receiptForged
	// receiptNewerKey: signed by a key this node's catalogue does not
	// have yet (a rotation still on its way here): retry.
	receiptNewerKey
)

// open checks s and returns the receipt it names. Before the cluster has
// a receipt key (an upgrade from a version without them, under way), it
// takes the unsigned receipts that version hands out, as it did.
func (k *receiptKeys) open(s string) (receipt, receiptVerdict) {
	if k.current == 0 && strings.HasPrefix(s, legacyReceiptPrefix) {
		r, err := parseLegacyReceipt(s)
		if err != nil {
			return receipt{}, receiptForged
		}
		return r, receiptValid
	}
	if !strings.HasPrefix(s, receiptPrefix) || len(s) > maxReceiptLen {
		return receipt{}, receiptForged
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(s[len(receiptPrefix):])
	if err != nil || len(b) < receiptMACLen {
		return receipt{}, receiptForged
	}
	body, mac := b[:len(b)-receiptMACLen], b[len(b)-receiptMACLen:]
	var v [5]uint64
	rest := body
	for i := range v {
		x, n := binary.Uvarint(rest)
		if n <= 0 {
			return receipt{}, receiptForged
		}
		v[i], rest = x, rest[n:]
	}
	if len(rest) != 0 || v[1] > 1<<31 || v[3] > 1<<32-1 || v[4] > 1<<32-1 {
		return receipt{}, receiptForged
	}
	r := receipt{queueID: v[0], partition: uint32(v[1]), seq: v[2], epoch: uint32(v[3]), keyID: uint32(v[4])}
	key, ok := k.keys[r.keyID]
	if !ok {
		if r.keyID > k.current {
			return receipt{}, receiptNewerKey
		}
		return receipt{}, receiptForged
	}
	if !hmac.Equal(mac, receiptMAC(key, body)) {
		return receipt{}, receiptForged
	}
	return r, receiptValid
}

// legacyReceiptPrefix: receipts of versions before signed receipts,
// "r1." + base64url(uvarint queue id, partition, seq, epoch), unsigned.
// They are issued and taken only while the cluster has no receipt key.
const legacyReceiptPrefix = "r1."

func legacyReceipt(r receipt) string {
	var b []byte
	b = binary.AppendUvarint(b, r.queueID)
	b = binary.AppendUvarint(b, uint64(r.partition))
	b = binary.AppendUvarint(b, r.seq)
	b = binary.AppendUvarint(b, uint64(r.epoch))
	return legacyReceiptPrefix + base64.RawURLEncoding.EncodeToString(b)
}

func parseLegacyReceipt(s string) (receipt, error) {
	if len(s) > 64 {
		return receipt{}, errBadReceipt
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(s[len(legacyReceiptPrefix):])
	if err != nil {
		return receipt{}, errBadReceipt
	}
	var v [4]uint64
	for i := range v {
		x, n := binary.Uvarint(b)
		if n <= 0 {
			return receipt{}, errBadReceipt
		}
		v[i], b = x, b[n:]
	}
	if len(b) != 0 || v[1] > 1<<31 || v[3] > 1<<32-1 {
		return receipt{}, errBadReceipt
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
