package cluster

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm"
	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
	peerv1 "github.com/quorumq/quorumq/proto/quorumq/peer/v1"
	"github.com/quorumq/quorumq/storage"
)

// replica is this node's member of one partition's Raft group.
type replica struct {
	n     *Node
	g     *group
	fsm   *fsm.RaftFSM[*fsm.Partition]
	queue string
	qid   uint64
	part  uint32
	log   *slog.Logger

	cancel context.CancelFunc
	done   chan struct{}
}

// startReplica starts this node's member id of the partition group name;
// id "" is the one recorded in the group's store. A store that belongs to
// another member is errIdentityMismatch. With create, a store without a
// recorded id takes id (the caller has recorded the creation); without,
// it is refused.
func startReplica(n *Node, name storage.GroupName, id raft.ServerID, create bool) (*replica, error) {
	r := &replica{n: n, queue: name.Queue(), qid: name.QueueID(), part: name.Partition(), done: make(chan struct{})}
	r.log = n.log.With("queue", r.queue, "partition", r.part)
	var newID raft.ServerID
	if create {
		newID = id
	}
	g, err := openGroup(n, name, id, newID, r.openState, r.log)
	if err != nil {
		return nil, err
	}
	r.g = g
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go r.run(ctx)
	return r, nil
}

// openState opens the partition's state in the node's engine (dropping
// whatever the engine holds under the group's id when the member is new:
// it starts from nothing, never from what a removed incarnation left) and
// brings it up to the group's newest snapshot if it is behind (a data
// directory from before partition state was stored, or a received
// snapshot whose restore a crash cut short). Raft restores no snapshot at
// start: the state is already there.
func (r *replica) openState(g *group, fresh bool, rc *raft.Config) (raft.FSM, raft.SnapshotStore, error) {
	if fresh {
		if err := r.n.engine.DropGroup(g.name.String()); err != nil {
			return nil, nil, err
		}
	}
	p, err := fsm.OpenPartition(stateKV{r.n.engine.Partition(g.name.String())})
	if err != nil {
		return nil, nil, err
	}
	r.fsm = fsm.NewRaftFSM(p)
	if err := r.fsm.RestoreLatest(g.store.Snapshots); err != nil {
		return nil, nil, err
	}
	rc.NoSnapshotRestoreOnStart = true
	// A partition's snapshot is a sync of the state engine and a 12-byte
	// mark, so it is taken often: a restart re-reads the log from the last
	// one (hashicorp/raft feeds every entry after it to the FSM again,
	// which skips those its store holds), and 16k entries of batched 1 KiB
	// messages are over a GB to read.
	if r.n.cfg.snapshotThreshold == 0 {
		rc.SnapshotThreshold = partitionSnapshotEntries
	}
	if r.n.cfg.trailingLogs == 0 {
		rc.TrailingLogs = partitionTrailingLogs
	}
	rc.SnapshotInterval = partitionSnapshotInterval
	return notifyingFSM[*fsm.Partition]{r.fsm, g}, r.fsm.SnapshotStore(g.store.Snapshots), nil
}

// How often a partition takes a snapshot: every this many entries, checked
// this often.
const (
	partitionSnapshotEntries  = 1024
	partitionSnapshotInterval = 5 * time.Second
	partitionTrailingLogs     = 2048
)

// stateKV hands a partition's state in the engine to fsm (storage does not
// know fsm's view type).
type stateKV struct{ *storage.PartitionKV }

func (k stateKV) View() fsm.KVView { return k.PartitionKV.View() }

// run follows leadership changes; while leader, it keeps the partition's
// settings in line with the catalogue and proposes a Tick whenever time
// alone makes something due (a lease or delay ending, retention).
func (r *replica) run(ctx context.Context) {
	defer close(r.done)
	followLeadership(ctx, r.g.leaderCh, r.lead)
}

