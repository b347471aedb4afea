package chartcheck

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// Where the pods' certificate comes from (want.tls).
const (
	tlsGenerated   = ""               // the chart's own CA and certificate
	tlsCertManager = "certManager"    // a cert-manager Certificate
	tlsExisting    = "existingSecret" // the user's Secret
	tlsInsecure    = "insecure"       // none: --insecure
)

// The server's TLS and gossip flags, and the Secret key each must read.
var tlsFlags = []struct{ flag, key string }{
	{"--tls-ca", "ca.crt"},
	{"--tls-cert", "tls.crt"},
	{"--tls-key", "tls.key"},
}

const gossipFlag = "--gossip-key-file"

// podNames are the StatefulSet's pods, which are the node ids.
func podNames(sts *appsv1.StatefulSet, replicas int32) []string {
	pods := make([]string, replicas)
	for i := range pods {
		pods[i] = fmt.Sprintf("%s-%d", sts.Name, i)
	}
	return pods
}

// podFQDN is a pod's DNS name through the headless Service.
func podFQDN(pod string, headless *corev1.Service) string {
	return fmt.Sprintf("%s.%s.%s.svc.cluster.local", pod, headless.Name, namespace)
}

func (r *release) secret(name string) *corev1.Secret {
	for _, s := range r.secrets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// checkTLS: the server gets --insecure exactly when asked; otherwise every
// TLS and gossip flag names a file of a Secret mounted read-only, as a
// whole directory (so that Kubernetes updates it in place), readable by
// the server's group and nobody else; the Secrets the chart renders are
// the ones the source of the certificate needs, and hold what the server
// reads.
func checkTLS(t *testing.T, r *release, sts *appsv1.StatefulSet, c corev1.Container, headless *corev1.Service, w want) {
	t.Helper()
	args := append(slices.Clone(c.Command), c.Args...)
	spec := sts.Spec.Template.Spec
	insecure := slices.ContainsFunc(args, func(a string) bool { return a == "--insecure" || strings.HasPrefix(a, "--insecure=") })
	for _, e := range c.Env {
		if e.Name == "QUORUMQ_INSECURE" {
			insecure = true
		}
	}
	if w.tls == tlsInsecure {
		if !insecure {
			t.Error("insecure: true but no --insecure: the server refuses to start without TLS")
		}
		flags := []string{gossipFlag}
		for _, f := range tlsFlags {
			flags = append(flags, f.flag)
		}
		for _, f := range flags {
			if _, ok := argValue(args, f); ok {
				t.Errorf("%s with insecure: true", f)
			}
		}
		for _, v := range spec.Volumes {
			if v.Secret != nil {
				t.Errorf("Secret volume %s mounted with insecure: true", v.Name)
			}
		}
		if len(r.secrets) != 0 || len(r.certs) != 0 {
			t.Errorf("%d Secrets and %d Certificates with insecure: true, want none", len(r.secrets), len(r.certs))
		}
		return
	}
	if insecure {
		t.Error("--insecure (or QUORUMQ_INSECURE) without insecure: true: the cluster would run in plaintext")
	}

	// Every flag names a file of the Secret that the source provides.
	wantTLS := map[string]string{
		tlsGenerated:   sts.Name + "-tls",
		tlsCertManager: sts.Name + "-issued-tls",
		tlsExisting:    w.tlsSecret,
	}[w.tls]
	wantGossip := sts.Name + "-gossip"
	if w.gossipSecret != "" {
		wantGossip = w.gossipSecret
	}
	for _, f := range tlsFlags {
		if s, key := secretFile(t, spec, c, args, f.flag); s != wantTLS || key != f.key {
			t.Errorf("%s reads key %q of Secret %q, want %q of %q", f.flag, key, s, f.key, wantTLS)
		}
	}
	if s, key := secretFile(t, spec, c, args, gossipFlag); s != wantGossip || key != "key" {
		t.Errorf("%s reads key %q of Secret %q, want \"key\" of %q", gossipFlag, key, s, wantGossip)
	}

	// The Secrets and Certificates rendered: exactly those of the source.
	var rendered []string
	for _, s := range r.secrets {
		rendered = append(rendered, s.Name)
	}
	var want []string
	if w.tls == tlsGenerated {
		want = append(want, sts.Name+"-ca", sts.Name+"-tls")
		if w.adminSecret == "" {
			want = append(want, sts.Name+"-admin")
		}
	}
	if w.gossipSecret == "" {
		want = append(want, sts.Name+"-gossip")
	}
	slices.Sort(rendered)
	slices.Sort(want)
	if !slices.Equal(rendered, want) {
		t.Errorf("Secrets %v rendered, want %v", rendered, want)
	}
	if w.tls == tlsCertManager {
		checkCertificate(t, r, sts, headless, wantTLS, w)
	} else if len(r.certs) != 0 {
		t.Errorf("%d cert-manager Certificates, want none (no issuer named)", len(r.certs))
	}
	if w.tls == tlsGenerated {
		checkGeneratedTLS(t, r, sts, headless, w.replicas)
	}
	if w.gossipSecret == "" {
		checkGossipSecret(t, r.secret(wantGossip))
	}
}

// secretFile finds the Secret and the key that the file named by flag
// comes from, and checks how it is mounted.
func secretFile(t *testing.T, spec corev1.PodSpec, c corev1.Container, args []string, flag string) (secret, key string) {
	t.Helper()
	file, ok := argValue(args, flag)
	if !ok {
		t.Errorf("no %s: the server refuses to start without it (or --insecure)", flag)
		return "", ""
	}
	var m *corev1.VolumeMount
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].MountPath == path.Dir(file) {
			m = &c.VolumeMounts[i]
		}
	}
	if m == nil {
		t.Errorf("%s=%s: %s is no volume mount of the container", flag, file, path.Dir(file))
		return "", ""
	}
	if !m.ReadOnly {
		t.Errorf("%s: volume %s mounted read-write at %s, want readOnly", flag, m.Name, m.MountPath)
	}
	// A subPath mount is never updated: a renewed certificate or a rotated
	// CA would not reach the server.
	if m.SubPath != "" || m.SubPathExpr != "" {
		t.Errorf("%s: volume %s mounted with a subPath: Kubernetes would never update it", flag, m.Name)
	}
	var v *corev1.Volume
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == m.Name {
			v = &spec.Volumes[i]
		}
	}
	if v == nil || v.Secret == nil {
		t.Errorf("%s: volume %s is not a Secret", flag, m.Name)
		return "", ""
	}
	s := v.Secret
	if s.Optional != nil && *s.Optional {
		t.Errorf("%s: Secret %s is optional: a pod would start without the file", flag, s.SecretName)
	}
	key = path.Base(file)
	mode := int32(0o644) // Kubernetes' default
	if s.DefaultMode != nil {
		mode = *s.DefaultMode
	}
	if len(s.Items) > 0 {
		found := false
		for _, it := range s.Items {
			if it.Path == path.Base(file) {
				key, found = it.Key, true
				if it.Mode != nil {
					mode = *it.Mode
				}
			}
		}
		if !found {
			t.Errorf("%s=%s: the Secret volume %s projects no %s", flag, file, v.Name, path.Base(file))
		}
	}
	// Keys stay with the server's group: no bits for others, read for the
	// group, and the group is the pod's fsGroup.
	if mode&0o007 != 0 {
		t.Errorf("%s: file mode %#o lets every user of the container read it", flag, mode)
	}
	if mode&0o040 == 0 {
		t.Errorf("%s: file mode %#o: the server's group cannot read it", flag, mode)
	}
	if psc := spec.SecurityContext; psc == nil || psc.FSGroup == nil {
		t.Errorf("%s: no fsGroup: the mounted file belongs to root and the server cannot read it", flag)
	}
	return s.SecretName, key
}

