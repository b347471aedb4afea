package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	"golang.org/x/net/netutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/quorumq/quorumq/fsm"
	fsmv1 "github.com/quorumq/quorumq/proto/quorumq/fsm/v1"
	peerv1 "github.com/quorumq/quorumq/proto/quorumq/peer/v1"
	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
	"github.com/quorumq/quorumq/storage"
	"github.com/quorumq/quorumq/transport"
	"github.com/quorumq/quorumq/transport/pki"
)

// Node is one running quorumq server.
type Node struct {
	cfg Config
	log *slog.Logger
	id  string
	// instance: the data directory's random id (storage.Dir.Instance),
	// checked against the partition state (bindInstance).
	instance string
	// ids: the node-level identity records (identity.go).
	ids *identities
	// tls: the peer port's TLS material; nil with Config.Insecure.
	tls *pki.Reloader
	// keyring: the gossip keyring (nil with Config.Insecure); keyringMu
	// serialises its changes and their saving.
	keyring   *memberlist.Keyring
	keyringMu sync.Mutex
	admission admission
	// access: the client port's access policy, compiled from the
	// catalogue (auth.go).
	access policyCache
	// removed: this node learnt it was removed and left gossip (touched
	// only by replicaLoop).
	removed bool
	dir     *storage.Dir
	// engine holds, on disk, the state of every partition replica of this
	// node (messages, orderings, dedup) and every partition group's Raft
	// log and stable store, so that one WAL fsync commits the appends of
	// many groups.
	engine *storage.Engine
	// diskLow: the data directory's free space is below the watermark
	// (storage.go); diskFree is the last measure, in bytes.
	diskLow  atomic.Bool
	diskFree atomic.Uint64
	minFree  atomic.Int64 // Storage.MinFreeBytes (tests change it)

	peerLn, clientLn, httpLn net.Listener
	mux                      *transport.Mux
	peers                    *peerClient
	clientSrv, peerSrv       *grpc.Server
	httpSrv                  *http.Server
	otherHTTP                []*http.Server // metrics and debug listeners (http.go)
	health                   *health.Server
	gossip                   *membership
	gossipReady              atomic.Pointer[membership] // gossip, for goroutines that may run before it is set
	ctrl                     *controller
	replicas                 *replicaSet
	metrics                  *metrics
	lim                      *nodeLimits
	routes                   routes

	// Advertised addresses.
	clientAddr, peerAddr, httpAddr string
	metricsAddr, debugAddr         string

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	stopOnce sync.Once
	stopErr  error
}

