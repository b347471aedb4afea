package netns

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Fault rules are policy-routing rules in the receiving host's namespace,
// "from <sender> iif eth0 blackhole", looked up before the local table: a
// packet from the sender is dropped on arrival, silently, as a pulled cable
// or a firewall DROP would. Senders see timeouts, not errors. The rules are
// the only state: every change reads them back from the kernel, so each
// fault is idempotent and Heal removes everything, whatever came before.
const (
	faultPref = 100 // priority of fault rules
	localPref = 200 // the local table's, moved from 0 to behind them
)

// cut drops packets from one address (host from, or the gateway when from
// is 0) at host to.
type cut struct{ from, to int }

// Isolate cuts host i off from every other host and from the test process
// (its client port times out too): a host whose network is gone.
func (c *Cluster) Isolate(i int) error {
	if err := c.check(i); err != nil {
		return err
	}
	cuts := c.isolation(i)
	cuts = append(cuts, cut{0, i})
	return c.addCuts(fmt.Sprintf("isolate n%d", i), cuts)
}

// IsolateFromPeers cuts host i off from every other host, both ways; the
// test process still reaches it, so a client can watch what an isolated
// node answers.
func (c *Cluster) IsolateFromPeers(i int) error {
	if err := c.check(i); err != nil {
		return err
	}
	return c.addCuts(fmt.Sprintf("isolate n%d from peers", i), c.isolation(i))
}

func (c *Cluster) isolation(i int) []cut {
	var cuts []cut
	for j := 1; j <= len(c.hosts); j++ {
		if j != i {
			cuts = append(cuts, cut{i, j}, cut{j, i})
		}
	}
	return cuts
}

// Partition cuts every link between hosts of different groups, both ways.
// Hosts in no group keep every link (Bridge is such a partition). The test
// process reaches every host.
func (c *Cluster) Partition(groups ...[]int) error {
	if err := c.check(slices.Concat(groups...)...); err != nil {
		return err
	}
	var cuts []cut
	for g, a := range groups {
		for _, b := range groups[g+1:] {
			for _, i := range a {
				for _, j := range b {
					cuts = append(cuts, cut{i, j}, cut{j, i})
				}
			}
		}
	}
	return c.addCuts("partition "+groupString(groups), cuts)
}

// Bridge cuts a from b, both ways, while mid keeps its links to both sides.
func (c *Cluster) Bridge(a, b []int, mid int) error {
	if err := c.check(slices.Concat(a, b, []int{mid})...); err != nil {
		return err
	}
	var cuts []cut
	for _, i := range a {
		for _, j := range b {
			cuts = append(cuts, cut{i, j}, cut{j, i})
		}
	}
	return c.addCuts(fmt.Sprintf("bridge %s via n%d", groupString([][]int{a, b}), mid), cuts)
}

// DropOneWay drops packets from host from to host to; the other way passes.
// No TCP connection can then form between them, in either direction, but
// data on established connections flows to from.
func (c *Cluster) DropOneWay(from, to int) error {
	if err := c.check(from, to); err != nil {
		return err
	}
	if from == to {
		return fmt.Errorf("netns: drop n%d -> n%d: same host", from, to)
	}
	return c.addCuts(fmt.Sprintf("drop n%d -> n%d", from, to), []cut{{from, to}})
}

// Heal removes every fault rule: every host reaches every other again.
func (c *Cluster) Heal() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("netns: cluster closed")
	}
	c.logf("heal")
	ctx := context.Background()
	var errs []error
	for _, h := range c.hosts {
		have, err := faultRules(ctx, h.ns)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if len(have) == 0 {
			continue
		}
		var cmds []string
		for src := range have {
			cmds = append(cmds, ruleCmd("del", src))
		}
		if err := ipBatch(ctx, h.ns, cmds); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// check validates host numbers and that none repeats.
func (c *Cluster) check(hosts ...int) error {
	seen := map[int]bool{}
	for _, i := range hosts {
		if i < 1 || i > len(c.hosts) {
			return fmt.Errorf("netns: host %d out of range 1..%d", i, len(c.hosts))
		}
		if seen[i] {
			return fmt.Errorf("netns: host %d given twice", i)
		}
		seen[i] = true
	}
	return nil
}

// addCuts installs the cuts that are not in place yet, and logs op.
func (c *Cluster) addCuts(op string, cuts []cut) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("netns: cluster closed")
	}
	c.logf("%s", op)
	ctx := context.Background()
	byHost := map[int][]netip.Addr{}
	for _, k := range cuts {
		src := c.gw
		if k.from != 0 {
			src = c.hosts[k.from-1].ip
		}
		byHost[k.to] = append(byHost[k.to], src)
	}
	var errs []error
	for to := 1; to <= len(c.hosts); to++ {
		srcs := byHost[to]
		if len(srcs) == 0 {
			continue
		}
		ns := c.hosts[to-1].ns
		have, err := faultRules(ctx, ns)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var cmds []string
		for _, src := range srcs {
			if !have[src] {
				have[src] = true
				cmds = append(cmds, ruleCmd("add", src))
			}
		}
		if len(cmds) > 0 {
			if err := ipBatch(ctx, ns, cmds); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func ruleCmd(verb string, src netip.Addr) string {
	return fmt.Sprintf("rule %s pref %d from %s iif eth0 blackhole", verb, faultPref, src)
}

// faultRules reads the senders that namespace ns drops.
func faultRules(ctx context.Context, ns string) (map[netip.Addr]bool, error) {
	out, err := ipRun(ctx, "", "-n", ns, "-j", "rule", "show", "pref", fmt.Sprint(faultPref))
	if err != nil {
		return nil, err
	}
	var rules []struct {
		Src string `json:"src"`
	}
	if err := json.Unmarshal(out, &rules); err != nil {
		return nil, fmt.Errorf("netns: rules of %s: %v", ns, err)
	}
	have := map[netip.Addr]bool{}
	for _, r := range rules {
		a, err := netip.ParseAddr(r.Src)
		if err != nil {
			return nil, fmt.Errorf("netns: rule of %s from %q: %v", ns, r.Src, err)
		}
		have[a] = true
	}
	return have, nil
}

// groupString renders groups as "[n1 n2] | [n3]".
func groupString(groups [][]int) string {
	var parts []string
	for _, g := range groups {
		parts = append(parts, "["+hostList(g)+"]")
	}
	return strings.Join(parts, " | ")
}
