package fsm

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/proto"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

// FuzzDecodeEnqueue: wherever the Enqueue fast path decodes input, it reads
// exactly what proto.Unmarshal reads.
func FuzzDecodeEnqueue(f *testing.F) {
	seeds := []*fsmv1.Command{
		{Version: 1, Stamp: 5, Op: enq(msg("a"))},
		{Version: 1, Stamp: -5, Op: enq(msg(""), dmsg("b", "id"), &fsmv1.NewMessage{Payload: []byte("c"), Key: "k", Delay: 7, Headers: []*fsmv1.Header{{Key: "h", Value: []byte("v")}, {Key: "e"}}})},
		{Version: 2, Op: enq()},
		{Version: 1, Op: recv(3, 0)},
	}
	for _, c := range seeds {
		f.Add(mustMarshal(f, c))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		version, stamp, msgs, ok := decodeEnqueue(data)
		if !ok {
			return
		}
		var c fsmv1.Command
		if err := proto.Unmarshal(data, &c); err != nil {
			t.Fatalf("fast path decoded what proto refuses: %v", err)
		}
		e := c.GetEnqueue()
		if e == nil || c.GetVersion() != version || c.GetStamp() != stamp || len(e.GetMessages()) != len(msgs) {
			t.Fatalf("fast path read version %d stamp %d %d messages; proto: %v", version, stamp, len(msgs), &c)
		}
		for i, m := range e.GetMessages() {
			got := msgs[i]
			if !bytes.Equal(got.payload, m.GetPayload()) || got.key != m.GetKey() || got.delay != m.GetDelay() ||
				got.dedupID != m.GetDedupId() || len(got.headers) != len(m.GetHeaders()) {
				t.Fatalf("message %d: fast %+v, proto %v", i, got, m)
			}
			for j, h := range m.GetHeaders() {
				if got.headers[j].GetKey() != h.GetKey() || !bytes.Equal(got.headers[j].GetValue(), h.GetValue()) {
					t.Fatalf("message %d header %d: fast %v, proto %v", i, j, got.headers[j], h)
				}
			}
		}
	})
}

// TestFastAndProtoPathsAgree: the same Enqueue applied through the fast
// decoder and through proto.Unmarshal leaves identical partitions.
func TestFastAndProtoPathsAgree(t *testing.T) {
	c := &fsmv1.Command{Version: CommandVersion, Stamp: 9, Op: enq(
		dmsg("a", "x"), &fsmv1.NewMessage{Payload: []byte("b"), Key: "k", Delay: 3, Headers: []*fsmv1.Header{{Key: "h", Value: []byte("v")}}}, dmsg("c", "x"))}
	data := mustMarshal(t, c)
	if _, _, _, ok := decodeEnqueue(data); !ok {
		t.Fatal("fast path did not take a plain Enqueue")
	}
	fast, slow := NewPartition(), NewPartition()
	fast.ApplyEncoded(data)
	slow.Apply(c)
	if !bytes.Equal(snapBytes(t, fast), snapBytes(t, slow)) {
		t.Fatal("fast and proto paths disagree")
	}
	// A second Enqueue field is legal protobuf (messages merge) but not the
	// plain encoding: the fast path must hand it to proto.
	twice := append(append([]byte{}, data...), mustMarshal(t, &fsmv1.Command{Op: enq(msg("d"))})...)
	if _, _, _, ok := decodeEnqueue(twice); ok {
		t.Fatal("fast path took a merged Enqueue")
	}
	r := NewPartition().ApplyEncoded(twice)
	if r.Code != OK || len(r.Enqueued) != 4 {
		t.Fatalf("merged Enqueue: %v %s, %d enqueued", r.Code, r.Detail, len(r.Enqueued))
	}
	// Invalid UTF-8 in a key: proto refuses it, and so does the partition.
	bad := mustMarshal(t, &fsmv1.Command{Version: CommandVersion, Op: enq(&fsmv1.NewMessage{Key: "ok"})})
	bad = bytes.Replace(bad, []byte("ok"), []byte{0xff, 0xfe}, 1)
	if r := NewPartition().ApplyEncoded(bad); r.Code != Invalid {
		t.Fatalf("invalid UTF-8 key: %v", r.Code)
	}
}
