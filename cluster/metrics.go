package cluster

import (
	"context"
	"fmt"
	"github.com/hashicorp/raft"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm"
)

// metrics are the node's counters, written in the Prometheus text format.
type metrics struct {
	forwarded atomic.Uint64
	inFlight  atomic.Int64 // client requests being served
	// apply: time from proposing a partition command to its result, on the
	// leader (replication, fsync on a majority, apply).
	applyCount atomic.Uint64
	applyNanos atomic.Uint64
	// replica moves this node started, finished and rolled back as
	// controller leader (repair.go).
	movesStarted, movesFinished, movesRolledBack atomic.Uint64
	// admissionRefused: probes of gossiping nodes that did not prove
	// their identity over mutual TLS.
	admissionRefused atomic.Uint64
	// diskRefused counts enqueues refused because a replica's node was
	// low on disk space (storage.go).
	diskRefused atomic.Uint64
	// authUnauthenticated: client calls refused for want of a valid
	// identity, by what was presented; authForbidden: refused for want
	// of a permission.
	authNoCreds, authBadToken, authBadCert, authForbidden atomic.Uint64

	mu       sync.Mutex
	requests map[[2]string]uint64 // method, code
	latency  map[string]*latency  // method
}

type latency struct {
	count uint64
	sum   float64
}

func (m *metrics) authFailed(what string) {
	switch what {
	case "token":
		m.authBadToken.Add(1)
	case "certificate":
		m.authBadCert.Add(1)
	default:
		m.authNoCreds.Add(1)
	}
}

func (m *metrics) authDenied() { m.authForbidden.Add(1) }

func newMetrics() *metrics {
	return &metrics{requests: map[[2]string]uint64{}, latency: map[string]*latency{}}
}

func (m *metrics) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	m.inFlight.Add(1)
	resp, err := h(ctx, req)
	m.inFlight.Add(-1)
	code := status.Code(err).String()
	m.mu.Lock()
	m.requests[[2]string{info.FullMethod, code}]++
	l := m.latency[info.FullMethod]
	if l == nil {
		l = &latency{}
		m.latency[info.FullMethod] = l
	}
	l.count++
	l.sum += time.Since(start).Seconds()
	m.mu.Unlock()
	return resp, err
}

