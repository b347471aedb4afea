// Package pki issues and reads quorumq's TLS material: a cluster CA, node
// certificates that name node ids, client certificates that name clients,
// and gossip keys. See DESIGN.md in the transport directory ("TLS").
//
// Identities. A node certificate names its node id as a URI SAN
// spiffe://quorumq/node/<id>, or, for tools that cannot write URI SANs
// (Helm's genSignedCert), as a DNS SAN <id>.node.quorumq. A client
// certificate names the client the same way: spiffe://quorumq/client/<name>
// or <name>.client.quorumq. A certificate may name several nodes (one
// certificate shared by the pods of a Helm release); it then speaks for
// each of them.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Identity URI and DNS forms.
const (
	NodeURIPrefix   = "spiffe://quorumq/node/"
	ClientURIPrefix = "spiffe://quorumq/client/"
	NodeDNSSuffix   = ".node.quorumq"
	ClientDNSSuffix = ".client.quorumq"
)

// Default lifetimes.
const (
	DefaultCALifetime   = 10 * 365 * 24 * time.Hour
	DefaultCertLifetime = 365 * 24 * time.Hour
)

// GossipKeyLen is the length of a gossip key: AES-256.
const GossipKeyLen = 32

// CA is a certificate authority: its certificate and signing key.
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
	KeyPEM  []byte
}

// File names of a CA directory.
const (
	CACertFile = "ca.pem"
	CAKeyFile  = "ca-key.pem"
)

// NewCA creates a self-signed ECDSA P-256 CA valid for lifetime.
func NewCA(name string, lifetime time.Duration) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := serialNumber()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"quorumq"}},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), KeyPEM: keyPEM}, nil
}

// LoadCA reads dir/ca.pem and dir/ca-key.pem.
func LoadCA(dir string) (*CA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, fmt.Errorf("pki: read CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, fmt.Errorf("pki: read CA key: %w", err)
	}
	certs, err := ParseCertificates(certPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", filepath.Join(dir, CACertFile), err)
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", filepath.Join(dir, CAKeyFile), err)
	}
	if !certs[0].IsCA {
		return nil, errors.New("pki: ca.pem is not a CA certificate")
	}
	if !samePublicKey(certs[0].PublicKey, key.Public()) {
		return nil, errors.New("pki: ca-key.pem does not match ca.pem")
	}
	return &CA{Cert: certs[0], Key: key, CertPEM: certPEM, KeyPEM: keyPEM}, nil
}

// Issued is a certificate and its key, PEM-encoded.
type Issued struct {
	Cert     *x509.Certificate
	CertPEM  []byte
	KeyPEM   []byte
	NotAfter time.Time
}

// IssueNode signs a certificate for node id, good for server and client
// authentication, naming id (URI and DNS forms) and hosts (DNS names or IP
// addresses, optional: peers check the node id, not the host).
func (ca *CA) IssueNode(id string, hosts []string, lifetime time.Duration) (*Issued, error) {
	if err := validName(id); err != nil {
		return nil, fmt.Errorf("pki: node id %q: %w", id, err)
	}
	u, err := url.Parse(NodeURIPrefix + id)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: id, Organization: []string{"quorumq node"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{u},
		DNSNames:    []string{id + NodeDNSSuffix},
	}
	for _, h := range hosts {
		if h = strings.TrimSpace(h); h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return ca.issue(tmpl, lifetime)
}

// IssueClient signs a client certificate naming name.
func (ca *CA) IssueClient(name string, lifetime time.Duration) (*Issued, error) {
	if err := validName(name); err != nil {
		return nil, fmt.Errorf("pki: client name %q: %w", name, err)
	}
	u, err := url.Parse(ClientURIPrefix + name)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name, Organization: []string{"quorumq client"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{u},
	}
	return ca.issue(tmpl, lifetime)
}

func (ca *CA) issue(tmpl *x509.Certificate, lifetime time.Duration) (*Issued, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	if tmpl.SerialNumber, err = serialNumber(); err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl.NotBefore = now.Add(-5 * time.Minute)
	tmpl.NotAfter = now.Add(lifetime)
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	return &Issued{Cert: cert, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), KeyPEM: keyPEM, NotAfter: cert.NotAfter}, nil
}

// NodeIDs are the node ids a certificate names.
func NodeIDs(c *x509.Certificate) []string { return names(c, NodeURIPrefix, NodeDNSSuffix) }

// ClientNames are the client names a certificate names.
func ClientNames(c *x509.Certificate) []string { return names(c, ClientURIPrefix, ClientDNSSuffix) }

func names(c *x509.Certificate, uriPrefix, dnsSuffix string) []string {
	var out []string
	for _, u := range c.URIs {
		if s := u.String(); strings.HasPrefix(s, uriPrefix) && len(s) > len(uriPrefix) {
			out = append(out, s[len(uriPrefix):])
		}
	}
	for _, d := range c.DNSNames {
		if strings.HasSuffix(d, dnsSuffix) && len(d) > len(dnsSuffix) {
			out = append(out, d[:len(d)-len(dnsSuffix)])
		}
	}
	return out
}

// NamesNode reports whether c names node id.
func NamesNode(c *x509.Certificate, id string) bool {
	for _, n := range NodeIDs(c) {
		if n == id {
			return true
		}
	}
	return false
}

// validName accepts the characters of node ids and client names.
func validName(s string) error {
	if s == "" || len(s) > 128 {
		return errors.New("want 1 to 128 characters")
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		switch {
		case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9', b == '.', b == '_', b == '-', b == ':':
		default:
			return fmt.Errorf("character %q not allowed", b)
		}
	}
	return nil
}

// ParseCertificates parses every CERTIFICATE block of a PEM bundle.
func ParseCertificates(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no certificate in PEM data")
	}
	return out, nil
}

// ParseKey parses a PEM private key (PKCS#8, EC or PKCS#1).
func ParseKey(b []byte) (crypto.Signer, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("no private key in PEM data")
		}
		var k any
		var err error
		switch blk.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(blk.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, err
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("unsupported key type %T", k)
		}
		return s, nil
	}
}

func encodeKey(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func serialNumber() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func samePublicKey(a, b crypto.PublicKey) bool {
	ka, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ka.Equal(b)
}

// NewGossipKey returns a new random gossip key, base64-encoded as the key
// file holds it.
func NewGossipKey() (string, error) {
	var k [GossipKeyLen]byte
	if _, err := rand.Read(k[:]); err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(k[:]), nil
}

// DecodeGossipKey decodes a base64 gossip key (16, 24 or 32 bytes: AES-128,
// -192 or -256, as memberlist takes).
func DecodeGossipKey(s string) ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("gossip key: not base64: %w", err)
	}
	switch len(k) {
	case 16, 24, 32:
		return k, nil
	}
	return nil, fmt.Errorf("gossip key: %d bytes, want 16, 24 or 32", len(k))
}

// ReadGossipKey reads a gossip key file (one base64 line).
func ReadGossipKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	k, err := DecodeGossipKey(string(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// WriteFile writes data to path (mode perm) and refuses to replace an
// existing file unless overwrite.
func WriteFile(path string, data []byte, perm os.FileMode, overwrite bool) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if overwrite {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
