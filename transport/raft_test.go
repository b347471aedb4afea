package transport

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// countFSM records the ids of the commands it applied (commands are 8-byte
// ids, so a retried Apply cannot make replicas disagree on the result).
type countFSM struct {
	mu       sync.Mutex
	ids      map[uint64]bool
	applied  int
	restores int
}

func newCountFSM() *countFSM { return &countFSM{ids: make(map[uint64]bool)} }

func (f *countFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ids[binary.BigEndian.Uint64(l.Data)] = true
	f.applied++
	return nil
}

func (f *countFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	buf := binary.BigEndian.AppendUint64(nil, uint64(f.applied))
	for id := range f.ids {
		buf = binary.BigEndian.AppendUint64(buf, id)
	}
	return snapshotBytes(buf), nil
}

func (f *countFSM) Restore(r io.ReadCloser) error {
	defer r.Close()
	buf, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = int(binary.BigEndian.Uint64(buf))
	f.ids = make(map[uint64]bool)
	for b := buf[8:]; len(b) >= 8; b = b[8:] {
		f.ids[binary.BigEndian.Uint64(b)] = true
	}
	f.restores++
	return nil
}

// state returns how many distinct ids were applied and the restore count.
func (f *countFSM) state() (ids, restores int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.ids), f.restores
}

type snapshotBytes []byte

func (s snapshotBytes) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}
func (s snapshotBytes) Release() {}

// logRecorder is a slog.Handler that keeps the messages it sees.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, rec.Message)
	return nil
}
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *logRecorder) WithGroup(string) slog.Handler      { return r }

func (r *logRecorder) count(substr string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.msgs {
		if strings.Contains(m, substr) {
			n++
		}
	}
	return n
}

// testNode is one in-process node: a Mux on its own port, a gRPC health
// server on the Mux's gRPC listener, and replicas of some Raft groups.
// Its replicas use the node id as their server id.
type testNode struct {
	id       raft.ServerID
	mux      *Mux
	addr     raft.ServerAddress // host:port of the Mux
	grpc     *grpc.Server
	served   chan error
	replicas map[string]*replica
}

type replica struct {
	raft  *raft.Raft
	trans *raft.NetworkTransport
	fsm   *countFSM
	logs  *raft.InmemStore
	down  bool
}

type cluster struct {
	t     *testing.T
	log   *logRecorder
	nodes []*testNode
	next  uint64 // next command id
}

func newCluster(t *testing.T) *cluster {
	c := &cluster{t: t, log: &logRecorder{}}
	t.Cleanup(c.stop)
	return c
}

// addNode starts a node with a Mux and a gRPC health server.
func (c *cluster) addNode(id raft.ServerID) *testNode {
	c.t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		c.t.Fatal(err)
	}
	n := &testNode{
		id:       id,
		mux:      NewMux(l, slog.New(c.log)),
		addr:     raft.ServerAddress(l.Addr().String()),
		grpc:     grpc.NewServer(),
		served:   make(chan error, 2),
		replicas: make(map[string]*replica),
	}
	healthpb.RegisterHealthServer(n.grpc, health.NewServer())
	go func() { n.served <- n.mux.Serve() }()
	go func() { n.served <- n.grpc.Serve(n.mux.GRPCListener()) }()
	c.nodes = append(c.nodes, n)
	return n
}

// raftAddr is the Raft address of the member id on n.
func (n *testNode) raftAddr(id raft.ServerID) raft.ServerAddress {
	return Address(string(n.addr), id)
}

func testRaftConfig(id raft.ServerID, log *slog.Logger) *raft.Config {
	conf := raft.DefaultConfig()
	conf.LocalID = id
	conf.HeartbeatTimeout = 300 * time.Millisecond
	conf.ElectionTimeout = 300 * time.Millisecond
	conf.LeaderLeaseTimeout = 150 * time.Millisecond
	conf.CommitTimeout = 10 * time.Millisecond
	conf.SnapshotThreshold = 1 << 20 // snapshots only when the test asks
	conf.SnapshotInterval = time.Hour
	conf.TrailingLogs = 10
	conf.Logger = NewHCLogger(log.With("node", string(id)), "raft")
	return conf
}

