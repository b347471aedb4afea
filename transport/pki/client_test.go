package pki

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// clientPortServer is a server configuration like the client port's: the
// node's certificate, a client certificate verified if given; seen receives
// the client names of the certificate it was shown (nil: none).
func clientPortServer(t *testing.T, f Files, seen chan<- []string) *tls.Config {
	t.Helper()
	r, err := NewReloader(f, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := r.ServerConfig()
	cfg.ClientAuth = tls.RequestClientCert
	cfg.VerifyPeerCertificate = func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
		if len(rawCerts) == 0 {
			seen <- nil
			return nil
		}
		leaf, err := r.Verify(rawCerts, x509.ExtKeyUsageClientAuth)
		if err != nil {
			return err
		}
		seen <- ClientNames(leaf)
		return nil
	}
	return cfg
}

func writePEM(t *testing.T, path string, b []byte) string {
	t.Helper()
	if err := WriteFile(path, b, 0o600, true); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestClientTLSConfigHandshakes(t *testing.T) {
	dir := t.TempDir()
	l, err := OpenLocal(filepath.Join(dir, "tls"))
	if err != nil {
		t.Fatal(err)
	}
	node, err := l.Node("n1")
	if err != nil {
		t.Fatal(err)
	}
	admin, err := l.Client("admin")
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan []string, 1)
	srv := clientPortServer(t, node, seen)

	// With a client certificate: the server sees the client's name.
	cfg, err := ClientTLSConfig(admin.CA, admin.Cert, admin.Key)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MinVersion != tls.VersionTLS13 {
		t.Errorf("MinVersion %x, want TLS 1.3", cfg.MinVersion)
	}
	if serr, cerr := handshake(srv, cfg); serr != nil || cerr != nil {
		t.Fatalf("handshake with a client certificate: %v / %v", serr, cerr)
	}
	if got := <-seen; !slices.Equal(got, []string{"admin"}) {
		t.Errorf("server saw client names %v, want [admin]", got)
	}

	// Without one: server-authenticated TLS only.
	cfg, err = ClientTLSConfig(admin.CA, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if serr, cerr := handshake(srv, cfg); serr != nil || cerr != nil {
		t.Fatalf("handshake without a client certificate: %v / %v", serr, cerr)
	}
	if got := <-seen; got != nil {
		t.Errorf("server saw client names %v, want none", got)
	}

	// A server whose certificate comes from another CA: refused, naming
	// the CA file.
	other, err := OpenLocal(filepath.Join(dir, "other"))
	if err != nil {
		t.Fatal(err)
	}
	otherNode, err := other.Node("n1")
	if err != nil {
		t.Fatal(err)
	}
	if _, cerr := handshake(clientPortServer(t, otherNode, seen), cfg); cerr == nil || !strings.Contains(cerr.Error(), admin.CA) {
		t.Errorf("a server of another CA: %v; want an error naming %s", cerr, admin.CA)
	}

	// A server presenting a client certificate (no server usage, no node):
	// refused.
	fake := Files{CA: admin.CA, Cert: admin.Cert, Key: admin.Key}
	if _, cerr := handshake(clientPortServer(t, fake, seen), cfg); cerr == nil {
		t.Error("a server with a client certificate was accepted")
	}

	// A server certificate of the CA that names no node: refused.
	iss, err := l.CA.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "web"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    []string{"web.example"},
	}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	web := Files{CA: admin.CA, Cert: writePEM(t, filepath.Join(dir, "web.pem"), iss.CertPEM), Key: writePEM(t, filepath.Join(dir, "web-key.pem"), iss.KeyPEM)}
	if _, cerr := handshake(clientPortServer(t, web, seen), cfg); cerr == nil || !strings.Contains(cerr.Error(), "names no quorumq node") {
		t.Errorf("a server certificate naming no node: %v", cerr)
	}

	// TLS 1.2 servers are refused.
	old := srv.Clone()
	old.MinVersion, old.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	if _, cerr := handshake(old, cfg); cerr == nil {
		t.Error("a TLS 1.2 server was accepted")
	}
}

func TestClientTLSConfigErrors(t *testing.T) {
	dir := t.TempDir()
	l, err := OpenLocal(filepath.Join(dir, "tls"))
	if err != nil {
		t.Fatal(err)
	}
	admin, err := l.Client("admin")
	if err != nil {
		t.Fatal(err)
	}
	other, err := OpenLocal(filepath.Join(dir, "other"))
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := other.Client("admin")
	if err != nil {
		t.Fatal(err)
	}
	node, err := l.Node("n1")
	if err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	garbage := writePEM(t, filepath.Join(dir, "garbage.pem"), []byte("not PEM"))
	for _, c := range []struct {
		name          string
		ca, cert, key string
		want1, want2  string // both must appear in the error
	}{
		{"no CA", "", admin.Cert, admin.Key, "CA", ""},
		{"missing CA", missing, "", "", missing, ""},
		{"garbage CA", garbage, "", "", garbage, "no certificate"},
		{"CA bundle holds a leaf", node.Cert, "", "", node.Cert, "not a CA"},
		{"certificate without key", admin.CA, admin.Cert, "", "both", ""},
		{"key without certificate", admin.CA, "", admin.Key, "both", ""},
		{"missing certificate", admin.CA, missing, admin.Key, missing, ""},
		{"missing key", admin.CA, admin.Cert, missing, missing, ""},
		{"key of another certificate", admin.CA, admin.Cert, node.Key, admin.Cert, node.Key},
		{"certificate of another CA", admin.CA, stranger.Cert, stranger.Key, stranger.Cert, admin.CA},
	} {
		_, err := ClientTLSConfig(c.ca, c.cert, c.key)
		if err == nil || !strings.Contains(err.Error(), c.want1) || !strings.Contains(err.Error(), c.want2) {
			t.Errorf("%s: %v; want an error naming %q and %q", c.name, err, c.want1, c.want2)
		}
	}
}

