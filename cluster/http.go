package cluster

import (
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"strconv"
	"time"
)

// Timeouts of every HTTP server of a node: a client has 10 s to send its
// headers and 30 s for the whole request, an answer has 30 s to be written
// (pprof: its longest profile, maxProfileSeconds, plus 30 s), and an idle
// keep-alive connection is closed after 2 minutes.
const (
	httpReadHeaderTimeout = 10 * time.Second
	httpReadTimeout       = 30 * time.Second
	httpWriteTimeout      = 30 * time.Second
	httpIdleTimeout       = 2 * time.Minute
	// maxProfileSeconds bounds pprof's seconds= (CPU profile, trace,
	// delta profiles); more is a 400.
	maxProfileSeconds = 60
)

func newHTTPServer(h http.Handler, write time.Duration) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: httpReadHeaderTimeout, ReadTimeout: httpReadTimeout,
		WriteTimeout: write, IdleTimeout: httpIdleTimeout}
}

// validateHTTP checks the debug and metrics addresses; a debug address
// without a host binds the loopback interface (pprof shows memory and
// can load the node: opening it to the network takes an explicit host).
func (c *Config) validateHTTP() error {
	if c.DebugAddr != "" {
		a := c.DebugAddr
		if _, err := strconv.Atoi(a); err == nil {
			a = ":" + a
		}
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			return fmt.Errorf("config: --debug-addr %q: %w", c.DebugAddr, err)
		}
		if host == "" {
			host = "127.0.0.1"
		}
		c.DebugAddr = net.JoinHostPort(host, port)
	}
	if c.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			return fmt.Errorf("config: --metrics-addr %q: %w", c.MetricsAddr, err)
		}
	}
	return nil
}

// serveHTTP starts the node's HTTP servers: health, readiness and (unless
// it has its own address) metrics on the HTTP port, already bound; metrics
// on MetricsAddr; pprof on DebugAddr, and nowhere else.
func (n *Node) serveHTTP() error {
	var metricsLn, debugLn net.Listener
	var err error
	if n.cfg.MetricsAddr != "" {
		if metricsLn, err = net.Listen("tcp", n.cfg.MetricsAddr); err != nil {
			return fmt.Errorf("metrics listener: %w", err)
		}
	}
	if n.cfg.DebugAddr != "" {
		if debugLn, err = net.Listen("tcp", n.cfg.DebugAddr); err != nil {
			if metricsLn != nil {
				_ = metricsLn.Close()
			}
			return fmt.Errorf("debug listener: %w", err)
		}
	}
	if n.httpLn != nil {
		n.httpSrv = newHTTPServer(n.httpHandler(metricsLn == nil), httpWriteTimeout)
		n.goRun(func() { _ = n.httpSrv.Serve(n.httpLn) })
	}
	if metricsLn != nil {
		mux := http.NewServeMux()
		mux.HandleFunc("/metrics", n.serveMetrics)
		s := newHTTPServer(mux, httpWriteTimeout)
		n.otherHTTP = append(n.otherHTTP, s)
		n.metricsAddr = metricsLn.Addr().String()
		n.goRun(func() { _ = s.Serve(metricsLn) })
	}
	if debugLn != nil {
		s := newHTTPServer(debugHandler(), (maxProfileSeconds+30)*time.Second)
		n.otherHTTP = append(n.otherHTTP, s)
		n.debugAddr = debugLn.Addr().String()
		n.goRun(func() { _ = s.Serve(debugLn) })
	}
	return nil
}

// MetricsAddr and DebugAddr are the bound addresses of the metrics and
// debug listeners, "" when they are not separate or off.
func (n *Node) MetricsAddr() string { return n.metricsAddr }
func (n *Node) DebugAddr() string   { return n.debugAddr }

// httpHandler serves /healthz (the process answers; never needs a leader),
// /readyz (joined, catalogue loaded, local replicas caught up) and, with
// metrics, /metrics. None needs credentials: probes and scrapers must
// reach them. The probes say nothing a client could use; /metrics names
// every queue and its depth, so --metrics-addr gives it a listener of its
// own to keep to the monitoring network (the Helm chart does, with a
// NetworkPolicy).
func (n *Node) httpHandler(metrics bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if why := n.notReady(); why != "" {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		// Low on disk the node stays ready: consumers must be able to
		// drain through it. The body says why enqueues are refused.
		if n.diskLow.Load() {
			fmt.Fprintf(w, "ready; disk low: %d bytes free under the data directory, below --min-free-disk %d: enqueues into its partitions are refused\n", n.diskFree.Load(), n.minFree.Load())
			return
		}
		fmt.Fprintln(w, "ready")
	})
	if metrics {
		mux.HandleFunc("/metrics", n.serveMetrics)
	}
	return mux
}

func (n *Node) serveMetrics(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	n.writeMetrics(w)
}

// debugHandler serves pprof, with seconds= bounded by maxProfileSeconds.
func debugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s := r.URL.Query().Get("seconds"); s != "" {
			sec, err := strconv.ParseFloat(s, 64)
			if err != nil || sec < 0 || sec > maxProfileSeconds {
				http.Error(w, fmt.Sprintf("seconds=%q: want a number of seconds from 0 to %d", s, maxProfileSeconds), http.StatusBadRequest)
				return
			}
		}
		mux.ServeHTTP(w, r)
	})
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