func (r *replica) lead(ctx context.Context) {
	if err := r.g.raft.Barrier(10 * time.Second).Error(); err != nil {
		return
	}
	r.log.Debug("partition leader")
	r.configure(ctx)
	members := make(chan struct{})
	go func() {
		defer close(members)
		r.keepMembers(ctx)
	}()
	defer func() { <-members }()
	var lastTick time.Time
	for {
		var due int64
		r.fsm.Read(func(p *fsm.Partition) { due = p.NextDue() })
		wait := time.Hour
		if due != 0 {
			wait = max(time.Duration(due-time.Now().UnixNano()), 0)
		}
		// Never tick in a tight loop, whatever NextDue says.
		wait = max(wait, minTickSpacing-time.Since(lastTick))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-r.g.waitApplied():
			t.Stop()
		case <-r.n.ctrl.g.waitApplied():
			t.Stop()
			r.configure(ctx)
		case <-t.C:
			lastTick = time.Now()
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := r.propose(cctx, &fsmv1.Command{Op: &fsmv1.Command_Tick{Tick: &fsmv1.Tick{}}})
			cancel()
			if err != nil && ctx.Err() == nil {
				r.log.Debug("tick", "err", err)
			}
		}
	}
}

// minTickSpacing bounds how often a leader proposes a Tick: lease and delay
// expiry is exact in the state machine, and released messages become
// visible to a Receive at most this much later on an otherwise idle
// partition.
const minTickSpacing = 10 * time.Millisecond

// configure proposes the catalogue's settings if the partition differs.
func (r *replica) configure(ctx context.Context) {
	q, ok := r.n.ctrl.queue(r.queue)
	if !ok || q.GetId() != r.qid {
		return
	}
	want := proto.CloneOf(q.GetSettings())
	want.Partition = r.part
	var have *fsmv1.Settings
	r.fsm.Read(func(p *fsm.Partition) { have = p.Settings() })
	if proto.Equal(want, have) {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := r.propose(cctx, &fsmv1.Command{Op: &fsmv1.Command_Configure{Configure: &fsmv1.Configure{Settings: want}}}); err != nil && ctx.Err() == nil {
		r.log.Warn("configure partition", "err", err)
	}
}

// propose stamps cmd with this leader's clock and applies it. An enqueue
// is refused while a node holding a replica is low on disk space.
func (r *replica) propose(ctx context.Context, cmd *fsmv1.Command) (*fsm.Result, error) {
	if cmd.GetEnqueue() != nil {
		if err := r.n.diskFullError(r.replicaNodes()); err != nil {
			return nil, err
		}
	}
	cmd.Version = fsm.CommandVersion
	cmd.Stamp = time.Now().UnixNano()
	data, err := proto.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	f := r.g.raft.Apply(data, timeoutOf(ctx, 10*time.Second))
	if err := f.Error(); err != nil {
		return nil, raftErr(err, r.g)
	}
	r.n.metrics.applyCount.Add(1)
	r.n.metrics.applyNanos.Add(uint64(time.Since(start)))
	return f.Response().(*fsm.Result), nil
}

// replicaNodes are the nodes holding a replica of this partition, as the
// catalogue says.
func (r *replica) replicaNodes() []string {
	q, ok := r.n.ctrl.queue(r.queue)
	if !ok || q.GetId() != r.qid || int(r.part) >= len(q.GetPartitions()) {
		return []string{r.n.id}
	}
	var out []string
	for _, rep := range q.GetPartitions()[r.part].GetReplicas() {
		out = append(out, rep.GetNodeId())
	}
	return out
}

// waitReady returns how many messages are ready, once there is one or
// timeout has passed.
func (r *replica) waitReady(ctx context.Context, timeout time.Duration) uint64 {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		applied := r.g.waitApplied()
		var ready uint64
		r.fsm.Read(func(p *fsm.Partition) { ready = p.Stats().Ready })
		if ready > 0 {
			return ready
		}
		select {
		case <-ctx.Done():
			return 0
		case <-t.C:
			return 0
		case <-applied:
		}
	}
}

func (r *replica) isLeader() bool { return r.g.raft.State() == raft.Leader }

// stop shuts the replica down (its data stays). Raft is shut down only
// once the leader loop has returned: a proposal in flight when Raft shuts
// down is never answered, and the loop would wait on it for ever.
func (r *replica) stop() error {
	r.cancel()
	<-r.done
	return r.g.close()
}

// replicaSet starts and stops this node's partition replicas to match the
// catalogue.
type replicaSet struct {
	n  *Node
	mu sync.RWMutex
	m  map[groupKey]*replica
	// closed: stopAll ran; no start begins after it. starting counts the
	// starts under way, which stopAll waits for: a replica's Raft runs
	// (and may write the shared log, bootstrapping) before it is added,
	// and the shared log closes after stopAll.
	closed   bool
	starting sync.WaitGroup
}

