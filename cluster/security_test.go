package cluster

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm"
	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
	peerv1 "github.com/quorumq/quorumq/proto/quorumq/peer/v1"
	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
	"github.com/quorumq/quorumq/transport"
	"github.com/quorumq/quorumq/transport/pki"
)

// Issue 12: each attack of the report, replayed against a TLS cluster.

// attacker is a way in: nil tls means plaintext.
type attacker struct {
	name string
	tls  *tls.Config
}

// attackers are the three credentials the tests try: none, a certificate
// of another CA, and a valid certificate of a node that is not a member.
func (c *testCluster) attackers(t *testing.T) []attacker {
	t.Helper()
	rogue, err := pki.OpenLocal(filepath.Join(t.TempDir(), "rogue"))
	if err != nil {
		t.Fatal(err)
	}
	otherCA, err := rogue.Node("n1") // the name of a member, from another CA
	if err != nil {
		t.Fatal(err)
	}
	nonMember, _, err := testTLS(filepath.Join(c.base, "tls"), "n9") // the cluster's CA, not a member
	if err != nil {
		t.Fatal(err)
	}
	cfg := func(f pki.Files) *tls.Config {
		cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			t.Fatal(err)
		}
		return &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}}
	}
	return []attacker{
		{"plaintext", nil},
		{"TLS without certificate", &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}}},
		{"certificate of another CA", cfg(otherCA)},
		{"valid certificate of a non-member", cfg(nonMember)},
	}
}

// rawLayer is an attacker's raft.StreamLayer: it writes the Raft header
// itself, over plaintext or its own TLS.
type rawLayer struct {
	group string
	tls   *tls.Config
	done  chan struct{}
}

