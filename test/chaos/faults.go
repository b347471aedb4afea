// Package chaos runs the verify workload against real quorumq processes in
// network namespaces (test/netns) while a seeded random schedule of faults
// breaks them, then heals everything, drains, and checks the history: no
// acknowledged message lost, none unexpected or resurrected, replicas
// converged. A run is replayable from its seed.
package chaos

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/quorumq/quorumq/client"
	"github.com/quorumq/quorumq/test/netns"
	"github.com/quorumq/quorumq/test/verify"
)

// Kind is a kind of fault.
type Kind string

// The fault kinds.
const (
	KillNode       Kind = "kill-node"       // SIGKILL one node, restart it
	KillLeader     Kind = "kill-leader"     // SIGKILL the node leading a partition
	KillController Kind = "kill-controller" // SIGKILL the controller leader
	KillMajority   Kind = "kill-majority"   // SIGKILL two of three nodes at once
	Pause          Kind = "pause"           // SIGSTOP a node past the election timeout
	IsolateNode    Kind = "isolate-node"    // cut one node off, clients included
	IsolateLeader  Kind = "isolate-leader"  // cut a partition leader off
	Split          Kind = "split"           // majority | minority
	Bridge         Kind = "bridge"          // two sides that only one node sees
	OneWay         Kind = "one-way"         // packets from one node to another dropped
	Wipe           Kind = "wipe"            // a node loses its data directory
	WipeLeader     Kind = "wipe-leader"     // a busy partition's leader loses its data right after an ack, restarts at once
	Replace        Kind = "replace"         // a node dies for good; a new one takes its place
	RollingRestart Kind = "rolling-restart" // every node stopped and started in turn
	LoseUnsynced   Kind = "lose-unsynced"   // a node dies with its machine: SIGKILL, its unsynced writes lost (test/lazyfs), restart
)

// AllKinds is every fault kind.
var AllKinds = []Kind{KillNode, KillLeader, KillController, KillMajority, Pause, IsolateNode, IsolateLeader,
	Split, Bridge, OneWay, Wipe, WipeLeader, Replace, RollingRestart, LoseUnsynced}

// FullKinds is what make chaos draws from: every kind, wipe-leader three
// times as often as the others (the fault that lost acknowledged messages
// before replicas were bound to their identity).
var FullKinds = append(slices.Clone(AllKinds), WipeLeader, WipeLeader)

// ShortKinds is the CI set: kill, isolate and wipe a leader, pause a node,
// lose a node's unsynced writes.
var ShortKinds = []Kind{KillLeader, IsolateLeader, Pause, WipeLeader, LoseUnsynced}

// Fault is one scheduled fault: its kind, the hosts it picks (1-based),
// and how long it lasts.
type Fault struct {
	Kind  Kind
	Hosts []int // picked from the seed; leader kinds resolve theirs when run
	Hold  time.Duration
}

func (f Fault) String() string { return fmt.Sprintf("%s %v for %v", f.Kind, f.Hosts, f.Hold) }

// Schedule returns n faults drawn from kinds by seed: each kind at least
// once (in a seeded order) when n allows, then random ones. The same seed,
// kinds and n give the same schedule. Every lose-unsynced fault picks the
// same host, the first one's: its data directory is on a lazyfs for the
// whole run (lazyHost).
func Schedule(seed uint64, kinds []Kind, n, nodes int) []Fault {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	order := slices.Clone(kinds)
	r.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	var out []Fault
	for i := range n {
		k := order[r.IntN(len(order))]
		if i < len(order) {
			k = order[i]
		}
		perm := r.Perm(nodes)
		hosts := make([]int, nodes)
		for j, p := range perm {
			hosts[j] = p + 1
		}
		out = append(out, Fault{Kind: k, Hosts: hosts, Hold: time.Duration(2000+r.IntN(4000)) * time.Millisecond})
	}
	if lazy := lazyHost(out); lazy != 0 {
		for _, f := range out {
			if f.Kind == LoseUnsynced {
				i := slices.Index(f.Hosts, lazy)
				f.Hosts[0], f.Hosts[i] = f.Hosts[i], f.Hosts[0]
			}
		}
	}
	return out
}

// lazyHost is the host whose data directory a run with faults puts on a
// lazyfs: the first lose-unsynced fault's, or 0 with none.
func lazyHost(faults []Fault) int {
	for _, f := range faults {
		if f.Kind == LoseUnsynced {
			return f.Hosts[0]
		}
	}
	return 0
}

// injector applies faults to a cluster.
type injector struct {
	c    *netns.Cluster
	cli  *client.Client
	hist *verify.History // the workload's, to strike right after an ack
	log  io.Writer       // the timeline
	// ids maps a host to the node id it runs as (a replaced node gets a
	// new one).
	ids map[int]string
	gen int
	// lazy is the lazyfs under lazy.host's data directory (nil without
	// lose-unsynced faults).
	lazy *lazyMount
}

func (in *injector) logf(format string, args ...any) {
	if in.log != nil {
		fmt.Fprintf(in.log, format+"\n", args...)
	}
}

// hostOf returns the host running node id, or 0.
func (in *injector) hostOf(id string) int {
	for h, n := range in.ids {
		if n == id {
			return h
		}
	}
	return 0
}

