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
	gossipSecret string   // gossip.existingSecret; "" = the chart's
	admins       []string // --admin-identities; nil = [admin]
	adminName    string   // auth.admin.name; "" = admin
	adminSecret  string   // auth.admin.existingSecret; "" = the chart's (where it can make one)
	grants       []grant  // auth.grants, as the hook Job must make them
	metricsNS    string   // metrics.allowNamespace; "" = the release's
	metricsPort  int32    // metrics.port; 0 = 7424
	metricsPods  map[string]string
}

// grant is one `quorumq acl grant` the hook Job must run: identity,
// permission and the --queue=... or --prefix=... argument ("" for admin).
type grant struct{ identity, permission, scope string }

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
	{name: "grants", values: `
auth:
  grants:
    - {identity: worker, permission: consume, queue: orders}
    - {identity: billing-api, permission: produce, prefix: "billing."}
    - {identity: ops@example.com, permission: admin}
    - {identity: auditor, permission: manage, allQueues: true}
`, want: with(func(w *want) {
		w.grants = []grant{{"worker", "consume", "--queue=orders"}, {"billing-api", "produce", "--prefix=billing."}, {"ops@example.com", "admin", ""}, {"auditor", "manage", "--all-queues"}}
	})},
	{name: "one grant, cert-manager", values: `
tls: {certManager: {issuerRef: {name: quorumq-ca}}}
auth: {grants: [{identity: worker, permission: consume, queue: orders}]}
`, want: with(func(w *want) {
		w.tls, w.issuer = tlsCertManager, issuerReference{Name: "quorumq-ca", Kind: "Issuer", Group: "cert-manager.io"}
		w.grants = []grant{{"worker", "consume", "--queue=orders"}}
	})},
	{name: "grants with existing TLS and admin Secrets", values: `
tls: {existingSecret: my-tls}
auth:
  admin: {existingSecret: my-admin}
  grants: [{identity: worker, permission: manage, prefix: team-a.}]
`, want: with(func(w *want) {
		w.tls, w.tlsSecret, w.adminSecret = tlsExisting, "my-tls", "my-admin"
		w.grants = []grant{{"worker", "manage", "--prefix=team-a."}}
	})},
	{name: "own admin identities", values: `
auth:
  adminIdentities: [ops, root-ci]
  admin: {name: root-ci, days: 30}
`, want: with(func(w *want) { w.admins, w.adminName = []string{"ops", "root-ci"}, "root-ci" })},
	{name: "metrics from monitoring", values: `
metrics: {port: 9090, allowNamespace: monitoring, allowPodLabels: {app.kubernetes.io/name: prometheus}}
serviceMonitor: {enabled: true}
`, want: with(func(w *want) {
		w.monitor, w.metricsNS, w.metricsPort = true, "monitoring", 9090
		w.metricsPods = map[string]string{"app.kubernetes.io/name": "prometheus"}
	})},
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
				checkAuth(t, r, tc.want)
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
		{"no admin identities", "auth: {adminIdentities: []}", "auth.adminIdentities is empty"},
		{"a bad admin identity", "auth: {adminIdentities: [\"a b\"]}", "is no identity"},
		{"admin certificate of no admin", "auth: {admin: {name: ops}}", "is not one of auth.adminIdentities"},
		{"admin certificate for too long", "auth: {admin: {days: 5000}}", "auth.admin.days"},
		{"--admin-identities in extraArgs", "extraArgs: [--admin-identities=x]", "use the values auth.adminIdentities"},
		{"QUORUMQ_METRICS_ADDR in extraEnv", "extraEnv: [{name: QUORUMQ_METRICS_ADDR, value: \":1\"}]", "set by the chart's flags"},
		{"metrics on the probes' port", "metrics: {port: 7423}", "want a port of its own"},
		{"grants when insecure", "insecure: true\ntls: {enabled: false}\nauth: {grants: [{identity: w, permission: consume, queue: q}]}", "an insecure cluster checks no permissions"},
		{"grants without an admin credential", "tls: {existingSecret: my-tls}\nauth: {grants: [{identity: w, permission: consume, queue: q}]}", "name it in auth.admin.existingSecret"},
		{"a grant of an unknown permission", "auth: {grants: [{identity: w, permission: read, queue: q}]}", "want produce, consume, manage or admin"},
		{"a grant with queue and prefix", "auth: {grants: [{identity: w, permission: consume, queue: q, prefix: p}]}", "names exactly one of queue"},
		{"a grant on no queue", "auth: {grants: [{identity: w, permission: produce}]}", "names exactly one of queue"},
		{"a grant of an empty prefix", "auth: {grants: [{identity: w, permission: consume, prefix: \"\"}]}", "say allQueues: true"},
		{"a grant on all queues and a queue", "auth: {grants: [{identity: w, permission: consume, queue: q, allQueues: true}]}", "names exactly one of queue"},
		{"a grant of allQueues: false", "auth: {grants: [{identity: w, permission: consume, allQueues: false}]}", "want true, or leave it out"},
		{"an admin grant on a queue", "auth: {grants: [{identity: w, permission: admin, queue: q}]}", "an admin grant names no queue"},
		{"a grant with a misspelt key", "auth: {grants: [{identity: w, permission: consume, queu: q}]}", "unknown key \"queu\""},
		{"a grant of a bad identity", "auth: {grants: [{identity: \"\", permission: consume, queue: q}]}", "identity \"\""},
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
		"get secret qq-quorumq-admin -o jsonpath='{.data.tls\\.crt}' | base64 -d > qq-admin.pem",
		"(umask 077; kubectl -n queues get secret qq-quorumq-admin -o jsonpath='{.data.tls\\.key}' | base64 -d > qq-admin-key.pem)",
		"get secret qq-quorumq-tls -o jsonpath='{.data.ca\\.crt}' | base64 -d > qq-ca.pem",
		"quorumq context add qq --servers 127.0.0.1:7420 --ca qq-ca.pem \\\n    --cert qq-admin.pem --key qq-admin-key.pem --select",
		"quorumq acl grant worker consume --queue orders",
		"admins:      admin (--admin-identities)",
		"admin credential: Secret qq-quorumq-admin",
		"/metrics on port 7424, reachable (NetworkPolicy) only from pods in\nthe namespace queues",
		"rollout status statefulset/qq-quorumq",
		"--set replicas=5 --set bootstrapExpect=3",
		"Scaling down: first take the node out of the cluster, then shrink",
		"quorumq cluster drain qq-quorumq-2",
		"quorumq cluster remove qq-quorumq-2",
		"data-qq-quorumq-N",
		"Peer traffic (7421) uses mutual TLS; gossip (7422) is encrypted.",
		"certificate: Secret qq-quorumq-tls (generated by the chart; its CA is in the Secret qq-quorumq-ca)",
		"gossip key:  Secret qq-quorumq-gossip",
	} {
		if !strings.Contains(r.notes, s) {
			t.Errorf("NOTES.txt lacks %q:\n%s", s, r.notes)
		}
	}
	// A secure cluster's notes never tell to call the client port without a
	// credential (--servers alone, or kubectl exec of the CLI in a pod, whose
	// node certificate names no client).
	if strings.Contains(r.notes, "quorumq --servers") || strings.Contains(r.notes, "-- /quorumq") {
		t.Errorf("NOTES.txt calls the client port without a credential:\n%s", r.notes)
	}
	// Without a credential the chart can make, the notes say how to make one.
	if r, err := render(t, "qq", "tls: {existingSecret: my-tls}", newKube); err != nil {
		t.Fatal(err)
	} else if s := "quorumq certs client --ca-dir <your CA directory> --name admin"; !strings.Contains(r.notes, s) {
		t.Errorf("NOTES.txt with tls.existingSecret lacks %q:\n%s", s, r.notes)
	}
	// Each source of the certificate, and insecure, say what they are.
	for values, s := range map[string]string{
		"tls: {certManager: {issuerRef: {name: ca}}}":                              "certificate: Secret qq-quorumq-issued-tls (cert-manager: kubectl -n queues get certificate qq-quorumq)",
		"tls: {existingSecret: my-tls}":                                            "must name the new pods first\n(qq-quorumq-3.node.quorumq, ...)",
		"insecure: true\ntls: {enabled: false}":                                    "WARNING: insecure: true.",
		"tls: {existingSecret: my-tls}\nauth: {admin: {existingSecret: my-admin}}": "admin credential: Secret my-admin",
		"auth: {grants: [{identity: w, permission: consume, queue: q}]}":           "grants:      1, made by the hook Job qq-quorumq-grants",
		"metrics: {allowNamespace: monitoring}":                                    "only from pods in\nthe namespace monitoring",
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