func (l rawLayer) Accept() (net.Conn, error) { <-l.done; return nil, net.ErrClosed }
func (l rawLayer) Close() error              { close(l.done); return nil }
func (l rawLayer) Addr() net.Addr            { return &net.TCPAddr{} }
func (l rawLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	hostport, target := transport.SplitAddress(address)
	c, err := net.DialTimeout("tcp", hostport, timeout)
	if err != nil {
		return nil, err
	}
	if l.tls != nil {
		tc := tls.Client(c, l.tls)
		tc.SetDeadline(time.Now().Add(timeout))
		if err := tc.Handshake(); err != nil {
			c.Close()
			return nil, err
		}
		tc.SetDeadline(time.Time{})
		c = tc
	}
	h := []byte("QQR2")
	h = binary.BigEndian.AppendUint16(h, uint16(len(l.group)))
	h = append(h, l.group...)
	h = binary.BigEndian.AppendUint16(h, uint16(len(target)))
	h = append(h, target...)
	if _, err := c.Write(h); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func TestForgedRaftTrafficRefused(t *testing.T) {
	c := startCluster(t, 3)
	q, _ := c.client(0)
	if _, err := q.CreateQueue(ctxT(t, 10*time.Second), &qv1.CreateQueueRequest{Name: "sec", Partitions: 1, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	var leader int
	c.waitFor("a partition leader", 10*time.Second, func() bool { leader = c.leaderNode("sec", 0); return leader >= 0 })
	victim := (leader + 1) % 3
	r, _ := c.nodes[victim].replicas.get("sec", 0)
	group, id := r.g.name.String(), r.g.id
	addr := raftAddr(c.nodes[victim].PeerAddr(), id)
	forged, _ := proto.Marshal(&fsmv1.Command{Version: fsm.CommandVersion, Stamp: time.Now().UnixNano(),
		Op: &fsmv1.Command_Enqueue{Enqueue: &fsmv1.Enqueue{Messages: []*fsmv1.NewMessage{{Payload: []byte("forged")}}}}})

	before := c.nodes[victim].mux.Stats()
	term := r.g.raft.CurrentTerm()
	attackers := c.attackers(t)
	for _, a := range attackers {
		t.Run(a.name, func(t *testing.T) {
			tr := raft.NewNetworkTransport(rawLayer{group: group, tls: a.tls, done: make(chan struct{})}, 1, 2*time.Second, io.Discard)
			defer tr.Close()
			hdr := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("n9/1"), Addr: []byte("10.9.9.9:7421#n9/1")}
			var ae raft.AppendEntriesResponse
			err := tr.AppendEntries(id, addr, &raft.AppendEntriesRequest{RPCHeader: hdr, Term: 1000, PrevLogEntry: r.g.raft.LastIndex(),
				PrevLogTerm: term, Entries: []*raft.Log{{Index: r.g.raft.LastIndex() + 1, Term: 1000, Type: raft.LogCommand, Data: forged}},
				LeaderCommitIndex: r.g.raft.LastIndex() + 1}, &ae)
			if err == nil {
				t.Fatalf("forged AppendEntries answered: %+v", ae)
			}
			var tn raft.TimeoutNowResponse
			if err := tr.TimeoutNow(id, addr, &raft.TimeoutNowRequest{RPCHeader: hdr}, &tn); err == nil {
				t.Fatalf("forged TimeoutNow answered: %+v", tn)
			}
		})
	}
	// Every forged connection (two per attacker: AppendEntries and
	// TimeoutNow) was refused before Raft: the cluster's own Raft
	// connections may open meanwhile, so the refusals are what is
	// counted, and what the forged messages would have done is checked
	// below (term, queue content).
	after := c.nodes[victim].mux.Stats()
	if refused := after.TLSFailed + after.Unauthorized - before.TLSFailed - before.Unauthorized; refused < uint64(2*len(attackers)) {
		t.Fatalf("%d forged connections refused, want %d: %+v -> %+v", refused, 2*len(attackers), before, after)
	}
	if got := r.g.raft.CurrentTerm(); got != term {
		t.Fatalf("the partition's term moved: %d -> %d", term, got)
	}
	if after.TLSFailed == before.TLSFailed || after.Unauthorized == before.Unauthorized {
		t.Fatalf("refusals not counted: %+v -> %+v", before, after)
	}
	// The cluster keeps serving, and nothing forged is in the queue.
	enqueueOne(t, q, "sec", "real")
	got := drain(t, q, "sec")
	if len(got) != 1 || got["real"] != 1 {
		t.Fatalf("drained %v, want only the real message", got)
	}
}

func TestForgedPeerCallsRefused(t *testing.T) {
	c := startCluster(t, 3)
	q, _ := c.client(0)
	if _, err := q.CreateQueue(ctxT(t, 10*time.Second), &qv1.CreateQueueRequest{Name: "sec", Partitions: 1, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	enqueueOne(t, q, "sec", "secret payload")
	var ctrlLeader int
	c.waitFor("a controller leader", 10*time.Second, func() bool {
		for i, n := range c.nodes {
			if n.ctrl.g.raft.State() == raft.Leader {
				ctrlLeader = i
				return true
			}
		}
		return false
	})
	info, _ := c.nodes[0].ctrl.queue("sec")
	for _, a := range c.attackers(t) {
		t.Run(a.name, func(t *testing.T) {
			creds := insecure.NewCredentials()
			if a.tls != nil {
				creds = credentials.NewTLS(a.tls)
			}
			cc, err := grpc.NewClient(c.nodes[ctrlLeader].PeerAddr(), grpc.WithTransportCredentials(creds))
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			pc := peerv1.NewPeerServiceClient(cc)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			fake := &fsmv1.NodeInfo{Id: "evil", ClientAddr: "10.6.6.6:7420", PeerAddr: "10.6.6.6:7421", GossipAddr: "10.6.6.6:7422"}
			if resp, err := pc.ProposeCatalog(ctx, &peerv1.ProposeCatalogRequest{Command: &fsmv1.CatalogCommand{Version: fsm.CatalogVersion,
				Op: &fsmv1.CatalogCommand_UpsertNode{UpsertNode: &fsmv1.UpsertNode{Node: fake}}}}); err == nil {
				t.Fatalf("forged ProposeCatalog answered: %v", resp)
			}
			for _, n := range c.nodes {
				r, ok := n.replicas.get("sec", 0)
				if !ok || !r.isLeader() {
					continue
				}
				pcl, _ := grpc.NewClient(n.PeerAddr(), grpc.WithTransportCredentials(creds))
				defer pcl.Close()
				if resp, err := peerv1.NewPeerServiceClient(pcl).Read(ctx, &peerv1.ReadRequest{
					Group: &peerv1.Group{Queue: "sec", QueueId: info.GetId()}, DeadLetters: true}); err == nil {
					t.Fatalf("forged Read answered: %v", resp)
				}
			}
		})
	}
	for _, n := range c.nodes {
		if _, ok := n.ctrl.node("evil"); ok {
			t.Fatalf("%s: the forged node is in the catalogue", n.ID())
		}
	}
	// The cluster's own peer calls still work (a forwarded enqueue).
	var follower int
	for i := range c.nodes {
		if c.leaderNode("sec", 0) != i {
			follower = i
		}
	}
	qf, _ := c.client(follower)
	enqueueOne(t, qf, "sec", "forwarded")
}

func TestGossipWithoutTheKeyNeverJoins(t *testing.T) {
	c := startCluster(t, 3)
	for _, key := range [][]byte{nil, make([]byte, 32)} { // no key; a wrong one
		cfg := memberlist.DefaultLANConfig()
		cfg.Name = "intruder"
		cfg.BindAddr, cfg.BindPort = "127.0.0.1", 0
		cfg.LogOutput = io.Discard
		if key != nil {
			cfg.SecretKey = key
		}
		ml, err := memberlist.Create(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if n, err := ml.Join([]string{c.nodes[0].GossipAddr()}); err == nil && n > 0 {
			ml.Shutdown()
			t.Fatalf("a gossip node with key %v joined", key != nil)
		}
		ml.Shutdown()
	}
	for _, n := range c.nodes {
		for _, m := range n.gossip.members() {
			if m.ID == "intruder" || strings.Contains(m.Gossip, "intruder") {
				t.Fatalf("%s sees the intruder", n.ID())
			}
		}
		if _, ok := n.ctrl.node("intruder"); ok {
			t.Fatalf("%s recorded the intruder", n.ID())
		}
	}
}

func TestNodeWithoutValidCertificateRefused(t *testing.T) {
	c := startCluster(t, 3)
	// n4 has the gossip key but a certificate of another CA.
	rogue, err := pki.OpenLocal(filepath.Join(t.TempDir(), "rogue"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := rogue.Node("n4")
	if err != nil {
		t.Fatal(err)
	}
	i := c.addNode(func(cfg *Config) {
		cfg.TLSCAFile, cfg.TLSCertFile, cfg.TLSKeyFile = f.CA, f.Cert, f.Key
	})
	_, cl := c.client(0)
	var refused *qv1.Member
	c.waitFor("n4 listed as refused", 30*time.Second, func() bool {
		resp, err := cl.Members(ctxT(t, 5*time.Second), &qv1.MembersRequest{})
		if err != nil {
			return false
		}
		for _, m := range resp.GetMembers() {
			if m.GetId() == "n4" && m.GetGossipState() == "alive" && m.GetRefused() {
				refused = m
				return true
			}
		}
		return false
	})
	t.Logf("n4 refused: %s", refused.GetRefusedReason())
	q, _ := c.client(0)
	if _, err := q.CreateQueue(ctxT(t, 10*time.Second), &qv1.CreateQueueRequest{Name: "after", Partitions: 6, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	info, _ := c.nodes[0].ctrl.queue("after")
	for _, pa := range info.GetPartitions() {
		for _, r := range pa.GetReplicas() {
			if r.GetNodeId() == "n4" {
				t.Fatalf("a replica placed on the refused node: %v", pa)
			}
		}
	}
	for _, n := range c.nodes[:3] {
		if _, ok := n.ctrl.node("n4"); ok {
			t.Fatalf("%s recorded the refused node", n.ID())
		}
		if slices.Contains(n.ctrl.voterIDs(), "n4") {
			t.Fatal("the refused node got a controller vote")
		}
	}
	if c.nodes[0].metrics.admissionRefused.Load() == 0 && c.nodes[1].metrics.admissionRefused.Load() == 0 && c.nodes[2].metrics.admissionRefused.Load() == 0 {
		t.Fatal("no refusal counted")
	}
	if c.nodes[i].ctrl.epochKnown() {
		t.Fatal("the refused node caught up with the catalogue")
	}
}

// The gossip key changed on a running cluster (install, use, remove):
// every node ends with only the new key, keeps it across a restart (the
// keyring in its data directory wins over --gossip-key-file), and a node
// that knows only the old key cannot join any more.
func TestGossipKeyRotation(t *testing.T) {
	c := startCluster(t, 3)
	_, cl := c.client(0)
	newKey, err := pki.NewGossipKey()
	if err != nil {
		t.Fatal(err)
	}
	oldKeyRaw, err := pki.ReadGossipKey(c.cfgs[0].GossipKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	oldKey := base64.StdEncoding.EncodeToString(oldKeyRaw)
	call := func(op, key string) *qv1.GossipKeyringResponse {
		t.Helper()
		resp, err := cl.GossipKeyring(ctxT(t, 10*time.Second), &qv1.GossipKeyringRequest{Op: op, Key: key})
		if err != nil {
			t.Fatalf("%s: %v", op, err)
		}
		if len(resp.GetNodes()) != 3 {
			t.Fatalf("%s: %d nodes answered", op, len(resp.GetNodes()))
		}
		for _, n := range resp.GetNodes() {
			if n.GetError() != "" {
				t.Fatalf("%s on %s: %s", op, n.GetNodeId(), n.GetError())
			}
		}
		return resp
	}
	call("install", newKey)
	call("use", newKey)
	if _, err := cl.GossipKeyring(ctxT(t, 10*time.Second), &qv1.GossipKeyringRequest{Op: "remove", Key: newKey}); err != nil {
		t.Fatal(err)
	} // refused per node: the primary
	call("remove", oldKey)
	for _, n := range call("list", "").GetNodes() {
		if !slices.Equal(n.GetKeys(), []string{newKey}) {
			t.Fatalf("%s keeps %v", n.GetNodeId(), n.GetKeys())
		}
	}
	if _, err := cl.GossipKeyring(ctxT(t, 10*time.Second), &qv1.GossipKeyringRequest{Op: "install", Key: "not base64"}); err == nil {
		t.Fatal("a bad key was accepted")
	}
	// Gossip goes on with the new key: a restarted node rejoins.
	c.kill(2)
	c.restart(2)
	c.waitFor("n3 alive again in everyone's gossip", 30*time.Second, func() bool {
		return c.gossipState(0, "n3") == "alive" && c.gossipState(2, "n1") == "alive"
	})
	// A stranger with the old key cannot join.
	cfg := memberlist.DefaultLANConfig()
	cfg.Name = "old-key"
	cfg.BindAddr, cfg.BindPort = "127.0.0.1", 0
	cfg.LogOutput = io.Discard
	cfg.SecretKey = oldKeyRaw
	ml, err := memberlist.Create(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ml.Shutdown()
	if k, err := ml.Join([]string{c.nodes[0].GossipAddr()}); err == nil && k > 0 {
		t.Fatal("a node with the removed key joined")
	}
}
