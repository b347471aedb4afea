package cluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm"
	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
	peerv1 "github.com/quorumq/quorumq/proto/quorumq/peer/v1"
	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// DrainNode marks a node draining (or alive again, with cancel); the
// controller leader's repair loop then moves its replicas away, and its
// partition leaders hand their leadership over as their replicas go.
func (s *clusterServer) DrainNode(ctx context.Context, req *qv1.DrainNodeRequest) (*qv1.DrainNodeResponse, error) {
	if err := fsm.ValidNodeID(req.GetNodeId()); err != nil {
		return nil, status.Error(codes.InvalidArgument, invalidMessage(err))
	}
	state := fsmv1.NodeState_NODE_STATE_DRAINING
	if req.GetCancel() {
		state = fsmv1.NodeState_NODE_STATE_ALIVE
	}
	if err := s.setNodeState(ctx, req.GetNodeId(), state); err != nil {
		return nil, err
	}
	var hosted uint32
	s.n.ctrl.read(func(c *fsm.Catalog) {
		for _, q := range c.Queues() {
			for _, a := range q.GetPartitions() {
				if slices.ContainsFunc(a.GetReplicas(), func(r *fsmv1.Replica) bool { return r.GetNodeId() == req.GetNodeId() }) {
					hosted++
				}
			}
		}
	})
	return &qv1.DrainNodeResponse{Replicas: hosted}, nil
}

// RemoveNode takes a node that hosts nothing out of the cluster for good:
// the catalogue refuses its id from now on, the controller group drops
// it, and the node itself leaves gossip when it learns it was removed.
func (s *clusterServer) RemoveNode(ctx context.Context, req *qv1.RemoveNodeRequest) (*qv1.RemoveNodeResponse, error) {
	if err := fsm.ValidNodeID(req.GetNodeId()); err != nil {
		return nil, status.Error(codes.InvalidArgument, invalidMessage(err))
	}
	if err := s.setNodeState(ctx, req.GetNodeId(), fsmv1.NodeState_NODE_STATE_REMOVED); err != nil {
		return nil, err
	}
	return &qv1.RemoveNodeResponse{}, nil
}

func (s *clusterServer) setNodeState(ctx context.Context, id string, state fsmv1.NodeState) error {
	res, err := s.n.ctrl.propose(ctx, &fsmv1.CatalogCommand{Op: &fsmv1.CatalogCommand_SetNodeState{SetNodeState: &fsmv1.SetNodeState{Id: id, State: state}}})
	if err != nil {
		return toStatus(err)
	}
	if res.Code == fsm.CatalogRefused {
		return status.Error(codes.FailedPrecondition, res.Detail)
	}
	return catalogStatus(res)
}

// Rebalance marks replicas to move from the most loaded healthy nodes to
// the least loaded until counts are within one, spreads preferred leaders
// the same way, and hands each partition's leadership to its preferred
// leader where that replica is a voter.
func (s *clusterServer) Rebalance(ctx context.Context, _ *qv1.RebalanceRequest) (*qv1.RebalanceResponse, error) {
	resp, err := s.n.rebalance(ctx, rebalanceOpts{moves: true, leaders: true})
	if err != nil {
		return nil, toStatus(err)
	}
	return resp, nil
}

// rebalanceOpts says what a rebalance may do.
type rebalanceOpts struct {
	moves   bool // mark replicas to move (else only preferred leaders change)
	leaders bool // hand leaderships to the preferred leaders now
	// onlyIfUneven: hand leaderships over only if the healthy nodes'
	// leader counts differ by more than one, and at most maxTransfers.
	onlyIfUneven bool
	maxTransfers int
}

// healthyNodes: alive in gossip and alive in the catalogue.
func (n *Node) healthyNodes() map[string]bool {
	healthy := map[string]bool{}
	for _, m := range n.gossip.members() {
		healthy[m.ID] = m.State == "alive"
	}
	for _, ni := range n.ctrl.nodes() {
		healthy[ni.GetId()] = healthy[ni.GetId()] && ni.GetState() == fsmv1.NodeState_NODE_STATE_ALIVE
	}
	return healthy
}

func (n *Node) rebalance(ctx context.Context, o rebalanceOpts) (*qv1.RebalanceResponse, error) {
	var queues []*fsmv1.QueueInfo
	n.ctrl.read(func(c *fsm.Catalog) { queues = c.Queues() })
	healthy := n.healthyNodes()
	plan := planRebalance(queues, healthy, o.moves)
	resp := &qv1.RebalanceResponse{}
	var errs []error
	for _, ch := range plan {
		err := n.applyChange(ctx, ch)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if ch.moves {
			resp.Moves++
		}
		if ch.preferred != ch.a.GetPreferredLeader() {
			resp.LeaderChanges++
		}
	}
	if o.leaders {
		resp.LeadersTransferred, errs = n.transferToPreferred(ctx, healthy, o, errs)
	}
	if len(errs) > 0 {
		n.log.Info("rebalance: some steps failed", "err", errors.Join(errs...))
	}
	if len(errs) > 0 && resp.Moves == 0 && resp.LeadersTransferred == 0 && resp.LeaderChanges == 0 {
		return nil, errors.Join(errs...)
	}
	return resp, nil
}