// leaderHost is the host leading partition 0 of queue, else f.Hosts[0].
func (in *injector) leaderHost(ctx context.Context, queue string, f Fault) int {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	ps, err := in.cli.Partitions(ctx, queue)
	if err == nil && len(ps) > 0 {
		if h := in.hostOf(ps[0].GetLeader()); h != 0 {
			return h
		}
	}
	return f.Hosts[0]
}

// controllerHost is the host leading the controller, else f.Hosts[0].
func (in *injector) controllerHost(ctx context.Context, f Fault) int {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	st, err := in.cli.ClusterStatus(ctx)
	if err == nil {
		if h := in.hostOf(st.GetControllerLeader()); h != 0 {
			return h
		}
	}
	return f.Hosts[0]
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// apply runs fault f to its end: break, hold, repair. It returns once
// every host runs again and the network is whole (readiness is the
// caller's to wait for).
func (in *injector) apply(ctx context.Context, queue string, f Fault) error {
	c := in.c
	restart := func(hosts ...int) error {
		for _, h := range hosts {
			if err := c.StartAs(h, in.ids[h]); err != nil {
				return err
			}
		}
		return nil
	}
	killHold := func(hosts ...int) error {
		for _, h := range hosts {
			if err := c.Kill(h); err != nil {
				return err
			}
		}
		sleep(ctx, f.Hold)
		return restart(hosts...)
	}
	cutHold := func(cut func() error) error {
		if err := cut(); err != nil {
			return err
		}
		sleep(ctx, f.Hold)
		return c.Heal()
	}
	a, b, mid := f.Hosts[0], f.Hosts[1], f.Hosts[2]
	switch f.Kind {
	case KillNode:
		return killHold(a)
	case KillLeader:
		return killHold(in.leaderHost(ctx, queue, f))
	case KillController:
		return killHold(in.controllerHost(ctx, f))
	case KillMajority:
		return killHold(a, b)
	case Pause:
		if err := c.Pause(a); err != nil {
			return err
		}
		sleep(ctx, f.Hold)
		return c.Resume(a)
	case IsolateNode:
		return cutHold(func() error { return c.Isolate(a) })
	case IsolateLeader:
		l := in.leaderHost(ctx, queue, f)
		return cutHold(func() error { return c.Isolate(l) })
	case Split:
		return cutHold(func() error { return c.Partition([]int{a, b}, []int{mid}) })
	case Bridge:
		return cutHold(func() error { return c.Bridge([]int{a}, []int{b}, mid) })
	case OneWay:
		return cutHold(func() error { return c.DropOneWay(a, b) })
	case Wipe:
		if err := c.Kill(a); err != nil {
			return err
		}
		if err := c.Wipe(a); err != nil {
			return err
		}
		sleep(ctx, f.Hold)
		return restart(a)
	case WipeLeader:
		// The leader of a partition under load loses its disk the moment
		// after it acknowledged an enqueue, and comes back at once: the
		// acknowledged entries are then on a bare majority, one of which
		// is the wiped node's old identity.
		l := in.leaderHost(ctx, queue, f)
		acked := in.hist.AckedOn(queue, 0)
		select {
		case <-acked:
		case <-time.After(10 * time.Second):
			in.logf("wipe-leader: no acknowledged enqueue on partition 0 in 10s; wiping anyway")
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := c.Kill(l); err != nil {
			return err
		}
		if err := c.Wipe(l); err != nil {
			return err
		}
		return restart(l)
	case Replace:
		// The node dies for good: a new node, under a new id, takes its
		// host; the cluster moves the dead node's replicas onto it.
		if err := c.Kill(a); err != nil {
			return err
		}
		if err := c.Wipe(a); err != nil {
			return err
		}
		in.gen++
		in.ids[a] = fmt.Sprintf("n%dr%d", a, in.gen)
		sleep(ctx, f.Hold)
		return restart(a)
	case LoseUnsynced:
		// The machine loses power: the node dies, and so does what its
		// kernel had not written to disk. Right after an ack, as
		// wipe-leader, so the node has just written (the host need not
		// lead: every node holds a replica of every partition).
		h := in.lazy.host
		select {
		case <-in.hist.AckedOn(queue, 0):
		case <-time.After(10 * time.Second):
			in.logf("lose-unsynced: no acknowledged enqueue on partition 0 in 10s; crashing anyway")
		case <-ctx.Done():
			return ctx.Err()
		}
		if err := c.Kill(h); err != nil {
			return err
		}
		if err := in.lazy.crash(in.logf); err != nil {
			return err
		}
		sleep(ctx, f.Hold)
		return restart(h)
	case RollingRestart:
		for h := 1; h <= c.Nodes(); h++ {
			// As an operator (or a StatefulSet with a readiness gate)
			// would: the next node goes once every partition is fully
			// replicated again, else a restart may take a majority away.
			live := map[string]bool{}
			for _, id := range in.ids {
				live[id] = true
			}
			wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
			if err := waitReplicated(wctx, in.cli, queue, live); err != nil {
				in.logf("rolling restart: going on without full replication: %v", err)
			}
			cancel()
			sctx, cancel := context.WithTimeout(ctx, 40*time.Second)
			err := c.Stop(sctx, h)
			cancel()
			if err != nil {
				return err
			}
			if err := restart(h); err != nil {
				return err
			}
			rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err = c.WaitReady(rctx, h)
			cancel()
			if err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("chaos: unknown fault kind %q", f.Kind)
}