type groupKey struct {
	queue string
	part  uint32
}

func (s *replicaSet) get(queue string, part uint32) (*replica, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.m[groupKey{queue, part}]
	return r, ok
}

func (s *replicaSet) all() []*replica {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*replica, 0, len(s.m))
	for _, r := range s.m {
		out = append(out, r)
	}
	return out
}

// startOnDisk starts a replica for every partition group in the data
// directory, so a restarted node serves before the catalogue catches up.
func (s *replicaSet) startOnDisk() error {
	names, err := s.n.dir.Groups()
	if err != nil {
		return err
	}
	for _, name := range names {
		r, err := startReplica(s.n, name, "", false) // the id recorded in the group
		if err != nil {
			s.n.log.Warn("replica on disk not started", "group", name.String(), "err", err)
			continue
		}
		// Data written before the node recorded the replicas it created
		// (an upgrade) still counts as created.
		if err := s.n.ids.recordCreated(name, epochOfServer(r.g.id)); err != nil {
			s.n.log.Warn("record replica", "group", name.String(), "err", err)
		}
		s.add(r)
	}
	return nil
}

// reconcile starts the replicas the catalogue assigns to this node and
// stops (and deletes) those it no longer assigns here: of deleted queues,
// moved away, or replaced under a new replica epoch.
func (s *replicaSet) reconcile() {
	var queues []*fsmv1.QueueInfo
	var self *fsmv1.NodeInfo
	s.n.ctrl.read(func(c *fsm.Catalog) {
		queues = c.Queues()
		self, _ = c.Node(s.n.id)
	})
	// A catalogue that knows this node under another instance predates a
	// loss of this node's data: its replicas here are the lost ones, and
	// the controller replaces them before this node serves any.
	sameInstance := self != nil && self.GetInstance() == s.n.instance
	want := map[groupKey]raft.ServerID{}
	readAt := time.Now()
	for _, q := range queues {
		for _, pa := range q.GetPartitions() {
			var mine *fsmv1.Replica
			for _, rep := range pa.GetReplicas() {
				if rep.GetNodeId() == s.n.id {
					mine = rep
				}
			}
			if mine == nil {
				continue
			}
			key := groupKey{q.GetName(), pa.GetPartition()}
			id := replicaServerID(s.n.id, mine.GetEpoch())
			want[key] = id
			if r, ok := s.get(key.queue, key.part); ok && r.qid == q.GetId() && r.g.id == id {
				continue
			}
			if !sameInstance {
				continue
			}
			// Paced: a new queue of hundreds of partitions elects as
			// many leaders; spread over seconds, that leaves the other
			// groups their heartbeats (issue 13).
			if err := s.n.lim.replicaStarts.Wait(s.n.ctx); err != nil {
				return // stopping
			}
			s.start(q, pa, mine)
		}
	}
	// Starts are paced, so the catalogue read above may be seconds old
	// now: then what to drop is decided on a later pass, from a fresh one.
	if time.Since(readAt) > time.Second || !s.n.ctrl.epochKnown() {
		return
	}
	// The queues' ids from the catalogue read above (reading each replica's
	// queue again would copy a queue of hundreds of partitions once per
	// replica, on every pass).
	ids := make(map[string]uint64, len(queues))
	for _, q := range queues {
		ids[q.GetName()] = q.GetId()
	}
	var drop []*replica
	for _, r := range s.all() {
		key := groupKey{r.queue, r.part}
		qid, ok := ids[r.queue]
		if id, wanted := want[key]; wanted && ok && qid == r.qid && r.g.id == id {
			continue
		}
		if ok && qid == r.qid && r.isLeader() {
			// Moved away while leading: the leader hands over first
			// (keepMembers); the replica goes on a later round.
			continue
		}
		drop = append(drop, r)
	}
	s.removeAll(drop)
}

// maxParallelStops bounds the replicas stopped at once (removeAll).
const maxParallelStops = 16

