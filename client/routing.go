package client

import (
	"hash/fnv"
	"slices"
	"strings"
	"sync"
	"time"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
)

// Routing is an optimization, never needed for correctness: any node
// serves any request and forwards it to the partition's leader. Sending a
// request straight to the leader saves that hop.

// suspectFor is how long an address that failed with UNAVAILABLE (and no
// leader hint) is passed over when another is available.
const suspectFor = 2 * time.Second

// router keeps what the client knows of the cluster: the nodes' client
// addresses and, per queue, the partition count and partition leaders.
type router struct {
	mu      sync.Mutex
	seeds   []string
	nodes   []string          // client addresses of live members
	addrOf  map[string]string // node id -> client address, every member seen
	queues  map[string]*route
	suspect map[string]time.Time
	next    int // round-robin position in nodes
}

// route is one queue's partitioning as last learnt.
type route struct {
	parts   uint32   // 0 = not known yet
	leaders []string // node id leading each partition; "" = unknown
	used    time.Time
}

func newRouter(seeds []string) *router {
	return &router{seeds: seeds, addrOf: map[string]string{}, queues: map[string]*route{}, suspect: map[string]time.Time{}}
}

// partitionFor is the partition the server stores m in, given the queue's
// partition count: FNV-1a 32 of the key, else of the dedup id, modulo the
// partitions (cluster/service_queue.go partitionFor). A message with
// neither goes round robin on the server; this client never sends one.
func partitionFor(key, dedupID string, parts uint32) uint32 {
	if parts <= 1 {
		return 0
	}
	by := key
	if by == "" {
		by = dedupID
	}
	h := fnv.New32a()
	h.Write([]byte(by))
	return h.Sum32() % parts
}

// nodeOf strips the replica epoch from a Raft server id ("<node>/<epoch>"),
// which some hints carry instead of the plain node id. Node ids never hold
// a '/'.
func nodeOf(id string) string {
	if i := strings.LastIndexByte(id, '/'); i >= 0 {
		return id[:i]
	}
	return id
}

// partitions returns queue's partition count, 0 if unknown, and whether
// the queue is new to the router (so that the caller asks for its routes).
func (r *router) partitions(queue string) (parts uint32, learn bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rt := r.queues[queue]
	if rt == nil {
		rt = &route{}
		r.queues[queue] = rt
		learn = true
	}
	rt.used = time.Now()
	return rt.parts, learn
}

// leaderAddr is the client address of partition p's leader, "" if unknown.
func (r *router) leaderAddr(queue string, p uint32) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	rt := r.queues[queue]
	if rt == nil || int(p) >= len(rt.leaders) {
		return ""
	}
	return r.addrOf[rt.leaders[p]]
}

// queueNames lists the queues whose routes are worth refreshing: used in
// the last ten minutes. Older ones are forgotten.
func (r *router) queueNames() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for q, rt := range r.queues {
		if time.Since(rt.used) > 10*time.Minute {
			delete(r.queues, q)
			continue
		}
		out = append(out, q)
	}
	return out
}

// setParts records a queue's partition count (from CreateQueue, GetQueue).
func (r *router) setParts(queue string, parts uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rt := r.queues[queue]
	if rt == nil {
		rt = &route{used: time.Now()}
		r.queues[queue] = rt
	}
	if rt.parts != parts {
		rt.parts, rt.leaders = parts, make([]string, parts)
	}
}

// setPartitions records the leaders a Partitions call reported for queue.
// An empty list means the queue is gone.
func (r *router) setPartitions(queue string, infos []*qv1.PartitionInfo) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rt := r.queues[queue]
	if rt == nil {
		rt = &route{used: time.Now()}
		r.queues[queue] = rt
	}
	parts := uint32(0)
	for _, in := range infos {
		if in.GetQueue() == queue {
			parts = max(parts, in.GetPartition()+1)
		}
	}
	rt.parts, rt.leaders = parts, make([]string, parts)
	for _, in := range infos {
		if in.GetQueue() == queue {
			rt.leaders[in.GetPartition()] = nodeOf(in.GetLeader())
		}
	}
}

// forget drops a queue's routes (it was deleted or answered NOT_FOUND).
func (r *router) forget(queue string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rt := r.queues[queue]; rt != nil {
		rt.parts, rt.leaders = 0, nil
	}
}

// learnHint records a leader hint for the partitions a request touched and
// returns the leader's client address, "" if not known. A hint that names
// its own queue and partition says which partition it is about; one that
// does not is applied only when the request touched a single partition.
func (r *router) learnHint(queue string, parts []uint32, h *qv1.LeaderHint) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	id := nodeOf(h.GetLeaderId())
	if h.GetLeaderAddr() != "" && id != "" {
		r.addrOf[id] = h.GetLeaderAddr()
	}
	if h.GetQueue() != "" {
		queue, parts = h.GetQueue(), []uint32{h.GetPartition()}
	}
	if rt := r.queues[queue]; rt != nil && id != "" && len(parts) == 1 && int(parts[0]) < len(rt.leaders) {
		rt.leaders[parts[0]] = id
	}
	if h.GetLeaderAddr() != "" {
		return h.GetLeaderAddr()
	}
	return r.addrOf[id]
}

// setMembers records the members a Members call reported.
func (r *router) setMembers(ms []*qv1.Member) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var live []string
	for _, m := range ms {
		if m.GetClientAddr() == "" {
			continue
		}
		r.addrOf[m.GetId()] = m.GetClientAddr()
		switch m.GetGossipState() {
		case "alive", "suspect":
		default:
			continue // dead, left, or only in the catalogue
		}
		if m.GetCatalogState() == "removed" {
			continue
		}
		live = append(live, m.GetClientAddr())
	}
	if len(live) > 0 {
		slices.Sort(live)
		r.nodes = slices.Compact(live)
	}
}

// addrs lists every address the client may need a connection to.
func (r *router) addrs() map[string]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]bool{}
	for _, a := range r.seeds {
		out[a] = true
	}
	for _, a := range r.nodes {
		out[a] = true
	}
	return out
}

// any picks a node round robin among the live members, passing over
// avoid and suspect addresses while others remain; when every member is
// passed over it tries the seeds (which may be a load balancer's address
// that reaches nodes the members' advertised addresses do not).
func (r *router) any(avoid string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	good := func(a string) bool {
		t, ok := r.suspect[a]
		return a != avoid && (!ok || now.After(t))
	}
	for i := range r.nodes {
		k := (r.next + i) % len(r.nodes)
		if a := r.nodes[k]; good(a) {
			r.next = k + 1
			return a
		}
	}
	for _, a := range r.seeds {
		if good(a) && !slices.Contains(r.nodes, a) {
			return a
		}
	}
	// Everything is suspect: try one anyway, another than avoid if any.
	all := append(append([]string(nil), r.nodes...), r.seeds...)
	for i := range all {
		if a := all[(r.next+i)%len(all)]; a != avoid {
			r.next++
			return a
		}
	}
	return avoid
}

// usable says whether addr is not suspect.
func (r *router) usable(addr string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.suspect[addr]
	return !ok || time.Now().After(t)
}

// fail marks addr suspect for a while.
func (r *router) fail(addr string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.suspect[addr] = time.Now().Add(suspectFor)
}

// ok clears addr's suspicion.
func (r *router) ok(addr string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.suspect, addr)
}