// startReplica starts n's replica of group, with server id n.id,
// bootstrapped with servers when servers is not empty.
func (c *cluster) startReplica(n *testNode, group string, servers []raft.Server) *replica {
	return c.startReplicaAs(n, n.id, group, servers)
}

// startReplicaAs starts n's replica of group with server id id.
func (c *cluster) startReplicaAs(n *testNode, id raft.ServerID, group string, servers []raft.Server) *replica {
	c.t.Helper()
	log := slog.New(c.log)
	layer, err := n.mux.Group(group, id, n.addr)
	if err != nil {
		c.t.Fatal(err)
	}
	rep := &replica{
		trans: NewRaftTransport(layer, log.With("node", string(n.id)), nil),
		fsm:   newCountFSM(),
		logs:  raft.NewInmemStore(),
	}
	conf := testRaftConfig(id, log)
	if len(servers) > 0 {
		err := raft.BootstrapCluster(conf, rep.logs, rep.logs, raft.NewInmemSnapshotStore(), rep.trans,
			raft.Configuration{Servers: servers})
		if err != nil {
			c.t.Fatal(err)
		}
	}
	rep.raft, err = raft.NewRaft(conf, rep.fsm, rep.logs, rep.logs, raft.NewInmemSnapshotStore(), rep.trans)
	if err != nil {
		c.t.Fatal(err)
	}
	n.replicas[group] = rep
	return rep
}

func (r *replica) stop() error {
	if r.down {
		return nil
	}
	r.down = true
	err := r.raft.Shutdown().Error()
	return errors.Join(err, r.trans.Close())
}

// stop shuts every replica, gRPC server and Mux down.
func (c *cluster) stop() {
	for _, n := range c.nodes {
		for g, r := range n.replicas {
			if err := r.stop(); err != nil {
				c.t.Errorf("%s/%s: shutdown: %v", n.id, g, err)
			}
		}
		n.grpc.Stop()
		if err := n.mux.Close(); err != nil {
			c.t.Errorf("%s: Mux.Close: %v", n.id, err)
		}
		for range 2 {
			if err := <-n.served; err != nil {
				c.t.Errorf("%s: Serve: %v", n.id, err)
			}
		}
	}
	c.nodes = nil
}

func (c *cluster) live(group string) []*replica {
	var rs []*replica
	for _, n := range c.nodes {
		if r, ok := n.replicas[group]; ok && !r.down {
			rs = append(rs, r)
		}
	}
	return rs
}

// leader waits until exactly one live replica of group is leader.
func (c *cluster) leader(group string) *replica {
	c.t.Helper()
	var leader *replica
	waitFor(c.t, 10*time.Second, "a leader of "+group, func() bool {
		leader = nil
		for _, r := range c.live(group) {
			if r.raft.State() == raft.Leader {
				if leader != nil {
					return false
				}
				leader = r
			}
		}
		return leader != nil
	})
	return leader
}

// apply commits n new commands to group, pipelined, retrying on whichever
// replica leads if leadership moves.
func (c *cluster) apply(group string, n int) {
	c.t.Helper()
	pending := make([]uint64, n)
	for i := range pending {
		c.next++
		pending[i] = c.next
	}
	deadline := time.Now().Add(15 * time.Second)
	for len(pending) > 0 {
		if time.Now().After(deadline) {
			c.t.Fatalf("%s: %d commands not applied", group, len(pending))
		}
		l := c.leader(group)
		futures := make([]raft.ApplyFuture, len(pending))
		for i, id := range pending {
			futures[i] = l.raft.Apply(binary.BigEndian.AppendUint64(nil, id), 5*time.Second)
		}
		var retry []uint64
		for i, f := range futures {
			if err := f.Error(); err != nil {
				retry = append(retry, pending[i])
			}
		}
		pending = retry
	}
}

