package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/quorumq/quorumq/client"
	"github.com/quorumq/quorumq/test/netns"
	"github.com/quorumq/quorumq/test/verify"
)

// Config is one chaos run.
type Config struct {
	Binary string // the quorumq executable
	Dir    string // where the run writes its folder (created)
	Nodes  int    // [3]
	Seed   uint64
	// Kinds are the fault kinds drawn from [AllKinds]. With
	// lose-unsynced, one node's data directory is on a test/lazyfs mount
	// for the whole run, and Run fails with an error wrapping
	// lazyfs.ErrUnavailable where FUSE is not (root, /dev/fuse,
	// fusermount3).
	Kinds  []Kind
	Faults int // how many faults [len(Kinds)]
	// Gap is the quiet time between two faults [2s].
	Gap time.Duration
	// Rate is the workload's messages per second [200].
	Rate float64
	// ReplaceAfter is the servers' --replace-after [5s].
	ReplaceAfter time.Duration
	// Out gets the one-screen summary (nil: none).
	Out io.Writer
}

// Result is what a run found.
type Result struct {
	Seed     uint64
	Faults   []Fault
	Verdict  *verify.Verdict
	Converge error // replicas did not converge
	Replicas error // a partition not fully replicated on live nodes
	// Unavailable is, per fault kind, the longest time without any
	// acknowledged enqueue while a fault of that kind was on.
	Unavailable map[Kind]time.Duration
	Dir         string
}

// OK: nothing lost, unexpected or resurrected, no order violation,
// replicas converged and fully replicated.
func (r *Result) OK() bool {
	return r.Verdict != nil && r.Verdict.OK() && r.Converge == nil && r.Replicas == nil
}

// window is when one fault was on.
type window struct {
	kind       Kind
	start, end time.Time
}

