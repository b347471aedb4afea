package chartcheck

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Client identities in certificates (transport/pki).
const (
	clientURIPrefix = "spiffe://quorumq/client/"
	clientDNSSuffix = ".client.quorumq"
	nodeURIPrefix   = "spiffe://quorumq/node/"
	nodeDNSSuffix   = ".node.quorumq"
)

func (w want) adminIdentities() []string {
	if w.admins == nil {
		return []string{"admin"}
	}
	return w.admins
}

func (w want) admin() string {
	if w.adminName == "" {
		return "admin"
	}
	return w.adminName
}

func (w want) metrics() int32 {
	if w.metricsPort == 0 {
		return 7424
	}
	return w.metricsPort
}

// adminSecretName is the Secret that must hold the admin's credential, or
// "" where the chart has none (existing TLS without auth.admin.existingSecret,
// insecure).
func (w want) adminSecretName(sts *appsv1.StatefulSet) string {
	switch {
	case w.tls == tlsInsecure:
		return ""
	case w.adminSecret != "":
		return w.adminSecret
	case w.tls == tlsGenerated || w.tls == tlsCertManager:
		return sts.Name + "-admin"
	}
	return ""
}

// checkAuth: client authentication is on exactly when TLS is, with
// --admin-identities as asked; the admin credential exists in every TLS
// mode that can make one and is mounted by no server pod; the grants hook
// Job is there exactly when grants are given and makes exactly them with
// the admin credential over TLS; nothing in the chart calls the client
// port without TLS or a credential; /metrics has a port of its own that the
// NetworkPolicy keeps to the namespace asked.
func checkAuth(t *testing.T, r *release, w want) {
	t.Helper()
	sts := r.sts[0]
	c := sts.Spec.Template.Spec.Containers[0]
	args := append(slices.Clone(c.Command), c.Args...)
	v, ok := argValue(args, "--admin-identities")
	if w.tls == tlsInsecure {
		if ok {
			t.Errorf("--admin-identities %q with insecure: true, which checks no identity", v)
		}
	} else if want := strings.Join(w.adminIdentities(), ","); !ok || v != want {
		t.Errorf("--admin-identities %q, want %q", v, want)
	}
	admin := w.adminSecretName(sts)
	for _, vol := range sts.Spec.Template.Spec.Volumes {
		if vol.Secret != nil && admin != "" && vol.Secret.SecretName == admin {
			t.Errorf("the server pods mount the admin credential %s: every pod would hold an admin key", admin)
		}
	}
	switch {
	case w.tls == tlsGenerated && w.adminSecret == "":
		checkGeneratedAdmin(t, r, sts, w)
	case w.tls == tlsCertManager && w.adminSecret == "":
		checkAdminCertificate(t, r, sts, w)
	default:
		if s := r.secret(sts.Name + "-admin"); s != nil {
			t.Errorf("Secret %s rendered, but the admin credential is %q", s.Name, w.adminSecret)
		}
	}
	checkGrantsJob(t, r, sts, admin, w)
	checkNoAnonymousCalls(t, r)
	checkMetrics(t, r, c, w)
}

// clientNames are the client names a certificate names, as the server
// reads them (pki.ClientNames).
func clientNames(c *x509.Certificate) (clients, nodes []string) {
	for _, u := range c.URIs {
		if n, ok := strings.CutPrefix(u.String(), clientURIPrefix); ok {
			clients = append(clients, n)
		}
		if n, ok := strings.CutPrefix(u.String(), nodeURIPrefix); ok {
			nodes = append(nodes, n)
		}
	}
	for _, d := range c.DNSNames {
		if n, ok := strings.CutSuffix(d, clientDNSSuffix); ok {
			clients = append(clients, n)
		}
		if n, ok := strings.CutSuffix(d, nodeDNSSuffix); ok {
			nodes = append(nodes, n)
		}
	}
	return clients, nodes
}