// checkCertificate: the cert-manager Certificate names every pod (DNS name
// and node id, both forms) for server and client auth, from the issuer
// asked, into the Secret the pods mount.
func checkCertificate(t *testing.T, r *release, sts *appsv1.StatefulSet, headless *corev1.Service, secret string, w want) {
	t.Helper()
	var node *certificate
	for _, c := range r.certs {
		if c.Name == sts.Name {
			node = c
		}
	}
	wantCerts := 2 // the pods' and the admin's
	if w.adminSecret != "" {
		wantCerts = 1
	}
	if len(r.certs) != wantCerts || node == nil {
		t.Fatalf("%d cert-manager Certificates, want %d, one named %s", len(r.certs), wantCerts, sts.Name)
	}
	cs := node.Spec
	if cs.SecretName != secret {
		t.Errorf("Certificate secretName %q, but the pods mount %q", cs.SecretName, secret)
	}
	if cs.IssuerRef != w.issuer {
		t.Errorf("Certificate issuerRef %+v, want %+v", cs.IssuerRef, w.issuer)
	}
	for _, u := range []string{"server auth", "client auth"} {
		if !slices.Contains(cs.Usages, u) {
			t.Errorf("Certificate usages %q lack %q: nodes are TLS servers and clients of each other", cs.Usages, u)
		}
	}
	if pk := cs.PrivateKey; pk == nil || pk.Algorithm != "ECDSA" || pk.Size != 256 {
		t.Errorf("Certificate privateKey %+v, want ECDSA 256", pk)
	}
	for _, pod := range podNames(sts, w.replicas) {
		for _, n := range []string{podFQDN(pod, headless), pod + ".node.quorumq"} {
			if !slices.Contains(cs.DNSNames, n) {
				t.Errorf("Certificate dnsNames lack %s", n)
			}
		}
		if u := "spiffe://quorumq/node/" + pod; !slices.Contains(cs.URIs, u) {
			t.Errorf("Certificate uris lack %s", u)
		}
	}
	if n := 2 * int(w.replicas); len(cs.DNSNames) != n {
		t.Errorf("Certificate has %d dnsNames, want %d (two per pod)", len(cs.DNSNames), n)
	}
}

