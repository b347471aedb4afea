package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/quorumq/quorumq/transport/pki"
)

// Security makes the peer port mutual TLS (TLS 1.3): every inbound
// connection must present a certificate chaining to the cluster CA and be
// authorized before its first byte is read, and every Raft dial checks
// that the node it reached is the node it meant. Set Mux.Security before
// Serve and before registering groups; nil means plaintext (--insecure).
type Security struct {
	// TLS holds the node's certificate, key and CA bundle, reloaded when
	// the files change.
	TLS *pki.Reloader
	// NodeOf is the node id of a Raft member: a dial to a member must
	// reach a node whose certificate names that node.
	NodeOf func(raft.ServerID) string
	// Authorize says whether a peer whose certificate names nodes may use
	// the peer port at all (Raft and peer gRPC); nil: yes. It runs after
	// the handshake, before the first byte of the connection is read.
	Authorize func(nodes []string) error
}

// ErrUnauthorized wraps every refusal of Security.Authorize.
var ErrUnauthorized = errors.New("transport: peer not authorized")

// errHandshake wraps a failed TLS handshake of an inbound connection.
var errHandshake = errors.New("tls handshake")

// serverHandshake runs the TLS handshake of an inbound connection (bounded
// by c's deadline) and authorizes the peer.
func (m *Mux) serverHandshake(c net.Conn) (net.Conn, error) {
	s := m.Security
	tc := tls.Server(c, m.serverTLS)
	if err := tc.Handshake(); err != nil {
		m.stats.tlsFailed.Add(1)
		return nil, fmt.Errorf("%w: %w", errHandshake, err)
	}
	nodes := peerNodes(tc.ConnectionState())
	if s.Authorize != nil {
		if err := s.Authorize(nodes); err != nil {
			m.stats.unauthorized.Add(1)
			return nil, fmt.Errorf("%w: %v: %w", ErrUnauthorized, nodes, err)
		}
	}
	return tc, nil
}

// clientHandshake runs the TLS handshake of a Raft dial to member target.
func (m *Mux) clientHandshake(ctx context.Context, c net.Conn, target raft.ServerID) (net.Conn, error) {
	s := m.Security
	node := string(target)
	if s.NodeOf != nil {
		node = s.NodeOf(target)
	}
	tc := tls.Client(c, s.TLS.ClientConfig(pki.ExpectNode(node)))
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("transport: tls to %s: %w", node, err)
	}
	return tc, nil
}

// peerNodes are the node ids the peer's verified certificate names.
func peerNodes(st tls.ConnectionState) []string {
	if len(st.PeerCertificates) == 0 {
		return nil
	}
	return pki.NodeIDs(st.PeerCertificates[0])
}

// PeerNodes returns the node ids that the certificate of the peer of a gRPC
// call on the peer port names, and whether the call came over TLS.
func PeerNodes(ctx context.Context) ([]string, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, false
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil, false
	}
	return peerNodes(ti.State), true
}

// GRPCServerCredentials are the transport credentials of the gRPC server
// that serves GRPCListener: the Mux has already run the TLS handshake (if
// Security is set), so they only report its state to gRPC (for PeerNodes).
func (m *Mux) GRPCServerCredentials() credentials.TransportCredentials { return muxCreds{} }

// PeerClientCredentials are the credentials of a gRPC connection to node
// over the peer port: mutual TLS that checks the server's certificate
// names node.
func (s *Security) PeerClientCredentials(node string) credentials.TransportCredentials {
	return credentials.NewTLS(s.TLS.ClientConfig(pki.ExpectNode(node)))
}

type muxCreds struct{}

func (muxCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if tc, ok := unwrapTLS(c); ok {
		return c, credentials.TLSInfo{State: tc.ConnectionState(), CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
	}
	return c, nil, nil
}

func (muxCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("transport: mux credentials are for the server side")
}

func (muxCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}

func (c muxCreds) Clone() credentials.TransportCredentials { return c }

func (muxCreds) OverrideServerName(string) error { return nil } //nolint:staticcheck // required by the interface

// unwrapTLS finds the *tls.Conn under the Mux's wrappers.
func unwrapTLS(c net.Conn) (*tls.Conn, bool) {
	for {
		switch v := c.(type) {
		case *tls.Conn:
			return v, true
		case *replayConn:
			c = v.Conn
		default:
			return nil, false
		}
	}
}
