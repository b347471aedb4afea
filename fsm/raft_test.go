package fsm

import (
	"bytes"
	"io"
	"testing"

	"github.com/hashicorp/raft"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

// Replicas that applied the same entries report the same checksum at the
// same index; a different state gives a different checksum; a replica
// restored from a snapshot reports the snapshot's index and checksum.
func TestStateChecksum(t *testing.T) {
	logs := []*raft.Log{
		encodeLog(t, 1, enqueueCmd(10, 5, 16, "d")),
		encodeLog(t, 2, &fsmv1.Command{Stamp: 20, Op: &fsmv1.Command_Receive{Receive: &fsmv1.Receive{Max: 2, VisibilityTimeout: 1e9}}}),
		{Index: 3, Type: raft.LogNoop},
	}
	a, b := NewPartitionFSM(), NewPartitionFSM()
	a.ApplyBatch(logs)
	b.ApplyBatch(logs[:1])
	b.ApplyBatch(logs[1:])
	ia, sa, err := a.StateChecksum()
	if err != nil {
		t.Fatal(err)
	}
	ib, sb, err := b.StateChecksum()
	if err != nil {
		t.Fatal(err)
	}
	if ia != 3 || ib != 3 || sa != sb {
		t.Fatalf("same entries: (%d, %x) vs (%d, %x)", ia, sa, ib, sb)
	}

	c := NewPartitionFSM()
	c.ApplyBatch(logs[:1])
	_, sc, _ := c.StateChecksum()
	if sc == sa {
		t.Fatal("a state with no lease has the checksum of one with leases")
	}

	_, stream, err := a.Stream()
	if err != nil {
		t.Fatal(err)
	}
	var sink bytes.Buffer
	if _, err := io.Copy(&sink, stream); err != nil {
		t.Fatal(err)
	}
	stream.Close()
	r := NewPartitionFSM()
	if err := r.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	ir, sr, _ := r.StateChecksum()
	if ir != 3 || sr != sa {
		t.Fatalf("restored (%d, %x), want (3, %x)", ir, sr, sa)
	}
}
