package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Meta is what a node tells the others about itself through gossip.
type Meta struct {
	ID      string `json:"id"`
	Client  string `json:"c"`
	Peer    string `json:"p"`
	HTTP    string `json:"h,omitempty"`
	Zone    string `json:"z,omitempty"`
	Version string `json:"v"`
	// Fresh: the node has no cluster state yet and may take part in
	// bootstrapping. A node that has ever been in a cluster never is again.
	Fresh bool `json:"f,omitempty"`
	// Leaving: the node is stopping gracefully; when it goes, it left
	// rather than died.
	Leaving bool `json:"l,omitempty"`
	// Instance: the random id of the node's data directory; another one
	// under the same node id means the node lost its data.
	Instance string `json:"i,omitempty"`
	// Controller: the server id of the node's member of the controller
	// group. It changes when the node loses its controller state; the
	// member it was is then gone for good.
	Controller string `json:"r,omitempty"`
	// Access: the node applies the catalogue's access commands (grants,
	// tokens, receipt keys). The first of them is proposed only once every
	// node of the catalogue says so: a node of an older version would
	// refuse them and its catalogue would part from the others'.
	Access bool `json:"a,omitempty"`
	// DiskLow: the node's data directory is below its free-space
	// watermark; partition leaders refuse enqueues into the partitions
	// it holds a replica of (storage.go).
	DiskLow bool `json:"d,omitempty"`
}

// Member is a node as this node's gossip sees it.
type Member struct {
	Meta
	Gossip string
	// State: alive, suspect, dead or left.
	State string
	// Since: when this node's gossip saw the member enter State.
	Since time.Time
}

// membership runs memberlist. Its delegate callbacks never block gossip:
// they update state under a mutex and signal changed without waiting.
type membership struct {
	ml  *memberlist.Memberlist
	log *slog.Logger
	// mlLog takes memberlist's log lines (rate-limited).
	mlLog *rateLimitedWriter

	mu    sync.Mutex
	self  Meta
	nodes map[string]Member // by memberlist node name, from the event callbacks

	// changed has room for one signal; senders never block, so a burst of
	// events becomes one wake-up for the reader.
	changed chan struct{}
}

// newMembership starts gossip. With keyring, every gossip message is
// encrypted and authenticated with its primary key, and messages that are
// not (or under a key not in the ring) are refused, both ways.
func newMembership(bind string, advertise string, self Meta, keyring *memberlist.Keyring, logger *slog.Logger) (*membership, error) {
	m := &membership{self: self, log: logger, changed: make(chan struct{}, 1), nodes: map[string]Member{}}
	host, port, err := net.SplitHostPort(bind)
	if err != nil {
		return nil, err
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return nil, fmt.Errorf("gossip port %q: %w", port, err)
	}
	if host == "" {
		host = "0.0.0.0"
	}
	c := memberlist.DefaultLANConfig()
	c.Name = self.ID
	c.BindAddr, c.BindPort = host, p
	if advertise != "" {
		ah, ap, err := net.SplitHostPort(advertise)
		if err != nil {
			return nil, err
		}
		c.AdvertiseAddr = ah
		c.AdvertisePort, _ = strconv.Atoi(ap)
	}
	if keyring != nil {
		c.Keyring = keyring
		c.GossipVerifyIncoming = true
		c.GossipVerifyOutgoing = true
	}
	c.Delegate = (*gossipDelegate)(m)
	c.Events = (*gossipEvents)(m)
	// A Kubernetes pod comes back with its name and a new IP: once the old
	// incarnation is dead, the name may be taken over.
	c.DeadNodeReclaimTime = 10 * time.Second
	// A datagram that does not decrypt or decode makes memberlist log a
	// line: anyone who reaches the port could fill the log (lograte.go).
	m.mlLog = newRateLimitedWriter(&slogWriter{log: logger.With("component", "gossip")}, gossipLogEvery)
	c.Logger = log.New(m.mlLog, "", 0)
	ml, err := memberlist.Create(c)
	if err != nil {
		return nil, fmt.Errorf("gossip: %w", err)
	}
	m.ml = ml
	return m, nil
}

// Addr is the gossip address others can join.
func (m *membership) Addr() string {
	n := m.ml.LocalNode()
	return net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
}

