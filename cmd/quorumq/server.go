package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/quorumq/quorumq/cluster"
	"github.com/quorumq/quorumq/storage"
)

// stopTimeout bounds a graceful stop after SIGINT or SIGTERM.
const stopTimeout = 30 * time.Second

// stopGrace is how long closing may take once the graceful part is over.
const stopGrace = 5 * time.Second

// serverKeys are the server's settings: flags, QUORUMQ_* variables and keys
// of the config file alike.
var serverKeys = []string{
	"node-id", "data-dir", "client-addr", "peer-addr", "gossip-addr", "http-addr",
	"advertise-host", "join", "bootstrap-expect", "zone", "replace-after", "balance-interval", "auto-rebalance",
	"tls-ca", "tls-cert", "tls-key", "gossip-key-file", "insecure",
	"max-conns", "max-streams-per-conn", "handshake-timeout", "idle-timeout",
	"max-queues", "max-partitions-per-queue", "max-replicas-per-node", "queue-ops-rate",
	"debug-addr", "metrics-addr", "reflection", "admin-identities",
	"state-cache", "state-memtable", "min-free-disk", "memory-limit",
}

// serverFlags holds the server command's flags.
type serverFlags struct {
	config          string
	nodeID          string
	dataDir         string
	clientAddr      string
	peerAddr        string
	gossipAddr      string
	httpAddr        string
	advertiseHost   string
	join            []string
	bootstrapExpect int
	zone            string
	replaceAfter    time.Duration
	balanceInterval time.Duration
	autoRebalance   bool
	tlsCA           string
	tlsCert         string
	tlsKey          string
	gossipKeyFile   string
	insecure        bool
	adminIDs        []string
	limits          cluster.Limits
	stateCache      byteSize
	stateMemTable   byteSize
	minFreeDisk     byteSize
	memoryLimit     byteSize
	debugAddr       string
	metricsAddr     string
	reflection      bool
}

