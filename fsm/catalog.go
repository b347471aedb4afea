package fsm

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"

	"google.golang.org/protobuf/proto"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

// CatalogVersion is the newest catalogue command format this state machine
// applies (CatalogCommand.version).
const CatalogVersion = 1

// Limits the catalogue enforces on what a command may carry.
const (
	MaxQueueNameLen    = 128 // bytes of a queue name
	MaxNodeIDLen       = 128 // bytes of a node id
	MaxReplicas        = 7   // replication factor, and replicas of one assignment
	MaxQueuePartitions = 1024
	MaxNodeFieldBytes  = 256 // a node's addresses, zone and version, each
)

// CatalogCode is a catalogue command's outcome. Like Code for a partition,
// business outcomes are results, never errors: every replica reaches the same
// CatalogCode for the same command, and only CatalogOK changes anything.
type CatalogCode uint8

const (
	// CatalogOK: the command was applied.
	CatalogOK CatalogCode = iota
	// CatalogInvalid: the command broke a limit, could not be decoded, or
	// named a replica epoch that is not a current member; nothing changed.
	CatalogInvalid
	// CatalogUnsupported: a command version or operation newer than this
	// replica; nothing changed.
	CatalogUnsupported
	// CatalogNotFound: no such node, queue or partition; nothing changed.
	CatalogNotFound
	// CatalogExists: CreateQueue of a name in use; nothing changed.
	CatalogExists
	// CatalogConflict: a compare-and-set failed (assignment epoch, queue id);
	// nothing changed. The proposer re-reads and retries.
	CatalogConflict
	// CatalogRefused: the command touches a node that cannot take it (a
	// REMOVED node, a placement on a node that is unknown or not ALIVE, the
	// removal of a node that still hosts replicas); nothing changed.
	CatalogRefused
)

var catalogCodeNames = [...]string{"ok", "invalid", "unsupported", "not found", "already exists", "conflict", "refused"}

func (c CatalogCode) String() string {
	if int(c) < len(catalogCodeNames) {
		return catalogCodeNames[c]
	}
	return "unknown code"
}

// CatalogResult is what applying one catalogue command returns.
type CatalogResult struct {
	Code   CatalogCode
	Detail string // why, when Code is not CatalogOK
	// Queue is the created queue (a copy), for a CreateQueue that applied.
	Queue *fsmv1.QueueInfo
	// Epoch is the assignment's new epoch, for a SetAssignment that applied.
	Epoch uint64
	// KeyID is the new receipt key's id, for a RotateReceiptKey.
	KeyID uint32
}

func catalogResult(code CatalogCode, format string, args ...any) *CatalogResult {
	return &CatalogResult{Code: code, Detail: fmt.Sprintf(format, args...)}
}

// Catalog is the controller's catalogue: the nodes of the cluster, the
// queues, and which nodes host each partition. It is not safe for concurrent
// use; the Raft adapter (RaftFSM) serialises access.
//
// Only a command whose result is CatalogOK changes the catalogue, and every
// such command changes it: it advances now to max(now, stamp) and bumps the
// catalogue epoch by one. A command that is refused for any reason (invalid,
// unsupported, not found, exists, conflict, refused) leaves everything as it
// was, now included, so equal epochs always mean equal catalogues.
type Catalog struct {
	now   int64
	epoch uint64

	// nextQueueID and nextReplicaEpoch are never reused over the
	// catalogue's life: a queue created again, or a replica placed again on
	// the same node, gets a new identity (and so new Raft groups and server
	// ids).
	nextQueueID      uint64
	nextReplicaEpoch uint64

	nodes map[string]*fsmv1.NodeInfo
	// queues own their QueueInfo; Partitions[i].Partition == i always.
	queues map[string]*fsmv1.QueueInfo

	// Access control (catalog_access.go): grants sorted by grantLess,
	// tokens by id, receipt keys oldest first.
	grants      []*fsmv1.Grant
	tokens      map[string]*fsmv1.TokenInfo
	receiptKeys []*fsmv1.ReceiptKey
	// accessVersion changes whenever the access records may have (see
	// AccessVersion); it is not state: never snapshotted or compared.
	accessVersion uint64
}