func TestLocalClient(t *testing.T) {
	l, err := OpenLocal(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f, err := l.Client("admin")
	if err != nil {
		t.Fatal(err)
	}
	for p, mode := range map[string]os.FileMode{f.Cert: 0o644, f.Key: 0o600} {
		st, err := os.Stat(p)
		if err != nil || st.Mode().Perm() != mode {
			t.Errorf("%s: %v, mode %v; want %v", p, err, st.Mode().Perm(), mode)
		}
	}
	certPEM, _ := os.ReadFile(f.Cert)
	certs, err := ParseCertificates(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	if got := ClientNames(certs[0]); !slices.Equal(got, []string{"admin"}) || len(NodeIDs(certs[0])) != 0 {
		t.Errorf("client names %v, node ids %v", got, NodeIDs(certs[0]))
	}
	// Reused while good.
	again, err := l.Client("admin")
	if err != nil || again != f {
		t.Fatalf("second Client: %v %v", again, err)
	}
	if b, _ := os.ReadFile(f.Cert); !bytes.Equal(b, certPEM) {
		t.Error("a good certificate was issued again")
	}
	// Client and node files never collide.
	n, err := l.Node("admin")
	if err != nil || n.Cert == f.Cert || n.Key == f.Key {
		t.Errorf("node admin's files %v collide with client admin's %v (%v)", n, f, err)
	}
	// A certificate that no longer matches its key is issued again.
	if err := os.WriteFile(f.Key, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Client("admin"); err != nil {
		t.Fatal(err)
	}
	if _, err := ClientTLSConfig(f.CA, f.Cert, f.Key); err != nil {
		t.Errorf("re-issued material does not load: %v", err)
	}
	if _, err := l.Client("bad/name"); err == nil {
		t.Error("a client name with '/' was accepted")
	}
}

// TestClientTLSConfigFollowsRotation: a client built once follows its
// files as servers do: a CA rotation (bundle old+new, then new only) with
// new server and client certificates keeps working without a new config.
func TestClientTLSConfigFollowsRotation(t *testing.T) {
	dir := t.TempDir()
	oldLocal, err := OpenLocal(filepath.Join(dir, "old"))
	if err != nil {
		t.Fatal(err)
	}
	newLocal, err := OpenLocal(filepath.Join(dir, "new"))
	if err != nil {
		t.Fatal(err)
	}
	oldNode, _ := oldLocal.Node("n1")
	newNode, _ := newLocal.Node("n1")
	oldAdmin, err := oldLocal.Client("admin")
	if err != nil {
		t.Fatal(err)
	}
	newAdmin, err := newLocal.Client("admin")
	if err != nil {
		t.Fatal(err)
	}
	clientReloadInterval = 0 // look at the files on every handshake
	t.Cleanup(func() { clientReloadInterval = DefaultReloadInterval })
	if err := os.MkdirAll(filepath.Join(dir, "client"), 0o700); err != nil {
		t.Fatal(err)
	}
	// The client's own files, rewritten in place as an operator would.
	read := func(p string) []byte {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ca := writePEM(t, filepath.Join(dir, "client", "ca.pem"), read(oldAdmin.CA))
	cert := writePEM(t, filepath.Join(dir, "client", "admin.pem"), read(oldAdmin.Cert))
	key := writePEM(t, filepath.Join(dir, "client", "admin-key.pem"), read(oldAdmin.Key))
	cfg, err := ClientTLSConfig(ca, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan []string, 100)
	// The servers trust both CAs during the rotation.
	both := writePEM(t, filepath.Join(dir, "both.pem"), append(read(oldAdmin.CA), read(newAdmin.CA)...))
	oldSrv := clientPortServer(t, Files{CA: both, Cert: oldNode.Cert, Key: oldNode.Key}, seen)
	newSrv := clientPortServer(t, Files{CA: both, Cert: newNode.Cert, Key: newNode.Key}, seen)
	if serr, cerr := handshake(oldSrv, cfg); serr != nil || cerr != nil {
		t.Fatalf("before the rotation: %v / %v", serr, cerr)
	}
	if _, cerr := handshake(newSrv, cfg); cerr == nil {
		t.Fatal("a server of the new CA was accepted before the client trusts it")
	}
	// The client gets the new CA and certificate.
	writePEM(t, ca, append(read(oldAdmin.CA), read(newAdmin.CA)...))
	writePEM(t, cert, read(newAdmin.Cert))
	writePEM(t, key, read(newAdmin.Key))
	for len(seen) > 0 {
		<-seen
	}
	// The next handshake uses them: it presents the new certificate.
	if serr, cerr := handshake(newSrv, cfg); serr != nil || cerr != nil {
		t.Fatalf("the client did not pick up the new CA and certificate: %v / %v", serr, cerr)
	}
	if got := <-seen; !slices.Equal(got, []string{"admin"}) {
		t.Fatalf("server saw %v", got)
	}
	// A half-written file is ignored: the last good material stays.
	if err := os.WriteFile(cert, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if serr, cerr := handshake(newSrv, cfg); serr != nil || cerr != nil {
		t.Fatalf("after a broken file: %v / %v", serr, cerr)
	}
}
