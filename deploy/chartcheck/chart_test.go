package chartcheck

import (
	"strings"
	"testing"
)

// want is what a set of values must produce.
type want struct {
	replicas     int32
	expect       int    // --bootstrap-expect
	storageClass string // "" = none named (the cluster's default)
	size         string
	zone         string // a fixed QUORUMQ_ZONE, or "" for the pod-label one
	monitor      bool   // a ServiceMonitor
	netpol       bool   // a NetworkPolicy
	tls          string // where the certificate comes from: tlsGenerated, tlsCertManager, ...
	tlsSecret    string // tls.existingSecret
	issuer       issuerReference
	gossipSecret string // gossip.existingSecret; "" = the chart's
}

var defaults = want{replicas: 3, expect: 3, size: "10Gi", netpol: true}

func with(f func(*want)) want {
	w := defaults
	f(&w)
	return w
}

var cases = []struct {
	name    string
	release string
	values  string
	want    want
}{
	{name: "defaults", values: ``, want: defaults},
	{name: "five replicas", values: `replicas: 5`,
		want: with(func(w *want) { w.replicas, w.expect = 5, 5 })},
	{name: "scaled up from three", values: "replicas: 5\nbootstrapExpect: 3",
		want: with(func(w *want) { w.replicas, w.expect = 5, 3 })},
	{name: "service monitor", values: "serviceMonitor:\n  enabled: true",
		want: with(func(w *want) { w.monitor = true })},
	{name: "no network policy", values: "networkPolicy:\n  enabled: false",
		want: with(func(w *want) { w.netpol = false })},
	{name: "storage class", values: "persistence:\n  storageClass: fast-ssd\n  size: 50Gi",
		want: with(func(w *want) { w.storageClass, w.size = "fast-ssd", "50Gi" })},
	{name: "fixed zone", values: "zone:\n  value: eu-west-1a",
		want: with(func(w *want) { w.zone = "eu-west-1a" })},
	{name: "long release name", release: strings.Repeat("r", 60), values: ``, want: defaults},
	{name: "cert-manager issuer", values: "tls:\n  certManager:\n    issuerRef:\n      name: quorumq-ca",
		want: with(func(w *want) {
			w.tls, w.issuer = tlsCertManager, issuerReference{Name: "quorumq-ca", Kind: "Issuer", Group: "cert-manager.io"}
		})},
	{name: "cert-manager cluster issuer, five replicas", values: `
replicas: 5
tls: {certManager: {issuerRef: {name: vault, kind: ClusterIssuer}}}
gossip: {existingSecret: my-gossip}
`, want: with(func(w *want) {
		w.replicas, w.expect, w.gossipSecret = 5, 5, "my-gossip"
		w.tls, w.issuer = tlsCertManager, issuerReference{Name: "vault", Kind: "ClusterIssuer", Group: "cert-manager.io"}
	})},
	{name: "existing secrets", values: "tls:\n  existingSecret: my-tls\ngossip:\n  existingSecret: my-gossip",
		want: with(func(w *want) { w.tls, w.tlsSecret, w.gossipSecret = tlsExisting, "my-tls", "my-gossip" })},
	{name: "existing certificate, generated gossip key", values: "tls:\n  existingSecret: my-tls",
		want: with(func(w *want) { w.tls, w.tlsSecret = tlsExisting, "my-tls" })},
	{name: "insecure", values: "insecure: true\ntls:\n  enabled: false",
		want: with(func(w *want) { w.tls = tlsInsecure })},
	{name: "everything", release: "quorumq", values: `
replicas: 7
bootstrapExpect: 5
serviceMonitor: {enabled: true, labels: {release: prometheus}}
networkPolicy: {enabled: true}
persistence: {storageClass: standard-rwo, size: 1Ti}
extraArgs: [--log-level=debug]
extraEnv: [{name: QUORUMQ_LOG_LEVEL, value: debug}]
podAnnotations: {example.com/owner: queues}
image: {repository: registry.example.com/quorumq, digest: "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}
`, want: want{replicas: 7, expect: 5, storageClass: "standard-rwo", size: "1Ti", monitor: true, netpol: true}},
}