// Run runs the workload under cfg's faults and checks the outcome. An
// error means the run could not be carried out (setup, drain); a run that
// found a violation returns a Result whose OK is false.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Nodes == 0 {
		cfg.Nodes = 3
	}
	if len(cfg.Kinds) == 0 {
		cfg.Kinds = AllKinds
	}
	if cfg.Faults == 0 {
		cfg.Faults = len(cfg.Kinds)
	}
	if cfg.Gap == 0 {
		cfg.Gap = 2 * time.Second
	}
	if cfg.Rate == 0 {
		cfg.Rate = 200
	}
	if cfg.ReplaceAfter == 0 {
		cfg.ReplaceAfter = 5 * time.Second
	}
	dir := filepath.Join(cfg.Dir, fmt.Sprintf("seed-%d", cfg.Seed))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	timeline, err := os.Create(filepath.Join(dir, "timeline.log"))
	if err != nil {
		return nil, err
	}
	defer timeline.Close()
	tl := &syncWriter{w: timeline}
	res := &Result{Seed: cfg.Seed, Faults: Schedule(cfg.Seed, cfg.Kinds, cfg.Faults, cfg.Nodes), Dir: dir, Unavailable: map[Kind]time.Duration{}}

	c, err := netns.New(ctx, netns.Config{Nodes: cfg.Nodes, Binary: cfg.Binary, Dir: filepath.Join(dir, "nodes"), Log: tl,
		ExtraArgs: []string{"--replace-after", cfg.ReplaceAfter.String()}})
	if err != nil {
		return nil, err
	}
	in := &injector{c: c, ids: map[int]string{}, log: tl}
	defer func() {
		c.Close()
		// Once every node is dead: a lazyfs unmounted under a live node
		// would cut it off.
		if err := in.lazy.unmount(); err != nil {
			fmt.Fprintf(tl, "lazyfs: %v\n", err)
		}
	}()
	if h := lazyHost(res.Faults); h != 0 {
		if in.lazy, err = mountLazy(c, h); err != nil {
			return nil, err
		}
		fmt.Fprintf(tl, "n%d's data directory is a lazyfs mount of %s\n", h, in.lazy.backing)
	}
	for h := 1; h <= cfg.Nodes; h++ {
		in.ids[h] = fmt.Sprintf("n%d", h)
		if err := c.StartAs(h, in.ids[h]); err != nil {
			return nil, err
		}
	}
	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	err = c.WaitReady(rctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("cluster not ready: %w", err)
	}
	adminTLS, err := c.AdminTLS()
	if err != nil {
		return nil, err
	}
	var opts []client.Option
	if adminTLS != nil {
		opts = append(opts, client.WithTLS(adminTLS))
	}
	cli, err := client.New(ctx, c.Addrs(), opts...)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	in.cli = cli

	w, err := verify.New(verify.Config{Client: cli, Rate: cfg.Rate, Seed: cfg.Seed, NumQueues: 1, Partitions: 3, Replicas: 3,
		RequeueFraction: 0.05, ExpireFraction: 0.02, Timeout: 5 * time.Second})
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	err = w.Setup(sctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("workload setup: %w", err)
	}
	queue := w.Queues()[0]
	in.hist = w.History()
	wctx, stopWorkload := context.WithCancel(ctx)
	workDone := make(chan error, 1)
	go func() { workDone <- w.Run(wctx) }()

	var wins []window
	fmt.Fprintf(tl, "schedule seed %d: %v\n", cfg.Seed, res.Faults)
	for _, f := range res.Faults {
		sleep(ctx, cfg.Gap)
		if ctx.Err() != nil {
			break
		}
		fmt.Fprintf(tl, "fault %s\n", f)
		win := window{kind: f.Kind, start: time.Now()}
		ferr := in.apply(ctx, queue, f)
		// The fault lasts until the cluster serves again; one that lost a
		// node's data lasts until every partition is fully replicated
		// again: a second loss before that would be a majority's, which
		// no quorum system survives.
		rctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		rerr := c.WaitReady(rctx)
		cancel()
		if rerr == nil && (f.Kind == Wipe || f.Kind == WipeLeader || f.Kind == Replace) {
			live := map[string]bool{}
			for _, id := range in.ids {
				live[id] = true
			}
			rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			rerr = waitReplicated(rctx, cli, queue, live)
			cancel()
			fmt.Fprintf(tl, "fully replicated again after %v\n", time.Since(win.start).Round(time.Millisecond))
		}
		win.end = time.Now()
		wins = append(wins, win)
		if ferr != nil || rerr != nil {
			stopWorkload()
			<-workDone
			return res, fmt.Errorf("fault %s: %w", f, errors.Join(ferr, rerr))
		}
	}
	sleep(ctx, cfg.Gap)
	stopWorkload()
	if err := <-workDone; err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(tl, "workload: %v\n", err)
	}
	fmt.Fprintf(tl, "faults over; draining\n")
	dctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	derr := w.Drain(dctx)
	cancel()
	if derr != nil {
		fmt.Fprintf(tl, "drain: %v\n", derr)
	}
	ops := w.History().Ops()
	if err := w.History().WriteFile(filepath.Join(dir, "history.jsonl")); err != nil {
		return res, err
	}
	res.Verdict = verify.Check(ops, verify.CheckOptions{})
	res.Unavailable = unavailability(ops, wins)

	live := map[string]bool{}
	for _, id := range in.ids {
		live[id] = true
	}
	rctx, cancel = context.WithTimeout(ctx, 2*time.Minute)
	res.Replicas = waitReplicated(rctx, cli, queue, live)
	res.Converge = verify.CheckConvergence(rctx, cli, c.Addrs(), w.Queues())
	cancel()

	if err := writeResult(dir, res); err != nil {
		return res, err
	}
	if cfg.Out != nil {
		fmt.Fprint(cfg.Out, res.Summary())
	}
	return res, derr
}