// write prints every metric of the node.
func (n *Node) writeMetrics(w io.Writer) {
	m := n.metrics
	fmt.Fprintln(w, "# TYPE quorumq_requests_total counter")
	m.mu.Lock()
	keys := make([][2]string, 0, len(m.requests))
	for k := range m.requests {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b [2]string) int {
		if a[0] != b[0] {
			return strings.Compare(a[0], b[0])
		}
		return strings.Compare(a[1], b[1])
	})
	for _, k := range keys {
		fmt.Fprintf(w, "quorumq_requests_total{method=%q,code=%q} %d\n", k[0], k[1], m.requests[k])
	}
	fmt.Fprintln(w, "# TYPE quorumq_request_seconds summary")
	methods := make([]string, 0, len(m.latency))
	for k := range m.latency {
		methods = append(methods, k)
	}
	slices.Sort(methods)
	for _, k := range methods {
		l := m.latency[k]
		fmt.Fprintf(w, "quorumq_request_seconds_sum{method=%q} %g\nquorumq_request_seconds_count{method=%q} %d\n", k, l.sum, k, l.count)
	}
	m.mu.Unlock()
	fmt.Fprintf(w, "# TYPE quorumq_forwarded_total counter\nquorumq_forwarded_total %d\n", m.forwarded.Load())
	fmt.Fprintf(w, "# TYPE quorumq_requests_in_flight gauge\nquorumq_requests_in_flight %d\n", m.inFlight.Load())
	fmt.Fprintf(w, "# TYPE quorumq_apply_seconds summary\nquorumq_apply_seconds_sum %g\nquorumq_apply_seconds_count %d\n",
		float64(m.applyNanos.Load())/1e9, m.applyCount.Load())

	fmt.Fprintln(w, "# TYPE quorumq_replica_moves_total counter")
	fmt.Fprintf(w, "quorumq_replica_moves_total{step=\"started\"} %d\nquorumq_replica_moves_total{step=\"finished\"} %d\nquorumq_replica_moves_total{step=\"rolled_back\"} %d\n",
		m.movesStarted.Load(), m.movesFinished.Load(), m.movesRolledBack.Load())
	if n.ctrl.g.raft.State() == raft.Leader {
		under, moving := n.ctrl.replicationHealth()
		fmt.Fprintf(w, "# TYPE quorumq_partitions_under_replicated gauge\nquorumq_partitions_under_replicated %d\n", under)
		fmt.Fprintf(w, "# TYPE quorumq_partitions_moving gauge\nquorumq_partitions_moving %d\n", moving)
	}

	insecure := 0
	if n.cfg.Insecure {
		insecure = 1
	}
	fmt.Fprintf(w, "# TYPE quorumq_insecure gauge\nquorumq_insecure %d\n", insecure)
	n.writeLimitMetrics(w)
	fmt.Fprintf(w, "# TYPE quorumq_admission_refused_total counter\nquorumq_admission_refused_total %d\n", m.admissionRefused.Load())
	fmt.Fprintln(w, "# TYPE quorumq_client_calls_refused_total counter")
	fmt.Fprintf(w, "quorumq_client_calls_refused_total{reason=\"no_credentials\"} %d\nquorumq_client_calls_refused_total{reason=\"bad_token\"} %d\nquorumq_client_calls_refused_total{reason=\"bad_certificate\"} %d\nquorumq_client_calls_refused_total{reason=\"permission_denied\"} %d\n",
		m.authNoCreds.Load(), m.authBadToken.Load(), m.authBadCert.Load(), m.authForbidden.Load())
	if n.tls != nil {
		fmt.Fprintf(w, "# TYPE quorumq_tls_cert_expiry_timestamp_seconds gauge\nquorumq_tls_cert_expiry_timestamp_seconds %d\n", n.tls.NotAfter().Unix())
		fmt.Fprintf(w, "# TYPE quorumq_tls_reloads_total counter\nquorumq_tls_reloads_total %d\n", n.tls.Reloads())
	}
	ms := n.mux.Stats()
	fmt.Fprintln(w, "# TYPE quorumq_raft_conns_refused_total counter")
	fmt.Fprintf(w, "quorumq_raft_conns_refused_total{reason=\"unknown_group\"} %d\nquorumq_raft_conns_refused_total{reason=\"wrong_member\"} %d\nquorumq_raft_conns_refused_total{reason=\"bad_header\"} %d\n",
		ms.UnknownGroup, ms.WrongTarget, ms.BadHeader)
	fmt.Fprintln(w, "# TYPE quorumq_peer_conns_refused_total counter")
	fmt.Fprintf(w, "quorumq_peer_conns_refused_total{reason=\"tls\"} %d\nquorumq_peer_conns_refused_total{reason=\"unauthorized\"} %d\n", ms.TLSFailed, ms.Unauthorized)

	n.writeStorageMetrics(w)

	reps := n.replicas.all()
	slices.SortFunc(reps, func(a, b *replica) int {
		if a.queue != b.queue {
			return strings.Compare(a.queue, b.queue)
		}
		return int(a.part) - int(b.part)
	})
	fmt.Fprintln(w, "# TYPE quorumq_partition_leader gauge")
	for _, r := range reps {
		lbl := fmt.Sprintf("queue=%q,partition=\"%d\"", r.queue, r.part)
		leader := 0
		if r.isLeader() {
			leader = 1
		}
		var s fsm.Stats
		r.fsm.Read(func(p *fsm.Partition) { s = p.Stats() })
		fmt.Fprintf(w, "quorumq_partition_leader{%s} %d\n", lbl, leader)
		fmt.Fprintf(w, "quorumq_partition_term{%s} %d\n", lbl, r.g.raft.CurrentTerm())
		fmt.Fprintf(w, "quorumq_partition_commit_index{%s} %d\n", lbl, r.g.raft.CommitIndex())
		fmt.Fprintf(w, "quorumq_partition_applied_index{%s} %d\n", lbl, r.g.raft.AppliedIndex())
		fmt.Fprintf(w, "quorumq_partition_messages{%s,state=\"ready\"} %d\n", lbl, s.Ready)
		fmt.Fprintf(w, "quorumq_partition_messages{%s,state=\"delayed\"} %d\n", lbl, s.Delayed)
		fmt.Fprintf(w, "quorumq_partition_messages{%s,state=\"leased\"} %d\n", lbl, s.Leased)
		fmt.Fprintf(w, "quorumq_partition_messages{%s,state=\"dead\"} %d\n", lbl, s.Dead)
	}
}