// join retries joining the given addresses (resolved anew each time, so a
// DNS name listing every pod works) until one succeeds or ctx ends.
func (m *membership) join(ctx context.Context, addrs []string) error {
	if len(addrs) == 0 {
		return nil
	}
	backoff := 200 * time.Millisecond
	for {
		// Contacting our own address counts as a join for memberlist; a
		// headless DNS name always lists this node too. Join the others.
		others := m.others(addrs)
		n, err := 0, error(nil)
		if len(others) > 0 {
			n, err = m.ml.Join(others)
		}
		if n > 0 {
			m.log.Info("joined gossip", "contacted", n)
			return nil
		}
		m.log.Warn("gossip join failed, retrying", "addrs", strings.Join(addrs, ","), "err", err)
		t := time.NewTimer(backoff + rand.N(backoff/2))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// setFresh changes the Fresh flag and gossips the new metadata.
func (m *membership) setFresh(fresh bool) {
	m.mu.Lock()
	changed := m.self.Fresh != fresh
	m.self.Fresh = fresh
	m.mu.Unlock()
	if changed {
		if err := m.ml.UpdateNode(2 * time.Second); err != nil {
			m.log.Warn("gossip metadata update", "err", err)
		}
	}
}

// setDiskLow changes the DiskLow flag and gossips the new metadata.
func (m *membership) setDiskLow(low bool) {
	m.mu.Lock()
	changed := m.self.DiskLow != low
	m.self.DiskLow = low
	m.mu.Unlock()
	if changed {
		if err := m.ml.UpdateNode(2 * time.Second); err != nil {
			m.log.Warn("gossip metadata update", "err", err)
		}
	}
}

// members returns every node gossip knows, alive or not, sorted by id. It
// reads the copy the event callbacks keep: memberlist's own Members()
// returns nodes that its goroutines go on modifying.
func (m *membership) members() []Member {
	m.mu.Lock()
	out := make([]Member, 0, len(m.nodes))
	for _, mem := range m.nodes {
		out = append(out, mem)
	}
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// record copies what gossip says of n; memberlist holds its lock while it
// calls the event delegate, so n may be read here and nowhere later.
// memberlist v0.6.0 does not fill in n.State, so the state comes from the
// event: alive on join and update; on leave, "left" if the node announced
// it was leaving, else "dead".
func (m *membership) record(n *memberlist.Node, gone bool) {
	var meta Meta
	if err := json.Unmarshal(n.Meta, &meta); err != nil || meta.ID == "" {
		return
	}
	state := "alive"
	if gone {
		state = "dead"
		if meta.Leaving {
			state = "left"
		}
	}
	mem := Member{Meta: meta, Gossip: n.Address(), State: state, Since: time.Now()}
	m.mu.Lock()
	if prev, ok := m.nodes[n.Name]; ok && prev.State == state {
		mem.Since = prev.Since
	}
	m.nodes[n.Name] = mem
	m.mu.Unlock()
	m.signal()
}

func (m *membership) signal() {
	select {
	case m.changed <- struct{}{}:
	default:
	}
}

// leave announces that this node is leaving (so that others record it as
// left, not dead), then leaves.
func (m *membership) leave(timeout time.Duration) error {
	m.mu.Lock()
	m.self.Leaving = true
	m.mu.Unlock()
	if err := m.ml.UpdateNode(timeout / 2); err != nil {
		m.log.Debug("gossip leaving update", "err", err)
	}
	return m.ml.Leave(timeout / 2)
}
func (m *membership) shutdown() error { return m.ml.Shutdown() }

type gossipDelegate membership

func (d *gossipDelegate) NodeMeta(limit int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	b, _ := json.Marshal(d.self)
	if len(b) > limit {
		panic(fmt.Sprintf("cluster: node metadata of %d bytes, limit %d", len(b), limit))
	}
	return b
}
func (d *gossipDelegate) NotifyMsg([]byte)                           {}
func (d *gossipDelegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *gossipDelegate) LocalState(join bool) []byte                { return nil }
func (d *gossipDelegate) MergeRemoteState(buf []byte, join bool)     {}

type gossipEvents membership

func (e *gossipEvents) NotifyJoin(n *memberlist.Node)   { (*membership)(e).record(n, false) }
func (e *gossipEvents) NotifyLeave(n *memberlist.Node)  { (*membership)(e).record(n, true) }
func (e *gossipEvents) NotifyUpdate(n *memberlist.Node) { (*membership)(e).record(n, false) }

// slogWriter turns the lines of a standard logger (memberlist, raft's
// hclog) into slog records: "[ERR]"/"[WARN]" keep their level, the rest go
// to Debug.
type slogWriter struct{ log *slog.Logger }

var _ io.Writer = (*slogWriter)(nil)

func (w *slogWriter) Write(b []byte) (int, error) {
	line := strings.TrimSpace(string(b))
	level := slog.LevelDebug
	switch {
	case strings.Contains(line, "[ERR]"), strings.Contains(line, "[ERROR]"):
		level = slog.LevelError
	case strings.Contains(line, "[WARN]"):
		level = slog.LevelWarn
	}
	w.log.Log(context.Background(), level, line)
	return len(b), nil
}

// others resolves addrs (host:port, a host may be a name with several
// addresses) and leaves out this node's own gossip address.
func (m *membership) others(addrs []string) []string {
	self := m.Addr()
	var out []string
	for _, a := range addrs {
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			out = append(out, a) // let memberlist report it
			continue
		}
		ips, err := net.LookupIP(host)
		if err != nil {
			continue // not resolvable yet: retried
		}
		for _, ip := range ips {
			if hp := net.JoinHostPort(ip.String(), port); hp != self {
				out = append(out, hp)
			}
		}
	}
	return out
}
