package verify

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/quorumq/quorumq/client"
)

// convergePoll spaces the rounds of CheckConvergence.
const convergePoll = 200 * time.Millisecond

// ConvergenceError is how CheckConvergence fails.
type ConvergenceError struct {
	// Diverged: replicas of a partition at the same applied index hold
	// different states, which no amount of waiting mends. Otherwise the
	// replicas did not reach one index (or did not all answer) before the
	// deadline.
	Diverged bool
	// Partitions describes each partition that did not converge, one line
	// each: "queue/partition: ...".
	Partitions []string
	// Err is why polling stopped (the context's error), if it did.
	Err error
}

func (e *ConvergenceError) Error() string {
	what := "replicas did not converge"
	if e.Diverged {
		what = "replicas diverged"
	}
	msg := fmt.Sprintf("verify: %s: %s", what, strings.Join(e.Partitions, "; "))
	if e.Err != nil {
		msg += fmt.Sprintf(" (%v)", e.Err)
	}
	return msg
}

func (e *ConvergenceError) Unwrap() error { return e.Err }

// replicaState is what one replica reports.
type replicaState struct {
	node    string
	applied uint64
	sum     uint64
}

type partKey struct {
	queue string
	part  uint32
}

// CheckConvergence polls the nodes at addrs (client addresses; nil: every
// member the cluster lists) until every replica of every partition of
// queues reports the same applied index and the same state checksum, and
// returns nil then. Replicas may still be catching up, so it polls until
// ctx ends; then it returns a *ConvergenceError that names each partition
// that did not converge and what its replicas reported. Two replicas that
// report one applied index with different checksums have diverged: that
// error comes at once (Diverged). The replicas expected are those the
// catalogue lists; every node hosting one must be reachable at one of
// addrs.
func CheckConvergence(ctx context.Context, c *client.Client, addrs []string, queues []string) error {
	for {
		pending, diverged := convergenceRound(ctx, c, addrs, queues)
		if len(diverged) > 0 {
			return &ConvergenceError{Diverged: true, Partitions: diverged}
		}
		if len(pending) == 0 {
			return nil
		}
		if !sleepCtx(ctx, convergePoll) {
			return &ConvergenceError{Partitions: pending, Err: ctx.Err()}
		}
	}
}

// convergenceRound asks every node once and returns the partitions that
// have not converged yet and those that diverged.
func convergenceRound(ctx context.Context, c *client.Client, addrs []string, queues []string) (pending, diverged []string) {
	call := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 2*time.Second) }
	if len(addrs) == 0 {
		cctx, cancel := call()
		ms, err := c.Members(cctx)
		cancel()
		if err != nil {
			return []string{"members: " + err.Error()}, nil
		}
		for _, m := range ms {
			if m.GetCatalogState() != "removed" && m.GetClientAddr() != "" {
				addrs = append(addrs, m.GetClientAddr())
			}
		}
	}
	expected := map[partKey][]string{}
	var keys []partKey
	for _, q := range queues {
		cctx, cancel := call()
		ps, err := c.Partitions(cctx, q)
		cancel()
		if err != nil {
			pending = append(pending, fmt.Sprintf("%s: partitions: %v", q, err))
			continue
		}
		for _, p := range ps {
			k := partKey{q, p.GetPartition()}
			keys = append(keys, k)
			for _, r := range p.GetReplicas() {
				expected[k] = append(expected[k], r.GetNodeId())
			}
		}
	}
	reports := map[partKey][]replicaState{}
	var nodeErrs []string // reported only with partitions that did not converge
	for _, addr := range addrs {
		for _, q := range queues {
			cctx, cancel := call()
			ps, err := c.LocalPartitions(cctx, addr, q)
			cancel()
			if err != nil {
				nodeErrs = append(nodeErrs, fmt.Sprintf("node %s: %v", addr, err))
				continue
			}
			for _, p := range ps {
				k := partKey{p.GetQueue(), p.GetPartition()}
				reports[k] = append(reports[k], replicaState{node: p.GetNodeId(), applied: p.GetAppliedIndex(), sum: p.GetStateChecksum()})
			}
		}
	}
	slices.SortFunc(keys, func(a, b partKey) int { return cmp.Or(cmp.Compare(a.queue, b.queue), cmp.Compare(a.part, b.part)) })
	for _, k := range keys {
		rs := reports[k]
		slices.SortFunc(rs, func(a, b replicaState) int { return cmp.Compare(a.node, b.node) })
		if d := divergence(rs); d != "" {
			diverged = append(diverged, fmt.Sprintf("%s/%d: %s", k.queue, k.part, d))
			continue
		}
		if p := notConverged(expected[k], rs); p != "" {
			pending = append(pending, fmt.Sprintf("%s/%d: %s", k.queue, k.part, p))
		}
	}
	if len(pending) > 0 {
		pending = append(pending, nodeErrs...)
	}
	return pending, diverged
}

// divergence describes replicas that report one applied index with
// different checksums ("" if none do). Index 0 is not compared: a replica
// restored from a snapshot that does not record its index reports 0.
func divergence(rs []replicaState) string {
	byIndex := map[uint64][]replicaState{}
	for _, r := range rs {
		if r.applied > 0 {
			byIndex[r.applied] = append(byIndex[r.applied], r)
		}
	}
	for idx, same := range byIndex {
		for _, r := range same[1:] {
			if r.sum != same[0].sum {
				return fmt.Sprintf("at applied index %d the replicas hold different states: %s", idx, describe(same))
			}
		}
	}
	return ""
}

// notConverged describes why rs, the reports of a partition whose
// replicas are on the nodes expected, have not converged ("" if they have).
func notConverged(expected []string, rs []replicaState) string {
	var missing []string
	for _, n := range expected {
		if !slices.ContainsFunc(rs, func(r replicaState) bool { return r.node == n }) {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return fmt.Sprintf("no report from the replica on %s (reported: %s)", strings.Join(missing, ", "), describe(rs))
	}
	if len(rs) == 0 {
		return "no replica reported"
	}
	for _, r := range rs[1:] {
		if r.applied != rs[0].applied || r.sum != rs[0].sum {
			return "replicas at different applied indexes: " + describe(rs)
		}
	}
	return ""
}

func describe(rs []replicaState) string {
	if len(rs) == 0 {
		return "none"
	}
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = fmt.Sprintf("%s applied %d checksum %016x", r.node, r.applied, r.sum)
	}
	return strings.Join(parts, ", ")
}