// Start opens the data directory, binds every port, joins gossip and starts
// the controller and the local replicas. It returns once the node serves;
// joining and bootstrapping go on in the background.
func Start(cfg Config) (n *Node, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	n = &Node{cfg: cfg, metrics: newMetrics(), lim: newNodeLimits(cfg.Limits)}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	node := n // the returns below set n to nil
	defer func() {
		if err != nil {
			_ = node.close()
		}
	}()
	if n.dir, err = storage.Open(cfg.DataDir); err != nil {
		return nil, err
	}
	fallback := cfg.NodeID
	if fallback == "" {
		if fallback, err = os.Hostname(); err != nil {
			return nil, err
		}
	}
	if n.id, err = n.dir.NodeID(fallback); err != nil {
		return nil, err
	}
	n.log = cfg.Logger.With("node", n.id)
	if err = n.openEngine(); err != nil {
		return nil, err
	}
	n.minFree.Store(cfg.Storage.MinFreeBytes)
	n.checkDisk()

	if n.peerLn, err = net.Listen("tcp", cfg.PeerAddr); err != nil {
		return nil, fmt.Errorf("peer listener: %w", err)
	}
	if n.clientLn, err = net.Listen("tcp", cfg.ClientAddr); err != nil {
		return nil, fmt.Errorf("client listener: %w", err)
	}
	if cfg.HTTPAddr != "-" {
		if n.httpLn, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			return nil, fmt.Errorf("http listener: %w", err)
		}
		n.httpAddr = cfg.advertise(cfg.HTTPAddr, n.httpLn.Addr().(*net.TCPAddr).Port)
	}
	n.peerAddr = cfg.advertise(cfg.PeerAddr, n.peerLn.Addr().(*net.TCPAddr).Port)
	n.clientAddr = cfg.advertise(cfg.ClientAddr, n.clientLn.Addr().(*net.TCPAddr).Port)

	// Each port takes at most MaxConns connections at once; more wait to
	// be accepted (in the kernel's backlog) until one closes.
	n.clientLn = netutil.LimitListener(n.clientLn, cfg.Limits.MaxConns)
	n.mux = transport.NewMux(netutil.LimitListener(n.peerLn, cfg.Limits.MaxConns), n.log)
	var poolOpts []grpc.DialOption
	if cfg.PeerDialer != nil {
		n.mux.Dial = cfg.PeerDialer
		poolOpts = append(poolOpts, grpc.WithContextDialer(cfg.PeerDialer))
	}
	n.peers = &peerClient{n: n, pool: transport.NewPool(poolOpts...)}
	if err := n.setupSecurity(); err != nil {
		return nil, err
	}
	if !cfg.Insecure {
		var kept bool
		if n.keyring, kept, err = loadKeyring(cfg.DataDir, cfg.GossipKeyFile); err != nil {
			return nil, err
		}
		if kept {
			n.log.Debug("gossip keyring from the data directory (it wins over --gossip-key-file)")
		}
	}
	n.replicas = &replicaSet{n: n, m: map[groupKey]*replica{}}

	if n.ctrl, err = openController(n); err != nil {
		return nil, err
	}
	gossipAddr, err := gossipAdvertise(&cfg)
	if err != nil {
		return nil, err
	}
	n.gossip, err = newMembership(cfg.GossipAddr, gossipAddr, Meta{
		ID: n.id, Client: n.clientAddr, Peer: n.peerAddr, HTTP: n.httpAddr, Zone: cfg.Zone,
		Version: Version, Fresh: !n.ctrl.hasState(), Instance: n.instance, Controller: string(n.ctrl.g.id), Access: !cfg.olderVersion,
	}, n.keyring, n.log)
	if err != nil {
		return nil, err
	}
	n.gossipReady.Store(n.gossip)

	// A request may carry a whole Enqueue batch (fsm.MaxBatchBytes) plus
	// protobuf framing.
	maxMsg := grpc.MaxRecvMsgSize(fsm.MaxBatchBytes + 1<<20)
	n.peerSrv = grpc.NewServer(maxMsg, grpc.Creds(n.mux.GRPCServerCredentials()), grpc.ChainUnaryInterceptor(n.authorizeCall))
	peerv1.RegisterPeerServiceServer(n.peerSrv, &peerServer{n: n})
	n.clientSrv = grpc.NewServer(append(n.clientLimitOptions(), n.clientSecurityOptions()...)...)
	qv1.RegisterQueueServiceServer(n.clientSrv, &queueServer{n: n})
	qv1.RegisterClusterServiceServer(n.clientSrv, &clusterServer{n: n})
	qv1.RegisterAccessServiceServer(n.clientSrv, &accessServer{n: n})
	n.health = health.NewServer()
	healthpb.RegisterHealthServer(n.clientSrv, n.health)
	if cfg.Reflection {
		reflection.Register(n.clientSrv)
	}

	if err = n.replicas.startOnDisk(); err != nil {
		return nil, err
	}

	if n.tls != nil {
		n.goRun(func() { n.tls.Run(n.ctx, pki.DefaultReloadInterval) })
	}
	n.goRun(func() { _ = n.mux.Serve() })
	n.goRun(func() { _ = n.peerSrv.Serve(n.mux.GRPCListener()) })
	n.goRun(func() { _ = n.clientSrv.Serve(n.clientLn) })
	if err = n.serveHTTP(); err != nil {
		return nil, err
	}
	n.goRun(func() { _ = n.gossip.join(n.ctx, cfg.Join) })
	n.goRun(func() { n.bootstrapLoop(n.ctx) })
	n.goRun(n.controllerLoop)
	n.goRun(func() { n.watchDisk(n.ctx) })
	n.goRun(n.replicaLoop)
	n.log.Info("node started", "client", n.clientAddr, "peer", n.peerAddr, "gossip", n.gossip.Addr(), "http", n.httpAddr)
	return n, nil
}

// gossipAdvertise is the gossip address to advertise: memberlist needs an
// IP, so an advertise host given as a name (a pod's DNS name, a compose
// service) is resolved once here; peers and clients are still told the
// name for the other ports.
func gossipAdvertise(c *Config) (string, error) {
	if c.AdvertiseHost == "" {
		return "", nil
	}
	_, port, err := net.SplitHostPort(c.GossipAddr)
	if err != nil || port == "0" {
		return "", nil
	}
	host := c.AdvertiseHost
	if net.ParseIP(host) == nil {
		ips, err := net.LookupIP(host)
		if err != nil || len(ips) == 0 {
			return "", fmt.Errorf("advertise host %q: %w", host, err)
		}
		host = ips[0].String()
	}
	return net.JoinHostPort(host, port), nil
}

func (n *Node) goRun(f func()) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
}

// ID is the node's id.
func (n *Node) ID() string { return n.id }

// ClientAddr, PeerAddr and GossipAddr are the advertised addresses.
func (n *Node) ClientAddr() string { return n.clientAddr }
func (n *Node) PeerAddr() string   { return n.peerAddr }
func (n *Node) GossipAddr() string { return n.gossip.Addr() }
func (n *Node) HTTPAddr() string   { return n.httpAddr }

// controllerLoop runs the controller leader's duties while this node leads.
func (n *Node) controllerLoop() { followLeadership(n.ctx, n.ctrl.g.leaderCh, n.ctrl.runLeader) }

