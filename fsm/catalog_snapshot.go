package fsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"maps"
	"slices"

	"google.golang.org/protobuf/proto"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

// A catalogue snapshot is one CatalogSnapshot message, framed as: the 8-byte
// magic "QQCSNAP1", the message's length as a big-endian uint32, the message
// (deterministic encoding, so equal catalogues give equal bytes), and the
// CRC32C (Castagnoli) of the message bytes as a big-endian uint32. The
// catalogue is small (nodes, queues, assignments), so it is one message.
const (
	catalogSnapshotMagic = "QQCSNAP1"
	// catalogSnapshotFormat is CatalogSnapshot.version.
	catalogSnapshotFormat = 1
	// maxCatalogSnapshotBytes bounds the message, so that a corrupt length
	// cannot make Restore allocate without limit.
	maxCatalogSnapshotBytes = 64 << 20
)

// ErrCorruptCatalogSnapshot is wrapped by every error Restore returns for
// input that is not a whole, well-formed catalogue snapshot.
var ErrCorruptCatalogSnapshot = errors.New("corrupt catalogue snapshot")

var catalogCRC = crc32.MakeTable(crc32.Castagnoli)

// CatalogSnapshot is a point-in-time deep copy of a catalogue, taken by
// Snapshot and written by WriteTo while the catalogue goes on applying
// commands.
type CatalogSnapshot struct {
	msg *fsmv1.CatalogSnapshot
}

// Snapshot captures the catalogue: nodes sorted by id, queues by name,
// partitions by number.
func (c *Catalog) Snapshot() *CatalogSnapshot {
	s := &fsmv1.CatalogSnapshot{
		Version:          catalogSnapshotFormat,
		Now:              c.now,
		NextQueueId:      c.nextQueueID,
		NextReplicaEpoch: c.nextReplicaEpoch,
		CatalogEpoch:     c.epoch,
		Nodes:            make([]*fsmv1.NodeInfo, 0, len(c.nodes)),
		Queues:           make([]*fsmv1.QueueInfo, 0, len(c.queues)),
	}
	for _, id := range slices.Sorted(maps.Keys(c.nodes)) {
		s.Nodes = append(s.Nodes, proto.CloneOf(c.nodes[id]))
	}
	// A queue's partitions are kept in number order (see Catalog.queues).
	for _, name := range slices.Sorted(maps.Keys(c.queues)) {
		s.Queues = append(s.Queues, proto.CloneOf(c.queues[name]))
	}
	s.Grants, s.Tokens, s.ReceiptKeys = c.Grants(), c.Tokens(), c.ReceiptKeys()
	return &CatalogSnapshot{msg: s}
}

// WriteTo writes the framed snapshot to w in one Write.
func (s *CatalogSnapshot) WriteTo(w io.Writer) (int64, error) {
	opts := proto.MarshalOptions{Deterministic: true}
	size := opts.Size(s.msg)
	buf := make([]byte, 0, len(catalogSnapshotMagic)+4+size+4)
	buf = append(buf, catalogSnapshotMagic...)
	buf = binary.BigEndian.AppendUint32(buf, 0) // length, set below
	head := len(buf)
	buf, err := opts.MarshalAppend(buf, s.msg)
	if err != nil {
		return 0, fmt.Errorf("encoding catalogue snapshot: %w", err)
	}
	body := buf[head:]
	if len(body) > maxCatalogSnapshotBytes {
		// Never write what Restore would refuse.
		return 0, fmt.Errorf("catalogue snapshot of %d bytes, at most %d", len(body), maxCatalogSnapshotBytes)
	}
	binary.BigEndian.PutUint32(buf[head-4:head], uint32(len(body)))
	buf = binary.BigEndian.AppendUint32(buf, crc32.Checksum(body, catalogCRC))
	n, err := w.Write(buf)
	return int64(n), err
}

// The reads below, like Snapshot, return deep copies: callers cannot
// change the catalogue through them.

