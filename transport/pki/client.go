package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
// The files are read once, here; a client that must follow a rotation of
// its certificate builds a new configuration.
func ClientTLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	if caFile == "" {
		return nil, errors.New("pki: client TLS needs the cluster CA bundle (a CA file)")
	}
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("pki: a client certificate needs both a certificate and a key file (got certificate %q, key %q)", certFile, keyFile)
	}
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("pki: CA bundle: %w", err)
	}
	cas, err := ParseCertificates(b)
	if err != nil {
		return nil, fmt.Errorf("pki: CA bundle %s: %w", caFile, err)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		if !c.IsCA {
			return nil, fmt.Errorf("pki: CA bundle %s: certificate %q is not a CA certificate", caFile, c.Subject.CommonName)
		}
		pool.AddCert(c)
	}
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // replaced by VerifyPeerCertificate below: no host name check
		VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			leaf, err := verifyChain(pool, rawCerts, x509.ExtKeyUsageServerAuth)
			if err != nil {
				return fmt.Errorf("pki: the server's certificate does not verify against %s: %w", caFile, err)
			}
			if len(NodeIDs(leaf)) == 0 {
				return fmt.Errorf("pki: the server's certificate (%q) names no quorumq node", leaf.Subject.CommonName)
			}
			return nil
		},
	}
	if certFile == "" {
		return cfg, nil
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("pki: client certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("pki: client key: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: client certificate %s and key %s: %w", certFile, keyFile, err)
	}
	// A certificate of another CA would only be refused by the server, with
	// a less helpful error: say it here.
	if _, err := verifyChain(pool, cert.Certificate, x509.ExtKeyUsageClientAuth); err != nil {
		return nil, fmt.Errorf("pki: client certificate %s does not verify against %s for client authentication: %w", certFile, caFile, err)
	}
	cfg.Certificates = []tls.Certificate{cert}
	return cfg, nil
}

// Client returns the files of client name (CA, certificate, key), issuing
// its certificate if it has none, or one that does not chain to the CA,
// does not name the client or expires within a day.
func (l *Local) Client(name string) (Files, error) {
	if err := validName(name); err != nil {
		return Files{}, fmt.Errorf("pki: client name %q: %w", name, err)
	}
	f := Files{CA: filepath.Join(l.Dir, CACertFile), Cert: filepath.Join(l.Dir, "client-"+name+".pem"), Key: filepath.Join(l.Dir, "client-"+name+"-key.pem")}
	if m, err := load(f); err == nil && m.leaf.NotAfter.After(time.Now().Add(24*time.Hour)) && namesClient(m.leaf, name) {
		return f, nil
	}
	iss, err := l.CA.IssueClient(name, DefaultCertLifetime)
	if err != nil {
		return Files{}, err
	}
	if err := WriteFile(f.Key, iss.KeyPEM, 0o600, true); err != nil {
		return Files{}, fmt.Errorf("pki: %w", err)
	}
	if err := WriteFile(f.Cert, iss.CertPEM, 0o644, true); err != nil {
		return Files{}, fmt.Errorf("pki: %w", err)
	}
	return f, nil
}

func namesClient(c *x509.Certificate, name string) bool {
	for _, n := range ClientNames(c) {
		if n == name {
			return true
		}
	}
	return false
}
