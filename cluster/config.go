package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/quorumq/quorumq/fsm"
)

// Version is the quorumq version a node reports.
var Version = "0.1.0-dev"

// Config configures a node. The zero value of an optional field means its
// default; Validate fills defaults in and checks the rest.
type Config struct {
	// NodeID names the node for ever; default: the id persisted in the data
	// directory, else the hostname.
	NodeID  string
	DataDir string

	// Listen addresses (host:port; host may be empty for all interfaces).
	ClientAddr string // gRPC API, default 0.0.0.0:7420
	PeerAddr   string // Raft and forwarding, default :7421
	GossipAddr string // memberlist TCP and UDP, default :7422
	HTTPAddr   string // metrics, health, default :7423; "-" = off

	// AdvertiseHost is the host peers and clients are told; default: the
	// listen host if it is an IP other than 0.0.0.0, else this host's IP.
	AdvertiseHost string

	// Join lists gossip addresses (host:port) or DNS names resolving to
	// several hosts. Joining is retried until it succeeds.
	Join []string
	// BootstrapExpect: form the cluster once this many fresh nodes see each
	// other. 0 = never bootstrap (join an existing cluster only).
	BootstrapExpect int
	Zone            string

	// ReplaceAfter: a node unreachable this long has its replicas moved
	// to live nodes; one back in time simply catches up. Default 5 min.
	// Negative: never replace automatically.
	ReplaceAfter time.Duration
	// BalanceInterval: how often the controller leader evens out
	// leaderships (when the healthy nodes' leader counts differ by more
	// than one) and, with AutoRebalance, replicas. Default 1 min;
	// negative: never.
	BalanceInterval time.Duration
	// AutoRebalance: also move replicas to even them out (as `quorumq
	// cluster rebalance` does), whenever no move is in progress.
	AutoRebalance bool

	// Raft timing; defaults suit hundreds of groups per node.
	HeartbeatTimeout time.Duration
	ElectionTimeout  time.Duration

	// TLS material of the peer port (mutual TLS between nodes, TLS 1.3):
	// the CA bundle, this node's certificate (naming its node id) and key.
	// The files are re-read when they change.
	TLSCAFile, TLSCertFile, TLSKeyFile string
	// GossipKeyFile holds the gossip encryption key (base64 of 16, 24 or
	// 32 bytes; 'quorumq certs gossip-key'). Used at first start; the
	// keyring then lives in the data directory.
	GossipKeyFile string
	// Insecure: no TLS between nodes, no gossip encryption, no TLS and
	// no authentication on the client port. Without it the four files
	// above are required.
	Insecure bool
	// AdminIdentities are client identities (certificate names or token
	// owners) that hold the admin permission whatever the grants say;
	// nil: DefaultAdminIdentities.
	AdminIdentities []string
	// olderVersion: the node gossips that it cannot apply access commands,
	// as a node of an older version does (upgrade tests).
	olderVersion bool
	// trailingLogs and snapshotThreshold, if not 0, replace the partition
	// groups' Raft log retention (tests: make a follower need a snapshot).
	trailingLogs, snapshotThreshold uint64

	// Limits no request can break (limits.go); zero fields take defaults.
	Limits Limits
	// Storage sizes the state engine and sets the free-space watermark
	// (storage.go); zero fields take defaults.
	Storage StorageConfig
	// DebugAddr, if set, serves pprof there, and only there (a bare port
	// or ":port" binds 127.0.0.1). MetricsAddr, if set, serves /metrics
	// there instead of on HTTPAddr.
	DebugAddr, MetricsAddr string
	// Reflection registers gRPC server reflection on the client port.
	Reflection bool

	// PeerDialer, if set, opens every connection this node makes to
	// another node's peer port (Raft of every group, peer gRPC). Tests cut
	// links with it (test/faultnet). Default: plain TCP.
	PeerDialer func(ctx context.Context, addr string) (net.Conn, error)

	Logger *slog.Logger
}

// DefaultReplaceAfter is Config.ReplaceAfter's default.
const DefaultReplaceAfter = 5 * time.Minute

// Default ports.
const (
	DefaultClientPort = 7420
	DefaultPeerPort   = 7421
	DefaultGossipPort = 7422
	DefaultHTTPPort   = 7423
)

// DefaultAdminIdentities: the client identity 'quorumq dev' and the Helm
// chart give their admin credential.
var DefaultAdminIdentities = []string{"admin"}

// Validate fills in defaults and checks the configuration.
func (c *Config) Validate() error {
	if c.DataDir == "" {
		return errors.New("config: data dir is required")
	}
	def := func(s *string, port int, host string) {
		if *s == "" {
			*s = net.JoinHostPort(host, strconv.Itoa(port))
		}
	}
	if c.ReplaceAfter == 0 {
		c.ReplaceAfter = DefaultReplaceAfter
	}
	if c.BalanceInterval == 0 {
		c.BalanceInterval = time.Minute
	}
	def(&c.ClientAddr, DefaultClientPort, "0.0.0.0")
	def(&c.PeerAddr, DefaultPeerPort, "")
	def(&c.GossipAddr, DefaultGossipPort, "")
	def(&c.HTTPAddr, DefaultHTTPPort, "")
	for _, a := range []string{c.ClientAddr, c.PeerAddr, c.GossipAddr} {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("config: address %q: %w", a, err)
		}
	}
	if c.NodeID != "" {
		if err := fsm.ValidNodeID(c.NodeID); err != nil {
			return fmt.Errorf("config: %w", err)
		}
	}
	if !c.Insecure {
		var missing []string
		for _, f := range []struct{ name, v string }{{"--tls-ca", c.TLSCAFile}, {"--tls-cert", c.TLSCertFile}, {"--tls-key", c.TLSKeyFile}, {"--gossip-key-file", c.GossipKeyFile}} {
			if f.v == "" {
				missing = append(missing, f.name)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("config: secure by default: %s missing (create them with 'quorumq certs'), or --insecure for a throwaway cluster",
				strings.Join(missing, ", "))
		}
	}
	if err := c.Storage.validate(); err != nil {
		return err
	}
	if err := c.Limits.validate(); err != nil {
		return err
	}
	if err := c.validateHTTP(); err != nil {
		return err
	}
	if c.AdminIdentities == nil {
		c.AdminIdentities = DefaultAdminIdentities
	}
	for _, a := range c.AdminIdentities {
		if err := fsm.ValidIdentity(a); err != nil {
			return fmt.Errorf("config: --admin-identities: %w", err)
		}
	}
	if c.BootstrapExpect < 0 {
		return errors.New("config: bootstrap-expect must be >= 0")
	}
	if c.HeartbeatTimeout == 0 {
		c.HeartbeatTimeout = 500 * time.Millisecond
	}
	if c.ElectionTimeout == 0 {
		c.ElectionTimeout = 500 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// advertise returns the address peers and clients should use for a listener
// bound to listen, whose real port is port.
func (c *Config) advertise(listen string, port int) string {
	host := c.AdvertiseHost
	if host == "" {
		h, _, _ := net.SplitHostPort(listen)
		if ip := net.ParseIP(h); h != "" && (ip == nil || !ip.IsUnspecified()) {
			host = h
		} else {
			host = outboundIP()
		}
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}

// outboundIP is this host's preferred non-loopback address, or 127.0.0.1.
func outboundIP() string {
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
				return n.IP.String()
			}
		}
	}
	return "127.0.0.1"
}
