package cluster

import (
	"fmt"
	"net/http"
	"net/http/pprof"
)

// httpHandler serves /healthz (the process answers; never needs a leader),
// /readyz (joined, catalogue loaded, local replicas caught up), /metrics
// and pprof.
func (n *Node) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if why := n.notReady(); why != "" {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		n.writeMetrics(w)
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// notReady says why the node is not ready, or "" when it is.
func (n *Node) notReady() string {
	if !n.ctrl.epochKnown() {
		return "catalogue not loaded (no controller leader or not caught up)"
	}
	for _, r := range n.replicas.all() {
		if r.g.leaderID() == "" {
			return fmt.Sprintf("partition %s/%d has no leader", r.queue, r.part)
		}
		if r.g.raft.AppliedIndex() < r.g.raft.CommitIndex() {
			return fmt.Sprintf("partition %s/%d catching up", r.queue, r.part)
		}
	}
	return ""
}
