// Package netns runs a quorumq cluster as real processes on test hosts made
// of Linux network namespaces, and injects faults into it: kill, stop, pause
// and wipe a node; cut links one way or both ways.
//
// Each host is a namespace with its own IPv4 address on a private bridge; the
// test process, in the root namespace, reaches every host through a gateway
// address on the same subnet. Hosts have no default route, so nothing they
// send can leave the test network. Hosts are numbered 1..N, like their
// names (n1, n2, ...).
//
// The harness needs root, iproute2 (`ip`) and a kernel with network
// namespaces, veth and bridge support. New returns an error wrapping
// ErrUnavailable when the environment lacks them; a test turns that into
// t.Skip. See DESIGN.md for what it promises and how faults are made.
package netns

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Ports every host's quorumq server listens on, at the host's own address.
const (
	ClientPort = 7420
	PeerPort   = 7421
	GossipPort = 7422
	HTTPPort   = 7423
)

// ErrUnavailable says the environment cannot run the harness (not root, no
// `ip`, namespaces or bridges refused). Tests skip on it.
var ErrUnavailable = errors.New("netns: network namespaces unavailable")

// ErrNotRunning is returned by operations that need a running node.
var ErrNotRunning = errors.New("netns: node not running")

// Config describes the hosts to create.
type Config struct {
	// Nodes is the number of hosts (at least 1).
	Nodes int
	// Binary is the quorumq executable; needed only to Start nodes.
	Binary string
	// Dir holds each node's data directory (Dir/n<i>) and log file
	// (Dir/n<i>.log). Empty: a temporary directory that Close removes.
	Dir string
	// Subnet is the hosts' IPv4 network: the gateway is its first address
	// (.1), host i is address 10+i. Zero: a random 10.x.y.0/24 that overlaps
	// no route of the root namespace, so parallel runs never clash.
	Subnet netip.Prefix
	// ExtraArgs are appended to every `quorumq server` command line; a flag
	// given here overrides the harness's own (e.g. "--log-level", "debug").
	ExtraArgs []string
	// Insecure runs the servers with --insecure. By default they run
	// secure, as in production: mutual TLS between nodes with a CA,
	// node certificates and a gossip key in Dir/tls (outside every data
	// directory, so a wipe keeps them).
	Insecure bool
	// Log receives the fault timeline: one line per operation, prefixed with
	// the time since New ("12.345s kill n2"). Nil: discarded.
	Log io.Writer
}

// Cluster is a set of test hosts, and the quorumq server on each. Its
// methods are safe for concurrent use. Close it, also when a test fails.
type Cluster struct {
	cfg    Config
	name   string // run name, "qq" + 6 hex digits: root link and namespace prefix
	dir    string
	ownDir bool
	gw     netip.Addr
	hosts  []*host // hosts[i-1] is host i
	begin  time.Time
	lock   *os.File // the run's lock file, held (flock) while the run lives
	spawn  *spawner

	logMu sync.Mutex

	mu     sync.Mutex // guards the fields below and every host's proc and nodeID
	cuts   map[cut]bool
	closed bool
}

// host is one namespace and the server process in it.
type host struct {
	n      int
	ns     string
	ip     netip.Addr
	nodeID string
	proc   *proc // the last process started; nil before the first start
}

// runName matches the names this package creates: the root-namespace link
// "qq<hex6>", and namespaces "qq<hex6>-sw" (the switch) and "qq<hex6>-n<i>".
var runName = regexp.MustCompile(`^(qq[0-9a-f]{6})(-sw|-n[0-9]+)?$`)

// ipTimeout bounds one `ip` command.
const ipTimeout = 20 * time.Second

// New creates the hosts: a switch namespace holding the bridge, one
// namespace per host wired to it by a veth pair, and a veth from the root
// namespace to the bridge carrying the gateway address. It first removes
// leftovers of crashed runs (CleanupStale). On error nothing is left behind.
func New(ctx context.Context, cfg Config) (_ *Cluster, err error) {
	if cfg.Nodes < 1 {
		return nil, fmt.Errorf("netns: Nodes = %d, want at least 1", cfg.Nodes)
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: needs root (euid is %d)", ErrUnavailable, os.Geteuid())
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("%w: no ip command (apt-get install iproute2): %v", ErrUnavailable, err)
	}
	if cfg.Binary != "" {
		if cfg.Binary, err = filepath.Abs(cfg.Binary); err != nil {
			return nil, err
		}
	}

	// The global lock serializes New and CleanupStale: a run's lock file is
	// taken before any of its links exist, and subnets are chosen one run at
	// a time.
	global, err := lockGlobal()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	defer global.Close()
	if err := cleanupStale(ctx, cfg.Log); err != nil {
		fmt.Fprintf(cfg.Log, "netns: cleaning up stale runs: %v\n", err)
	}

	c := &Cluster{cfg: cfg, begin: time.Now(), cuts: map[cut]bool{}}
	if c.name, c.lock, err = newRun(ctx); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if c.dir = cfg.Dir; c.dir == "" {
		if c.dir, err = os.MkdirTemp("", "quorumq-netns-"); err != nil {
			return nil, err
		}
		c.ownDir = true
	} else if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return nil, err
	}
	subnet := cfg.Subnet
	if !subnet.IsValid() {
		if subnet, err = pickSubnet(ctx); err != nil {
			return nil, err
		}
	}
	if err := c.addresses(subnet.Masked()); err != nil {
		return nil, err
	}
	c.spawn = newSpawner()
	if err := c.build(ctx); err != nil {
		return nil, err
	}
	c.logf("new %s: %d hosts on %s, gateway %s, dir %s", c.name, cfg.Nodes, subnet.Masked(), c.gw, c.dir)
	return c, nil
}