// NewCatalog returns an empty catalogue.
func NewCatalog() *Catalog {
	return &Catalog{
		nextQueueID:      1,
		nextReplicaEpoch: 1,
		nodes:            make(map[string]*fsmv1.NodeInfo),
		queues:           make(map[string]*fsmv1.QueueInfo),
		tokens:           make(map[string]*fsmv1.TokenInfo),
		accessVersion:    accessVersions.Add(1),
	}
}

var _ Machine = (*Catalog)(nil)

// NewCatalogFSM returns the Raft adapter around an empty catalogue.
func NewCatalogFSM() *RaftFSM[*Catalog] { return NewRaftFSM(NewCatalog()) }

func (c *Catalog) applyEncoded(data []byte) any { return c.ApplyEncoded(data) }
func (c *Catalog) capture() io.WriterTo         { return c.Snapshot() }
func (c *Catalog) restore(r io.Reader) error    { return c.Restore(r) }

// ApplyEncoded decodes and applies one encoded CatalogCommand. Input that
// does not decode is refused as CatalogInvalid and changes nothing.
func (c *Catalog) ApplyEncoded(data []byte) *CatalogResult {
	var cmd fsmv1.CatalogCommand
	if err := proto.Unmarshal(data, &cmd); err != nil {
		return catalogResult(CatalogInvalid, "undecodable catalogue command: %v", err)
	}
	return c.Apply(&cmd)
}

// Apply applies one command. The catalogue keeps no reference to cmd.
func (c *Catalog) Apply(cmd *fsmv1.CatalogCommand) *CatalogResult {
	if err := ValidateCatalogCommand(cmd); err != nil {
		code := CatalogInvalid
		if errors.Is(err, ErrUnsupportedVersion) || errors.Is(err, ErrUnknownCommand) {
			code = CatalogUnsupported
		}
		return &CatalogResult{Code: code, Detail: err.Error()}
	}
	// now is committed below only if the command applies.
	now := max(c.now, cmd.GetStamp())
	var res *CatalogResult
	switch op := cmd.GetOp().(type) {
	case *fsmv1.CatalogCommand_UpsertNode:
		res = c.upsertNode(op.UpsertNode.GetNode(), now)
	case *fsmv1.CatalogCommand_SetNodeState:
		res = c.setNodeState(op.SetNodeState, now)
	case *fsmv1.CatalogCommand_CreateQueue:
		res = c.createQueue(op.CreateQueue, now)
	case *fsmv1.CatalogCommand_DeleteQueue:
		res = c.deleteQueue(op.DeleteQueue)
	case *fsmv1.CatalogCommand_UpdateQueueSettings:
		res = c.updateSettings(op.UpdateQueueSettings)
	case *fsmv1.CatalogCommand_SetAssignment:
		res = c.setAssignment(op.SetAssignment)
	case *fsmv1.CatalogCommand_PutGrant:
		res = c.putGrant(op.PutGrant.GetGrant())
	case *fsmv1.CatalogCommand_RevokeGrant:
		res = c.revokeGrant(op.RevokeGrant.GetGrant())
	case *fsmv1.CatalogCommand_PutToken:
		res = c.putToken(op.PutToken.GetToken(), now)
	case *fsmv1.CatalogCommand_DeleteToken:
		res = c.deleteToken(op.DeleteToken.GetId())
	case *fsmv1.CatalogCommand_RotateReceiptKey:
		res = c.rotateReceiptKey(op.RotateReceiptKey.GetKey(), now)
	default:
		// ValidateCatalogCommand refuses every other operation.
		panic(fmt.Sprintf("fsm: validated catalogue command with operation %T", op))
	}
	if res.Code == CatalogOK {
		c.now = now
		c.epoch++
		if isAccessCommand(cmd) {
			c.accessVersion = accessVersions.Add(1)
		}
	}
	return res
}

// The operations below check everything first and change the catalogue only
// on the way to a CatalogOK result.

