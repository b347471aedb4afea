package pki

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Files names a node's TLS material: the CA bundle (one or more CA
// certificates: during a CA rotation the old and the new), the node's
// certificate (with its chain, if any) and its key.
type Files struct {
	CA, Cert, Key string
}

// DefaultReloadInterval is how often Run looks at the files.
const DefaultReloadInterval = 2 * time.Second

// Reloader holds the current TLS material read from Files and reads it
// again when the files change (Kubernetes updates a mounted Secret in
// place): new handshakes use the new material, connections already up
// stay up. A change that does not load (a certificate that does not match
// its key, half-written files) is not taken; the old material stays until
// the files are whole again.
type Reloader struct {
	files Files
	log   *slog.Logger
	cur   atomic.Pointer[material]

	mu      sync.Mutex // serialises Reload
	lastErr string
	reloads atomic.Uint64
}

type material struct {
	raw   [3][]byte
	cert  *tls.Certificate
	leaf  *x509.Certificate
	pool  *x509.CertPool
	nodes []string
}

// NewReloader loads f, or fails if it does not load.
func NewReloader(f Files, log *slog.Logger) (*Reloader, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Reloader{files: f, log: log}
	m, err := load(f)
	if err != nil {
		return nil, err
	}
	r.cur.Store(m)
	return r, nil
}

func load(f Files) (*material, error) {
	var m material
	for i, p := range []string{f.CA, f.Cert, f.Key} {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		m.raw[i] = b
	}
	cas, err := ParseCertificates(m.raw[0])
	if err != nil {
		return nil, fmt.Errorf("tls: CA bundle %s: %w", f.CA, err)
	}
	m.pool = x509.NewCertPool()
	for _, c := range cas {
		m.pool.AddCert(c)
	}
	cert, err := tls.X509KeyPair(m.raw[1], m.raw[2])
	if err != nil {
		return nil, fmt.Errorf("tls: certificate %s and key %s: %w", f.Cert, f.Key, err)
	}
	m.cert = &cert
	m.leaf = cert.Leaf
	if m.leaf == nil {
		if m.leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("tls: certificate %s: %w", f.Cert, err)
		}
	}
	if _, err := verifyChain(m.pool, cert.Certificate, x509.ExtKeyUsageAny); err != nil {
		return nil, fmt.Errorf("tls: certificate %s does not chain to the CA bundle %s: %w", f.Cert, f.CA, err)
	}
	m.nodes = NodeIDs(m.leaf)
	return &m, nil
}

// Reload reads the files again and takes them if they changed and load.
func (r *Reloader) Reload() (changed bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cur := r.cur.Load()
	var raw [3][]byte
	for i, p := range []string{r.files.CA, r.files.Cert, r.files.Key} {
		if raw[i], err = os.ReadFile(p); err != nil {
			return false, fmt.Errorf("tls: %w", err)
		}
	}
	if bytes.Equal(raw[0], cur.raw[0]) && bytes.Equal(raw[1], cur.raw[1]) && bytes.Equal(raw[2], cur.raw[2]) {
		return false, nil
	}
	m, err := load(r.files)
	if err != nil {
		return false, err
	}
	r.cur.Store(m)
	r.reloads.Add(1)
	return true, nil
}

// Run calls Reload every interval until ctx ends, logging what it took and,
// once per distinct error, what it could not take.
func (r *Reloader) Run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		changed, err := r.Reload()
		switch {
		case err != nil:
			if msg := err.Error(); msg != r.lastErr {
				r.lastErr = msg
				r.log.Warn("TLS material changed but does not load; keeping the current one", "err", err)
			}
		case changed:
			r.lastErr = ""
			m := r.cur.Load()
			r.log.Info("TLS material reloaded", "nodes", m.nodes, "not_after", m.leaf.NotAfter)
		}
	}
}

// Reloads counts the changes taken since start.
func (r *Reloader) Reloads() uint64 { return r.reloads.Load() }

// Nodes are the node ids this node's certificate names.
func (r *Reloader) Nodes() []string { return r.cur.Load().nodes }

// NotAfter is when this node's certificate expires.
func (r *Reloader) NotAfter() time.Time { return r.cur.Load().leaf.NotAfter }

// Verify checks that the chain rawCerts (leaf first) leads to a CA of the
// current bundle and allows usage, and returns the leaf.
func (r *Reloader) Verify(rawCerts [][]byte, usage x509.ExtKeyUsage) (*x509.Certificate, error) {
	return verifyChain(r.cur.Load().pool, rawCerts, usage)
}

func verifyChain(pool *x509.CertPool, rawCerts [][]byte, usage x509.ExtKeyUsage) (*x509.Certificate, error) {
	if len(rawCerts) == 0 {
		return nil, errors.New("no certificate")
	}
	certs := make([]*x509.Certificate, len(rawCerts))
	for i, b := range rawCerts {
		c, err := x509.ParseCertificate(b)
		if err != nil {
			return nil, err
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}})
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}

// ServerConfig is the TLS configuration of a listener that requires a
// client certificate chaining to the current CA bundle (any client
// certificate usage check is the caller's, from the verified leaf), TLS 1.3
// only, with this node's current certificate.
func (r *Reloader) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAnyClientCert,
		// A resumed session skips VerifyPeerCertificate: a ticket issued
		// before a CA left the bundle would still be honoured.
		SessionTicketsDisabled: true,
		NextProtos:             []string{"h2"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return r.cur.Load().cert, nil
		},
		VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			_, err := r.Verify(rawCerts, x509.ExtKeyUsageClientAuth)
			return err
		},
	}
}

// ClientConfig is the TLS configuration of a dial: TLS 1.3, this node's
// current certificate as client certificate, the server's chain checked
// against the current CA bundle, then check(leaf) (the caller's check of
// whom it reached; nil: none). Host names are not checked: peers are
// checked by the identity their certificate names.
func (r *Reloader) ClientConfig(check func(leaf *x509.Certificate) error) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // replaced by VerifyPeerCertificate below
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return r.cur.Load().cert, nil
		},
		VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			leaf, err := r.Verify(rawCerts, x509.ExtKeyUsageServerAuth)
			if err != nil {
				return err
			}
			if check != nil {
				return check(leaf)
			}
			return nil
		},
	}
}

// ExpectNode is a ClientConfig check: the server's certificate names node.
func ExpectNode(node string) func(*x509.Certificate) error {
	return func(leaf *x509.Certificate) error {
		if !NamesNode(leaf, node) {
			return fmt.Errorf("tls: the peer's certificate names nodes %v, not %s", NodeIDs(leaf), node)
		}
		return nil
	}
}

// ClientPortConfig is the TLS configuration of the client port: this
// node's certificate, TLS 1.3; a client certificate is optional (a client
// may authenticate with a token instead) but, when given, must chain to
// the current CA bundle and allow client authentication.
func (r *Reloader) ClientPortConfig() *tls.Config {
	c := r.ServerConfig()
	c.ClientAuth = tls.RequestClientCert
	c.VerifyPeerCertificate = func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
		if len(rawCerts) == 0 {
			return nil
		}
		_, err := r.Verify(rawCerts, x509.ExtKeyUsageClientAuth)
		return err
	}
	return c
}