// applyChange proposes one planned assignment. The assignment may have
// moved on since the plan (the repair loop, the balancer): on a
// compare-and-set conflict the same change — the same replicas marked
// leaving, the same preferred leader — is made again on the current
// assignment, if it still applies, a few times.
func (n *Node) applyChange(ctx context.Context, ch *rebalanceChange) error {
	a := ch.a
	rs := ch.replicas
	for attempt := 0; ; attempt++ {
		res, err := n.ctrl.propose(ctx, &fsmv1.CatalogCommand{Op: &fsmv1.CatalogCommand_SetAssignment{SetAssignment: &fsmv1.SetAssignment{
			Queue: ch.q.GetName(), Partition: a.GetPartition(), ExpectedEpoch: a.GetEpoch(), Replicas: rs, PreferredLeader: ch.preferred,
		}}})
		if err != nil {
			return err
		}
		if res.Code == fsm.CatalogOK {
			return nil
		}
		if res.Code != fsm.CatalogConflict || attempt == 3 {
			return fmt.Errorf("set assignment: %v: %s", res.Code, res.Detail)
		}
		q, ok := n.ctrl.queue(ch.q.GetName())
		if !ok || q.GetId() != ch.q.GetId() {
			return fmt.Errorf("queue %s is gone", ch.q.GetName())
		}
		a = q.GetPartitions()[a.GetPartition()]
		if slices.ContainsFunc(a.GetReplicas(), func(r *fsmv1.Replica) bool { return !r.GetVoter() || r.GetLeaving() }) {
			return nil // a move is under way there now: leave it be
		}
		leaving := map[string]bool{}
		for _, r := range ch.replicas {
			leaving[r.GetNodeId()] = r.GetLeaving()
		}
		rs = nil
		for _, r := range a.GetReplicas() {
			r = proto.CloneOf(r)
			r.Leaving = leaving[r.GetNodeId()]
			rs = append(rs, r)
		}
		if !slices.ContainsFunc(rs, func(r *fsmv1.Replica) bool { return r.GetNodeId() == ch.preferred }) {
			ch.preferred = a.GetPreferredLeader()
		}
	}
}

// transferToPreferred hands each partition's leadership to its preferred
// leader where that replica is a healthy voter. It returns how many
// partitions are led by their preferred leader afterwards.
func (n *Node) transferToPreferred(ctx context.Context, healthy map[string]bool, o rebalanceOpts, errs []error) (uint32, []error) {
	var queues []*fsmv1.QueueInfo
	n.ctrl.read(func(c *fsm.Catalog) { queues = c.Queues() })
	type part struct {
		q      *fsmv1.QueueInfo
		a      *fsmv1.PartitionAssignment
		leader string
	}
	var parts []part
	leads := map[string]int{}
	for id, ok := range healthy {
		if ok {
			leads[id] = 0
		}
	}
	for _, q := range queues {
		for _, a := range q.GetPartitions() {
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			r, err := n.readPartition(rctx, q, a.GetPartition(), &peerv1.ReadRequest{})
			cancel()
			leader := ""
			if err == nil {
				leader = r.GetLeaderId()
			}
			if _, ok := leads[leader]; ok {
				leads[leader]++
			}
			parts = append(parts, part{q, a, leader})
		}
	}
	if o.onlyIfUneven {
		lo, hi := -1, 0
		for _, c := range leads {
			if lo < 0 || c < lo {
				lo = c
			}
			hi = max(hi, c)
		}
		if hi-lo <= 1 {
			return 0, errs
		}
	}
	var inPlace uint32
	transfers := 0
	for _, p := range parts {
		pref := p.a.GetPreferredLeader()
		if pref == "" || !healthy[pref] || !slices.ContainsFunc(p.a.GetReplicas(), func(r *fsmv1.Replica) bool {
			return r.GetNodeId() == pref && r.GetVoter() && !r.GetLeaving()
		}) {
			continue
		}
		if p.leader == pref {
			inPlace++
			continue
		}
		if o.onlyIfUneven && (transfers >= o.maxTransfers || leads[p.leader] <= leads[pref]) {
			continue
		}
		transfers++
		tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		leader, err := n.transferLeadership(tctx, p.q, p.a.GetPartition(), pref)
		cancel()
		switch {
		case err != nil:
			errs = append(errs, err)
		case leader == pref:
			inPlace++
			leads[p.leader]--
			leads[pref]++
		}
	}
	return inPlace, errs
}

// rebalanceChange is one assignment a rebalance rewrites.
type rebalanceChange struct {
	q         *fsmv1.QueueInfo
	a         *fsmv1.PartitionAssignment
	replicas  []*fsmv1.Replica
	preferred string
	moves     bool
}