func TestChart(t *testing.T) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			name := tc.release
			if name == "" {
				name = "qq"
			}
			for _, kv := range []string{oldKube, newKube} {
				r, err := render(t, name, tc.values, kv)
				if err != nil {
					t.Fatalf("render on %s: %v", kv, err)
				}
				checkInvariants(t, r, tc.want)
			}
			lintChart(t, tc.values, newKube)
		})
	}
}

// TestChartRefuses: values that cannot work fail the install with a message
// that says why.
func TestChartRefuses(t *testing.T) {
	for _, tc := range []struct{ name, values, msg string }{
		{"tls off without insecure", "tls:\n  enabled: false", "refuses to start without TLS"},
		{"insecure with tls on", "insecure: true", "set tls.enabled=false as well"},
		{"insecure with a certificate", "insecure: true\ntls: {enabled: false, existingSecret: my-tls}", "uses no certificate and no gossip key"},
		{"insecure with an issuer", "insecure: true\ntls: {enabled: false, certManager: {issuerRef: {name: ca}}}", "uses no certificate and no gossip key"},
		{"insecure with a gossip key", "insecure: true\ntls: {enabled: false}\ngossip: {existingSecret: my-gossip}", "uses no certificate and no gossip key"},
		{"two certificate sources", "tls: {existingSecret: my-tls, certManager: {issuerRef: {name: ca}}}", "name one source of the certificate"},
		{"--insecure in extraArgs", "extraArgs: [--insecure]", "extraArgs: --insecure is set by the chart"},
		{"a TLS flag in extraArgs", "extraArgs: [--tls-cert=/etc/cert.pem]", "extraArgs: --tls-cert=/etc/cert.pem is set by the chart"},
		{"QUORUMQ_INSECURE in extraEnv", "extraEnv: [{name: QUORUMQ_INSECURE, value: \"true\"}]", "extraEnv: QUORUMQ_INSECURE is set by the chart"},
		{"bootstrapExpect above replicas", "bootstrapExpect: 4", "bootstrapExpect (4) must be between 1 and replicas (3)"},
		{"no replicas", "replicas: 0", "replicas must be at least 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render(t, "qq", tc.values, newKube)
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("render: got error %v, want one containing %q", err, tc.msg)
			}
		})
	}
	if _, err := render(t, "qq", "", "v1.24.0"); err == nil {
		t.Error("rendered for Kubernetes 1.24, below the chart's kubeVersion")
	}
}

// TestNotes: NOTES.txt tells how to connect and how to scale down.
func TestNotes(t *testing.T) {
	r, err := render(t, "qq", "", newKube)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		"qq-quorumq.queues.svc.cluster.local:7420",
		"port-forward svc/qq-quorumq 7420:7420",
		"quorumq --servers 127.0.0.1:7420 cluster status",
		"rollout status statefulset/qq-quorumq",
		"--set replicas=5 --set bootstrapExpect=3",
		"Scaling down: first take the node out of the cluster, then shrink",
		"quorumq cluster drain / remove",
		"data-qq-quorumq-N",
		"Peer traffic (7421) uses mutual TLS; gossip (7422) is encrypted.",
		"certificate: Secret qq-quorumq-tls (generated by the chart; its CA is in the Secret qq-quorumq-ca)",
		"gossip key:  Secret qq-quorumq-gossip",
	} {
		if !strings.Contains(r.notes, s) {
			t.Errorf("NOTES.txt lacks %q:\n%s", s, r.notes)
		}
	}
	// Each source of the certificate, and insecure, say what they are.
	for values, s := range map[string]string{
		"tls: {certManager: {issuerRef: {name: ca}}}": "certificate: Secret qq-quorumq-issued-tls (cert-manager: kubectl -n queues get certificate qq-quorumq)",
		"tls: {existingSecret: my-tls}":               "must name the new pods first\n(qq-quorumq-3.node.quorumq, ...)",
		"insecure: true\ntls: {enabled: false}":       "WARNING: insecure: true.",
	} {
		r, err := render(t, "qq", values, newKube)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(r.notes, s) {
			t.Errorf("NOTES.txt with %q lacks %q:\n%s", values, s, r.notes)
		}
	}
}