// generated is the chart's generated TLS material, parsed.
type generated struct {
	ca, leaf *x509.Certificate
	pool     *x509.CertPool
}

// checkGeneratedTLS: the chart's CA and certificate Secrets are
// kubernetes.io/tls; the certificate matches its key, chains to the CA in
// ca.crt for server and client auth, and names every pod (DNS name and node
// id <pod>.node.quorumq); the CA Secret holds that same CA and its key.
func checkGeneratedTLS(t *testing.T, r *release, sts *appsv1.StatefulSet, headless *corev1.Service, replicas int32) *generated {
	t.Helper()
	caSecret, tlsSecret := r.secret(sts.Name+"-ca"), r.secret(sts.Name+"-tls")
	if caSecret == nil || tlsSecret == nil {
		t.Fatalf("no generated Secrets %s-ca and %s-tls", sts.Name, sts.Name)
	}
	for _, s := range []*corev1.Secret{caSecret, tlsSecret} {
		if s.Type != corev1.SecretTypeTLS {
			t.Errorf("Secret %s: type %q, want %q", s.Name, s.Type, corev1.SecretTypeTLS)
		}
	}
	for _, k := range []string{"ca.crt", "tls.crt", "tls.key"} {
		if len(tlsSecret.Data[k]) == 0 {
			t.Fatalf("Secret %s has no %s", tlsSecret.Name, k)
		}
	}
	if !bytes.Equal(caSecret.Data["tls.crt"], tlsSecret.Data["ca.crt"]) {
		t.Errorf("Secret %s: ca.crt is not the CA of Secret %s", tlsSecret.Name, caSecret.Name)
	}
	caPair, err := tls.X509KeyPair(caSecret.Data["tls.crt"], caSecret.Data["tls.key"])
	if err != nil {
		t.Fatalf("Secret %s: %v", caSecret.Name, err)
	}
	g := &generated{ca: caPair.Leaf, pool: x509.NewCertPool()}
	if g.ca == nil || !g.ca.IsCA {
		t.Fatalf("Secret %s: not a CA certificate", caSecret.Name)
	}
	if !g.pool.AppendCertsFromPEM(tlsSecret.Data["ca.crt"]) {
		t.Fatalf("Secret %s: ca.crt holds no PEM certificate", tlsSecret.Name)
	}
	pair, err := tls.X509KeyPair(tlsSecret.Data["tls.crt"], tlsSecret.Data["tls.key"])
	if err != nil {
		t.Fatalf("Secret %s: tls.crt and tls.key: %v", tlsSecret.Name, err)
	}
	g.leaf = pair.Leaf
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := g.leaf.Verify(x509.VerifyOptions{Roots: g.pool, KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
			t.Errorf("Secret %s: the certificate does not verify against ca.crt for usage %v: %v", tlsSecret.Name, u, err)
		}
	}
	if left := time.Until(g.leaf.NotAfter); left < 365*24*time.Hour {
		t.Errorf("Secret %s: the certificate expires in %v; the chart renews it only when the pods change", tlsSecret.Name, left)
	}
	var ids []string
	for _, n := range g.leaf.DNSNames {
		if id, ok := strings.CutSuffix(n, ".node.quorumq"); ok {
			ids = append(ids, id)
		}
	}
	pods := podNames(sts, replicas)
	if !slices.Equal(ids, pods) {
		t.Errorf("the certificate names the node ids %v, want the pods %v", ids, pods)
	}
	for _, pod := range pods {
		if err := g.leaf.VerifyHostname(podFQDN(pod, headless)); err != nil {
			t.Errorf("the certificate does not name the pod's DNS name: %v", err)
		}
	}
	return g
}