// planRebalance is pure: from the catalogue's queues and which nodes are
// healthy it returns the assignments to rewrite. Replicas: while the most
// loaded healthy node holds two more than the least loaded, one of its
// replicas in a partition the least loaded does not host (and with no move
// in progress) is marked leaving; the repair loop moves it. Leaders: each
// partition's preferred leader becomes, in order, its staying voter with
// the fewest preferred leaderships so far.
func planRebalance(queues []*fsmv1.QueueInfo, healthy map[string]bool, moves bool) []*rebalanceChange {
	load := map[string]int{}
	for id, ok := range healthy {
		if ok {
			load[id] = 0
		}
	}
	type slot struct {
		q *fsmv1.QueueInfo
		a *fsmv1.PartitionAssignment
	}
	var all []slot
	for _, q := range queues {
		for _, a := range q.GetPartitions() {
			all = append(all, slot{q, a})
			for _, r := range a.GetReplicas() {
				if _, ok := load[r.GetNodeId()]; ok && !r.GetLeaving() {
					load[r.GetNodeId()]++
				}
			}
		}
	}
	changes := map[*fsmv1.PartitionAssignment]*rebalanceChange{}
	change := func(sl slot) *rebalanceChange {
		ch, ok := changes[sl.a]
		if !ok {
			ch = &rebalanceChange{q: sl.q, a: sl.a, preferred: sl.a.GetPreferredLeader()}
			for _, r := range sl.a.GetReplicas() {
				ch.replicas = append(ch.replicas, proto.CloneOf(r))
			}
			changes[sl.a] = ch
		}
		return ch
	}
	ids := func() []string {
		out := make([]string, 0, len(load))
		for id := range load {
			out = append(out, id)
		}
		slices.SortFunc(out, func(a, b string) int { return cmp.Or(cmp.Compare(load[a], load[b]), cmp.Compare(a, b)) })
		return out
	}
	// planned: the target each marked replica of a partition is counted
	// for, so that one partition never plans two replicas onto one node.
	planned := map[*fsmv1.PartitionAssignment][]string{}
	for moves && len(load) > 1 {
		order := ids()
		lo, hi := order[0], order[len(order)-1]
		if load[hi]-load[lo] <= 1 {
			break
		}
		moved := false
		// Partitions this plan has not touched first: moves spread over
		// many partitions leave more choice of leaders.
		byTouch := slices.Clone(all)
		slices.SortStableFunc(byTouch, func(x, y slot) int {
			return cmp.Compare(len(planned[x.a]), len(planned[y.a]))
		})
		for _, sl := range byTouch {
			rs := sl.a.GetReplicas()
			busy := slices.ContainsFunc(rs, func(r *fsmv1.Replica) bool { return !r.GetVoter() || r.GetLeaving() })
			if busy || slices.ContainsFunc(rs, func(r *fsmv1.Replica) bool { return r.GetNodeId() == lo }) || slices.Contains(planned[sl.a], lo) {
				continue
			}
			i := slices.IndexFunc(rs, func(r *fsmv1.Replica) bool { return r.GetNodeId() == hi })
			if i < 0 || (changes[sl.a] != nil && changes[sl.a].replicas[i].GetLeaving()) {
				continue
			}
			ch := change(sl)
			ch.replicas[i].Leaving = true
			ch.moves = true
			planned[sl.a] = append(planned[sl.a], lo)
			load[hi]--
			load[lo]++
			moved = true
			break
		}
		if !moved {
			break
		}
	}
	// Preferred leaders, evened over the staying voters: a greedy pass,
	// then moves from the node leading most to one leading fewest.
	leads := map[string]int{}
	cands := map[*fsmv1.PartitionAssignment][]string{}
	pref := map[*fsmv1.PartitionAssignment]string{}
	for _, sl := range all {
		var cand []string
		for _, r := range sl.a.GetReplicas() {
			leaving := r.GetLeaving() || (changes[sl.a] != nil && slices.ContainsFunc(changes[sl.a].replicas, func(x *fsmv1.Replica) bool {
				return x.GetNodeId() == r.GetNodeId() && x.GetLeaving()
			}))
			if r.GetVoter() && !leaving && healthy[r.GetNodeId()] {
				cand = append(cand, r.GetNodeId())
			}
		}
		if len(cand) == 0 {
			continue
		}
		slices.SortFunc(cand, func(a, b string) int { return cmp.Or(cmp.Compare(leads[a], leads[b]), cmp.Compare(a, b)) })
		cands[sl.a], pref[sl.a] = cand, cand[0]
		leads[cand[0]]++
	}
	for range 10 * len(all) {
		improved := false
		for _, sl := range all {
			cur := pref[sl.a]
			for _, c := range cands[sl.a] {
				if leads[c]+1 < leads[cur] {
					leads[cur]--
					leads[c]++
					pref[sl.a], improved = c, true
					break
				}
			}
		}
		if !improved {
			break
		}
	}
	for _, sl := range all {
		if best, ok := pref[sl.a]; ok && best != sl.a.GetPreferredLeader() {
			change(sl).preferred = best
		}
	}
	out := make([]*rebalanceChange, 0, len(changes))
	for _, sl := range all {
		if ch, ok := changes[sl.a]; ok {
			out = append(out, ch)
		}
	}
	return out
}
