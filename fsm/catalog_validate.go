package fsm

import (
	"fmt"
	"slices"
	"unicode/utf8"

	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
)

// ValidateCatalogCommand checks a command against every rule that does not
// depend on the catalogue's state, so that the cluster can refuse bad input
// before it reaches Raft. Apply calls it first. The error wraps ErrInvalid,
// ErrUnsupportedVersion or ErrUnknownCommand.
func ValidateCatalogCommand(cmd *fsmv1.CatalogCommand) error {
	if cmd == nil {
		return invalidf("catalogue command missing")
	}
	if cmd.GetVersion() != CatalogVersion {
		return fmt.Errorf("%w: catalogue command version %d, want %d", ErrUnsupportedVersion, cmd.GetVersion(), CatalogVersion)
	}
	if handled, err := validateAccessCommand(cmd); handled {
		return err
	}
	switch op := cmd.GetOp().(type) {
	case *fsmv1.CatalogCommand_UpsertNode:
		return validateNodeInfo(op.UpsertNode.GetNode())
	case *fsmv1.CatalogCommand_SetNodeState:
		if err := ValidNodeID(op.SetNodeState.GetId()); err != nil {
			return err
		}
		if st := op.SetNodeState.GetState(); !knownNodeState(st) {
			return invalidf("node state %v", st)
		}
		return nil
	case *fsmv1.CatalogCommand_CreateQueue:
		return validateCreateQueue(op.CreateQueue)
	case *fsmv1.CatalogCommand_DeleteQueue:
		return ValidQueueName(op.DeleteQueue.GetName())
	case *fsmv1.CatalogCommand_UpdateQueueSettings:
		if err := ValidQueueName(op.UpdateQueueSettings.GetName()); err != nil {
			return err
		}
		return ValidateSettings(op.UpdateQueueSettings.GetSettings())
	case *fsmv1.CatalogCommand_SetAssignment:
		if err := ValidQueueName(op.SetAssignment.GetQueue()); err != nil {
			return err
		}
		return validateReplicas(op.SetAssignment.GetReplicas(), op.SetAssignment.GetPreferredLeader())
	case nil:
		return fmt.Errorf("%w: catalogue command has no known operation", ErrUnknownCommand)
	default:
		return fmt.Errorf("%w: %T", ErrUnknownCommand, op)
	}
}

func knownNodeState(st fsmv1.NodeState) bool {
	return st >= fsmv1.NodeState_NODE_STATE_ALIVE && st <= fsmv1.NodeState_NODE_STATE_REMOVED
}

func validateCreateQueue(q *fsmv1.CreateQueue) error {
	if err := ValidQueueName(q.GetName()); err != nil {
		return err
	}
	if err := ValidateSettings(q.GetSettings()); err != nil {
		return err
	}
	rf := q.GetReplicationFactor()
	if rf < 1 || rf > MaxReplicas {
		return invalidf("replication factor %d outside [1, %d]", rf, MaxReplicas)
	}
	n := len(q.GetPartitions())
	if n < 1 || n > MaxQueuePartitions {
		return invalidf("%d partitions, want [1, %d]", n, MaxQueuePartitions)
	}
	seen := make([]bool, n)
	for _, a := range q.GetPartitions() {
		p := a.GetPartition()
		if int64(p) >= int64(n) {
			return invalidf("partition %d outside [0, %d)", p, n)
		}
		if seen[p] {
			return invalidf("partition %d assigned twice", p)
		}
		seen[p] = true
		if a.GetEpoch() != 0 {
			return invalidf("partition %d: assignment epoch %d, want 0 for a new queue", p, a.GetEpoch())
		}
		if len(a.GetReplicas()) != int(rf) {
			return invalidf("partition %d: %d replicas, want the replication factor %d", p, len(a.GetReplicas()), rf)
		}
		if err := validateReplicas(a.GetReplicas(), a.GetPreferredLeader()); err != nil {
			return fmt.Errorf("partition %d: %w", p, err)
		}
		for _, r := range a.GetReplicas() {
			if !r.GetVoter() {
				return invalidf("partition %d: replica on %q is not a voter", p, r.GetNodeId())
			}
		}
	}
	return nil
}

// validateReplicas checks one assignment's replica set: 1..MaxReplicas
// replicas on distinct valid node ids, at least one voter, and a preferred
// leader that is empty or one of them.
func validateReplicas(rs []*fsmv1.Replica, preferred string) error {
	if len(rs) < 1 || len(rs) > MaxReplicas {
		return invalidf("%d replicas, want [1, %d]", len(rs), MaxReplicas)
	}
	voters := 0
	for i, r := range rs {
		if r == nil {
			return invalidf("replica %d missing", i)
		}
		if err := ValidNodeID(r.GetNodeId()); err != nil {
			return err
		}
		for _, prev := range rs[:i] {
			if prev.GetNodeId() == r.GetNodeId() {
				return invalidf("two replicas on node %q", r.GetNodeId())
			}
		}
		if r.GetVoter() {
			voters++
		}
	}
	if voters == 0 {
		return invalidf("no voting replica")
	}
	if preferred != "" && !slices.ContainsFunc(rs, func(r *fsmv1.Replica) bool { return r.GetNodeId() == preferred }) {
		return invalidf("preferred leader %q is not a replica", preferred)
	}
	return nil
}

func validateNodeInfo(n *fsmv1.NodeInfo) error {
	if n == nil {
		return invalidf("node missing")
	}
	if err := ValidNodeID(n.GetId()); err != nil {
		return err
	}
	for _, f := range [...]struct{ what, v string }{
		{"client address", n.GetClientAddr()}, {"peer address", n.GetPeerAddr()},
		{"gossip address", n.GetGossipAddr()}, {"http address", n.GetHttpAddr()},
		{"zone", n.GetZone()}, {"version", n.GetVersion()},
	} {
		if len(f.v) > MaxNodeFieldBytes {
			return invalidf("node %s of %d bytes, at most %d", f.what, len(f.v), MaxNodeFieldBytes)
		}
		if !utf8.ValidString(f.v) {
			return invalidf("node %s is not valid UTF-8", f.what)
		}
	}
	return nil
}

// ValidQueueName reports whether name is a valid queue name: 1 to
// MaxQueueNameLen characters of [A-Za-z0-9._-], not starting with '.' or '-'.
func ValidQueueName(name string) error { return checkName("queue name", name, MaxQueueNameLen, false) }

// ValidNodeID reports whether id is a valid node id: like a queue name, and
// ':' is allowed too. '/' never is: a replica's Raft server id is
// "<node id>/<epoch>".
func ValidNodeID(id string) error { return checkName("node id", id, MaxNodeIDLen, true) }

func checkName(what, s string, maxLen int, colon bool) error {
	if s == "" {
		return invalidf("%s missing", what)
	}
	if len(s) > maxLen {
		return invalidf("%s of %d bytes, at most %d", what, len(s), maxLen)
	}
	if s[0] == '.' || s[0] == '-' {
		return invalidf("%s %q starts with %q", what, s, s[0])
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		switch {
		case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9', b == '.', b == '_', b == '-':
		case b == ':' && colon:
		default:
			return invalidf("%s %q: character %q not allowed", what, s, b)
		}
	}
	return nil
}
