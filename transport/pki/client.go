package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ClientTLSConfig is the TLS configuration of a client of the client port
// (the Go client, the CLI): TLS 1.3; the server's chain is checked against
// the CA bundle in caFile, must allow server authentication and must name a
// node (NodeIDs); host names are not checked, since clients reach nodes by
// whatever address they advertise. certFile and keyFile, both or neither,
// are the client certificate presented in the handshake (identity by
// certificate); without them the client authenticates otherwise (a bearer
// token) or not at all.
//
// The files are read now, and read again on a handshake at least
// DefaultReloadInterval after the last read when one of them changed
// (size or modification time), as the servers re-read theirs: a
// long-running client follows a certificate renewal and a CA rotation
// (old+new bundle, then new). Material that fails to load then is
// ignored and the last good one kept; the error here is for the first
// load only.
func ClientTLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	if caFile == "" {
		return nil, errors.New("pki: client TLS needs the cluster CA bundle (a CA file)")
	}
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("pki: a client certificate needs both a certificate and a key file (got certificate %q, key %q)", certFile, keyFile)
	}
	src := &clientMaterial{caFile: caFile, certFile: certFile, keyFile: keyFile}
	m, err := src.load()
	if err != nil {
		return nil, err
	}
	src.cur.Store(m)
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // replaced by VerifyPeerCertificate below: no host name check
		VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			leaf, err := verifyChain(src.get().pool, rawCerts, x509.ExtKeyUsageServerAuth)
			if err != nil {
				return fmt.Errorf("pki: the server's certificate does not verify against %s: %w", caFile, err)
			}
			if len(NodeIDs(leaf)) == 0 {
				return fmt.Errorf("pki: the server's certificate (%q) names no quorumq node", leaf.Subject.CommonName)
			}
			return nil
		},
	}
	if certFile != "" {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return src.get().cert, nil
		}
	}
	return cfg, nil
}

// clientReloadInterval is how often a client looks at its files (tests
// shorten it).
var clientReloadInterval = DefaultReloadInterval

// clientMaterial is a client's TLS material, re-read when its files change.
type clientMaterial struct {
	caFile, certFile, keyFile string
	cur                       atomic.Pointer[clientLoaded]
	mu                        sync.Mutex // one reload at a time
}

type clientLoaded struct {
	pool    *x509.CertPool
	cert    *tls.Certificate // nil without a client certificate
	stamp   string           // sizes and modification times of the files
	checked time.Time
}

// get returns the current material, reloading it first if it is due and
// a file changed.
func (c *clientMaterial) get() *clientLoaded {
	m := c.cur.Load()
	if time.Since(m.checked) < clientReloadInterval || !c.mu.TryLock() {
		return m
	}
	defer c.mu.Unlock()
	m = c.cur.Load()
	if c.stamp() == m.stamp {
		c.cur.Store(&clientLoaded{pool: m.pool, cert: m.cert, stamp: m.stamp, checked: time.Now()})
		return c.cur.Load()
	}
	if n, err := c.load(); err == nil {
		c.cur.Store(n)
		return n
	}
	// Half-written files, say: keep what worked, look again later.
	c.cur.Store(&clientLoaded{pool: m.pool, cert: m.cert, stamp: m.stamp, checked: time.Now()})
	return c.cur.Load()
}

func (c *clientMaterial) stamp() string {
	var b strings.Builder
	for _, f := range []string{c.caFile, c.certFile, c.keyFile} {
		if f == "" {
			continue
		}
		if st, err := os.Stat(f); err == nil {
			fmt.Fprintf(&b, "%d/%d;", st.Size(), st.ModTime().UnixNano())
		} else {
			b.WriteString("?;")
		}
	}
	return b.String()
}

func (c *clientMaterial) load() (*clientLoaded, error) {
	stamp := c.stamp()
	b, err := os.ReadFile(c.caFile)
	if err != nil {
		return nil, fmt.Errorf("pki: CA bundle: %w", err)
	}
	cas, err := ParseCertificates(b)
	if err != nil {
		return nil, fmt.Errorf("pki: CA bundle %s: %w", c.caFile, err)
	}
	pool := x509.NewCertPool()
	for _, ca := range cas {
		if !ca.IsCA {
			return nil, fmt.Errorf("pki: CA bundle %s: certificate %q is not a CA certificate", c.caFile, ca.Subject.CommonName)
		}
		pool.AddCert(ca)
	}
	m := &clientLoaded{pool: pool, stamp: stamp, checked: time.Now()}
	if c.certFile == "" {
		return m, nil
	}
	certPEM, err := os.ReadFile(c.certFile)
	if err != nil {
		return nil, fmt.Errorf("pki: client certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(c.keyFile)
	if err != nil {
		return nil, fmt.Errorf("pki: client key: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: client certificate %s and key %s: %w", c.certFile, c.keyFile, err)
	}
	// A certificate of another CA would only be refused by the server, with
	// a less helpful error: say it here.
	if _, err := verifyChain(pool, cert.Certificate, x509.ExtKeyUsageClientAuth); err != nil {
		return nil, fmt.Errorf("pki: client certificate %s does not verify against %s for client authentication: %w", c.certFile, c.caFile, err)
	}
	m.cert = &cert
	return m, nil
}

// Client returns the files of client name (CA, certificate, key), issuing
// its certificate if it has none, or one that does not chain to the CA,
// does not name the client or expires within a day.
func (l *Local) Client(name string) (Files, error) {
	if err := validName(name); err != nil {
		return Files{}, fmt.Errorf("pki: client name %q: %w", name, err)
	}
	return l.issued("client-"+name+".pem", "client-"+name+"-key.pem", func(c *x509.Certificate) bool { return namesClient(c, name) }, func() (*Issued, error) {
		return l.CA.IssueClient(name, DefaultCertLifetime)
	})
}

func namesClient(c *x509.Certificate, name string) bool {
	for _, n := range ClientNames(c) {
		if n == name {
			return true
		}
	}
	return false
}