func (s *serverFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&s.config, "config", "", "YAML file whose keys are these flags' names (data-dir: /var/lib/quorumq)")
	fs.StringVar(&s.nodeID, "node-id", "", "this node's id for ever (default: the id kept in the data directory, else the hostname)")
	fs.StringVar(&s.dataDir, "data-dir", "", "data directory (required)")
	fs.StringVar(&s.clientAddr, "client-addr", "0.0.0.0:7420", "listen address of the client gRPC API")
	fs.StringVar(&s.peerAddr, "peer-addr", ":7421", "listen address of peer traffic (Raft, forwarding)")
	fs.StringVar(&s.gossipAddr, "gossip-addr", ":7422", "listen address of gossip (TCP and UDP)")
	fs.StringVar(&s.httpAddr, "http-addr", ":7423", `listen address of HTTP (/metrics, /healthz, /readyz); "-" = off`)
	fs.StringVar(&s.advertiseHost, "advertise-host", "", "host told to peers and clients (default: the listen host, else this host's IP)")
	fs.StringSliceVar(&s.join, "join", nil, "gossip addresses or DNS names of nodes to join, comma-separated")
	fs.IntVar(&s.bootstrapExpect, "bootstrap-expect", 0, "form a new cluster once this many fresh nodes see each other (0 = only join)")
	fs.StringVar(&s.zone, "zone", "", "failure zone (rack, availability zone) for replica placement")
	fs.DurationVar(&s.replaceAfter, "replace-after", cluster.DefaultReplaceAfter, "move the replicas of a node unreachable this long to live nodes (negative: never)")
	fs.DurationVar(&s.balanceInterval, "balance-interval", time.Minute, "how often the controller evens out leaderships (negative: never)")
	fs.BoolVar(&s.autoRebalance, "auto-rebalance", false, "also move replicas to even them out, as 'quorumq cluster rebalance' does, when no move is in progress")
	fs.StringVar(&s.tlsCA, "tls-ca", "", "PEM bundle of the cluster CA(s) for mutual TLS between nodes (required unless --insecure; re-read when it changes)")
	fs.StringVar(&s.tlsCert, "tls-cert", "", "this node's certificate, naming its node id ('quorumq certs node'; required unless --insecure)")
	fs.StringVar(&s.tlsKey, "tls-key", "", "this node's private key (required unless --insecure)")
	fs.StringVar(&s.gossipKeyFile, "gossip-key-file", "", "gossip encryption key, base64 ('quorumq certs gossip-key'; used at first start, then the keyring in the data directory; required unless --insecure)")
	fs.IntVar(&s.limits.MaxConns, "max-conns", cluster.DefaultMaxConns, "open connections of the client port, and of the peer port, each; more wait to be accepted")
	fs.Uint32Var(&s.limits.MaxStreamsPerConn, "max-streams-per-conn", cluster.DefaultMaxStreamsPerConn, "concurrent calls on one client connection")
	fs.DurationVar(&s.limits.HandshakeTimeout, "handshake-timeout", cluster.DefaultHandshakeTimeout, "a client connection that has not finished its TLS and HTTP/2 handshake by then is closed")
	fs.DurationVar(&s.limits.IdleTimeout, "idle-timeout", cluster.DefaultIdleTimeout,
		"a client connection without a call this long is closed (clients may ping every 10s at most; an idle one is pinged after 1m and closed when it does not answer in 20s)")
	fs.IntVar(&s.limits.MaxQueues, "max-queues", cluster.DefaultMaxQueues, "queues in the cluster (the controller leader's value counts)")
	fs.IntVar(&s.limits.MaxPartitionsPerQueue, "max-partitions-per-queue", cluster.DefaultMaxPartitionsPerQueue, "partitions of one queue (at most 1024)")
	fs.IntVar(&s.limits.MaxReplicasPerNode, "max-replicas-per-node", cluster.DefaultMaxReplicasPerNode, "partition replicas placed on one node (each costs about 1.4 MiB of memory and some CPU when idle)")
	fs.Float64Var(&s.limits.QueueOpsRate, "queue-ops-rate", cluster.DefaultQueueOpsRate, "queue creations and deletions per second, cluster-wide, bursts of twice that")
	s.stateCache, s.stateMemTable, s.minFreeDisk = byteSize(storage.DefaultEngineCacheBytes), byteSize(storage.DefaultEngineMemTableBytes), byteSize(cluster.DefaultMinFreeBytes)
	fs.Var(&s.stateCache, "state-cache", "block cache of the state engine (every partition's messages live on disk; this caches their blocks)")
	fs.Var(&s.stateMemTable, "state-memtable", fmt.Sprintf("one memtable of the state engine, 1MiB to 1GiB; at most %d are held, so the engine's memory is about state-cache + %d × this", storage.EngineMemTables, storage.EngineMemTables))
	fs.Var(&s.memoryLimit, "memory-limit", fmt.Sprintf("soft limit of the Go runtime's memory (the garbage collector works harder near it); 0: GOMEMLIMIT if set, else %.0f%% of the cgroup's memory limit, else %s; negative: none", cgroupShare*100, new(byteSize(defaultMemoryLimit))))
	fs.Var(&s.minFreeDisk, "min-free-disk", "refuse enqueues (RESOURCE_EXHAUSTED) while the data directory's filesystem has less free space; receives and acks go on, so consumers can drain (negative: never refuse)")
	fs.StringVar(&s.debugAddr, "debug-addr", "", `serve pprof on this address, and only there (off by default; "6060" or ":6060" binds 127.0.0.1; profiles of at most 60s)`)
	fs.StringVar(&s.metricsAddr, "metrics-addr", "", "serve /metrics on this address instead of on --http-addr")
	fs.BoolVar(&s.reflection, "reflection", false, "register gRPC server reflection on the client port (for grpcurl and the like)")
	fs.BoolVar(&s.insecure, "insecure", false, "no TLS between nodes, no gossip encryption, no TLS and no authentication for clients: anyone who reaches the ports owns the cluster (throwaway clusters only)")
	fs.StringSliceVar(&s.adminIDs, "admin-identities", cluster.DefaultAdminIdentities, "client identities (certificate names, token owners) that are always admin, whatever the grants say")
}

// load completes the flags that the command line left alone from the
// environment, then from the config file (--config or QUORUMQ_CONFIG). The
// file may also set log-level, if fs has it.
func (s *serverFlags) load(fs *pflag.FlagSet, getenv func(string) string) error {
	if !fs.Changed("config") {
		if v := getenv(envName("config")); v != "" {
			s.config = v
		}
	}
	names := serverKeys
	if fs.Lookup("log-level") != nil {
		names = append(slices.Clone(names), "log-level")
	}
	var file *configFile
	if s.config != "" {
		var err error
		if file, err = readConfigFile(s.config, names); err != nil {
			return err
		}
	}
	return applyConfig(fs, names, getenv, file)
}

