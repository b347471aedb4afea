package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
	"github.com/quorumq/quorumq/test/faultnet"
	"github.com/quorumq/quorumq/transport/pki"
)

// testCluster is an in-process cluster: each node on its own 127.0.0.1
// ports and data directory, its peer connections dialed through net, whose
// links a test can cut (gossip is not cut).
type testCluster struct {
	t     testing.TB
	nodes []*Node
	cfgs  []Config
	net   *faultnet.Network
	base  string // the nodes' data directories are in it
}

func testLogger() *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("QUORUMQ_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// nodeConfig is the configuration of test node id with its data in dir:
// secure, as in production, with TLS material shared by every node whose
// data directory is in the same parent (filepath.Dir(dir)/tls).
func nodeConfig(dir, id string, expect int, join []string) Config {
	cfg := Config{
		NodeID: id, DataDir: dir,
		ClientAddr: "127.0.0.1:0", PeerAddr: "127.0.0.1:0", GossipAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		BootstrapExpect: expect, Join: join, Logger: testLogger(),
	}
	f, gossipKey, err := testTLS(filepath.Join(filepath.Dir(dir), "tls"), id)
	if err != nil {
		panic(err)
	}
	cfg.TLSCAFile, cfg.TLSCertFile, cfg.TLSKeyFile, cfg.GossipKeyFile = f.CA, f.Cert, f.Key, gossipKey
	return cfg
}

// testTLSMu serialises the creation of test clusters' TLS material.
var testTLSMu sync.Mutex

// testTLS returns node id's TLS files and the gossip key file in dir,
// creating them (and the cluster's CA) if needed.
func testTLS(dir, id string) (pki.Files, string, error) {
	testTLSMu.Lock()
	defer testTLSMu.Unlock()
	l, err := pki.OpenLocal(dir)
	if err != nil {
		return pki.Files{}, "", err
	}
	f, err := l.Node(id)
	return f, l.GossipKeyFile, err
}

func startCluster(t testing.TB, size int) *testCluster {
	t.Helper()
	return startClusterWith(t, size, nil)
}

// startClusterWith starts size nodes, each configured by tune (if any).
func startClusterWith(t testing.TB, size int, tune func(*Config)) *testCluster {
	t.Helper()
	c := &testCluster{t: t, net: faultnet.New()}
	base := t.TempDir()
	c.base = base
	t.Cleanup(c.stop)
	for i := range size {
		dir := filepath.Join(base, fmt.Sprintf("n%d", i+1))
		var join []string
		if i > 0 {
			join = []string{c.nodes[0].GossipAddr()}
		}
		cfg := nodeConfig(dir, fmt.Sprintf("n%d", i+1), size, join)
		cfg.PeerDialer = c.net.Dialer(cfg.NodeID)
		if tune != nil {
			tune(&cfg)
		}
		n, err := Start(cfg)
		if err != nil {
			t.Fatalf("start node %d: %v", i+1, err)
		}
		c.net.Register(cfg.NodeID, n.PeerAddr())
		c.nodes = append(c.nodes, n)
		// A restart reuses the ports the node got.
		cfg.ClientAddr, cfg.PeerAddr, cfg.GossipAddr, cfg.HTTPAddr = n.ClientAddr(), n.PeerAddr(), n.GossipAddr(), n.HTTPAddr()
		c.cfgs = append(c.cfgs, cfg)
	}
	c.waitFormed()
	return c
}

// waitFormed waits for a controller leader known to every running node and
// for every running node to be in the catalogue.
func (c *testCluster) waitFormed() {
	c.t.Helper()
	c.waitFor("controller leader and every node in the catalogue", 30*time.Second, func() bool {
		for _, n := range c.nodes {
			if n == nil {
				continue
			}
			if n.ctrl.g.leaderID() == "" || len(n.ctrl.nodes()) < c.running() {
				return false
			}
		}
		return true
	})
}

func (c *testCluster) running() int {
	k := 0
	for _, n := range c.nodes {
		if n != nil {
			k++
		}
	}
	return k
}

// kill crashes node i (no handover).
func (c *testCluster) kill(i int) {
	c.t.Helper()
	if err := c.nodes[i].Kill(); err != nil {
		c.t.Logf("kill n%d: %v", i+1, err)
	}
	c.nodes[i] = nil
}

// restart starts node i again from its data directory, on its old ports.
func (c *testCluster) restart(i int) {
	c.t.Helper()
	cfg := c.cfgs[i]
	cfg.Join = nil
	for j, n := range c.nodes {
		if n != nil && j != i {
			cfg.Join = append(cfg.Join, n.GossipAddr())
		}
	}
	n, err := Start(cfg)
	if err != nil {
		c.t.Fatalf("restart n%d: %v", i+1, err)
	}
	c.nodes[i] = n
}

// wipe crashes node i and deletes its data directory: a disk lost. The node
// stays down until restart.
func (c *testCluster) wipe(i int) {
	c.t.Helper()
	c.kill(i)
	if err := os.RemoveAll(c.cfgs[i].DataDir); err != nil {
		c.t.Fatalf("wipe n%d: %v", i+1, err)
	}
}

// name is node i's id.
func (c *testCluster) name(i int) string { return c.cfgs[i].NodeID }

// cut takes down the peer links between the nodes of a and those of b.
func (c *testCluster) cut(a, b []int) {
	var as, bs []string
	for _, i := range a {
		as = append(as, c.name(i))
	}
	for _, i := range b {
		bs = append(bs, c.name(i))
	}
	c.net.Cut(as, bs)
}

func (c *testCluster) stop() {
	for _, n := range c.nodes {
		if n != nil {
			_ = n.Kill()
		}
	}
}

// waitFor polls cond until it holds or timeout passes.
func (c *testCluster) waitFor(what string, timeout time.Duration, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// client connects to node i's client port.
func (c *testCluster) client(i int) (qv1.QueueServiceClient, qv1.ClusterServiceClient) {
	c.t.Helper()
	cc := c.conn(i)
	return qv1.NewQueueServiceClient(cc), qv1.NewClusterServiceClient(cc)
}

// conn opens a client connection to node i's client port, with the
// credentials every test client uses (the admin's client certificate, or
// none with an insecure cluster) and opts; it is closed at cleanup.
func (c *testCluster) conn(i int, opts ...grpc.DialOption) *grpc.ClientConn {
	c.t.Helper()
	return c.connAs(i, "admin", opts...)
}

// clientTLS is a client TLS configuration with a client certificate
// naming identity ("" = no client certificate).
func (c *testCluster) clientTLS(identity string) *tls.Config {
	c.t.Helper()
	testTLSMu.Lock()
	defer testTLSMu.Unlock()
	l, err := pki.OpenLocal(filepath.Join(c.base, "tls"))
	if err != nil {
		c.t.Fatal(err)
	}
	var f pki.Files
	if identity != "" {
		if f, err = l.Client(identity); err != nil {
			c.t.Fatal(err)
		}
	}
	cfg, err := pki.ClientTLSConfig(filepath.Join(l.Dir, pki.CACertFile), f.Cert, f.Key)
	if err != nil {
		c.t.Fatal(err)
	}
	return cfg
}

// connAs connects to node i as identity (a client certificate naming it;
// "" = none, for a token in opts or no credentials at all).
func (c *testCluster) connAs(i int, identity string, opts ...grpc.DialOption) *grpc.ClientConn {
	c.t.Helper()
	creds := insecure.NewCredentials()
	if !c.cfgs[i].Insecure {
		creds = credentials.NewTLS(c.clientTLS(identity))
	}
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, opts...)
	cc, err := grpc.NewClient(c.nodes[i].ClientAddr(), opts...)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cc.Close() })
	return cc
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// gossipState is how node i's gossip sees node id.
func (c *testCluster) gossipState(i int, id string) string {
	for _, m := range c.nodes[i].gossip.members() {
		if m.ID == id {
			return m.State
		}
	}
	return ""
}

// addNode starts one more node that joins the running cluster.
func (c *testCluster) addNode(tune func(*Config)) int {
	c.t.Helper()
	i := len(c.nodes)
	var join []string
	for _, n := range c.nodes {
		if n != nil {
			join = append(join, n.GossipAddr())
		}
	}
	cfg := nodeConfig(filepath.Join(c.base, fmt.Sprintf("n%d", i+1)), fmt.Sprintf("n%d", i+1), 0, join)
	cfg.PeerDialer = c.net.Dialer(cfg.NodeID)
	if tune != nil {
		tune(&cfg)
	}
	n, err := Start(cfg)
	if err != nil {
		c.t.Fatalf("start node %d: %v", i+1, err)
	}
	c.net.Register(cfg.NodeID, n.PeerAddr())
	cfg.ClientAddr, cfg.PeerAddr, cfg.GossipAddr, cfg.HTTPAddr = n.ClientAddr(), n.PeerAddr(), n.GossipAddr(), n.HTTPAddr()
	c.nodes = append(c.nodes, n)
	c.cfgs = append(c.cfgs, cfg)
	return i
}
