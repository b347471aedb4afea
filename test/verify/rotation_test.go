package verify

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quorumq/quorumq/transport/pki"
)

// Issue 12: certificates and CA replaced on a running cluster under load —
// every node's certificate, then the CA old -> old+new -> new — with no
// restart; nothing fails beyond client retries and nothing is lost.
func TestWorkloadAcrossTLSRotation(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster")
	}
	dir := t.TempDir()
	c, nodes := startClusterIn(t, 3, dir)
	tlsDir := filepath.Join(dir, "tls")
	oldCA, err := pki.LoadCA(tlsDir)
	if err != nil {
		t.Fatal(err)
	}
	newCA, err := pki.NewCA("rotated", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	w, err := New(Config{Client: c, Partitions: 3, Producers: 2, Consumers: 2, Rate: 200,
		RequeueFraction: 0.05, Visibility: 3 * time.Second, Wait: 300 * time.Millisecond, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	waitOps := func(what string) {
		t.Helper()
		n := w.History().Count(KindEnqueue, OK)
		deadline := time.Now().Add(20 * time.Second)
		for w.History().Count(KindEnqueue, OK) < n+100 {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the workload made no progress", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitOps("before the rotation")

	issue := func(ca *pki.CA, id string) *pki.Issued {
		iss, err := ca.IssueNode(id, nil, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return iss
	}
	// writeNode replaces a node's certificate and key, each file
	// atomically (the node may read between the two: it keeps its old
	// material until the pair matches).
	writeNode := func(id string, iss *pki.Issued) {
		atomicWrite(t, filepath.Join(tlsDir, id+"-key.pem"), iss.KeyPEM)
		atomicWrite(t, filepath.Join(tlsDir, id+".pem"), iss.CertPEM)
	}
	client := func(ca *pki.CA) tls.Certificate {
		iss := issue(ca, "v1")
		cert, err := tls.X509KeyPair(iss.CertPEM, iss.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}
	oldClient, newClient := client(oldCA), client(newCA)

	// 1. Every node's certificate replaced (same CA).
	for _, n := range nodes {
		iss := issue(oldCA, n.ID())
		writeNode(n.ID(), iss)
		waitServed(t, n.PeerAddr(), oldClient, iss.Cert.SerialNumber.String())
	}
	waitOps("after the certificates were replaced")
	// 2. CA bundle old+new on every node.
	atomicWrite(t, filepath.Join(tlsDir, pki.CACertFile), append(append([]byte{}, oldCA.CertPEM...), newCA.CertPEM...))
	for _, n := range nodes {
		waitAccepts(t, n.PeerAddr(), newClient, true)
	}
	waitOps("with both CAs")
	// 3. Certificates of the new CA.
	for _, n := range nodes {
		iss := issue(newCA, n.ID())
		writeNode(n.ID(), iss)
		waitServed(t, n.PeerAddr(), newClient, iss.Cert.SerialNumber.String())
	}
	// The workload's client (the admin, on the same CA bundle file) gets
	// a certificate of the new CA too, and re-reads its files within
	// pki.DefaultReloadInterval; the workload goes on meanwhile.
	adminIss, err := newCA.IssueClient("admin", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	atomicWrite(t, filepath.Join(tlsDir, "client-admin-key.pem"), adminIss.KeyPEM)
	atomicWrite(t, filepath.Join(tlsDir, "client-admin.pem"), adminIss.CertPEM)
	for reloaded := time.Now().Add(2 * pki.DefaultReloadInterval); time.Now().Before(reloaded); {
		waitOps("while the client's certificate is replaced")
	}
	waitOps("with certificates of the new CA")
	// 4. The old CA leaves the bundle: its certificates are refused.
	atomicWrite(t, filepath.Join(tlsDir, pki.CACertFile), newCA.CertPEM)
	for _, n := range nodes {
		waitAccepts(t, n.PeerAddr(), oldClient, false)
		waitAccepts(t, n.PeerAddr(), newClient, true)
	}
	waitOps("with the new CA only")

	stop()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if err := w.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	v := Check(w.History().Ops(), CheckOptions{})
	var text strings.Builder
	_ = v.WriteText(&text)
	t.Logf("verdict:\n%s", text.String())
	if !v.OK() {
		t.Fatalf("verdict %s", v.Summary())
	}
	if failed := w.History().Count(KindEnqueue, Failed); failed > 0 {
		t.Errorf("%d enqueues failed during the rotation", failed)
	}
}

func atomicWrite(t *testing.T, path string, b []byte) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// handshake connects to a node's peer port with cert, sends the HTTP/2
// preface, and returns the server's certificate once the server answered
// (so it accepted cert), or the error.
func handshake(addr string, cert tls.Certificate) (*x509.Certificate, error) {
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13,
		Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")); err != nil {
		return nil, err
	}
	if _, err := conn.Read(make([]byte, 9)); err != nil { // the server's SETTINGS frame
		return nil, err
	}
	return conn.ConnectionState().PeerCertificates[0], nil
}

// waitServed waits until the node at addr serves the certificate serial.
func waitServed(t *testing.T, addr string, cert tls.Certificate, serial string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := handshake(addr, cert)
		if err == nil && c.SerialNumber.String() == serial {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not serve its new certificate: %v", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitAccepts waits until the node at addr accepts (or refuses) cert.
func waitAccepts(t *testing.T, addr string, cert tls.Certificate, accept bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := handshake(addr, cert)
		if (err == nil) == accept {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: accepts=%v wanted, got err %v", addr, accept, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