// removeAll stops rs, maxParallelStops at a time, then deletes their data
// one by one. The replicas of a deleted queue lose their peers as the
// other nodes drop theirs, and campaign until they are stopped: hundreds
// of groups doing that at once, for as long as one-by-one stops and
// deletions (each with its fsyncs) take, starved the controller group of
// its heartbeats (issue 13). So they are all stopped first, quickly; the
// deletions, which only use the disk, come after.
func (s *replicaSet) removeAll(rs []*replica) {
	sem := make(chan struct{}, maxParallelStops)
	var wg sync.WaitGroup
	for _, r := range rs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			s.unregisterAndStop(r)
		})
	}
	wg.Wait()
	for _, r := range rs {
		s.removeData(r)
	}
}

func (s *replicaSet) start(q *fsmv1.QueueInfo, pa *fsmv1.PartitionAssignment, self *fsmv1.Replica) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.starting.Add(1)
	s.mu.Unlock()
	defer s.starting.Done()
	name := storage.PartitionGroup(q.GetName(), q.GetId(), pa.GetPartition())
	epoch := self.GetEpoch()
	id := replicaServerID(s.n.id, epoch)
	created, err := s.n.ids.createdEpoch(name)
	if err != nil {
		s.n.log.Error("start replica: read the replicas created here", "group", name.String(), "err", err)
		return
	}
	if epoch <= created {
		// This node created that identity (or a later one) before. It may
		// run it again only from the state created under it; a catalogue
		// that asks for it otherwise is stale (a restart before catching
		// up), and nothing is touched.
		if _, ok := s.get(q.GetName(), pa.GetPartition()); ok {
			return // whatever runs holds another member's state, not this one's
		}
		r, err := startReplica(s.n, name, id, false)
		if err != nil {
			if !errors.Is(err, errIdentityMismatch) && !errors.Is(err, storage.ErrGroupMismatch) {
				s.n.log.Warn("replica not started: its identity was used on this node before and its state is gone", "group", name.String(), "server", id, "err", err)
			}
			return
		}
		s.add(r)
		return
	}
	if old, ok := s.get(q.GetName(), pa.GetPartition()); ok {
		s.remove(old) // an older queue with the same name, or an older epoch
	}
	if err := s.n.ids.recordCreated(name, epoch); err != nil {
		s.n.log.Error("start replica: record its creation", "group", name.String(), "err", err)
		return
	}
	r, err := startReplica(s.n, name, id, true)
	if errors.Is(err, errIdentityMismatch) || errors.Is(err, storage.ErrGroupMismatch) {
		// What is on disk belongs to another member (an older epoch, an
		// older queue of that name, a store whose owner is unknown): a new
		// member starts from nothing, never from another one's state.
		s.n.log.Info("removing another member's data before starting a replica", "group", name.String(), "server", id, "err", err)
		if err := s.n.removeGroup(name); err != nil {
			s.n.log.Error("remove replica data", "group", name.String(), "err", err)
			return
		}
		r, err = startReplica(s.n, name, id, true)
	}
	if err != nil {
		s.n.log.Error("start replica", "group", name.String(), "err", err)
		return
	}
	// Every replica of a new partition bootstraps with the same
	// configuration, from the same catalogue entry: raft accepts that, and
	// the group forms once a majority is up. A replica placed later (the
	// assignment changed since creation) starts empty: the partition
	// leader adds it and sends it the state.
	if pa.GetEpoch() == 1 {
		var servers []raft.Server
		for _, rep := range pa.GetReplicas() {
			info, ok := s.n.ctrl.node(rep.GetNodeId())
			if !ok {
				continue
			}
			suff := raft.Voter
			if !rep.GetVoter() {
				suff = raft.Nonvoter
			}
			sid := replicaServerID(rep.GetNodeId(), rep.GetEpoch())
			servers = append(servers, raft.Server{Suffrage: suff, ID: sid, Address: raftAddr(info.GetPeerAddr(), sid)})
		}
		if err := r.g.bootstrap(servers); err != nil {
			r.log.Error("bootstrap partition", "err", err)
		}
	}
	s.add(r)
}

func (s *replicaSet) add(r *replica) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		if err := r.stop(); err != nil {
			r.log.Warn("stop replica", "err", err)
		}
		return
	}
	s.m[groupKey{r.queue, r.part}] = r
	s.mu.Unlock()
	r.log.Info("replica started", "server", r.g.id)
}

