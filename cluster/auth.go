package cluster

import "google.golang.org/grpc"

// clientSecurityOptions are the client gRPC server's credentials and
// authentication/authorization interceptors.
func (n *Node) clientSecurityOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(n.metrics.unaryInterceptor)}
}