// converge waits until every live replica of group has applied want ids.
func (c *cluster) converge(group string, want int) {
	c.t.Helper()
	waitFor(c.t, 10*time.Second, fmt.Sprintf("%s replicas to apply %d commands", group, want), func() bool {
		for _, r := range c.live(group) {
			if ids, _ := r.fsm.state(); ids != want {
				return false
			}
		}
		return true
	})
}

func TestRaftClusterOverMux(t *testing.T) {
	c := newCluster(t)
	ids := []raft.ServerID{"n1", "n2", "n3"}
	var servers []raft.Server
	for _, id := range ids {
		n := c.addNode(id)
		servers = append(servers, raft.Server{ID: id, Address: n.raftAddr(id), Suffrage: raft.Voter})
	}
	groups := []string{"g1", "g2"}
	for _, n := range c.nodes {
		for _, g := range groups {
			c.startReplica(n, g, servers)
		}
	}

	// Garbage and unknown groups keep arriving on every node while the
	// groups elect and replicate.
	noise := make(chan error, 1)
	stopNoise := make(chan struct{})
	go func() { noise <- sendNoise(c.nodes, stopNoise) }()

	for _, g := range groups {
		c.leader(g)
		c.apply(g, 100)
	}
	for _, g := range groups {
		c.converge(g, 100)
	}

	// gRPC on the same port as Raft, through the pool.
	pool := NewPool()
	defer pool.Close()
	for _, n := range c.nodes {
		cc, err := pool.Conn(string(n.id), string(n.addr))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("%s: health check over the peer port: %v %v", n.id, resp, err)
		}
	}

	close(stopNoise)
	if err := <-noise; err != nil {
		t.Fatal(err)
	}
	var raftConns uint64
	for _, n := range c.nodes {
		s := n.mux.Stats()
		if s.BadHeader == 0 || s.UnknownGroup == 0 || s.WrongTarget == 0 || s.GRPC != 1 {
			t.Fatalf("%s: stats %+v: want bad headers, unknown groups, wrong targets and a grpc conn", n.id, s)
		}
		raftConns += s.Raft
	}
	if raftConns == 0 {
		t.Fatal("no node accepted a raft conn")
	}

	// Kill g1's leader: the two others elect a new one, with pre-vote, and
	// g1 goes on; g2 is not disturbed.
	old := c.leader("g1")
	oldTerm := old.raft.CurrentTerm()
	preVotes := c.log.count("pre-vote successful")
	if err := old.stop(); err != nil {
		t.Fatal(err)
	}
	newLeader := c.leader("g1")
	if newLeader == old || newLeader.raft.CurrentTerm() <= oldTerm {
		t.Fatalf("no new leader: term %d -> %d", oldTerm, newLeader.raft.CurrentTerm())
	}
	if c.log.count("pre-vote successful") <= preVotes {
		t.Fatal("the new leader was not elected through a pre-vote")
	}
	c.apply("g1", 100)
	c.apply("g2", 10)
	c.converge("g1", 200)
	c.converge("g2", 110)
	if got := len(c.live("g1")); got != 2 {
		t.Fatalf("%d live g1 replicas, want 2", got)
	}
}

// sendNoise opens connections to every node that carry garbage or a Raft
// header for an unknown group, and checks that each is closed.
func sendNoise(nodes []*testNode, stop <-chan struct{}) error {
	payloads := []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", // a TLS ClientHello
		string(appendHeader(nil, "no-such-group", "n1")) + "\x00\x01\x02",
		"QQR2\x00\x00",
		string(appendHeader(nil, "g1", "not-a-member")),
	}
	tick := time.NewTicker(2 * time.Millisecond) // leave CPU to Raft
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-tick.C:
		case <-stop:
			if i < len(nodes)*len(payloads) {
				return fmt.Errorf("only %d noise connections sent", i)
			}
			return nil
		default:
		}
		n := nodes[i%len(nodes)]
		c, err := net.DialTimeout("tcp", string(n.addr), 5*time.Second)
		if err != nil {
			return err
		}
		_, err = c.Write([]byte(payloads[(i/len(nodes))%len(payloads)]))
		if err == nil {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = c.Read(make([]byte, 1))
			if err == nil {
				err = errors.New("noise connection got an answer")
			} else if errors.Is(err, os.ErrDeadlineExceeded) {
				err = fmt.Errorf("noise connection was not closed: %w", err)
			} else {
				err = nil
			}
		}
		c.Close()
		if err != nil {
			return err
		}
	}
}