func (c *Catalog) upsertNode(n *fsmv1.NodeInfo, now int64) *CatalogResult {
	cur, ok := c.nodes[n.GetId()]
	if ok && cur.GetState() == fsmv1.NodeState_NODE_STATE_REMOVED {
		return catalogResult(CatalogRefused, "node %q was removed", n.GetId())
	}
	if !ok {
		cur = &fsmv1.NodeInfo{Id: n.GetId(), State: fsmv1.NodeState_NODE_STATE_ALIVE, JoinedAt: now}
		c.nodes[cur.Id] = cur
	}
	// The state and the times in the command are ignored: the state changes
	// only through SetNodeState, and times come from the stamp.
	cur.ClientAddr, cur.PeerAddr = n.GetClientAddr(), n.GetPeerAddr()
	cur.GossipAddr, cur.HttpAddr = n.GetGossipAddr(), n.GetHttpAddr()
	cur.Zone, cur.Version = n.GetZone(), n.GetVersion()
	cur.Instance = n.GetInstance()
	cur.UpdatedAt = now
	return &CatalogResult{}
}

func (c *Catalog) setNodeState(s *fsmv1.SetNodeState, now int64) *CatalogResult {
	cur, ok := c.nodes[s.GetId()]
	if !ok {
		return catalogResult(CatalogNotFound, "node %q not found", s.GetId())
	}
	if cur.GetState() == fsmv1.NodeState_NODE_STATE_REMOVED {
		return catalogResult(CatalogRefused, "node %q was removed", s.GetId())
	}
	if s.GetState() == fsmv1.NodeState_NODE_STATE_REMOVED {
		if q, p, ok := c.hostedBy(s.GetId()); ok {
			return catalogResult(CatalogRefused, "node %q still hosts a replica of queue %q partition %d", s.GetId(), q, p)
		}
	}
	cur.State = s.GetState()
	cur.UpdatedAt = now
	return &CatalogResult{}
}

// hostedBy returns the first partition, in queue name and partition order,
// with a replica on node id.
func (c *Catalog) hostedBy(id string) (queue string, partition uint32, ok bool) {
	for _, name := range slices.Sorted(maps.Keys(c.queues)) {
		for _, a := range c.queues[name].GetPartitions() {
			for _, r := range a.GetReplicas() {
				if r.GetNodeId() == id {
					return name, a.GetPartition(), true
				}
			}
		}
	}
	return "", 0, false
}

func (c *Catalog) createQueue(q *fsmv1.CreateQueue, now int64) *CatalogResult {
	if _, ok := c.queues[q.GetName()]; ok {
		return catalogResult(CatalogExists, "queue %q exists", q.GetName())
	}
	// ValidateCatalogCommand made sure the partitions are numbered 0..n-1
	// exactly once; order them by number.
	byNum := make([]*fsmv1.PartitionAssignment, len(q.GetPartitions()))
	for _, a := range q.GetPartitions() {
		byNum[a.GetPartition()] = a
	}
	for _, a := range byNum {
		for _, r := range a.GetReplicas() {
			n, ok := c.nodes[r.GetNodeId()]
			if !ok {
				return catalogResult(CatalogRefused, "partition %d: node %q unknown", a.GetPartition(), r.GetNodeId())
			}
			if n.GetState() != fsmv1.NodeState_NODE_STATE_ALIVE {
				return catalogResult(CatalogRefused, "partition %d: node %q is %v, not alive", a.GetPartition(), r.GetNodeId(), n.GetState())
			}
		}
	}

	qi := &fsmv1.QueueInfo{
		Name:              q.GetName(),
		Id:                c.nextQueueID,
		Settings:          queueSettings(q.GetSettings()),
		ReplicationFactor: q.GetReplicationFactor(),
		Partitions:        make([]*fsmv1.PartitionAssignment, len(byNum)),
		CreatedAt:         now,
	}
	c.nextQueueID++
	for i, a := range byNum {
		na := &fsmv1.PartitionAssignment{
			Partition:       uint32(i),
			Replicas:        make([]*fsmv1.Replica, len(a.GetReplicas())),
			Epoch:           1,
			PreferredLeader: a.GetPreferredLeader(),
		}
		// Replica epochs from the command are ignored: every replica of a
		// new queue is a new member.
		for j, r := range a.GetReplicas() {
			na.Replicas[j] = &fsmv1.Replica{NodeId: r.GetNodeId(), Epoch: c.nextReplicaEpoch, Voter: true}
			c.nextReplicaEpoch++
		}
		qi.Partitions[i] = na
	}
	c.queues[qi.Name] = qi
	return &CatalogResult{Queue: proto.CloneOf(qi)}
}

