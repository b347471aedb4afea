package chaos

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/quorumq/quorumq/test/netns"
)

// TestSplitHeals: a majority/minority split heals into one cluster that
// is ready again on every node.
func TestSplitHeals(t *testing.T) {
	if testing.Short() {
		t.Skip("namespace test")
	}
	bin := buildQuorumq(t)
	dir := t.TempDir()
	tl, _ := os.Create(filepath.Join(dir, "timeline.log"))
	defer tl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := netns.New(ctx, netns.Config{Nodes: 3, Binary: bin, Dir: dir, Log: tl})
	if errors.Is(err, netns.ErrUnavailable) && os.Getenv("QUORUMQ_NETNS_REQUIRED") != "1" {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for h := 1; h <= 3; h++ {
		if err := c.Start(h); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	for round := range 3 {
		if err := c.Partition([]int{2, 3}, []int{1}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(4 * time.Second) // the fault's length, not a wait for a condition
		if err := c.Heal(); err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := c.WaitReady(rctx)
		cancel()
		if err != nil {
			logTail(t, dir)
			t.Fatalf("round %d: %v", round, err)
		}
	}
}
