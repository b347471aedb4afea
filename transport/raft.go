package transport

import (
	"log/slog"
	"time"

	"github.com/hashicorp/raft"
)

// Settings of every group's raft.NetworkTransport. DESIGN.md says why.
const (
	// RaftMaxPool is how many idle outbound connections a group keeps per
	// peer for request/response RPCs.
	RaftMaxPool = 2
	// RaftTimeout is the I/O deadline of one Raft RPC (scaled up by size for
	// InstallSnapshot).
	RaftTimeout = 5 * time.Second
)

// NewRaftTransport returns the raft.Transport of one group: a
// raft.NetworkTransport over layer with MaxPool RaftMaxPool, Timeout
// RaftTimeout, the default pipelining depth, and its logs bridged to log
// (see NewHCLogger) with a "group" attribute. Closing the transport closes
// the layer. All RPCs, RequestPreVote included, work over it.
//
// addrs, if not nil, is asked for a peer's current address before each
// dial, so that a node that came back with a new IP (a rescheduled pod) is
// reached without a configuration change; when it fails, the address in the
// Raft configuration is used.
func NewRaftTransport(layer *GroupLayer, log *slog.Logger, addrs raft.ServerAddressProvider) *raft.NetworkTransport {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  layer,
		MaxPool: RaftMaxPool,
		Timeout: RaftTimeout,
		Logger:  NewHCLogger(log.With("group", layer.ID()), "raft-net"),

		ServerAddressProvider: addrs,
	})
}
