package cluster

import (
	"google.golang.org/grpc"

	"github.com/quorumq/quorumq/fsm"
)

// clientLimitOptions are the client gRPC server's limits.
func (n *Node) clientLimitOptions() []grpc.ServerOption {
	// A request may carry a whole Enqueue batch (fsm.MaxBatchBytes) plus
	// protobuf framing.
	return []grpc.ServerOption{grpc.MaxRecvMsgSize(fsm.MaxBatchBytes + 1<<20)}
}
