package pki

import (
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Local is the TLS material of a cluster that runs on one machine: a CA,
// a certificate per node, and a gossip key, all in one directory. quorumq
// dev and the multi-node tests use it; production clusters get theirs
// from 'quorumq certs', cert-manager or the Helm chart.
type Local struct {
	Dir           string
	CA            *CA
	GossipKeyFile string
}

// OpenLocal opens (creating what is missing) the material in dir: ca.pem,
// ca-key.pem and gossip.key.
func OpenLocal(dir string) (*Local, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	l := &Local{Dir: dir, GossipKeyFile: filepath.Join(dir, "gossip.key")}
	ca, err := LoadCA(dir)
	if errors.Is(err, os.ErrNotExist) {
		if ca, err = NewCA("quorumq local CA", DefaultCALifetime); err != nil {
			return nil, err
		}
		if err := WriteFile(filepath.Join(dir, CACertFile), ca.CertPEM, 0o644, true); err != nil {
			return nil, err
		}
		if err := WriteFile(filepath.Join(dir, CAKeyFile), ca.KeyPEM, 0o600, true); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	l.CA = ca
	if _, err := os.Stat(l.GossipKeyFile); errors.Is(err, os.ErrNotExist) {
		k, err := NewGossipKey()
		if err != nil {
			return nil, err
		}
		if err := WriteFile(l.GossipKeyFile, []byte(k+"\n"), 0o600, true); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// Node returns the files of node id, issuing its certificate if it has
// none, or one that does not chain to the CA or expires within a day.
func (l *Local) Node(id string) (Files, error) {
	return l.issued(id+".pem", id+"-key.pem", func(c *x509.Certificate) bool { return NamesNode(c, id) }, func() (*Issued, error) {
		return l.CA.IssueNode(id, []string{"localhost", "127.0.0.1"}, DefaultCertLifetime)
	})
}

// issued returns the files cert and key in the directory, issuing them
// anew unless they hold a certificate that chains to the CA, that names
// (the wanted identity) and that is good for another day.
func (l *Local) issued(cert, key string, names func(*x509.Certificate) bool, issue func() (*Issued, error)) (Files, error) {
	f := Files{CA: filepath.Join(l.Dir, CACertFile), Cert: filepath.Join(l.Dir, cert), Key: filepath.Join(l.Dir, key)}
	if m, err := load(f); err == nil && m.leaf.NotAfter.After(time.Now().Add(24*time.Hour)) && names(m.leaf) {
		return f, nil
	}
	iss, err := issue()
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
