package client_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/quorumq/quorumq/client"
	"github.com/quorumq/quorumq/cluster"
	"github.com/quorumq/quorumq/transport/pki"
)

// Every goroutine the client starts must be gone once it is closed; the
// clusters are stopped first. memberlist's Shutdown does not wait for a
// probe already in flight (see cluster/main_test.go).
func TestMain(m *testing.M) {
	code := m.Run()
	stopShared()
	if code == 0 {
		if err := goleak.Find(goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode")); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// testCluster is an in-process cluster, each node on its own 127.0.0.1
// ports and data directory.
type testCluster struct {
	dir   string
	nodes []*cluster.Node
	// tls is the client port's TLS, as the admin client (its certificate
	// names "admin", an admin identity by default).
	tls    *tls.Config
	caFile string
}

// testLogger is silent unless QUORUMQ_TEST_LOG is set: a crash makes
// Raft log errors by design.
func testLogger() *slog.Logger {
	if os.Getenv("QUORUMQ_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// startCluster starts size nodes and waits until they formed a cluster
// in which every node is in the catalogue.
func startCluster(size int) (*testCluster, error) {
	return startClusterWith(size, "n", testLogger())
}

// startClusterWith names the nodes prefix1, prefix2... and logs to logger.
func startClusterWith(size int, prefix string, logger *slog.Logger) (*testCluster, error) {
	dir, err := os.MkdirTemp("", "quorumq-client-test-")
	if err != nil {
		return nil, err
	}
	c := &testCluster{dir: dir}
	tlsDir, err := pki.OpenLocal(filepath.Join(dir, "tls"))
	if err != nil {
		return nil, err
	}
	admin, err := tlsDir.Client("admin")
	if err != nil {
		return nil, err
	}
	c.caFile = admin.CA
	if c.tls, err = pki.ClientTLSConfig(admin.CA, admin.Cert, admin.Key); err != nil {
		return nil, err
	}
	for i := range size {
		cfg := cluster.Config{
			NodeID: fmt.Sprintf("%s%d", prefix, i+1), DataDir: filepath.Join(dir, fmt.Sprintf("%s%d", prefix, i+1)),
			ClientAddr: "127.0.0.1:0", PeerAddr: "127.0.0.1:0", GossipAddr: "127.0.0.1:0", HTTPAddr: "-",
			BootstrapExpect: size, Logger: logger, GossipKeyFile: tlsDir.GossipKeyFile,
		}
		f, err := tlsDir.Node(cfg.NodeID)
		if err != nil {
			return nil, err
		}
		cfg.TLSCAFile, cfg.TLSCertFile, cfg.TLSKeyFile = f.CA, f.Cert, f.Key
		if i > 0 {
			cfg.Join = []string{c.nodes[0].GossipAddr()}
		}
		n, err := cluster.Start(cfg)
		if err != nil {
			c.stop()
			return nil, fmt.Errorf("start node %d: %w", i+1, err)
		}
		c.nodes = append(c.nodes, n)
	}
	if err := c.waitFormed(size, 30*time.Second); err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

func (c *testCluster) seeds() []string {
	var out []string
	for _, n := range c.nodes {
		if n != nil {
			out = append(out, n.ClientAddr())
		}
	}
	return out
}

// waitFormed polls every node until it knows a controller leader and sees
// every node alive in the catalogue.
func (c *testCluster) waitFormed(size int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		ok := true
		for _, addr := range c.seeds() {
			if !nodeFormed(ctx, addr, size, c.tls) {
				ok = false
				break
			}
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster of %d did not form within %v", size, timeout)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func nodeFormed(ctx context.Context, addr string, size int, tlsCfg *tls.Config) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := client.New(ctx, []string{addr}, client.WithTLS(tlsCfg), client.WithRetry(1, time.Millisecond, time.Millisecond))
	if err != nil {
		return false
	}
	defer c.Close()
	st, err := c.ClusterStatus(ctx)
	if err != nil || st.GetControllerLeader() == "" || !st.GetReady() {
		return false
	}
	ms, err := c.Members(ctx)
	if err != nil {
		return false
	}
	alive := 0
	for _, m := range ms {
		if m.GetGossipState() == "alive" && m.GetCatalogState() == "alive" {
			alive++
		}
	}
	return alive >= size
}

func (c *testCluster) stop() {
	var wg sync.WaitGroup
	for _, n := range c.nodes {
		if n != nil {
			wg.Go(func() { _ = n.Kill() })
		}
	}
	wg.Wait()
	os.RemoveAll(c.dir)
}

// kill crashes node i, without any handover.
func (c *testCluster) kill(i int) {
	_ = c.nodes[i].Kill()
	c.nodes[i] = nil
}

// nodeIndex is the index of the node with id, or -1.
func (c *testCluster) nodeIndex(id string) int {
	for i, n := range c.nodes {
		if n != nil && n.ID() == id {
			return i
		}
	}
	return -1
}

// The shared cluster serves every test and example that does not kill
// nodes; each uses its own queues.
var shared struct {
	once sync.Once
	c    *testCluster
	err  error
}

func sharedCluster() (*testCluster, error) {
	shared.once.Do(func() { shared.c, shared.err = startCluster(3) })
	return shared.c, shared.err
}

func stopShared() {
	if shared.c != nil {
		shared.c.stop()
	}
}

// testSeeds returns the seeds of the shared cluster, for examples.
func testSeeds() []string {
	c, err := sharedCluster()
	if err != nil {
		panic(err)
	}
	return c.seeds()
}

// testTLS is the shared cluster's client TLS configuration (the admin
// client's certificate), for examples.
func testTLS() *tls.Config {
	c, err := sharedCluster()
	if err != nil {
		panic(err)
	}
	return c.tls
}

// newTestClient connects to the shared cluster as the admin client; the
// client is closed when the test ends.
func newTestClient(t *testing.T, opts ...client.Option) (*client.Client, *testCluster) {
	t.Helper()
	tc, err := sharedCluster()
	if err != nil {
		t.Fatal(err)
	}
	return connect(t, tc, opts...), tc
}

func connect(t *testing.T, tc *testCluster, opts ...client.Option) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.New(ctx, tc.seeds(), append([]client.Option{client.WithTLS(tc.tls)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// queueName is a queue name unique to the test.
func queueName(t *testing.T) string {
	return strings.NewReplacer("/", "-", "_", "-").Replace(strings.ToLower(t.Name()))
}

func createQueue(t *testing.T, c *client.Client, name string, opts client.QueueOptions) {
	t.Helper()
	if _, err := c.CreateQueue(ctxT(t, 15*time.Second), name, opts); err != nil {
		t.Fatalf("create queue %s: %v", name, err)
	}
}

// clientGoroutines lists the stacks of goroutines running client code.
func clientGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "github.com/quorumq/quorumq/client.") {
			out = append(out, g)
		}
	}
	return out
}

// noClientGoroutines waits until no goroutine runs client code.
func noClientGoroutines(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		gs := clientGoroutines()
		if len(gs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("client goroutines still running:\n%s", strings.Join(gs, "\n\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// drain receives and acks until the queue yields nothing, and returns how
// often each payload was delivered.
func drain(t *testing.T, c *client.Client, queue string) map[string]int {
	t.Helper()
	ctx := ctxT(t, 30*time.Second)
	got := map[string]int{}
	for {
		ds, err := c.Receive(ctx, queue, 500, client.Wait(500*time.Millisecond))
		if err != nil {
			t.Fatalf("drain receive: %v", err)
		}
		if len(ds) == 0 {
			return got
		}
		var receipts []string
		for _, d := range ds {
			got[string(d.Payload)]++
			receipts = append(receipts, d.Receipt)
		}
		if _, err := c.Ack(ctx, queue, receipts...); err != nil {
			t.Fatalf("drain ack: %v", err)
		}
	}
}

// logBuffer keeps a cluster's log in memory, to show when a test fails.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func containsFrame(stack, frame string) bool { return strings.Contains(stack, frame) }
