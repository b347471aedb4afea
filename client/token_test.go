package client_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/quorumq/quorumq/client"
	qv1 "github.com/quorumq/quorumq/proto/quorumq/v1"
	"github.com/quorumq/quorumq/transport/pki"
)

// authRecorder is a client port that only answers Members (with the
// members it is given) and records, per call, whether it came over TLS,
// the client certificate's names and the authorization header.
type authRecorder struct {
	qv1.UnimplementedClusterServiceServer
	addr    string
	members func() []*qv1.Member

	mu    sync.Mutex
	calls []authCall
}

type authCall struct {
	tls     bool
	clients []string
	auth    []string
}

func (r *authRecorder) Members(ctx context.Context, _ *qv1.MembersRequest) (*qv1.MembersResponse, error) {
	var c authCall
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			c.tls = true
			if pc := ti.State.PeerCertificates; len(pc) > 0 {
				c.clients = pki.ClientNames(pc[0])
			}
		}
	}
	md, _ := metadata.FromIncomingContext(ctx)
	c.auth = md.Get("authorization")
	r.mu.Lock()
	r.calls = append(r.calls, c)
	r.mu.Unlock()
	return &qv1.MembersResponse{Members: r.members()}, nil
}

func (r *authRecorder) seen() []authCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]authCall(nil), r.calls...)
}

// startAuthRecorder serves TLS with node's material (a client certificate
// is asked for, not required) or, if node is nil, plaintext.
func startAuthRecorder(t *testing.T, node *pki.Files, members func() []*qv1.Member) *authRecorder {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var opts []grpc.ServerOption
	if node != nil {
		rl, err := pki.NewReloader(*node, nil)
		if err != nil {
			t.Fatal(err)
		}
		cfg := rl.ServerConfig()
		cfg.ClientAuth = tls.RequestClientCert
		cfg.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return nil
			}
			_, err := rl.Verify(raw, x509.ExtKeyUsageClientAuth)
			return err
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg)))
	}
	s := grpc.NewServer(opts...)
	r := &authRecorder{addr: l.Addr().String(), members: members}
	qv1.RegisterClusterServiceServer(s, r)
	go func() { _ = s.Serve(l) }()
	t.Cleanup(s.Stop)
	return r
}