// checkGeneratedAdmin: the chart's admin Secret holds a key pair that
// chains to the pods' CA for client auth and names exactly the admin
// client, no node.
func checkGeneratedAdmin(t *testing.T, r *release, sts *appsv1.StatefulSet, w want) *x509.Certificate {
	t.Helper()
	s := r.secret(sts.Name + "-admin")
	tlsSecret := r.secret(sts.Name + "-tls")
	if s == nil || tlsSecret == nil {
		t.Fatalf("no admin Secret %s-admin next to %s-tls", sts.Name, sts.Name)
	}
	if s.Type != corev1.SecretTypeTLS {
		t.Errorf("Secret %s: type %q, want %q", s.Name, s.Type, corev1.SecretTypeTLS)
	}
	if !bytes.Equal(s.Data["ca.crt"], tlsSecret.Data["ca.crt"]) {
		t.Errorf("Secret %s: ca.crt is not the pods' CA", s.Name)
	}
	pair, err := tls.X509KeyPair(s.Data["tls.crt"], s.Data["tls.key"])
	if err != nil {
		t.Fatalf("Secret %s: tls.crt and tls.key: %v", s.Name, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(tlsSecret.Data["ca.crt"]) {
		t.Fatalf("Secret %s: ca.crt holds no certificate", tlsSecret.Name)
	}
	leaf := pair.Leaf
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("Secret %s: the admin certificate does not verify against the pods' CA for client auth: %v", s.Name, err)
	}
	clients, nodes := clientNames(leaf)
	if !slices.Equal(clients, []string{w.admin()}) {
		t.Errorf("Secret %s: the certificate names the clients %v, want exactly [%s]", s.Name, clients, w.admin())
	}
	if len(nodes) > 0 {
		t.Errorf("Secret %s: the admin certificate names nodes %v: it could join the cluster", s.Name, nodes)
	}
	if leaf.IsCA {
		t.Errorf("Secret %s: the admin certificate is a CA", s.Name)
	}
	na, err := strconv.ParseInt(s.Annotations["quorumq.io/not-after"], 10, 64)
	if err != nil || time.Unix(na, 0).Sub(leaf.NotAfter).Abs() > time.Hour {
		t.Errorf("Secret %s: annotation quorumq.io/not-after %q, but the certificate expires %v", s.Name, s.Annotations["quorumq.io/not-after"], leaf.NotAfter)
	}
	if s.Annotations["quorumq.io/client-name"] != w.admin() {
		t.Errorf("Secret %s: annotation quorumq.io/client-name %q, want %q", s.Name, s.Annotations["quorumq.io/client-name"], w.admin())
	}
	return leaf
}

// checkAdminCertificate: cert-manager issues the admin's certificate from
// the pods' issuer, naming the admin client in both forms, for client auth
// only, into the Secret the hook Job mounts.
func checkAdminCertificate(t *testing.T, r *release, sts *appsv1.StatefulSet, w want) {
	t.Helper()
	var a *certificate
	for _, c := range r.certs {
		if c.Name == sts.Name+"-admin" {
			a = c
		}
	}
	if a == nil {
		t.Fatalf("no cert-manager Certificate %s-admin", sts.Name)
	}
	cs := a.Spec
	if cs.SecretName != sts.Name+"-admin" {
		t.Errorf("admin Certificate secretName %q, want %s-admin", cs.SecretName, sts.Name)
	}
	if cs.IssuerRef != w.issuer {
		t.Errorf("admin Certificate issuerRef %+v, want the pods' %+v", cs.IssuerRef, w.issuer)
	}
	if !slices.Equal(cs.URIs, []string{clientURIPrefix + w.admin()}) {
		t.Errorf("admin Certificate uris %v, want [%s%s]", cs.URIs, clientURIPrefix, w.admin())
	}
	for _, d := range cs.DNSNames {
		if d != w.admin()+clientDNSSuffix {
			t.Errorf("admin Certificate dnsName %q names something other than the admin client", d)
		}
	}
	if !slices.Contains(cs.Usages, "client auth") || slices.Contains(cs.Usages, "server auth") {
		t.Errorf("admin Certificate usages %q, want client auth and not server auth", cs.Usages)
	}
	if cs.IsCA {
		t.Error("admin Certificate is a CA")
	}
}

// checkGrantsJob: a post-install/post-upgrade hook Job exactly when grants
// are given; one container per grant, in order, each `quorumq acl grant`
// through the client Service, over TLS against the pods' CA, with the admin
// credential; bounded retries; locked down like the server; its pod is
// selected by none of the release's Services, PDB or NetworkPolicy.
func checkGrantsJob(t *testing.T, r *release, sts *appsv1.StatefulSet, admin string, w want) {
	t.Helper()
	if len(w.grants) == 0 {
		if len(r.jobs) != 0 {
			t.Errorf("%d Jobs without grants, want none", len(r.jobs))
		}
		return
	}
	if len(r.jobs) != 1 {
		t.Fatalf("%d Jobs with %d grants, want 1", len(r.jobs), len(w.grants))
	}
	j := r.jobs[0]
	if hooks := strings.Split(j.Annotations["helm.sh/hook"], ","); !slices.Contains(hooks, "post-install") || !slices.Contains(hooks, "post-upgrade") {
		t.Errorf("Job %s: helm.sh/hook %q, want post-install and post-upgrade", j.Name, j.Annotations["helm.sh/hook"])
	}
	if p := j.Annotations["helm.sh/hook-delete-policy"]; !strings.Contains(p, "before-hook-creation") {
		t.Errorf("Job %s: hook-delete-policy %q lacks before-hook-creation: the next upgrade could not create it again", j.Name, p)
	}
	if b := j.Spec.BackoffLimit; b == nil || *b < 1 {
		t.Errorf("Job %s: backoffLimit %s: no retry while the cluster forms", j.Name, show(b))
	}
	if d := j.Spec.ActiveDeadlineSeconds; d == nil || *d <= 0 {
		t.Errorf("Job %s: no activeDeadlineSeconds: retries are not bounded in time", j.Name)
	}
	spec := j.Spec.Template.Spec
	if spec.RestartPolicy != corev1.RestartPolicyNever && spec.RestartPolicy != corev1.RestartPolicyOnFailure {
		t.Errorf("Job %s: restartPolicy %q", j.Name, spec.RestartPolicy)
	}
	if e := spec.EnableServiceLinks; e == nil || *e {
		t.Errorf("Job %s: enableServiceLinks is not false: service variables could be read as QUORUMQ_* settings", j.Name)
	}
	podLabels := labels.Set(j.Spec.Template.Labels)
	for _, s := range r.services {
		if labels.SelectorFromSet(s.Spec.Selector).Matches(podLabels) {
			t.Errorf("Service %s selects the grants Job's pod", s.Name)
		}
	}
	for _, p := range r.pdbs {
		if sel, err := metav1.LabelSelectorAsSelector(p.Spec.Selector); err == nil && sel.Matches(podLabels) {
			t.Errorf("PodDisruptionBudget %s selects the grants Job's pod", p.Name)
		}
	}
	containers := append(slices.Clone(spec.InitContainers), spec.Containers...)
	if len(spec.Containers) != 1 || len(containers) != len(w.grants) {
		t.Fatalf("Job %s: %d init containers and %d containers for %d grants, want one container per grant, the last the main one",
			j.Name, len(spec.InitContainers), len(spec.Containers), len(w.grants))
	}
	client := ""
	for _, s := range r.services {
		if s.Spec.ClusterIP != corev1.ClusterIPNone {
			client = fmt.Sprintf("%s.%s.svc.cluster.local:%d", s.Name, namespace, clientPort)
		}
	}
	for i, g := range w.grants {
		c := containers[i]
		want := []string{"acl", "grant", g.identity, g.permission}
		if g.scope != "" {
			want = append(want, g.scope)
		}
		if got := c.Args[:min(len(want), len(c.Args))]; !slices.Equal(got, want) {
			t.Errorf("Job %s container %s: arguments %q, want them to start %q", j.Name, c.Name, c.Args, want)
		}
		if s, _ := argValue(c.Args, "--servers"); s != client {
			t.Errorf("Job %s container %s: --servers %q, want the client Service %q", j.Name, c.Name, s, client)
		}
		if _, ok := argValue(c.Args, "--timeout"); !ok {
			t.Errorf("Job %s container %s: no --timeout", j.Name, c.Name)
		}
		if c.Image != sts.Spec.Template.Spec.Containers[0].Image {
			t.Errorf("Job %s container %s: image %q, not the server's", j.Name, c.Name, c.Image)
		}
		for _, f := range []struct{ flag, secret, key string }{
			{"--ca", sts.Spec.Template.Spec.Volumes[0].Secret.SecretName, "ca.crt"},
			{"--cert", admin, "tls.crt"},
			{"--key", admin, "tls.key"},
		} {
			if s, key := secretFile(t, spec, c, c.Args, f.flag); s != f.secret || key != f.key {
				t.Errorf("Job %s container %s: %s reads key %q of Secret %q, want %q of %q", j.Name, c.Name, f.flag, key, s, f.key, f.secret)
			}
		}
		checkSecurity(t, spec, c)
	}
	for _, v := range spec.Volumes {
		if v.Secret == nil {
			continue
		}
		for _, it := range v.Secret.Items {
			if v.Secret.SecretName != admin && it.Key == "tls.key" {
				t.Errorf("Job %s mounts the pods' key (Secret %s): it needs only their CA", j.Name, v.Secret.SecretName)
			}
		}
		if len(v.Secret.Items) == 0 && v.Secret.SecretName != admin {
			t.Errorf("Job %s mounts all of Secret %s: it needs only ca.crt", j.Name, v.Secret.SecretName)
		}
	}
}

// checkNoAnonymousCalls: every container of the release that talks to the
// client port (--servers, --addr) speaks TLS against a CA and presents a
// credential; no probe runs a command (probes are HTTP on 7423, open).
func checkNoAnonymousCalls(t *testing.T, r *release) {
	t.Helper()
	var all []corev1.Container
	for _, s := range r.sts {
		all = append(all, s.Spec.Template.Spec.InitContainers...)
		all = append(all, s.Spec.Template.Spec.Containers...)
	}
	for _, j := range r.jobs {
		all = append(all, j.Spec.Template.Spec.InitContainers...)
		all = append(all, j.Spec.Template.Spec.Containers...)
	}
	for _, c := range all {
		args := append(slices.Clone(c.Command), c.Args...)
		_, servers := argValue(args, "--servers")
		_, addr := argValue(args, "--addr")
		if servers || addr {
			_, ca := argValue(args, "--ca")
			_, cert := argValue(args, "--cert")
			_, key := argValue(args, "--key")
			_, token := argValue(args, "--token")
			if !ca || !(cert && key || token) {
				t.Errorf("container %s calls the client port without --ca and a credential: %q", c.Name, args)
			}
		}
		for _, p := range []*corev1.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
			if p != nil && (p.Exec != nil || p.GRPC != nil) {
				t.Errorf("container %s: a probe runs a command or gRPC: probes use HTTP /healthz and /readyz", c.Name)
			}
		}
	}
}

