package chaos

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quorumq/quorumq/test/lazyfs"
	"github.com/quorumq/quorumq/test/netns"
)

// The chaos runs need root and network namespaces; without them they
// skip, unless QUORUMQ_NETNS_REQUIRED=1 (CI) makes that a failure.
// lose-unsynced also needs FUSE (test/lazyfs); without it the kind is left
// out, unless QUORUMQ_FUSE_REQUIRED=1 (CI) makes that a failure.
//
//	go test ./test/chaos -run Short                   # the CI run, a few minutes
//	QUORUMQ_CHAOS=full go test ./test/chaos -run Full -timeout 2h   # make chaos
//
// QUORUMQ_CHAOS_SEED replays one seed; QUORUMQ_CHAOS_KINDS (comma
// separated, e.g. lose-unsynced,kill-leader) replaces a run's kinds;
// QUORUMQ_CHAOS_DIR keeps the run folders (history, timeline, verdict)
// somewhere lasting.

func buildQuorumq(t *testing.T) string {
	t.Helper()
	bin, err := netns.BuildQuorumq(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

func runDir(t *testing.T) string {
	if d := os.Getenv("QUORUMQ_CHAOS_DIR"); d != "" {
		return d
	}
	return t.TempDir()
}

func seeds(t *testing.T, n int) []uint64 {
	if s := os.Getenv("QUORUMQ_CHAOS_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("QUORUMQ_CHAOS_SEED=%q: %v", s, err)
		}
		return []uint64{v}
	}
	out := make([]uint64, n)
	base := uint64(time.Now().UnixNano())
	for i := range out {
		out[i] = base + uint64(i)*7919
	}
	return out
}

// kinds returns QUORUMQ_CHAOS_KINDS's kinds if it is set, else def;
// lose-unsynced is left out where FUSE is unavailable and not required.
func kinds(t *testing.T, def []Kind) []Kind {
	t.Helper()
	out := def
	if s := os.Getenv("QUORUMQ_CHAOS_KINDS"); s != "" {
		out = nil
		for _, k := range strings.Split(s, ",") {
			k := Kind(strings.TrimSpace(k))
			if !slices.Contains(AllKinds, k) {
				t.Fatalf("QUORUMQ_CHAOS_KINDS: unknown kind %q (kinds: %v)", k, AllKinds)
			}
			out = append(out, k)
		}
	}
	if slices.Contains(out, LoseUnsynced) {
		if err := lazyfs.Available(); err != nil {
			if os.Getenv("QUORUMQ_FUSE_REQUIRED") == "1" {
				t.Fatalf("FUSE required for %s: %v", LoseUnsynced, err)
			}
			t.Logf("%s left out: %v", LoseUnsynced, err)
			out = slices.DeleteFunc(slices.Clone(out), func(k Kind) bool { return k == LoseUnsynced })
		}
	}
	return out
}

// run runs one seed and fails t on any violation.
func run(t *testing.T, cfg Config) *Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	var out strings.Builder
	cfg.Out = &out
	t.Logf("chaos seed %d (replay: QUORUMQ_CHAOS_SEED=%d)", cfg.Seed, cfg.Seed)
	res, err := Run(ctx, cfg)
	if errors.Is(err, netns.ErrUnavailable) {
		if os.Getenv("QUORUMQ_NETNS_REQUIRED") == "1" {
			t.Fatalf("network namespaces required: %v", err)
		}
		t.Skipf("network namespaces unavailable: %v", err)
	}
	if errors.Is(err, lazyfs.ErrUnavailable) {
		if os.Getenv("QUORUMQ_FUSE_REQUIRED") == "1" {
			t.Fatalf("FUSE required: %v", err)
		}
		t.Skipf("FUSE unavailable: %v", err)
	}
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatalf("chaos run: %v", err)
	}
	if !res.OK() {
		logTail(t, res.Dir)
		t.Fatalf("chaos seed %d found a violation; see %s", cfg.Seed, res.Dir)
	}
	return res
}

// logTail shows the end of every node's log of a failed run.
func logTail(t *testing.T, dir string) {
	logs, _ := filepath.Glob(filepath.Join(dir, "nodes", "*.log"))
	more, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	logs = append(logs, more...)
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		t.Logf("--- %s (tail)\n%s", l, b)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "timeline.log")); err == nil {
		t.Logf("--- timeline\n%s", b)
	}
}

// TestChaosShort is the CI run: kill a leader, isolate a leader, pause a
// node, wipe a leader right after an ack, lose a node's unsynced writes,
// under load; nothing acknowledged may be lost.
func TestChaosShort(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos run")
	}
	bin := buildQuorumq(t)
	run(t, Config{Binary: bin, Dir: runDir(t), Seed: seeds(t, 1)[0], Kinds: kinds(t, ShortKinds)})
}

// TestChaosFull is make chaos: every fault kind, several seeds, at least
// QUORUMQ_CHAOS_MIN (default 30m) in all.
func TestChaosFull(t *testing.T) {
	if os.Getenv("QUORUMQ_CHAOS") != "full" {
		t.Skip("set QUORUMQ_CHAOS=full (make chaos)")
	}
	bin := buildQuorumq(t)
	minimum := 30 * time.Minute
	if s := os.Getenv("QUORUMQ_CHAOS_MIN"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatal(err)
		}
		minimum = d
	}
	start := time.Now()
	dir := runDir(t)
	ks := kinds(t, FullKinds)
	for i := 0; ; i++ {
		for _, seed := range seeds(t, 1) {
			run(t, Config{Binary: bin, Dir: dir, Seed: seed + uint64(i), Kinds: ks, Faults: 2 * len(AllKinds)})
		}
		if time.Since(start) >= minimum || os.Getenv("QUORUMQ_CHAOS_SEED") != "" {
			break
		}
	}
	t.Logf("chaos: %v in all", time.Since(start).Round(time.Second))
}