// queueSettings is the stored copy of queue-level settings: the partition
// number means nothing for a whole queue and is kept 0.
func queueSettings(s *fsmv1.Settings) *fsmv1.Settings {
	s = proto.CloneOf(s)
	s.Partition = 0
	return s
}

func (c *Catalog) deleteQueue(d *fsmv1.DeleteQueue) *CatalogResult {
	q, ok := c.queues[d.GetName()]
	if !ok {
		return catalogResult(CatalogNotFound, "queue %q not found", d.GetName())
	}
	if d.GetId() != 0 && d.GetId() != q.GetId() {
		return catalogResult(CatalogConflict, "queue %q has id %d, not %d", d.GetName(), q.GetId(), d.GetId())
	}
	delete(c.queues, d.GetName())
	return &CatalogResult{}
}

func (c *Catalog) updateSettings(u *fsmv1.UpdateQueueSettings) *CatalogResult {
	q, ok := c.queues[u.GetName()]
	if !ok {
		return catalogResult(CatalogNotFound, "queue %q not found", u.GetName())
	}
	q.Settings = queueSettings(u.GetSettings())
	return &CatalogResult{}
}

func (c *Catalog) setAssignment(s *fsmv1.SetAssignment) *CatalogResult {
	q, ok := c.queues[s.GetQueue()]
	if !ok {
		return catalogResult(CatalogNotFound, "queue %q not found", s.GetQueue())
	}
	if int(s.GetPartition()) >= len(q.GetPartitions()) {
		return catalogResult(CatalogNotFound, "queue %q has no partition %d", s.GetQueue(), s.GetPartition())
	}
	a := q.Partitions[s.GetPartition()]
	if s.GetExpectedEpoch() != a.GetEpoch() {
		return catalogResult(CatalogConflict, "queue %q partition %d is at epoch %d, not %d",
			s.GetQueue(), s.GetPartition(), a.GetEpoch(), s.GetExpectedEpoch())
	}
	for _, r := range s.GetReplicas() {
		// DRAINING nodes are fine: a move takes replicas off them step by step.
		n, ok := c.nodes[r.GetNodeId()]
		if !ok {
			return catalogResult(CatalogRefused, "node %q unknown", r.GetNodeId())
		}
		if n.GetState() == fsmv1.NodeState_NODE_STATE_REMOVED {
			return catalogResult(CatalogRefused, "node %q was removed", r.GetNodeId())
		}
		if r.GetEpoch() != 0 && !slices.ContainsFunc(a.GetReplicas(), func(cur *fsmv1.Replica) bool {
			return cur.GetNodeId() == r.GetNodeId() && cur.GetEpoch() == r.GetEpoch()
		}) {
			return catalogResult(CatalogInvalid, "replica %s/%d is not a member of queue %q partition %d (epoch 0 adds a new one)",
				r.GetNodeId(), r.GetEpoch(), s.GetQueue(), s.GetPartition())
		}
	}
	rs := make([]*fsmv1.Replica, len(s.GetReplicas()))
	for i, r := range s.GetReplicas() {
		e := r.GetEpoch()
		if e == 0 {
			e = c.nextReplicaEpoch
			c.nextReplicaEpoch++
		}
		rs[i] = &fsmv1.Replica{NodeId: r.GetNodeId(), Epoch: e, Voter: r.GetVoter(), Leaving: r.GetLeaving()}
	}
	a.Replicas = rs
	a.PreferredLeader = s.GetPreferredLeader()
	a.Epoch++
	return &CatalogResult{Epoch: a.Epoch}
}

// Epoch is the catalogue epoch: the number of commands applied with
// CatalogOK. Readers compare it to tell whether anything changed.
func (c *Catalog) Epoch() uint64 { return c.epoch }

// Now is the catalogue's time: the largest stamp of an applied command.
func (c *Catalog) Now() int64 { return c.now }