// Node returns a copy of node id.
func (c *Catalog) Node(id string) (*fsmv1.NodeInfo, bool) {
	n, ok := c.nodes[id]
	if !ok {
		return nil, false
	}
	return proto.CloneOf(n), true
}

// Nodes returns a copy of every node, REMOVED ones included, sorted by id.
func (c *Catalog) Nodes() []*fsmv1.NodeInfo {
	out := make([]*fsmv1.NodeInfo, 0, len(c.nodes))
	for _, id := range slices.Sorted(maps.Keys(c.nodes)) {
		out = append(out, proto.CloneOf(c.nodes[id]))
	}
	return out
}

// Queue returns a copy of queue name.
func (c *Catalog) Queue(name string) (*fsmv1.QueueInfo, bool) {
	q, ok := c.queues[name]
	if !ok {
		return nil, false
	}
	return proto.CloneOf(q), true
}

// Queues returns a copy of every queue, sorted by name.
func (c *Catalog) Queues() []*fsmv1.QueueInfo {
	out := make([]*fsmv1.QueueInfo, 0, len(c.queues))
	for _, name := range slices.Sorted(maps.Keys(c.queues)) {
		out = append(out, proto.CloneOf(c.queues[name]))
	}
	return out
}

// Restore replaces the catalogue with the snapshot read from r. On error the
// catalogue is left as it was.
func (c *Catalog) Restore(r io.Reader) error {
	nc, err := readCatalogSnapshot(r)
	if err != nil {
		return err
	}
	*c = *nc
	return nil
}

func catalogCorrupt(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrCorruptCatalogSnapshot}, args...)...)
}

func readCatalogSnapshot(r io.Reader) (*Catalog, error) {
	var head [len(catalogSnapshotMagic) + 4]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return nil, catalogCorrupt("reading header: %v", err)
	}
	if string(head[:len(catalogSnapshotMagic)]) != catalogSnapshotMagic {
		return nil, catalogCorrupt("bad magic")
	}
	size := binary.BigEndian.Uint32(head[len(catalogSnapshotMagic):])
	if size > maxCatalogSnapshotBytes {
		return nil, catalogCorrupt("message of %d bytes, at most %d", size, maxCatalogSnapshotBytes)
	}
	// CopyN grows the buffer as data arrives, so a corrupt length on a short
	// stream costs no more memory than the stream holds.
	var buf bytes.Buffer
	if _, err := io.CopyN(&buf, r, int64(size)+4); err != nil {
		return nil, catalogCorrupt("reading message: %v", err)
	}
	body, sum := buf.Bytes()[:size], buf.Bytes()[size:]
	if crc32.Checksum(body, catalogCRC) != binary.BigEndian.Uint32(sum) {
		return nil, catalogCorrupt("checksum mismatch")
	}
	var one [1]byte
	if _, err := io.ReadFull(r, one[:]); err != io.EOF {
		return nil, catalogCorrupt("data after the checksum")
	}
	var s fsmv1.CatalogSnapshot
	if err := proto.Unmarshal(body, &s); err != nil {
		return nil, catalogCorrupt("decoding message: %v", err)
	}
	return catalogFromSnapshot(&s)
}