// checkGossipSecret: the key file is one base64 line of 32 bytes, and the
// Secret outlives the release, like the data directories that hold it.
func checkGossipSecret(t *testing.T, s *corev1.Secret) {
	t.Helper()
	if s == nil {
		t.Fatal("no gossip key Secret")
	}
	file := s.Data["key"]
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(file)))
	if err != nil || len(k) != 32 || bytes.ContainsAny(file, "\n") {
		t.Errorf("Secret %s: key %q is not one base64 line of 32 bytes (%d bytes, %v)", s.Name, file, len(k), err)
	}
	if p := s.Annotations["helm.sh/resource-policy"]; p != "keep" {
		t.Errorf("Secret %s: helm.sh/resource-policy %q, want keep: uninstall would drop the key the data directories use", s.Name, p)
	}
}

// TestTLSUpgrade: upgrades keep the generated CA, certificate and gossip
// key (lookup); a new replica count re-signs the certificate with the same
// CA, so old and new pods trust each other at once; a deleted CA Secret
// gives a new CA and a certificate signed by it.
func TestTLSUpgrade(t *testing.T) {
	first, err := render(t, "qq", "", newKube)
	if err != nil {
		t.Fatal(err)
	}
	data := func(r *release, name, key string) []byte {
		t.Helper()
		s := r.secret(name)
		if s == nil {
			t.Fatalf("no Secret %s", name)
		}
		return s.Data[key]
	}
	same := func(what string, a, b *release, name string, keys ...string) {
		t.Helper()
		for _, k := range keys {
			if !bytes.Equal(data(a, name, k), data(b, name, k)) {
				t.Errorf("%s: Secret %s: %s changed", what, name, k)
			}
		}
	}
	parse := func(r *release, replicas int32) *generated {
		t.Helper()
		headless, _ := splitServices(t, r)
		return checkGeneratedTLS(t, r, r.sts[0], headless, replicas)
	}

	again, err := upgrade(t, "qq", "", first.secrets)
	if err != nil {
		t.Fatal(err)
	}
	same("upgrade", first, again, "qq-quorumq-ca", "tls.crt", "tls.key")
	same("upgrade", first, again, "qq-quorumq-tls", "ca.crt", "tls.crt", "tls.key")
	same("upgrade", first, again, "qq-quorumq-gossip", "key")
	same("upgrade", first, again, "qq-quorumq-admin", "ca.crt", "tls.crt", "tls.key")

	scaled, err := upgrade(t, "qq", "replicas: 5\nbootstrapExpect: 3", first.secrets)
	if err != nil {
		t.Fatal(err)
	}
	same("scale up", first, scaled, "qq-quorumq-ca", "tls.crt", "tls.key")
	same("scale up", first, scaled, "qq-quorumq-tls", "ca.crt")
	same("scale up", first, scaled, "qq-quorumq-gossip", "key")
	same("scale up", first, scaled, "qq-quorumq-admin", "ca.crt", "tls.crt", "tls.key")
	if bytes.Equal(data(first, "qq-quorumq-tls", "tls.crt"), data(scaled, "qq-quorumq-tls", "tls.crt")) {
		t.Error("scale up to 5: the certificate was kept, and names only the first 3 pods")
	}
	old, cur := parse(first, 3), parse(scaled, 5)
	// An old pod (old files) and a new one (new files) accept each other.
	if _, err := cur.leaf.Verify(x509.VerifyOptions{Roots: old.pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("scale up: the new certificate does not verify against the old CA bundle: %v", err)
	}
	if _, err := old.leaf.Verify(x509.VerifyOptions{Roots: cur.pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("scale up: the old certificate does not verify against the new CA bundle: %v", err)
	}
	steady, err := upgrade(t, "qq", "replicas: 5\nbootstrapExpect: 3", scaled.secrets)
	if err != nil {
		t.Fatal(err)
	}
	same("upgrade after scaling", scaled, steady, "qq-quorumq-tls", "ca.crt", "tls.crt", "tls.key")

	// Without the CA Secret: a new CA, and the certificate signed by it.
	var noCA []*corev1.Secret
	for _, s := range first.secrets {
		if s.Name != "qq-quorumq-ca" {
			noCA = append(noCA, s)
		}
	}
	renewed, err := upgrade(t, "qq", "", noCA)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(data(first, "qq-quorumq-ca", "tls.crt"), data(renewed, "qq-quorumq-ca", "tls.crt")) {
		t.Error("CA Secret deleted: the CA was not generated again")
	}
	parse(renewed, 3) // signed by the new CA, which ca.crt holds
	if bytes.Equal(data(first, "qq-quorumq-admin", "tls.crt"), data(renewed, "qq-quorumq-admin", "tls.crt")) {
		t.Error("new CA: the admin certificate was kept, signed by the old CA")
	}
	checkGeneratedAdmin(t, renewed, renewed.sts[0], defaults) // and chains to the new one
	same("new CA", first, renewed, "qq-quorumq-gossip", "key")

	// Two fresh installs share nothing.
	other, err := render(t, "qq", "", newKube)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range [][2]string{{"qq-quorumq-ca", "tls.key"}, {"qq-quorumq-tls", "tls.key"}, {"qq-quorumq-gossip", "key"}, {"qq-quorumq-admin", "tls.key"}} {
		if bytes.Equal(data(first, k[0], k[1]), data(other, k[0], k[1])) {
			t.Errorf("two installs got the same %s of %s", k[1], k[0])
		}
	}
}

// TestAdminRenewal: an upgrade keeps the chart's admin certificate while it
// has more than 30 days left and signs a new one (same CA, same name)
// after that, or when auth.admin.name changes.
func TestAdminRenewal(t *testing.T) {
	first, err := render(t, "qq", "", newKube)
	if err != nil {
		t.Fatal(err)
	}
	expiring := func(days int) []*corev1.Secret {
		var out []*corev1.Secret
		for _, s := range first.secrets {
			s = s.DeepCopy()
			if s.Name == "qq-quorumq-admin" {
				s.Annotations["quorumq.io/not-after"] = fmt.Sprint(time.Now().Add(time.Duration(days) * 24 * time.Hour).Unix())
			}
			out = append(out, s)
		}
		return out
	}
	crt := func(r *release) []byte { return r.secret("qq-quorumq-admin").Data["tls.crt"] }
	kept, err := upgrade(t, "qq", "", expiring(40))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(crt(first), crt(kept)) {
		t.Error("40 days before expiry: the admin certificate was signed again")
	}
	renewed, err := upgrade(t, "qq", "", expiring(20))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(crt(first), crt(renewed)) {
		t.Error("20 days before expiry: the admin certificate was kept")
	}
	leaf := checkGeneratedAdmin(t, renewed, renewed.sts[0], defaults)
	if time.Until(leaf.NotAfter) < 364*24*time.Hour {
		t.Errorf("renewed admin certificate expires %v, want a year from now", leaf.NotAfter)
	}
	if !bytes.Equal(first.secret("qq-quorumq-ca").Data["tls.crt"], renewed.secret("qq-quorumq-admin").Data["ca.crt"]) {
		t.Error("the renewed admin certificate's ca.crt is not the kept CA")
	}
	renamed, err := upgrade(t, "qq", "auth: {adminIdentities: [admin, ops], admin: {name: ops}}", first.secrets)
	if err != nil {
		t.Fatal(err)
	}
	checkGeneratedAdmin(t, renamed, renamed.sts[0], with(func(w *want) { w.admins, w.adminName = []string{"admin", "ops"}, "ops" }))
}