// addresses assigns the gateway and host addresses within subnet.
func (c *Cluster) addresses(subnet netip.Prefix) error {
	if !subnet.Addr().Is4() {
		return fmt.Errorf("netns: subnet %s is not IPv4", subnet)
	}
	c.gw = subnet.Addr().Next()
	a := subnet.Addr()
	for i := 0; i < 10; i++ {
		a = a.Next()
	}
	for i := 1; i <= c.cfg.Nodes; i++ {
		a = a.Next()
		if !subnet.Contains(a) || !subnet.Contains(a.Next()) { // keep the broadcast address free
			return fmt.Errorf("netns: subnet %s too small for %d hosts", subnet, c.cfg.Nodes)
		}
		n := fmt.Sprintf("n%d", i)
		c.hosts = append(c.hosts, &host{n: i, ns: c.name + "-" + n, ip: a, nodeID: n})
	}
	return nil
}

// build creates the namespaces, the bridge and the links. The first step
// probes the environment: its failure means ErrUnavailable.
func (c *Cluster) build(ctx context.Context) error {
	sw := c.name + "-sw"
	bits := strconv.Itoa(c.subnetBits())
	// The bridge lives in its own namespace, not the root one: with
	// br_netfilter loaded (Docker loads it), bridged packets of the root
	// namespace go through its iptables FORWARD chain, which Docker sets to
	// DROP. A fresh namespace has no firewall rules.
	probe := []string{
		"netns add " + sw,
		"link add " + c.name + " type veth peer name uplink netns " + sw,
	}
	if err := ipBatch(ctx, "", probe); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if err := ipBatch(ctx, sw, []string{"link add br0 type bridge", "link set br0 up"}); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	root := []string{
		"addr add " + c.gw.String() + "/" + bits + " dev " + c.name,
		"link set " + c.name + " up",
	}
	for _, h := range c.hosts {
		root = append(root, "netns add "+h.ns)
	}
	if err := ipBatch(ctx, "", root); err != nil {
		return err
	}
	swCmds := []string{"link set uplink master br0 up"}
	for _, h := range c.hosts {
		port := fmt.Sprintf("n%d", h.n)
		swCmds = append(swCmds,
			"link add "+port+" type veth peer name eth0 netns "+h.ns,
			"link set "+port+" master br0 up")
	}
	if err := ipBatch(ctx, sw, swCmds); err != nil {
		return err
	}
	for _, h := range c.hosts {
		// The local table moves behind the fault rules (pref faultPref), which
		// must be looked up first to drop packets addressed to this host.
		err := ipBatch(ctx, h.ns, []string{
			"link set lo up",
			"addr add " + h.ip.String() + "/" + bits + " dev eth0",
			"link set eth0 up",
			fmt.Sprintf("rule add pref %d lookup local", localPref),
			"rule del pref 0 lookup local",
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) subnetBits() int {
	if c.cfg.Subnet.IsValid() {
		return c.cfg.Subnet.Bits()
	}
	return 24
}

// Close kills every process, then deletes the namespaces, links and bridge,
// and the directory if New created it. It may be called more than once.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	var running []*proc
	for _, h := range c.hosts {
		if h.proc != nil && h.proc.alive() {
			running = append(running, h.proc)
		}
	}
	c.mu.Unlock()

	var errs []error
	for _, p := range running {
		p.signal(sigKILL)
	}
	for _, p := range running {
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			errs = append(errs, fmt.Errorf("netns: pid %d did not die", p.cmd.Process.Pid))
		}
	}
	if c.spawn != nil {
		c.spawn.close()
	}
	if c.name != "" {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := removeRun(ctx, c.name); err != nil {
			errs = append(errs, err)
		}
		cancel()
		c.logf("close %s", c.name)
	}
	if c.ownDir && c.dir != "" {
		if err := os.RemoveAll(c.dir); err != nil {
			errs = append(errs, err)
		}
	}
	if c.lock != nil {
		os.Remove(c.lock.Name())
		c.lock.Close()
	}
	return errors.Join(errs...)
}

// Name is the run's name: the root-namespace link is called so, and every
// namespace begins with it.
func (c *Cluster) Name() string { return c.name }

// Nodes is the number of hosts.
func (c *Cluster) Nodes() int { return len(c.hosts) }

// Dir is the directory of data directories and logs.
func (c *Cluster) Dir() string { return c.dir }

// Gateway is the root namespace's address on the test network: where the
// test process's connections to the hosts come from.
func (c *Cluster) Gateway() netip.Addr { return c.gw }

// IP is host i's address.
func (c *Cluster) IP(i int) netip.Addr { return c.host(i).ip }

// Namespace is host i's network namespace, for `ip netns exec`.
func (c *Cluster) Namespace(i int) string { return c.host(i).ns }

// ClientAddr is host i's client gRPC address.
func (c *Cluster) ClientAddr(i int) string { return c.addr(i, ClientPort) }

// HTTPAddr is host i's HTTP address (/readyz, /metrics).
func (c *Cluster) HTTPAddr(i int) string { return c.addr(i, HTTPPort) }

// Addrs lists every host's client address, for a client's seed list.
func (c *Cluster) Addrs() []string {
	var a []string
	for i := 1; i <= len(c.hosts); i++ {
		a = append(a, c.ClientAddr(i))
	}
	return a
}

// DataDir is host i's data directory.
func (c *Cluster) DataDir(i int) string { return filepath.Join(c.dir, fmt.Sprintf("n%d", c.host(i).n)) }

// LogPath is the file that collects host i's server output.
func (c *Cluster) LogPath(i int) string { return c.DataDir(i) + ".log" }

func (c *Cluster) addr(i, port int) string {
	return netip.AddrPortFrom(c.host(i).ip, uint16(port)).String()
}

// host returns host i; an index out of 1..N is a bug in the caller.
func (c *Cluster) host(i int) *host {
	if i < 1 || i > len(c.hosts) {
		panic(fmt.Sprintf("netns: host %d out of range 1..%d", i, len(c.hosts)))
	}
	return c.hosts[i-1]
}

// logf writes one timeline line.
func (c *Cluster) logf(format string, args ...any) {
	c.logMu.Lock()
	defer c.logMu.Unlock()
	fmt.Fprintf(c.cfg.Log, "%.3fs %s\n", time.Since(c.begin).Seconds(), fmt.Sprintf(format, args...))
}

// ipBatch runs `ip [-n ns] -batch -` with cmds on its standard input.
func ipBatch(ctx context.Context, ns string, cmds []string) error {
	var args []string
	if ns != "" {
		args = append(args, "-n", ns)
	}
	args = append(args, "-batch", "-")
	_, err := ipRun(ctx, strings.Join(cmds, "\n")+"\n", args...)
	return err
}

// ipRun runs one ip command and returns its standard output.
func ipRun(ctx context.Context, stdin string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, ipTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		what := "ip " + strings.Join(args, " ")
		if stdin != "" {
			what += " <<< " + strings.ReplaceAll(strings.TrimSpace(stdin), "\n", "; ")
		}
		return out, fmt.Errorf("%s: %v: %s", what, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// pickSubnet chooses a random 10.x.y.0/24 that overlaps no route or
// address of the root namespace (the default route aside).
func pickSubnet(ctx context.Context) (netip.Prefix, error) {
	out, err := ipRun(ctx, "", "-j", "-4", "route", "show", "table", "all")
	if err != nil {
		return netip.Prefix{}, err
	}
	var routes []struct {
		Dst string `json:"dst"`
	}
	if err := json.Unmarshal(out, &routes); err != nil {
		return netip.Prefix{}, fmt.Errorf("netns: reading routes: %v", err)
	}
	var used []netip.Prefix
	for _, r := range routes {
		if p, err := netip.ParsePrefix(r.Dst); err == nil {
			used = append(used, p)
		} else if a, err := netip.ParseAddr(r.Dst); err == nil {
			used = append(used, netip.PrefixFrom(a, a.BitLen()))
		}
	}
next:
	for range 1000 {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(rand.IntN(256)), byte(rand.IntN(256)), 0}), 24)
		for _, u := range used {
			if u.Bits() > 0 && u.Overlaps(p) {
				continue next
			}
		}
		return p, nil
	}
	return netip.Prefix{}, errors.New("netns: no free 10.x.y.0/24 subnet; set Config.Subnet")
}