// checkMetrics: --metrics-addr serves /metrics on a container port of its
// own (not the probes' 7423), which the headless Service carries and the
// NetworkPolicy admits only from the namespace asked, by its
// kubernetes.io/metadata.name label.
func checkMetrics(t *testing.T, r *release, c corev1.Container, w want) {
	t.Helper()
	args := append(slices.Clone(c.Command), c.Args...)
	addr, _ := argValue(args, "--metrics-addr")
	if addr != fmt.Sprintf(":%d", w.metrics()) {
		t.Errorf("--metrics-addr %q, want :%d", addr, w.metrics())
	}
	cp, ok := containerPort(c, intstr.FromInt32(w.metrics()), corev1.ProtocolTCP)
	if !ok || cp.ContainerPort == httpPort {
		t.Errorf("no container port %d of its own for /metrics", w.metrics())
	}
	headless, _ := splitServices(t, r)
	carried := false
	for _, sp := range headless.Spec.Ports {
		carried = carried || (sp.Port == w.metrics() && (sp.TargetPort.StrVal == cp.Name || sp.TargetPort.IntVal == w.metrics()))
	}
	if !carried {
		t.Errorf("headless Service %s does not carry the metrics port %d", headless.Name, w.metrics())
	}
	if !w.netpol {
		return
	}
	np := r.netpols[0]
	ns := w.metricsNS
	if ns == "" {
		ns = namespace
	}
	n := 0
	for _, rule := range np.Spec.Ingress {
		if !admits(rule, c, w.metrics(), corev1.ProtocolTCP) {
			continue
		}
		n++
		if len(rule.From) == 0 {
			t.Errorf("NetworkPolicy admits the metrics port %d from anywhere", w.metrics())
		}
		for _, peer := range rule.From {
			if peer.IPBlock != nil || peer.NamespaceSelector == nil {
				t.Errorf("NetworkPolicy admits the metrics port from %+v, not from the namespace %s", peer, ns)
				continue
			}
			if sel := peer.NamespaceSelector; len(sel.MatchExpressions) > 0 || !sameLabels(sel.MatchLabels, map[string]string{"kubernetes.io/metadata.name": ns}) {
				t.Errorf("NetworkPolicy admits the metrics port from namespaces %v, want exactly %s", sel, ns)
			}
			var pods map[string]string
			if peer.PodSelector != nil {
				pods = peer.PodSelector.MatchLabels
			}
			if !sameLabels(pods, w.metricsPods) {
				t.Errorf("NetworkPolicy admits the metrics port from pods %v, want %v", pods, w.metricsPods)
			}
		}
	}
	if n == 0 {
		t.Errorf("NetworkPolicy does not admit the metrics port %d at all", w.metrics())
	}
	// The probes' port stays open: the kubelet must reach it.
	if !slices.ContainsFunc(np.Spec.Ingress, func(rule networkingv1.NetworkPolicyIngressRule) bool {
		return len(rule.From) == 0 && admits(rule, c, httpPort, corev1.ProtocolTCP) && !admits(rule, c, w.metrics(), corev1.ProtocolTCP)
	}) {
		t.Errorf("NetworkPolicy: no rule opens %d (/healthz, /readyz) without opening the metrics port too", httpPort)
	}
}

func sameLabels(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
