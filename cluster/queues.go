package cluster

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/quorumq/quorumq/fsm"
	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
	peerv1 "github.com/quorumq/quorumq/proto/quorumq/peer/v1"
	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// defaultReplicas is a queue's replication factor when the request names none.
const defaultReplicas = 3

// createQueue places the queue's partitions on the live nodes and records
// it in the catalogue, then waits (briefly) for every partition to elect a
// leader so that the first enqueue does not have to.
func (n *Node) createQueue(ctx context.Context, req *qv1.CreateQueueRequest) (*fsmv1.QueueInfo, error) {
	if err := fsm.ValidQueueName(req.GetName()); err != nil {
		return nil, status.Error(codes.InvalidArgument, invalidMessage(err))
	}
	settings, err := settingsFromPublic(req.GetSettings())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, invalidMessage(err))
	}
	parts := req.GetPartitions()
	if parts == 0 {
		parts = 1
	}
	if parts > fsm.MaxQueuePartitions {
		return nil, status.Errorf(codes.InvalidArgument, "%d partitions, at most %d", parts, fsm.MaxQueuePartitions)
	}
	// Refused here before anything is placed; the controller leader checks
	// again, with its own limits, with the queue and replica caps.
	if err := checkPartitions(n.cfg.Limits, int(parts)); err != nil {
		return nil, n.lim.countRefusal(err)
	}
	alive := map[string]bool{}
	for _, m := range n.gossip.members() {
		alive[m.ID] = m.State == "alive"
	}
	var nodes []PlacementNode
	load := map[string]Load{}
	var queues []*fsmv1.QueueInfo
	n.ctrl.read(func(c *fsm.Catalog) {
		for _, info := range c.Nodes() {
			if info.GetState() == fsmv1.NodeState_NODE_STATE_ALIVE && alive[info.GetId()] {
				nodes = append(nodes, PlacementNode{ID: info.GetId(), Zone: info.GetZone()})
			}
		}
		queues = c.Queues()
	})
	for _, q := range queues {
		for _, pa := range q.GetPartitions() {
			for i, r := range pa.GetReplicas() {
				l := load[r.GetNodeId()]
				l.Replicas++
				if i == 0 {
					l.Leaders++
				}
				load[r.GetNodeId()] = l
			}
		}
	}
	replicas := req.GetReplicas()
	if replicas == 0 {
		replicas = uint32(min(defaultReplicas, max(len(nodes), 1)))
	}
	if replicas > fsm.MaxReplicas {
		return nil, status.Errorf(codes.InvalidArgument, "%d replicas, at most %d", replicas, fsm.MaxReplicas)
	}
	placed, err := Place(nodes, load, int(parts), int(replicas))
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "placing %d replicas on %d live nodes: %v", replicas, len(nodes), err)
	}
	cq := &fsmv1.CreateQueue{Name: req.GetName(), Settings: settings, ReplicationFactor: replicas}
	for i, p := range placed {
		pa := &fsmv1.PartitionAssignment{Partition: uint32(i), PreferredLeader: p.Replicas[0]}
		for _, id := range p.Replicas {
			pa.Replicas = append(pa.Replicas, &fsmv1.Replica{NodeId: id, Voter: true})
		}
		cq.Partitions = append(cq.Partitions, pa)
	}
	res, err := n.ctrl.propose(ctx, &fsmv1.CatalogCommand{Op: &fsmv1.CatalogCommand_CreateQueue{CreateQueue: cq}})
	if err != nil {
		return nil, err
	}
	if res.Code == fsm.CatalogExists {
		// Like SQS: creating a queue that exists with the same shape and
		// settings succeeds, so a retry after an ambiguous failure (the
		// first attempt did commit) is not an error.
		if q, ok := n.ctrl.queue(req.GetName()); ok && len(q.GetPartitions()) == int(parts) &&
			q.GetReplicationFactor() == replicas && proto.Equal(q.GetSettings(), settings) {
			return q, nil
		}
	}
	if err := catalogStatus(res); err != nil {
		return nil, err
	}
	n.waitLeaders(ctx, res.Queue, 5*time.Second)
	return res.Queue, nil
}

// waitLeaders waits until every partition of q has a leader or timeout.
func (n *Node) waitLeaders(ctx context.Context, q *fsmv1.QueueInfo, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for p := range uint32(len(q.GetPartitions())) {
		_, _ = n.readPartition(ctx, q, p, &peerv1.ReadRequest{})
	}
}

func catalogStatus(r *fsm.CatalogResult) error {
	switch r.Code {
	case fsm.CatalogOK:
		return nil
	case fsm.CatalogExists:
		return status.Error(codes.AlreadyExists, r.Detail)
	case fsm.CatalogNotFound:
		return status.Error(codes.NotFound, r.Detail)
	case fsm.CatalogInvalid:
		return status.Error(codes.InvalidArgument, r.Detail)
	}
	return status.Error(codes.FailedPrecondition, fmt.Sprintf("%v: %s", r.Code, r.Detail))
}

// settingsFromPublic turns API settings into partition settings, with
// defaults for what is unset.
func settingsFromPublic(s *qv1.QueueSettings) (*fsmv1.Settings, error) {
	out := fsm.DefaultSettings()
	if s != nil {
		if s.VisibilityTimeout != nil {
			out.VisibilityTimeout = s.GetVisibilityTimeout().AsDuration().Nanoseconds()
		}
		if s.MaxDeliveries != nil {
			out.MaxDeliveries = s.GetMaxDeliveries()
		}
		if s.DedupWindow != nil {
			out.DedupWindow = s.GetDedupWindow().AsDuration().Nanoseconds()
		}
		if s.Retention != nil {
			out.Retention = s.GetRetention().AsDuration().Nanoseconds()
		}
		out.MaxMessages = s.GetMaxMessagesPerPartition()
		out.MaxBytes = s.GetMaxBytesPerPartition()
	}
	return out, fsm.ValidateSettings(out)
}

func publicQueue(q *fsmv1.QueueInfo) *qv1.Queue {
	s := q.GetSettings()
	md := s.GetMaxDeliveries()
	return &qv1.Queue{
		Name: q.GetName(), Id: q.GetId(), Partitions: uint32(len(q.GetPartitions())), Replicas: q.GetReplicationFactor(),
		CreatedAt: timestamppb.New(time.Unix(0, q.GetCreatedAt())),
		Settings: &qv1.QueueSettings{
			VisibilityTimeout:       durationpb.New(time.Duration(s.GetVisibilityTimeout())),
			MaxDeliveries:           &md,
			DedupWindow:             durationpb.New(time.Duration(s.GetDedupWindow())),
			Retention:               durationpb.New(time.Duration(s.GetRetention())),
			MaxMessagesPerPartition: s.GetMaxMessages(),
			MaxBytesPerPartition:    s.GetMaxBytes(),
		},
	}
}