func TestRaftInstallSnapshotOverMux(t *testing.T) {
	c := newCluster(t)
	n1 := c.addNode("n1")
	leader := c.startReplica(n1, "s", []raft.Server{{ID: "n1", Address: n1.raftAddr("n1"), Suffrage: raft.Voter}})
	if c.leader("s") != leader {
		t.Fatal("n1 should lead its own group")
	}
	c.apply("s", 100)
	if err := leader.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	first, err := leader.logs.FirstIndex()
	if err != nil || first <= 1 {
		t.Fatalf("log not compacted after the snapshot: first index %d, %v", first, err)
	}

	// A fresh follower can only catch up through InstallSnapshot.
	n2 := c.addNode("n2")
	follower := c.startReplica(n2, "s", nil)
	if err := leader.raft.AddVoter("n2", n2.raftAddr("n2"), 0, 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	c.converge("s", 100)
	if _, restores := follower.fsm.state(); restores != 1 {
		t.Fatalf("follower restored %d snapshots, want 1", restores)
	}
	c.apply("s", 10)
	c.converge("s", 110)
}

func TestRaftRPCsShareThePortWithGRPC(t *testing.T) {
	c := newCluster(t)
	a, b := c.addNode("a"), c.addNode("b")
	la, err := a.mux.Group("g", "a", a.addr)
	if err != nil {
		t.Fatal(err)
	}
	lb, err := b.mux.Group("g", "b", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	ta, tb := NewRaftTransport(la, nil, nil), NewRaftTransport(lb, nil, nil)
	defer ta.Close()
	defer tb.Close()
	if ta.LocalAddr() != a.addr {
		t.Fatalf("LocalAddr = %s, want %s", ta.LocalAddr(), a.addr)
	}

	// b answers the RPCs itself, in place of a raft.Raft.
	stop := make(chan struct{})
	answered := make(chan struct{})
	go func() {
		defer close(answered)
		for {
			select {
			case rpc := <-tb.Consumer():
				switch cmd := rpc.Command.(type) {
				case *raft.RequestPreVoteRequest:
					rpc.Respond(&raft.RequestPreVoteResponse{Term: cmd.Term, Granted: true}, nil)
				case *raft.AppendEntriesRequest:
					rpc.Respond(&raft.AppendEntriesResponse{Term: cmd.Term, Success: true, LastLog: 1}, nil)
				default:
					rpc.Respond(nil, fmt.Errorf("unexpected %T", cmd))
				}
			case <-stop:
				return
			}
		}
	}()
	defer func() { close(stop); <-answered }()

	header := raft.RPCHeader{ID: []byte("a"), Addr: []byte(a.raftAddr("a"))}
	var pv raft.RequestPreVoteResponse
	if err := ta.RequestPreVote("b", b.raftAddr("b"), &raft.RequestPreVoteRequest{RPCHeader: header, Term: 7}, &pv); err != nil {
		t.Fatalf("RequestPreVote over the mux: %v", err)
	}
	if !pv.Granted || pv.Term != 7 {
		t.Fatalf("pre-vote response %+v", pv)
	}
	var ae raft.AppendEntriesResponse
	if err := ta.AppendEntries("b", b.raftAddr("b"), &raft.AppendEntriesRequest{RPCHeader: header, Term: 7}, &ae); err != nil || !ae.Success {
		t.Fatalf("AppendEntries over the mux: %+v, %v", ae, err)
	}

	// A gRPC call to b on the very port the RPCs above used.
	pool := NewPool()
	defer pool.Close()
	cc, err := pool.Conn("b", string(b.addr))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health check: %v %v", resp, err)
	}
	s := b.mux.Stats()
	if s.Raft == 0 || s.GRPC != 1 {
		t.Fatalf("stats %+v: want raft conns and one grpc conn", s)
	}

	// A group a does not host: b's dial is closed, the RPC fails, a's other
	// traffic is unaffected.
	lx, err := b.mux.Group("x", "b", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	tx := NewRaftTransport(lx, nil, nil)
	defer tx.Close()
	if err := tx.RequestPreVote("a", a.raftAddr("a"), &raft.RequestPreVoteRequest{RPCHeader: header, Term: 7}, &pv); err == nil {
		t.Fatal("RPC to a group the peer does not host succeeded")
	}
	if err := ta.RequestPreVote("b", b.raftAddr("b"), &raft.RequestPreVoteRequest{RPCHeader: header, Term: 8}, &pv); err != nil || pv.Term != 8 {
		t.Fatalf("RequestPreVote after the failed one: %+v, %v", pv, err)
	}
}

// A voter that lost its data comes back as a new member of the group under
// a new server id, with an empty log. A vote request addressed to the old
// id must not reach it: an empty log grants any candidate its vote, and
// that vote, counted as the old voter's, can elect a leader that lacks
// committed entries. Addressed to the new id, the same request is answered
// (so it is the target check, not the new replica, that withholds the
// vote).
func TestVoteForAWipedVoterIsRefused(t *testing.T) {
	c := newCluster(t)
	var servers []raft.Server
	for _, id := range []raft.ServerID{"n1", "n2", "n3"} {
		n := c.addNode(id)
		servers = append(servers, raft.Server{ID: id + "/1", Address: n.raftAddr(id + "/1"), Suffrage: raft.Voter})
	}
	for _, n := range c.nodes {
		c.startReplicaAs(n, n.id+"/1", "g", servers)
	}
	c.leader("g")
	c.apply("g", 20)
	c.converge("g", 20)

	// Wipe n3's replica: gone with its log, then started again empty under
	// a new id (as the cluster does for a node back with another instance).
	n3 := c.nodes[2]
	if err := n3.replicas["g"].stop(); err != nil {
		t.Fatal(err)
	}
	fresh := c.startReplicaAs(n3, "n3/2", "g", nil)

	// A candidate (n2's id, a higher term, a log behind the others) asks
	// "n3/1" for its vote, from a fourth node's transport for the group.
	candidate := c.nodes[1]
	m4 := c.addNode("n4")
	l4, err := m4.mux.Group("g", "n2/1", "")
	if err != nil {
		t.Fatal(err)
	}
	t4 := NewRaftTransport(l4, nil, nil)
	defer t4.Close()
	term := c.leader("g").raft.CurrentTerm() + 10
	req := &raft.RequestVoteRequest{
		RPCHeader:    raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("n2/1"), Addr: []byte(candidate.raftAddr("n2/1"))},
		Term:         term,
		LastLogIndex: 1,
		LastLogTerm:  1,
	}
	before := n3.mux.Stats().WrongTarget
	var resp raft.RequestVoteResponse
	if err := t4.RequestVote("n3/1", n3.raftAddr("n3/1"), req, &resp); err == nil {
		t.Fatalf("a vote request for the wiped voter's id was answered: %+v", resp)
	}
	if got := n3.mux.Stats().WrongTarget; got <= before {
		t.Fatalf("WrongTarget %d, want it counted", got)
	}
	if got := fresh.raft.CurrentTerm(); got >= term {
		t.Fatalf("the new replica saw the request: term %d", got)
	}

	// Addressed to the new replica's own id, it is delivered, and the empty
	// log grants the vote: exactly what the old identity must never do.
	if err := t4.RequestVote("n3/2", n3.raftAddr("n3/2"), req, &resp); err != nil {
		t.Fatalf("vote request to the new replica's own id: %v", err)
	}
	if !resp.Granted {
		t.Fatalf("control: the empty replica did not grant the vote (%+v); the test proves nothing", resp)
	}
}
