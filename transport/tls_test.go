package transport

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/quorumq/quorumq/transport/pki"
)

// tlsFiles writes node id's material signed by ca into dir.
func tlsFiles(t *testing.T, dir, id string, ca *pki.CA) *pki.Reloader {
	t.Helper()
	iss, err := ca.IssueNode(id, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	f := pki.Files{CA: filepath.Join(dir, id+"-ca.pem"), Cert: filepath.Join(dir, id+".pem"), Key: filepath.Join(dir, id+"-key.pem")}
	for p, b := range map[string][]byte{f.CA: ca.CertPEM, f.Cert: iss.CertPEM, f.Key: iss.KeyPEM} {
		if err := pki.WriteFile(p, b, 0o600, true); err != nil {
			t.Fatal(err)
		}
	}
	r, err := pki.NewReloader(f, nil)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// members is the Authorize of the test nodes: n1..n3 only.
func members(nodes []string) error {
	for _, n := range nodes {
		if slices.Contains([]string{"n1", "n2", "n3"}, n) {
			return nil
		}
	}
	return fmt.Errorf("%v: not a member", nodes)
}

func nodeOfID(id raft.ServerID) string { return strings.SplitN(string(id), "/", 2)[0] }

// A Raft group and peer gRPC over mutual TLS; every forged connection —
// no certificate, another CA, a valid certificate of a node that is not a
// member — is refused before a byte of it reaches Raft or gRPC.
func TestRaftAndGRPCOverMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, _ := pki.NewCA("cluster", time.Hour)
	rogue, _ := pki.NewCA("rogue", time.Hour)
	c := newCluster(t)
	var servers []raft.Server
	for _, id := range []raft.ServerID{"n1", "n2", "n3"} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		m := NewMux(l, nil)
		m.Security = &Security{TLS: tlsFiles(t, dir, string(id), ca), NodeOf: nodeOfID, Authorize: members}
		n := &testNode{id: id, mux: m, addr: raft.ServerAddress(l.Addr().String()),
			grpc: grpc.NewServer(grpc.Creds(m.GRPCServerCredentials())), served: make(chan error, 2), replicas: map[string]*replica{}}
		hs := health.NewServer()
		healthpb.RegisterHealthServer(n.grpc, hs)
		go func() { n.served <- n.mux.Serve() }()
		go func() { n.served <- n.grpc.Serve(n.mux.GRPCListener()) }()
		c.nodes = append(c.nodes, n)
		servers = append(servers, raft.Server{ID: id + "/1", Address: n.raftAddr(id + "/1"), Suffrage: raft.Voter})
	}
	for _, n := range c.nodes {
		c.startReplicaAs(n, n.id+"/1", "g", servers)
	}
	c.leader("g")
	c.apply("g", 50)
	c.converge("g", 50)

	// Peer gRPC with the node's certificate: served, and the server sees
	// who called.
	n1 := c.nodes[0]
	pool := NewPool()
	pool.Creds = n1.mux.Security.PeerClientCredentials
	defer pool.Close()
	cc, err := pool.Conn("n2", string(c.nodes[1].addr))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health over mTLS: %v", err)
	}
	// The same call to n2's address expecting n3 fails: whom a dial
	// reaches is checked.
	wrong, _ := pool.Conn("n3", string(c.nodes[1].addr))
	if _, err := healthpb.NewHealthClient(wrong).Check(ctx, &healthpb.HealthCheckRequest{}); err == nil {
		t.Fatal("a call meant for n3 was answered by n2")
	}

	target := c.nodes[1]
	// The forged connections aim at a group of their own on n2, which
	// nothing else dials: whatever its listener accepts came from an
	// attacker. (The cluster's own Raft connections to n2 may open
	// meanwhile, so the mux's Raft count alone proves nothing.)
	victim, err := target.mux.Group("victim", "n2/v", "")
	if err != nil {
		t.Fatal(err)
	}
	reached := make(chan net.Conn, 8)
	go func() {
		for {
			conn, err := victim.Accept()
			if err != nil {
				close(reached)
				return
			}
			reached <- conn
		}
	}()
	before := target.mux.Stats()
	attacks := []struct {
		name string
		cfg  *tls.Config // nil: plaintext
	}{
		{"plaintext", nil},
		{"no certificate", &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}},
		{"another CA", tlsFiles(t, dir, "n1", rogue).ClientConfig(nil)},
		{"not a member", tlsFiles(t, dir, "n9", ca).ClientConfig(nil)},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			raw, err := net.Dial("tcp", string(target.addr))
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			var conn net.Conn = raw
			if a.cfg != nil {
				tc := tls.Client(raw, a.cfg)
				tc.SetDeadline(time.Now().Add(5 * time.Second))
				if err := tc.Handshake(); err != nil {
					return // refused in the handshake
				}
				conn = tc
			}
			// A forged AppendEntries header and frame.
			conn.Write(appendHeader(nil, "victim", "n2/v"))
			conn.Write([]byte{0, 0x80, 0x80})
			expectClosed(t, conn)
		})
	}
	after := target.mux.Stats()
	victim.Close()
	for conn := range reached {
		conn.Close()
		t.Errorf("a forged connection reached Raft from %v", conn.RemoteAddr())
	}
	if after.TLSFailed-before.TLSFailed < 2 || after.Unauthorized-before.Unauthorized != 1 {
		t.Fatalf("refusals not counted: %+v -> %+v", before, after)
	}

	// The group goes on.
	c.apply("g", 10)
	c.converge("g", 60)

	// A Raft dial to a member on the wrong node (n2's address, n3's
	// member) is refused by the dialer's check.
	l, err := n1.mux.Group("probe", "n1/9", "")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := l.Dial(Address(string(target.addr), "n3/1"), time.Second); err == nil {
		t.Fatal("a Raft dial meant for n3 completed at n2")
	}
	if conn, err := l.Dial(Address(string(target.addr), "n2/1"), time.Second); err != nil {
		t.Fatalf("a Raft dial to n2: %v", err)
	} else {
		conn.Close()
	}
}
