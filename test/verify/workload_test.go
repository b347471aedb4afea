package verify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/quorumq/quorumq/client"
	"github.com/quorumq/quorumq/cluster"
	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
	"github.com/quorumq/quorumq/transport/pki"
)

// startCluster starts an in-process cluster of size nodes on 127.0.0.1
// and returns a client of it; everything stops when the test ends.
func startCluster(t *testing.T, size int) (*client.Client, []*cluster.Node) {
	t.Helper()
	return startClusterIn(t, size, t.TempDir())
}

// startClusterIn is startCluster with the nodes' data under dir, and
// their TLS material in dir/tls (pki.Local: ca.pem, v<i>.pem, ...).
func startClusterIn(t *testing.T, size int, dir string) (*client.Client, []*cluster.Node) {
	t.Helper()
	logger := slog.New(slog.DiscardHandler)
	if os.Getenv("QUORUMQ_TEST_LOG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	var nodes []*cluster.Node
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, n := range nodes {
			if err := n.Stop(ctx); err != nil {
				t.Logf("stop %s: %v", n.ID(), err)
			}
		}
	})
	tlsDir, err := pki.OpenLocal(filepath.Join(dir, "tls"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range size {
		id := fmt.Sprintf("v%d", i+1)
		cfg := cluster.Config{
			NodeID: id, DataDir: filepath.Join(dir, id),
			ClientAddr: "127.0.0.1:0", PeerAddr: "127.0.0.1:0", GossipAddr: "127.0.0.1:0", HTTPAddr: "-",
			BootstrapExpect: size, Logger: logger, GossipKeyFile: tlsDir.GossipKeyFile,
		}
		f, err := tlsDir.Node(id)
		if err != nil {
			t.Fatal(err)
		}
		cfg.TLSCAFile, cfg.TLSCertFile, cfg.TLSKeyFile = f.CA, f.Cert, f.Key
		if i > 0 {
			cfg.Join = []string{nodes[0].GossipAddr()}
		}
		n, err := cluster.Start(cfg)
		if err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
		nodes = append(nodes, n)
	}
	var seeds []string
	for _, n := range nodes {
		seeds = append(seeds, n.ClientAddr())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	admin, err := tlsDir.Client("admin")
	if err != nil {
		t.Fatal(err)
	}
	adminTLS, err := pki.ClientTLSConfig(admin.CA, admin.Cert, admin.Key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(ctx, seeds, client.WithTLS(adminTLS))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	// Formed: every node sees a controller leader, and every node alive in
	// gossip and in the catalogue (a node places a new queue's replicas on
	// the nodes it sees so).
	for _, addr := range seeds {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(adminTLS)))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		cs := qv1.NewClusterServiceClient(cc)
		for !nodeFormed(ctx, cs, size) {
			if !sleepCtx(ctx, 100*time.Millisecond) {
				t.Fatalf("node %s did not see the cluster formed", addr)
			}
		}
	}
	return c, nodes
}

func nodeFormed(ctx context.Context, cs qv1.ClusterServiceClient, size int) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := cs.Status(ctx, &qv1.StatusRequest{})
	if err != nil || st.GetControllerLeader() == "" || !st.GetReady() {
		return false
	}
	ms, err := cs.Members(ctx, &qv1.MembersRequest{})
	if err != nil {
		return false
	}
	alive := 0
	for _, m := range ms.GetMembers() {
		if m.GetGossipState() == "alive" && m.GetCatalogState() == "alive" {
			alive++
		}
	}
	return alive == size
}

