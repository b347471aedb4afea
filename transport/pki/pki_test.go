package pki

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// writeNode writes a node's material signed by ca (CA bundle cas) into dir.
func writeNode(t *testing.T, dir, id string, ca *CA, cas ...*CA) Files {
	t.Helper()
	iss, err := ca.IssueNode(id, []string{"localhost", "127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var bundle []byte
	for _, c := range cas {
		bundle = append(bundle, c.CertPEM...)
	}
	f := Files{CA: filepath.Join(dir, id+"-ca.pem"), Cert: filepath.Join(dir, id+".pem"), Key: filepath.Join(dir, id+"-key.pem")}
	for p, b := range map[string][]byte{f.CA: bundle, f.Cert: iss.CertPEM, f.Key: iss.KeyPEM} {
		if err := WriteFile(p, b, 0o600, true); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func TestIssueAndIdentities(t *testing.T) {
	ca, err := NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := WriteFile(filepath.Join(dir, CACertFile), ca.CertPEM, 0o644, false); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(filepath.Join(dir, CAKeyFile), ca.KeyPEM, 0o600, false); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(filepath.Join(dir, CAKeyFile), ca.KeyPEM, 0o600, false); err == nil {
		t.Fatal("WriteFile replaced an existing file without overwrite")
	}
	loaded, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	node, err := loaded.IssueNode("n1", []string{"n1.example", "10.0.0.5"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if got := NodeIDs(node.Cert); !slices.Equal(got, []string{"n1", "n1"}) {
		t.Fatalf("NodeIDs = %v", got)
	}
	if !NamesNode(node.Cert, "n1") || NamesNode(node.Cert, "n2") {
		t.Fatal("NamesNode")
	}
	if len(node.Cert.IPAddresses) != 1 || !slices.Contains(node.Cert.DNSNames, "n1.example") {
		t.Fatalf("hosts not in the certificate: %v %v", node.Cert.DNSNames, node.Cert.IPAddresses)
	}
	cl, err := ca.IssueClient("worker", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if got := ClientNames(cl.Cert); !slices.Equal(got, []string{"worker"}) || len(NodeIDs(cl.Cert)) != 0 {
		t.Fatalf("client names %v, node ids %v", got, NodeIDs(cl.Cert))
	}
	if _, err := ca.IssueNode("bad/id", nil, time.Hour); err == nil {
		t.Fatal("a node id with '/' was accepted")
	}
	// A DNS SAN alone (Helm's genSignedCert) names the node too.
	c := &x509.Certificate{DNSNames: []string{"pod-0.node.quorumq", "pod-1.node.quorumq", "pod-0.svc"}}
	if got := NodeIDs(c); !slices.Equal(got, []string{"pod-0", "pod-1"}) {
		t.Fatalf("NodeIDs of DNS SANs = %v", got)
	}
	k, err := NewGossipKey()
	if err != nil {
		t.Fatal(err)
	}
	if b, err := DecodeGossipKey(k + "\n"); err != nil || len(b) != 32 {
		t.Fatalf("gossip key %q: %v", k, err)
	}
	if _, err := DecodeGossipKey("c2hvcnQ="); err == nil {
		t.Fatal("a 5-byte gossip key was accepted")
	}
}

// handshake runs a TLS handshake between configs over loopback TCP and
// returns both sides' errors. In TLS 1.3 the client finishes before the
// server has checked its certificate, so the client also reads once: a
// server that refused it answers with an alert.
func handshake(server, client *tls.Config) (serr, cerr error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err, err
	}
	defer l.Close()
	done := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		s := tls.Server(c, server)
		s.SetDeadline(time.Now().Add(5 * time.Second))
		err = s.Handshake()
		if err == nil {
			_, err = s.Write([]byte("k"))
		}
		done <- err
	}()
	raw, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		return err, err
	}
	defer raw.Close()
	c := tls.Client(raw, client)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	cerr = c.Handshake()
	if cerr == nil {
		_, cerr = c.Read(make([]byte, 1))
	}
	return <-done, cerr
}

func TestReloaderHandshakesAndRotation(t *testing.T) {
	dir := t.TempDir()
	oldCA, _ := NewCA("old", time.Hour)
	newCA, _ := NewCA("new", time.Hour)
	other, _ := NewCA("other", time.Hour)
	fa := writeNode(t, dir, "a", oldCA, oldCA)
	fb := writeNode(t, dir, "b", oldCA, oldCA)
	ra, err := NewReloader(fa, nil)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := NewReloader(fb, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(ra.Nodes(), "a") {
		t.Fatalf("Nodes = %v", ra.Nodes())
	}
	if serr, cerr := handshake(ra.ServerConfig(), rb.ClientConfig(ExpectNode("a"))); serr != nil || cerr != nil {
		t.Fatalf("handshake: %v / %v", serr, cerr)
	}
	// The dialer meant another node: refused.
	if _, cerr := handshake(ra.ServerConfig(), rb.ClientConfig(ExpectNode("c"))); cerr == nil {
		t.Fatal("a dial to the wrong node succeeded")
	}
	// A client from another CA is refused by the server.
	fx := writeNode(t, dir, "x", other, other)
	rx, _ := NewReloader(fx, nil)
	if serr, _ := handshake(ra.ServerConfig(), rx.ClientConfig(nil)); serr == nil {
		t.Fatal("a client of another CA was accepted")
	}
	// No client certificate: refused.
	if serr, _ := handshake(ra.ServerConfig(), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}); serr == nil {
		t.Fatal("a client without certificate was accepted")
	}

	// Rotation: both bundles old+new, then b's certificate from the new CA,
	// then a's, then only the new CA.
	writeNode(t, dir, "a", oldCA, oldCA, newCA)
	writeNode(t, dir, "b", oldCA, oldCA, newCA)
	for _, r := range []*Reloader{ra, rb} {
		if changed, err := r.Reload(); err != nil || !changed {
			t.Fatalf("reload: %v %v", changed, err)
		}
	}
	writeNode(t, dir, "b", newCA, oldCA, newCA)
	if _, err := rb.Reload(); err != nil {
		t.Fatal(err)
	}
	if serr, cerr := handshake(ra.ServerConfig(), rb.ClientConfig(ExpectNode("a"))); serr != nil || cerr != nil {
		t.Fatalf("mid-rotation handshake: %v / %v", serr, cerr)
	}
	writeNode(t, dir, "a", newCA, newCA)
	writeNode(t, dir, "b", newCA, newCA)
	ra.Reload()
	rb.Reload()
	if serr, cerr := handshake(rb.ServerConfig(), ra.ClientConfig(ExpectNode("b"))); serr != nil || cerr != nil {
		t.Fatalf("after rotation: %v / %v", serr, cerr)
	}
	// A certificate of the old CA is now refused.
	fo := writeNode(t, dir, "o", oldCA, oldCA)
	ro, _ := NewReloader(fo, nil)
	if serr, _ := handshake(ra.ServerConfig(), ro.ClientConfig(nil)); serr == nil {
		t.Fatal("a certificate of the retired CA was accepted")
	}

	// Half-written material (a key that does not match) is not taken.
	before := ra.Reloads()
	iss, _ := newCA.IssueNode("a", nil, time.Hour)
	if err := os.WriteFile(fa.Cert, iss.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ra.Reload(); err == nil || ra.Reloads() != before {
		t.Fatalf("a certificate without its key was taken: %v", err)
	}
	if serr, cerr := handshake(ra.ServerConfig(), rb.ClientConfig(ExpectNode("a"))); serr != nil || cerr != nil {
		t.Fatalf("the old material is no longer served: %v / %v", serr, cerr)
	}
}