// unavailability is, per fault kind, the longest stretch inside one of its
// windows with no enqueue acknowledged (measured between acknowledgements,
// and from the window's start and to its end).
func unavailability(ops []verify.Op, wins []window) map[Kind]time.Duration {
	var acks []time.Time
	for _, o := range ops {
		if o.Kind == verify.KindEnqueue && o.Outcome == verify.OK {
			acks = append(acks, o.Complete)
		}
	}
	slices.SortFunc(acks, func(a, b time.Time) int { return a.Compare(b) })
	out := map[Kind]time.Duration{}
	for _, w := range wins {
		last := w.start
		longest := time.Duration(0)
		for _, t := range acks {
			if t.Before(w.start) {
				continue
			}
			if t.After(w.end) {
				break
			}
			longest = max(longest, t.Sub(last))
			last = t
		}
		longest = max(longest, w.end.Sub(last))
		out[w.kind] = max(out[w.kind], longest)
	}
	return out
}

// waitReplicated waits until every partition of queue has its replication
// factor of voters, all on live nodes, with no move in progress.
func waitReplicated(ctx context.Context, cli *client.Client, queue string, live map[string]bool) error {
	var last string
	for {
		ps, err := cli.Partitions(ctx, queue)
		if err == nil {
			last = ""
			for _, p := range ps {
				var bad []string
				for _, r := range p.GetReplicas() {
					if !live[r.GetNodeId()] || !r.GetVoter() || r.GetLeaving() {
						bad = append(bad, r.GetNodeId())
					}
				}
				if len(bad) > 0 || len(p.GetReplicas()) != 3 {
					last += fmt.Sprintf("partition %d: replicas %v (not live, not a voter or leaving: %v); ", p.GetPartition(), p.GetReplicas(), bad)
				}
			}
			if last == "" {
				return nil
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not fully replicated on live nodes: %s", last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Summary is the one-screen report of a run.
func (r *Result) Summary() string {
	var b strings.Builder
	verdict := "PASS"
	if !r.OK() {
		verdict = "FAIL"
	}
	fmt.Fprintf(&b, "chaos seed %d: %s (%s)\n", r.Seed, verdict, r.Dir)
	for _, f := range r.Faults {
		fmt.Fprintf(&b, "  fault %s\n", f)
	}
	kinds := make([]string, 0, len(r.Unavailable))
	for k := range r.Unavailable {
		kinds = append(kinds, string(k))
	}
	slices.Sort(kinds)
	for _, k := range kinds {
		fmt.Fprintf(&b, "  longest unavailability %-16s %v\n", k, r.Unavailable[Kind(k)].Round(time.Millisecond))
	}
	if r.Verdict != nil {
		_ = r.Verdict.WriteText(&b)
		if !strings.HasSuffix(b.String(), "\n") {
			b.WriteString("\n")
		}
	}
	if r.Converge != nil {
		fmt.Fprintf(&b, "  replicas diverged: %v\n", r.Converge)
	}
	if r.Replicas != nil {
		fmt.Fprintf(&b, "  replication: %v\n", r.Replicas)
	}
	return b.String()
}

func writeResult(dir string, r *Result) error {
	out := struct {
		Seed          uint64           `json:"seed"`
		OK            bool             `json:"ok"`
		Faults        []string         `json:"faults"`
		Verdict       *verify.Verdict  `json:"verdict"`
		Converge      string           `json:"converge_error,omitempty"`
		Replicas      string           `json:"replication_error,omitempty"`
		UnavailableMS map[string]int64 `json:"longest_unavailable_ms"`
	}{Seed: r.Seed, OK: r.OK(), Verdict: r.Verdict, UnavailableMS: map[string]int64{}}
	for _, f := range r.Faults {
		out.Faults = append(out.Faults, f.String())
	}
	if r.Converge != nil {
		out.Converge = r.Converge.Error()
	}
	if r.Replicas != nil {
		out.Replicas = r.Replicas.Error()
	}
	for k, d := range r.Unavailable {
		out.UnavailableMS[string(k)] = d.Milliseconds()
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "verdict.json"), b, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "summary.txt"), []byte(r.Summary()), 0o644)
}

// syncWriter serialises writes to the timeline.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