// remove stops r and deletes its data.
func (s *replicaSet) remove(r *replica) {
	s.unregisterAndStop(r)
	s.removeData(r)
}

func (s *replicaSet) unregisterAndStop(r *replica) {
	s.mu.Lock()
	if cur, ok := s.m[groupKey{r.queue, r.part}]; ok && cur == r {
		delete(s.m, groupKey{r.queue, r.part})
	}
	s.mu.Unlock()
	if err := r.stop(); err != nil {
		r.log.Warn("stop replica", "err", err)
	}
}

func (s *replicaSet) removeData(r *replica) {
	if err := s.n.removeGroup(r.g.name); err != nil {
		r.log.Warn("remove replica data", "err", err)
	}
	r.log.Info("replica removed")
}

// stopAll stops every replica, all at once: one replica waiting out a
// timeout (a configuration change, a peer that does not answer) must not
// hold the others up.
func (s *replicaSet) stopAll() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.starting.Wait() // each stops what it started (add sees closed)
	var wg sync.WaitGroup
	for _, r := range s.all() {
		wg.Go(func() {
			if err := r.stop(); err != nil {
				r.log.Warn("stop replica", "err", err)
			}
		})
	}
	wg.Wait()
	s.mu.Lock()
	s.m = map[groupKey]*replica{}
	s.mu.Unlock()
}

// read answers a leader read: stats, Raft progress and, if asked, dead letters.
func (r *replica) read(req *peerv1.ReadRequest) *peerv1.ReadResponse {
	resp := &peerv1.ReadResponse{
		Term:         r.g.raft.CurrentTerm(),
		CommitIndex:  r.g.raft.CommitIndex(),
		AppliedIndex: r.g.raft.AppliedIndex(),
		LastIndex:    r.g.raft.LastIndex(),
		LeaderId:     nodeOfServer(r.g.leaderID()),
	}
	r.fsm.Read(func(p *fsm.Partition) {
		resp.Stats = statsToPeer(p.Stats())
		if req.GetDeadLetters() {
			for _, d := range p.DeadLetters(req.GetDeadAfter(), int(min(max(req.GetDeadLimit(), 1), 1000))) {
				resp.DeadLetters = append(resp.DeadLetters, &peerv1.DeadLetter{Seq: d.Seq, Order: d.Order, Reason: d.Reason,
					DeadAt: d.DeadAt, EnqueuedAt: d.EnqueuedAt, Deliveries: d.Deliveries, Payload: d.Payload, Key: d.Key, Headers: d.Headers})
			}
		}
	})
	if f := r.g.raft.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			resp.Replicas = append(resp.Replicas, &peerv1.ReplicaState{ServerId: string(s.ID), Voter: s.Suffrage == raft.Voter})
		}
	}
	return resp
}

// transfer hands leadership to the replica on node to, or to raft's choice.
func (r *replica) transfer(ctx context.Context, to string) (*peerv1.TransferResponse, error) {
	var f raft.Future
	switch {
	case to == nodeOfServer(r.g.id):
		return &peerv1.TransferResponse{LeaderId: to}, nil // already here
	case to == "":
		f = r.g.raft.LeadershipTransfer()
	default:
		cfg := r.g.raft.GetConfiguration()
		if err := cfg.Error(); err != nil {
			return nil, err
		}
		var target *raft.Server
		for _, s := range cfg.Configuration().Servers {
			if nodeOfServer(s.ID) == to {
				target = &s
			}
		}
		if target == nil {
			return nil, status.Errorf(codes.InvalidArgument, "node %s hosts no replica of %s/%d", to, r.queue, r.part)
		}
		f = r.g.raft.LeadershipTransferToServer(target.ID, target.Address)
	}
	if err := f.Error(); err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	// The new leader is known here once it has sent its first heartbeat.
	for {
		applied := r.g.waitApplied()
		if id := r.g.leaderID(); id != "" && id != r.g.id {
			return &peerv1.TransferResponse{LeaderId: nodeOfServer(id)}, nil
		}
		select {
		case <-ctx.Done():
			return &peerv1.TransferResponse{LeaderId: to}, nil
		case <-applied:
		case <-time.After(20 * time.Millisecond):
		}
	}
}
