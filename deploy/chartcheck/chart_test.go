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
		{"tls not wired yet", "tls:\n  enabled: true", "tls.enabled"},
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
	} {
		if !strings.Contains(r.notes, s) {
			t.Errorf("NOTES.txt lacks %q:\n%s", s, r.notes)
		}
	}
}