func TestWithTokenAndTLSOnEveryConnection(t *testing.T) {
	l, err := pki.OpenLocal(filepath.Join(t.TempDir(), "tls"))
	if err != nil {
		t.Fatal(err)
	}
	n1, err := l.Node("n1")
	if err != nil {
		t.Fatal(err)
	}
	n2, err := l.Node("n2")
	if err != nil {
		t.Fatal(err)
	}
	admin, err := l.Client("admin")
	if err != nil {
		t.Fatal(err)
	}
	// The seed knows of a second node, which the client only learns from
	// it: its connection must carry the same TLS and token.
	var second *authRecorder
	members := func() []*qv1.Member {
		return []*qv1.Member{{Id: "n2", ClientAddr: second.addr, GossipState: "alive", CatalogState: "alive"}}
	}
	second = startAuthRecorder(t, &n2, members)
	seed := startAuthRecorder(t, &n1, members)

	for _, c := range []struct {
		name       string
		cert, key  string
		token      bool
		wantAuth   string
		wantClient string
	}{
		{name: "token", token: true, wantAuth: "Bearer qq_secret"},
		{name: "certificate", cert: admin.Cert, key: admin.Key, wantClient: "admin"},
	} {
		t.Run(c.name, func(t *testing.T) {
			before1, before2 := len(seed.seen()), len(second.seen())
			cfg, err := pki.ClientTLSConfig(admin.CA, c.cert, c.key)
			if err != nil {
				t.Fatal(err)
			}
			opts := []client.Option{client.WithTLS(cfg)}
			if c.token {
				opts = append(opts, client.WithToken("qq_secret"))
			}
			cl, err := client.New(ctxT(t, 10*time.Second), []string{seed.addr}, opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			// The seed answered that n2 is the only member: calls now go
			// to n2, which the client knows from the seed only.
			waitFor(t, "a call on the learnt node", 10*time.Second, func() bool {
				if len(second.seen()) > before2 {
					return true
				}
				_, _ = cl.Members(ctxT(t, 10*time.Second))
				return false
			})
			for name, calls := range map[string][]authCall{"seed": seed.seen()[before1:], "learnt node": second.seen()[before2:]} {
				if len(calls) == 0 {
					t.Errorf("%s: no call", name)
				}
				for _, call := range calls {
					if !call.tls {
						t.Errorf("%s: a call without TLS", name)
					}
					if got := strings.Join(call.auth, ","); got != c.wantAuth {
						t.Errorf("%s: authorization %q, want %q", name, got, c.wantAuth)
					}
					if got := strings.Join(call.clients, ","); got != c.wantClient {
						t.Errorf("%s: client certificate names %q, want %q", name, got, c.wantClient)
					}
				}
			}
		})
	}
}

func TestWithTokenRefusals(t *testing.T) {
	plain := startAuthRecorder(t, nil, func() []*qv1.Member { return nil })
	// Never in plaintext: New refuses before anything is sent.
	_, err := client.New(ctxT(t, 5*time.Second), []string{plain.addr}, client.WithToken("qq_secret"))
	if !errors.Is(err, client.ErrInvalid) || !strings.Contains(err.Error(), "WithTLS") {
		t.Errorf("token without TLS: %v; want ErrInvalid naming WithTLS", err)
	}
	if n := len(plain.seen()); n != 0 {
		t.Errorf("%d calls reached the server", n)
	}
	l, err := pki.OpenLocal(filepath.Join(t.TempDir(), "tls"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := pki.ClientTLSConfig(filepath.Join(l.Dir, pki.CACertFile), "", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{"", "  ", "qq_a\nb", "qq_a b"} {
		_, err := client.New(ctxT(t, 5*time.Second), []string{plain.addr}, client.WithTLS(cfg), client.WithToken(tok))
		if !errors.Is(err, client.ErrInvalid) {
			t.Errorf("token %q: %v; want ErrInvalid", tok, err)
		}
	}
}

// Against a secure cluster: a token authenticates the client; a bad token
// or none is refused as unauthenticated.
func TestWithTokenAgainstCluster(t *testing.T) {
	tc, err := sharedCluster()
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(tc.seeds()[0], grpc.WithTransportCredentials(credentials.NewTLS(tc.tls)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	tok, err := qv1.NewAccessServiceClient(cc).CreateToken(ctxT(t, 10*time.Second), &qv1.CreateTokenRequest{Identity: "admin", Description: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	// Server-authenticated TLS only: the CA, no client certificate.
	caOnly, err := pki.ClientTLSConfig(tc.caFile, "", "")
	if err != nil {
		t.Fatal(err)
	}
	// A new token is effective on every node once each applied it (within
	// a second): wait for that.
	creds, err := client.TokenCredentials(tok.GetToken())
	if err != nil {
		t.Fatal(err)
	}
	for _, addr := range tc.seeds() {
		nc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(caOnly)), grpc.WithPerRPCCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the token known on "+addr, 10*time.Second, func() bool {
			w, err := qv1.NewAccessServiceClient(nc).WhoAmI(ctxT(t, 2*time.Second), &qv1.WhoAmIRequest{})
			return err == nil && w.GetIdentity() == "admin" && w.GetMethod() == "token"
		})
		nc.Close()
	}
	c := connect(t, tc, client.WithTLS(caOnly), client.WithToken(tok.GetToken()))
	q := queueName(t)
	createQueue(t, c, q, client.QueueOptions{Partitions: 1})
	if _, err := c.Enqueue(ctxT(t, 10*time.Second), q, &client.Message{Payload: []byte("x")}); err != nil {
		t.Fatalf("enqueue with a token: %v", err)
	}
	for name, opts := range map[string][]client.Option{
		"bad token":     {client.WithTLS(caOnly), client.WithToken(tok.GetToken() + "x")},
		"no credential": {client.WithTLS(caOnly)},
	} {
		_, err := client.New(ctxT(t, 10*time.Second), tc.seeds(), append(opts, client.WithRetry(1, time.Millisecond, time.Millisecond))...)
		if err == nil || !strings.Contains(strings.ToLower(err.Error()), "unauthenticated") {
			t.Errorf("%s: %v; want unauthenticated", name, err)
		}
	}
}