// catalogFromSnapshot rebuilds a catalogue and checks every invariant that
// Apply keeps, so that a restored catalogue behaves like an applied one.
func catalogFromSnapshot(s *fsmv1.CatalogSnapshot) (*Catalog, error) {
	if s.GetVersion() != catalogSnapshotFormat {
		return nil, catalogCorrupt("snapshot format %d, want %d", s.GetVersion(), catalogSnapshotFormat)
	}
	if s.GetNextQueueId() == 0 || s.GetNextReplicaEpoch() == 0 {
		return nil, catalogCorrupt("next queue id %d, next replica epoch %d", s.GetNextQueueId(), s.GetNextReplicaEpoch())
	}
	c := NewCatalog()
	c.now, c.epoch = s.GetNow(), s.GetCatalogEpoch()
	c.nextQueueID, c.nextReplicaEpoch = s.GetNextQueueId(), s.GetNextReplicaEpoch()

	for i, n := range s.GetNodes() {
		if err := validateNodeInfo(n); err != nil {
			return nil, catalogCorrupt("node %d: %v", i, err)
		}
		if i > 0 && n.GetId() <= s.Nodes[i-1].GetId() {
			if n.GetId() == s.Nodes[i-1].GetId() {
				return nil, catalogCorrupt("node %q twice", n.GetId())
			}
			return nil, catalogCorrupt("node %q out of order", n.GetId())
		}
		if !knownNodeState(n.GetState()) {
			return nil, catalogCorrupt("node %q in state %v", n.GetId(), n.GetState())
		}
		c.nodes[n.GetId()] = n
	}

	queueIDs := make(map[uint64]bool, len(s.GetQueues()))
	replicaEpochs := make(map[uint64]bool)
	for i, q := range s.GetQueues() {
		if err := ValidQueueName(q.GetName()); err != nil {
			return nil, catalogCorrupt("queue %d: %v", i, err)
		}
		if i > 0 && q.GetName() <= s.Queues[i-1].GetName() {
			if q.GetName() == s.Queues[i-1].GetName() {
				return nil, catalogCorrupt("queue %q twice", q.GetName())
			}
			return nil, catalogCorrupt("queue %q out of order", q.GetName())
		}
		if q.GetId() == 0 || q.GetId() >= c.nextQueueID || queueIDs[q.GetId()] {
			return nil, catalogCorrupt("queue %q: id %d reused or past next id %d", q.GetName(), q.GetId(), c.nextQueueID)
		}
		queueIDs[q.GetId()] = true
		if err := ValidateSettings(q.GetSettings()); err != nil {
			return nil, catalogCorrupt("queue %q: %v", q.GetName(), err)
		}
		if q.GetSettings().GetPartition() != 0 {
			return nil, catalogCorrupt("queue %q: settings name partition %d", q.GetName(), q.GetSettings().GetPartition())
		}
		if rf := q.GetReplicationFactor(); rf < 1 || rf > MaxReplicas {
			return nil, catalogCorrupt("queue %q: replication factor %d", q.GetName(), rf)
		}
		if n := len(q.GetPartitions()); n < 1 || n > MaxQueuePartitions {
			return nil, catalogCorrupt("queue %q: %d partitions", q.GetName(), n)
		}
		for j, a := range q.GetPartitions() {
			if err := c.checkAssignment(a, j, replicaEpochs); err != nil {
				return nil, catalogCorrupt("queue %q: %v", q.GetName(), err)
			}
		}
		c.queues[q.GetName()] = q
	}
	if err := c.restoreAccess(s); err != nil {
		return nil, err
	}
	return c, nil
}

// checkAssignment checks restored partition j of a queue against the nodes
// already restored; epochs collects every replica epoch seen so far, since
// each was handed out once.
func (c *Catalog) checkAssignment(a *fsmv1.PartitionAssignment, j int, epochs map[uint64]bool) error {
	if a.GetPartition() != uint32(j) {
		return fmt.Errorf("partition %d at position %d", a.GetPartition(), j)
	}
	if a.GetEpoch() == 0 {
		return fmt.Errorf("partition %d: assignment epoch 0", j)
	}
	if err := validateReplicas(a.GetReplicas(), a.GetPreferredLeader()); err != nil {
		return fmt.Errorf("partition %d: %v", j, err)
	}
	for _, r := range a.GetReplicas() {
		n, ok := c.nodes[r.GetNodeId()]
		if !ok || n.GetState() == fsmv1.NodeState_NODE_STATE_REMOVED {
			return fmt.Errorf("partition %d: replica on unknown or removed node %q", j, r.GetNodeId())
		}
		e := r.GetEpoch()
		if e == 0 || e >= c.nextReplicaEpoch || epochs[e] {
			return fmt.Errorf("partition %d: replica epoch %d reused or past next epoch %d", j, e, c.nextReplicaEpoch)
		}
		epochs[e] = true
	}
	return nil
}