// replicaLoop keeps local replicas in line with the catalogue.
func (n *Node) replicaLoop() {
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		applied := n.ctrl.g.waitApplied()
		n.replicas.reconcile()
		n.leaveIfRemoved()
		n.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
		select {
		case <-n.ctx.Done():
			return
		case <-applied:
		case <-tick.C:
		}
	}
}

// leaveIfRemoved leaves gossip, once, when the catalogue says this node
// was removed: it is out of the cluster for good and must not be counted
// or gossiped about. The process keeps running, not ready, until stopped.
func (n *Node) leaveIfRemoved() {
	self, ok := n.ctrl.node(n.id)
	if !ok || self.GetState() != fsmv1.NodeState_NODE_STATE_REMOVED || n.removed {
		return
	}
	n.removed = true
	n.log.Warn("this node was removed from the cluster: leaving gossip")
	if err := n.gossip.leave(2 * time.Second); err != nil {
		n.log.Warn("leave gossip", "err", err)
	}
}

// Stop leaves gracefully: leadership of every group this node leads is
// handed over, gossip is told, in-flight requests finish, then everything
// stops. ctx bounds the graceful part.
func (n *Node) Stop(ctx context.Context) error {
	n.stopOnce.Do(func() {
		n.health.Shutdown()
		n.handOver(ctx)
		// Leave waits for its broadcast to go out, which may never happen
		// when every other member is stopping too: bound it.
		if err := n.gossip.leave(min(time.Until(deadlineOr(ctx, leaveTimeout)), leaveTimeout)); err != nil {
			n.log.Debug("gossip leave", "err", err)
		}
		done := make(chan struct{})
		go func() {
			n.clientSrv.GracefulStop()
			close(done)
		}()
		select {
		case <-done:
		case <-ctx.Done():
			n.clientSrv.Stop()
		}
		n.stopErr = n.close()
	})
	return n.stopErr
}

// Kill stops the node at once, without handing anything over: as close to
// a crash as a process can get while staying alive (tests).
func (n *Node) Kill() error {
	n.stopOnce.Do(func() { n.stopErr = n.close() })
	return n.stopErr
}

func (n *Node) close() error {
	n.cancel()
	var errs []error
	if n.clientSrv != nil {
		n.clientSrv.Stop()
	}
	if n.httpSrv != nil {
		errs = append(errs, n.httpSrv.Close())
	}
	for _, s := range n.otherHTTP {
		errs = append(errs, s.Close())
	}
	if n.replicas != nil {
		n.replicas.stopAll()
	}
	if n.ctrl != nil {
		errs = append(errs, n.ctrl.g.close())
	}
	if n.engine != nil {
		errs = append(errs, n.engine.Close())
	}
	if n.gossip != nil {
		errs = append(errs, n.gossip.shutdown())
	}
	if n.peerSrv != nil {
		n.peerSrv.Stop()
	}
	if n.mux != nil {
		errs = append(errs, n.mux.Close())
	}
	for _, l := range []net.Listener{n.clientLn, n.httpLn} {
		if l != nil {
			_ = l.Close()
		}
	}
	if n.peers != nil {
		errs = append(errs, n.peers.pool.Close())
	}
	n.wg.Wait()
	if n.dir != nil {
		errs = append(errs, n.dir.Close())
	}
	return errors.Join(errs...)
}

// handOver transfers the leadership of every group this node leads, many
// at a time, within half of what is left of ctx (at most 10 s): raft ends a
// transfer that cannot finish after an election timeout, and a group whose
// transfer fails elects a leader by itself once this node is gone.
func (n *Node) handOver(ctx context.Context) {
	budget := min(time.Until(deadlineOr(ctx, 20*time.Second))/2, 10*time.Second)
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	var groups []*group
	for _, r := range n.replicas.all() {
		if r.isLeader() {
			groups = append(groups, r.g)
		}
	}
	if n.ctrl.g.raft.State() == raft.Leader {
		groups = append(groups, n.ctrl.g)
	}
	sem := make(chan struct{}, 64)
	done := make(chan struct{}, len(groups))
	for _, g := range groups {
		go func() {
			defer func() { done <- struct{}{} }()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			defer func() { <-sem }()
			if err := g.raft.LeadershipTransfer().Error(); err != nil {
				n.log.Debug("leadership transfer", "group", g.name.String(), "err", err)
			}
		}()
	}
	for range groups {
		select {
		case <-done:
		case <-ctx.Done():
			// The transfers still running end with raft's own timeout;
			// close waits for nothing of theirs but raft's shutdown.
			return
		}
	}
}

// leaveTimeout bounds the gossip leave of a graceful stop.
const leaveTimeout = 2 * time.Second

func deadlineOr(ctx context.Context, d time.Duration) time.Time {
	if dl, ok := ctx.Deadline(); ok {
		return dl
	}
	return time.Now().Add(d)
}
