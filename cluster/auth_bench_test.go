package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
	"github.com/quorumq/quorumq/transport/pki"
)

// BenchmarkAuthorizeEnqueue is what authentication and authorization add
// to one Enqueue call on a node (the catalogue read lock, naming the
// caller, the grant lookup), by certificate and by token, with a policy of
// 1,000 identities. Compare with the time of one pipelined Enqueue call
// (quorumq bench): a call carries a batch of messages.
func BenchmarkAuthorizeEnqueue(b *testing.B) {
	c := startCluster(b, 1)
	n := c.nodes[0]
	ctx := ctxT(b, time.Minute)
	ac := qv1.NewAccessServiceClient(c.conn(0))
	tok, err := ac.CreateToken(ctx, &qv1.CreateTokenRequest{Identity: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	for i := range 1000 {
		id := "worker" + string(rune('a'+i%26)) + time.Duration(i).String()
		if _, err := ac.Grant(ctx, &qv1.GrantRequest{Grant: &qv1.AccessGrant{Identity: id, Permission: qv1.Permission_PERMISSION_CONSUME, Queue: "q"}}); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := ac.Grant(ctx, &qv1.GrantRequest{Grant: &qv1.AccessGrant{Identity: "bench", Permission: qv1.Permission_PERMISSION_PRODUCE, Queue: "orders"}}); err != nil {
		b.Fatal(err)
	}
	ca, err := pki.NewCA("bench", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	iss, err := ca.IssueClient("bench", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	req := &qv1.EnqueueRequest{Queue: "orders"}
	info := &grpc.UnaryServerInfo{FullMethod: qv1.QueueService_Enqueue_FullMethodName}
	ok := func(context.Context, any) (any, error) { return nil, nil }
	for _, tc := range []struct {
		name string
		ctx  context.Context
	}{
		{"certificate", peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: []*x509.Certificate{iss.Cert}}}})},
		{"token", metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+tok.GetToken()))},
	} {
		b.Run(tc.name, func(b *testing.B) {
			if _, err := n.authorizeClientCall(tc.ctx, req, info, ok); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := n.authorizeClientCall(tc.ctx, req, info, ok); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