// clusterConfig maps the flags onto a cluster.Config.
func (s *serverFlags) clusterConfig() (cluster.Config, error) {
	if s.dataDir == "" {
		return cluster.Config{}, errors.New("--data-dir is required (or QUORUMQ_DATA_DIR, or data-dir in the --config file)")
	}
	var join []string
	for _, j := range s.join {
		if j = strings.TrimSpace(j); j != "" {
			join = append(join, j)
		}
	}
	return cluster.Config{
		NodeID:          s.nodeID,
		DataDir:         s.dataDir,
		ClientAddr:      s.clientAddr,
		PeerAddr:        s.peerAddr,
		GossipAddr:      s.gossipAddr,
		HTTPAddr:        s.httpAddr,
		AdvertiseHost:   s.advertiseHost,
		Join:            join,
		BootstrapExpect: s.bootstrapExpect,
		Zone:            s.zone,
		ReplaceAfter:    s.replaceAfter,
		BalanceInterval: s.balanceInterval,
		AutoRebalance:   s.autoRebalance,
		TLSCAFile:       s.tlsCA,
		TLSCertFile:     s.tlsCert,
		TLSKeyFile:      s.tlsKey,
		GossipKeyFile:   s.gossipKeyFile,
		Insecure:        s.insecure,
		AdminIdentities: s.adminIDs,
		Limits:          s.limits,
		Storage: cluster.StorageConfig{
			CacheBytes:    int64(s.stateCache),
			MemTableBytes: int64(s.stateMemTable),
			MinFreeBytes:  int64(s.minFreeDisk),
		},
		DebugAddr:   s.debugAddr,
		MetricsAddr: s.metricsAddr,
		Reflection:  s.reflection,
	}, nil
}

func (a *app) serverCmd() *cobra.Command {
	sf := &serverFlags{}
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run a quorumq node",
		Long: `Run a quorumq node until SIGINT or SIGTERM, then leave gracefully: hand over
what it leads, leave gossip, finish in-flight requests (at most 30 s).

Settings come from flags, then QUORUMQ_<NAME> environment variables, then the
YAML file named by --config (keys are the flag names), then the defaults.

Fixed limits of the client port: an Enqueue request is at most 9 MiB and 1000
messages, any other request 1 MiB and 1000 receipts or ids; larger ones are
refused before they are decoded. HTTP servers: 10s to send the headers, 30s
to read a request and to write an answer, 2m idle.`,
		Example: `  # A throwaway cluster without TLS: the first of three nodes; the others join it:
  quorumq server --insecure --data-dir /var/lib/quorumq --node-id q1 --bootstrap-expect 3
  quorumq server --insecure --data-dir /var/lib/quorumq --node-id q2 --bootstrap-expect 3 --join q1:7422

  # The same from the environment (as in a container):
  QUORUMQ_INSECURE=true QUORUMQ_DATA_DIR=/data QUORUMQ_BOOTSTRAP_EXPECT=3 QUORUMQ_JOIN=quorumq-headless quorumq server

  # Secure (the default): TLS between nodes and gossip encryption
  quorumq certs ca --out tls && quorumq certs gossip-key --out tls/gossip.key
  quorumq certs node --ca-dir tls --id q1 --out tls
  quorumq server --data-dir /var/lib/quorumq --node-id q1 --bootstrap-expect 3 \
    --tls-ca tls/ca.pem --tls-cert tls/q1.pem --tls-key tls/q1-key.pem --gossip-key-file tls/gossip.key

  # From a file:
  #   data-dir: /var/lib/quorumq
  #   join: [q1:7422, q2:7422]
  quorumq server --config /etc/quorumq.yaml`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := sf.load(cmd.Flags(), a.getenv); err != nil {
				return &usageError{cmd: cmd, err: err}
			}
			if err := a.setupLogging(); err != nil {
				return &usageError{cmd: cmd, err: err}
			}
			cfg, err := sf.clusterConfig()
			if err != nil {
				return &usageError{cmd: cmd, err: err}
			}
			if limit := setMemoryLimit(int64(sf.memoryLimit)); limit > 0 {
				slog.Debug("go memory limit", "bytes", limit)
			}
			return a.serve(cmd.Context(), cfg)
		},
	}
	sf.register(cmd.Flags())
	return cmd
}

// serve runs one node until a signal, then stops it gracefully.
func (a *app) serve(ctx context.Context, cfg cluster.Config) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg.Logger = slog.Default()
	node, err := cluster.Start(cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "quorumq %s: node %s serving: client %s, peer %s, gossip %s, http %s\n",
		cluster.Version, node.ID(), node.ClientAddr(), node.PeerAddr(), node.GossipAddr(), orOff(node.HTTPAddr()))
	<-ctx.Done()
	stop() // a second signal ends the process at once
	slog.Info("stopping", "timeout", stopTimeout)
	sctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- node.Stop(sctx) }()
	select {
	case err := <-stopped:
		if err != nil {
			return fmt.Errorf("stop: %w", err)
		}
	case <-time.After(stopTimeout + stopGrace):
		// Past the graceful part, closing still waits on Raft groups and
		// connections; a process that must end ends. Everything
		// acknowledged is on disk: this is no worse than a crash.
		return fmt.Errorf("stop: not done %v after the signal; exiting anyway", stopTimeout+stopGrace)
	}
	slog.Info("stopped")
	return nil
}

func orOff(addr string) string {
	if addr == "" {
		return "off"
	}
	return addr
}