// The whole cycle against a real cluster: a workload with requeues and
// expiries while partition leaderships move, a drain, a passing verdict,
// converged replicas. Then the same history with one delivery taken out
// fails: the checker is not blind to a real history's loss.
func TestWorkloadEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster")
	}
	c, _ := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	w, err := New(Config{Client: c, NumQueues: 2, Partitions: 2, Producers: 2, Consumers: 2, Rate: 200,
		Duration: 3 * time.Second, RequeueFraction: 0.1, ExpireFraction: 0.1, ExpireVisibility: 300 * time.Millisecond,
		Visibility: 3 * time.Second, Wait: 300 * time.Millisecond, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	// Move every partition's leadership while the workload runs.
	runCtx, stopMoves := context.WithCancel(ctx)
	var moves sync.WaitGroup
	moves.Go(func() {
		for sleepCtx(runCtx, 700*time.Millisecond) {
			for _, q := range w.Queues() {
				for p := range uint32(2) {
					mctx, mcancel := context.WithTimeout(runCtx, 5*time.Second)
					if _, err := c.TransferLeadership(mctx, q, p, ""); err != nil && runCtx.Err() == nil {
						t.Logf("transfer %s/%d: %v", q, p, err)
					}
					mcancel()
				}
			}
		}
	})
	err = w.Run(ctx)
	stopMoves()
	moves.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	ops := w.History().Ops()
	v := Check(ops, CheckOptions{})
	var text strings.Builder
	_ = v.WriteText(&text)
	t.Logf("verdict:\n%s", text.String())
	if !v.OK() || v.Total.EnqueuedOK < 100 || v.Total.Acked == 0 || v.Total.Duplicates.Requeue == 0 || v.Total.Duplicates.LeaseExpiry == 0 {
		t.Errorf("verdict %s: %+v", v.Summary(), v.Total)
	}
	if len(v.Queues) != 2 || v.Queues[0].OrderChecked {
		t.Errorf("queues %+v", v.Queues)
	}
	if err := CheckConvergence(ctx, c, nil, w.Queues()); err != nil {
		t.Error(err)
	}
	cctx, ccancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer ccancel()
	if err := CheckConvergence(cctx, c, []string{"127.0.0.1:1"}, w.Queues()); err == nil {
		t.Error("convergence with no replica reachable passed")
	} else if ce := (*ConvergenceError)(nil); !errors.As(err, &ce) || ce.Diverged {
		t.Errorf("unreachable replicas: %v, want a ConvergenceError that is not a divergence", err)
	}

	// Take out every delivery and dead letter of one message.
	var victim string
	for _, op := range ops {
		if op.Kind == KindEnqueue && op.Outcome == OK {
			victim = op.Msg
			break
		}
	}
	var cut []Op
	for _, op := range ops {
		if (op.Kind == KindDeliver || op.Kind == KindDrainDeliver || op.Kind == KindDeadLetter) && op.Msg == victim {
			continue
		}
		cut = append(cut, op)
	}
	if v := Check(cut, CheckOptions{}); v.Total.Lost != 1 || v.OK() {
		t.Errorf("with %s's deliveries removed: %s, %+v", victim, v.Summary(), v.Total)
	}
}

// Without requeues and expiries, first deliveries are checked for order,
// and a clean run passes it.
func TestWorkloadOrdered(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster")
	}
	c, _ := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	w, err := Run(ctx, Config{Client: c, Partitions: 2, Consumers: 3, Rate: 300, Duration: 2 * time.Second,
		Wait: 300 * time.Millisecond, Visibility: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	v := Check(w.History().Ops(), CheckOptions{})
	if !v.OK() || !v.Queues[0].OrderChecked || v.Total.EnqueuedOK == 0 {
		t.Errorf("verdict %s: %+v", v.Summary(), v.Queues)
	}
	// Setup refuses a queue that holds messages: the checker would call
	// them unexpected.
	if _, err := c.Enqueue(ctx, w.Queues()[0], &client.Message{Payload: []byte("left over")}); err != nil {
		t.Fatal(err)
	}
	w2, err := New(Config{Client: c, Queues: w.Queues()})
	if err != nil {
		t.Fatal(err)
	}
	if err := w2.Setup(ctx); err == nil {
		t.Error("Setup accepted a queue holding a message")
	}
}
