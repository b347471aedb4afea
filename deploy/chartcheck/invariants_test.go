package chartcheck

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The server's ports (cluster/config.go) and HTTP paths (cluster/http.go).
const (
	clientPort = 7420
	peerPort   = 7421
	gossipPort = 7422
	httpPort   = 7423
)

// checkInvariants checks what a quorumq cluster on Kubernetes relies on.
// Each check says in its message what breaks when it fails.
func checkInvariants(t *testing.T, r *release, w want) {
	t.Helper()
	if len(r.sts) != 1 {
		t.Fatalf("%d StatefulSets, want 1", len(r.sts))
	}
	sts := r.sts[0]
	pod := labels.Set(sts.Spec.Template.Labels)
	spec := sts.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]

	headless, client := splitServices(t, r)
	checkObjects(t, r)
	checkStatefulSet(t, sts, headless, w)
	checkSelectors(t, r, sts, pod)
	checkArgs(t, r, sts, c, headless, w)
	checkProbes(t, c)
	checkPorts(t, c, headless, client)
	checkStorage(t, sts, c, w)
	checkSecurity(t, spec, c)
	checkScheduling(t, spec, pod)
	checkPDB(t, r)
	checkNetworkPolicy(t, r, c, pod, w)
	checkServiceMonitor(t, r, headless, client, w)
	checkTLS(t, r, sts, c, headless, w)
}

// splitServices returns the headless Service and the client Service.
func splitServices(t *testing.T, r *release) (headless, client *corev1.Service) {
	t.Helper()
	for _, s := range r.services {
		if s.Spec.ClusterIP == corev1.ClusterIPNone {
			if headless != nil {
				t.Fatalf("two headless Services: %s and %s", headless.Name, s.Name)
			}
			headless = s
		} else {
			if client != nil {
				t.Fatalf("two client Services: %s and %s", client.Name, s.Name)
			}
			client = s
		}
	}
	if headless == nil || client == nil {
		t.Fatalf("want one headless and one client Service, got %d Services", len(r.services))
	}
	// Pods must find each other (--join resolves the headless name) before
	// any is ready, because readiness needs a formed cluster.
	if !headless.Spec.PublishNotReadyAddresses {
		t.Errorf("headless Service %s: publishNotReadyAddresses is false: a new cluster could never form", headless.Name)
	}
	// Clients must reach ready nodes only.
	if client.Spec.PublishNotReadyAddresses {
		t.Errorf("client Service %s publishes pods that are not ready", client.Name)
	}
	return headless, client
}

// checkObjects: every object in the release's namespace, with names that
// Kubernetes accepts.
func checkObjects(t *testing.T, r *release) {
	t.Helper()
	for _, o := range r.objects {
		if o.GetNamespace() != namespace {
			t.Errorf("%s: namespace %q, want %q", o.GetName(), o.GetNamespace(), namespace)
		}
		if n := len(o.GetName()); n == 0 || n > 63 {
			t.Errorf("object name %q: %d characters, want 1 to 63", o.GetName(), n)
		}
		if o.GetLabels()["app.kubernetes.io/instance"] != r.name {
			t.Errorf("%s: no app.kubernetes.io/instance=%s label", o.GetName(), r.name)
		}
	}
}

func checkStatefulSet(t *testing.T, sts *appsv1.StatefulSet, headless *corev1.Service, w want) {
	t.Helper()
	// Pod names (<sts>-<ordinal>) and the controller-revision-hash label
	// (<sts>-<10 characters>) must fit in 63 characters.
	if len(sts.Name) > 52 {
		t.Errorf("StatefulSet name %q longer than 52 characters", sts.Name)
	}
	if sts.Spec.ServiceName != headless.Name {
		t.Errorf("StatefulSet serviceName %q, want the headless Service %q: pods get no DNS names", sts.Spec.ServiceName, headless.Name)
	}
	if sts.Spec.Replicas == nil || *sts.Spec.Replicas != w.replicas {
		t.Errorf("replicas %s, want %d", show(sts.Spec.Replicas), w.replicas)
	}
	// OrderedReady would wait for pod 0 to be ready, which needs a formed
	// cluster, which needs bootstrapExpect pods.
	if sts.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		t.Errorf("podManagementPolicy %q, want Parallel", sts.Spec.PodManagementPolicy)
	}
	u := sts.Spec.UpdateStrategy
	if u.Type != "" && u.Type != appsv1.RollingUpdateStatefulSetStrategyType {
		t.Errorf("updateStrategy %q, want RollingUpdate", u.Type)
	}
	if ru := u.RollingUpdate; ru != nil && ru.MaxUnavailable != nil && ru.MaxUnavailable.IntValue() != 1 {
		t.Errorf("rolling update maxUnavailable %s, want one pod at a time", ru.MaxUnavailable.String())
	}
	// A graceful leave hands over leadership (~10 s) and leaves gossip (2 s);
	// the server gives up after 30 s.
	if g := sts.Spec.Template.Spec.TerminationGracePeriodSeconds; g == nil || *g < 60 {
		t.Errorf("terminationGracePeriodSeconds %s, want at least 60", show(g))
	}
	// Kubernetes' service links would inject QUORUMQ_*-like variables.
	if e := sts.Spec.Template.Spec.EnableServiceLinks; e == nil || *e {
		t.Error("enableServiceLinks is not false: service environment variables could be read as settings")
	}
}

// show prints what p points to, or "unset".
func show[T any](p *T) string {
	if p == nil {
		return "unset"
	}
	return fmt.Sprint(*p)
}

// checkSelectors: every selector of the release selects exactly the pods
// of this StatefulSet: it is not empty, it matches the pod labels and it
// names the release (so that two releases never select each other's pods).
func checkSelectors(t *testing.T, r *release, sts *appsv1.StatefulSet, pod labels.Set) {
	t.Helper()
	check := func(what string, set map[string]string, ls *metav1.LabelSelector) {
		var sel labels.Selector
		switch {
		case ls != nil:
			var err error
			if sel, err = metav1.LabelSelectorAsSelector(ls); err != nil {
				t.Errorf("%s: selector: %v", what, err)
				return
			}
			set = ls.MatchLabels
		default:
			sel = labels.SelectorFromSet(set)
		}
		if sel.Empty() {
			t.Errorf("%s: empty selector", what)
		} else if !sel.Matches(pod) {
			t.Errorf("%s: selector %s does not match the pod labels %v", what, sel, pod)
		}
		if set["app.kubernetes.io/instance"] != r.name {
			t.Errorf("%s: selector %v does not name the release", what, set)
		}
	}
	check("StatefulSet "+sts.Name, nil, sts.Spec.Selector)
	for _, s := range r.services {
		check("Service "+s.Name, s.Spec.Selector, nil)
	}
	for _, p := range r.pdbs {
		check("PodDisruptionBudget "+p.Name, nil, p.Spec.Selector)
	}
	for _, n := range r.netpols {
		check("NetworkPolicy "+n.Name, nil, &n.Spec.PodSelector)
	}
}

// argValue returns the value of --name=value or --name value in args.
func argValue(args []string, name string) (string, bool) {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v, true
		}
		if a == name && i+1 < len(args) {
			return args[i+1], true
		}
	}
	return "", false
}

func envVar(c corev1.Container, name string) *corev1.EnvVar {
	for i := range c.Env {
		if c.Env[i].Name == name {
			return &c.Env[i]
		}
	}
	return nil
}

func fieldRef(e *corev1.EnvVar) string {
	if e == nil || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil {
		return ""
	}
	return e.ValueFrom.FieldRef.FieldPath
}

func checkArgs(t *testing.T, r *release, sts *appsv1.StatefulSet, c corev1.Container, headless *corev1.Service, w want) {
	t.Helper()
	args := append(slices.Clone(c.Command), c.Args...)
	if len(args) == 0 || args[0] != "server" {
		t.Errorf("container arguments %q do not start with server", args)
	}
	v, ok := argValue(args, "--bootstrap-expect")
	if n, err := strconv.Atoi(v); !ok || err != nil || n != w.expect {
		t.Errorf("--bootstrap-expect %q, want %d", v, w.expect)
	}
	wantJoin := fmt.Sprintf("%s.%s.svc.cluster.local:%d", headless.Name, namespace, gossipPort)
	if v, _ := argValue(args, "--join"); v != wantJoin {
		t.Errorf("--join %q, want the headless Service %q", v, wantJoin)
	}
	// One node id per pod, for ever: the pod name.
	if f := fieldRef(envVar(c, "QUORUMQ_NODE_ID")); f != "metadata.name" {
		t.Errorf("QUORUMQ_NODE_ID from %q, want the pod name (metadata.name)", f)
	}
	if _, ok := argValue(args, "--node-id"); ok {
		t.Error("--node-id in the arguments: every pod would have the same id")
	}
	// Gossip accepts only an IP literal as the advertised host.
	if f := fieldRef(envVar(c, "QUORUMQ_ADVERTISE_HOST")); f != "status.podIP" {
		t.Errorf("QUORUMQ_ADVERTISE_HOST from %q, want status.podIP", f)
	}
	z := envVar(c, "QUORUMQ_ZONE")
	switch {
	case w.zone != "" && (z == nil || z.Value != w.zone):
		t.Errorf("QUORUMQ_ZONE %+v, want %q", z, w.zone)
	case w.zone == "" && fieldRef(z) != "metadata.labels['topology.kubernetes.io/zone']":
		t.Errorf("QUORUMQ_ZONE %+v, want the pod's topology.kubernetes.io/zone label", z)
	}
	seen := map[string]bool{}
	for _, e := range c.Env {
		if seen[e.Name] && !strings.HasPrefix(e.Name, "QUORUMQ_LOG") {
			t.Errorf("environment variable %s set twice", e.Name)
		}
		seen[e.Name] = true
	}
}

// containerPort finds the port of c that p (a number or a name) names, with
// protocol proto.
func containerPort(c corev1.Container, p intstr.IntOrString, proto corev1.Protocol) (corev1.ContainerPort, bool) {
	for _, cp := range c.Ports {
		pp := cp.Protocol
		if pp == "" {
			pp = corev1.ProtocolTCP
		}
		if pp != proto {
			continue
		}
		if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
			return cp, true
		}
	}
	return corev1.ContainerPort{}, false
}

func checkProbes(t *testing.T, c corev1.Container) {
	t.Helper()
	probe := func(what string, p *corev1.Probe, path string) {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s probe: want an HTTP GET of %s", what, path)
			return
		}
		if p.HTTPGet.Path != path {
			t.Errorf("%s probe: path %q, want %q", what, p.HTTPGet.Path, path)
		}
		cp, ok := containerPort(c, p.HTTPGet.Port, corev1.ProtocolTCP)
		if !ok {
			t.Errorf("%s probe: port %s is no TCP port of the container", what, p.HTTPGet.Port.String())
		} else if cp.ContainerPort != httpPort {
			t.Errorf("%s probe: port %d, want the HTTP port %d", what, cp.ContainerPort, httpPort)
		}
	}
	// Liveness must never depend on a leader: a cluster without quorum
	// would be restarted in a loop, which makes it worse.
	probe("liveness", c.LivenessProbe, "/healthz")
	if p := c.LivenessProbe; p != nil && p.HTTPGet != nil && p.HTTPGet.Path == "/readyz" {
		t.Error("liveness probe on /readyz: pods would be killed while the cluster has no leader")
	}
	probe("readiness", c.ReadinessProbe, "/readyz")
	// The startup probe waits for a restarted node to catch up.
	probe("startup", c.StartupProbe, "/readyz")
	if p := c.StartupProbe; p != nil {
		period, failures := max(p.PeriodSeconds, 10), max(p.FailureThreshold, 3)
		if period*failures < 600 {
			t.Errorf("startup probe allows %d s, want at least 10 min to catch up", period*failures)
		}
	}
}

func checkPorts(t *testing.T, c corev1.Container, headless, client *corev1.Service) {
	t.Helper()
	for _, p := range []struct {
		port  int32
		proto corev1.Protocol
	}{{clientPort, "TCP"}, {peerPort, "TCP"}, {gossipPort, "TCP"}, {gossipPort, "UDP"}, {httpPort, "TCP"}} {
		if _, ok := containerPort(c, intstr.FromInt32(p.port), p.proto); !ok {
			t.Errorf("container does not expose %d/%s", p.port, p.proto)
		}
	}
	// Every Service port reaches a container port of the same protocol.
	servicePorts := func(s *corev1.Service) map[string]bool {
		got := map[string]bool{}
		for _, sp := range s.Spec.Ports {
			proto := sp.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			target := sp.TargetPort
			if target.Type == intstr.Int && target.IntVal == 0 {
				target = intstr.FromInt32(sp.Port)
			}
			cp, ok := containerPort(c, target, proto)
			if !ok {
				t.Errorf("Service %s port %s (%d/%s): target %s is no container port", s.Name, sp.Name, sp.Port, proto, target.String())
				continue
			}
			got[fmt.Sprintf("%d/%s", cp.ContainerPort, proto)] = true
		}
		return got
	}
	hp := servicePorts(headless)
	for _, p := range []string{"7422/TCP", "7422/UDP"} {
		if !hp[p] {
			t.Errorf("headless Service %s does not carry gossip %s", headless.Name, p)
		}
	}
	if cp := servicePorts(client); !cp["7420/TCP"] {
		t.Errorf("client Service %s does not carry the client port 7420/TCP", client.Name)
	}
}

func checkStorage(t *testing.T, sts *appsv1.StatefulSet, c corev1.Container, w want) {
	t.Helper()
	dataDir, _ := argValue(append(slices.Clone(c.Command), c.Args...), "--data-dir")
	var mount *corev1.VolumeMount
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].MountPath == dataDir {
			mount = &c.VolumeMounts[i]
		}
	}
	if dataDir == "" || mount == nil {
		t.Fatalf("--data-dir %q is not a volume mount of the container", dataDir)
	}
	var pvc *corev1.PersistentVolumeClaim
	for i := range sts.Spec.VolumeClaimTemplates {
		if sts.Spec.VolumeClaimTemplates[i].Name == mount.Name {
			pvc = &sts.Spec.VolumeClaimTemplates[i]
		}
	}
	if pvc == nil {
		t.Fatalf("the data directory's volume %q is no volumeClaimTemplate: data would not outlive the pod", mount.Name)
	}
	for _, v := range sts.Spec.Template.Spec.Volumes {
		if v.Name == mount.Name {
			t.Errorf("pod volume %q shadows the volumeClaimTemplate", v.Name)
		}
	}
	if !slices.Contains(pvc.Spec.AccessModes, corev1.ReadWriteOnce) {
		t.Errorf("claim access modes %v, want ReadWriteOnce", pvc.Spec.AccessModes)
	}
	got := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
	if want := resource.MustParse(w.size); got.Cmp(want) != 0 {
		t.Errorf("claim size %s, want %s", got.String(), w.size)
	}
	switch sc := pvc.Spec.StorageClassName; {
	case w.storageClass == "" && sc != nil:
		t.Errorf("storageClassName %q, want none (the default class)", *sc)
	case w.storageClass != "" && (sc == nil || *sc != w.storageClass):
		t.Errorf("storageClassName %s, want %q", show(sc), w.storageClass)
	}
}

func checkSecurity(t *testing.T, spec corev1.PodSpec, c corev1.Container) {
	t.Helper()
	psc, csc := spec.SecurityContext, c.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	if csc == nil {
		csc = &corev1.SecurityContext{}
	}
	nonRoot := csc.RunAsNonRoot
	if nonRoot == nil {
		nonRoot = psc.RunAsNonRoot
	}
	if nonRoot == nil || !*nonRoot {
		t.Error("runAsNonRoot is not true")
	}
	for _, u := range []*int64{psc.RunAsUser, csc.RunAsUser} {
		if u != nil && *u == 0 {
			t.Error("runAsUser 0")
		}
	}
	if e := csc.AllowPrivilegeEscalation; e == nil || *e {
		t.Error("allowPrivilegeEscalation is not false")
	}
	if ro := csc.ReadOnlyRootFilesystem; ro == nil || !*ro {
		t.Error("readOnlyRootFilesystem is not true (the server writes only to its data directory)")
	}
	if a := spec.AutomountServiceAccountToken; a == nil || *a {
		t.Error("automountServiceAccountToken is not false (the server needs no API access)")
	}
}

// checkScheduling: spread pods, but never so strictly that they cannot be
// scheduled.
func checkScheduling(t *testing.T, spec corev1.PodSpec, pod labels.Set) {
	t.Helper()
	a := spec.Affinity
	if a == nil || a.PodAntiAffinity == nil || len(a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) == 0 {
		t.Error("no preferred podAntiAffinity")
	} else {
		if len(a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) > 0 {
			t.Error("required podAntiAffinity: want soft (preferred)")
		}
		for _, term := range a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
			sel, err := metav1.LabelSelectorAsSelector(term.PodAffinityTerm.LabelSelector)
			if err != nil || sel.Empty() || !sel.Matches(pod) {
				t.Errorf("podAntiAffinity selector %v does not select the pods", term.PodAffinityTerm.LabelSelector)
			}
		}
	}
	if len(spec.TopologySpreadConstraints) == 0 {
		t.Error("no topologySpreadConstraints")
	}
	for _, c := range spec.TopologySpreadConstraints {
		if c.WhenUnsatisfiable != corev1.ScheduleAnyway {
			t.Errorf("topology spread on %s: whenUnsatisfiable %s, want ScheduleAnyway", c.TopologyKey, c.WhenUnsatisfiable)
		}
		sel, err := metav1.LabelSelectorAsSelector(c.LabelSelector)
		if err != nil || sel.Empty() || !sel.Matches(pod) {
			t.Errorf("topology spread selector %v does not select the pods", c.LabelSelector)
		}
	}
}

func checkPDB(t *testing.T, r *release) {
	t.Helper()
	if len(r.pdbs) != 1 {
		t.Fatalf("%d PodDisruptionBudgets, want 1", len(r.pdbs))
	}
	p := r.pdbs[0]
	if m := p.Spec.MaxUnavailable; m == nil || *m != intstr.FromInt32(1) {
		t.Errorf("PodDisruptionBudget maxUnavailable %v, want 1", m)
	}
	if p.Spec.MinAvailable != nil {
		t.Errorf("PodDisruptionBudget sets minAvailable %s too", p.Spec.MinAvailable.String())
	}
}

// admits says whether rule lets port/proto of container c in.
func admits(rule networkingv1.NetworkPolicyIngressRule, c corev1.Container, port int32, proto corev1.Protocol) bool {
	if len(rule.Ports) == 0 {
		return true
	}
	for _, p := range rule.Ports {
		pp := corev1.ProtocolTCP
		if p.Protocol != nil {
			pp = *p.Protocol
		}
		if pp != proto {
			continue
		}
		if p.Port == nil {
			return true
		}
		cp, ok := containerPort(c, *p.Port, proto)
		if !ok {
			continue
		}
		end := cp.ContainerPort
		if p.EndPort != nil {
			end = *p.EndPort
		}
		if cp.ContainerPort <= port && port <= end {
			return true
		}
	}
	return false
}

// checkNetworkPolicy: peer and gossip traffic only from the release's own
// pods; client and HTTP from anywhere (metrics: checkMetrics).
func checkNetworkPolicy(t *testing.T, r *release, c corev1.Container, pod labels.Set, w want) {
	t.Helper()
	if !w.netpol {
		if len(r.netpols) != 0 {
			t.Errorf("%d NetworkPolicies, want none", len(r.netpols))
		}
		return
	}
	if len(r.netpols) != 1 {
		t.Fatalf("%d NetworkPolicies, want 1", len(r.netpols))
	}
	np := r.netpols[0]
	if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
		t.Errorf("NetworkPolicy policyTypes %v lack Ingress", np.Spec.PolicyTypes)
	}
	for _, p := range []struct {
		port  int32
		proto corev1.Protocol
	}{{peerPort, "TCP"}, {gossipPort, "TCP"}, {gossipPort, "UDP"}} {
		n := 0
		for _, rule := range np.Spec.Ingress {
			if !admits(rule, c, p.port, p.proto) {
				continue
			}
			n++
			if len(rule.From) == 0 {
				t.Errorf("NetworkPolicy admits %d/%s from anywhere", p.port, p.proto)
			}
			for _, peer := range rule.From {
				sel, err := metav1.LabelSelectorAsSelector(peer.PodSelector)
				if peer.PodSelector == nil || err != nil || sel.Empty() || !sel.Matches(pod) ||
					peer.PodSelector.MatchLabels["app.kubernetes.io/instance"] != r.name {
					t.Errorf("NetworkPolicy admits %d/%s from pods %v, not only the release's", p.port, p.proto, peer.PodSelector)
				}
				if peer.NamespaceSelector != nil || peer.IPBlock != nil {
					t.Errorf("NetworkPolicy admits %d/%s from other namespaces or addresses", p.port, p.proto)
				}
			}
		}
		if n == 0 {
			t.Errorf("NetworkPolicy does not admit %d/%s between the pods: the cluster cannot form", p.port, p.proto)
		}
	}
	for _, port := range []int32{clientPort, httpPort} {
		open := false
		for _, rule := range np.Spec.Ingress {
			open = open || (len(rule.From) == 0 && admits(rule, c, port, corev1.ProtocolTCP))
		}
		if !open {
			t.Errorf("NetworkPolicy does not admit %d/TCP from anywhere", port)
		}
	}
}

func checkServiceMonitor(t *testing.T, r *release, headless, client *corev1.Service, w want) {
	t.Helper()
	if !w.monitor {
		if len(r.monitors) != 0 {
			t.Errorf("%d ServiceMonitors, want none", len(r.monitors))
		}
		return
	}
	if len(r.monitors) != 1 {
		t.Fatalf("%d ServiceMonitors, want 1", len(r.monitors))
	}
	m := r.monitors[0]
	sel, err := metav1.LabelSelectorAsSelector(&m.Spec.Selector)
	if err != nil || sel.Empty() {
		t.Fatalf("ServiceMonitor selector %v: %v", m.Spec.Selector, err)
	}
	// The headless Service lists every pod; selecting the client Service as
	// well would scrape each ready pod twice.
	if !sel.Matches(labels.Set(headless.Labels)) {
		t.Errorf("ServiceMonitor does not select the headless Service %s", headless.Name)
	}
	if sel.Matches(labels.Set(client.Labels)) {
		t.Errorf("ServiceMonitor selects the client Service %s too", client.Name)
	}
	if !slices.Contains(m.Spec.NamespaceSelector.MatchNames, namespace) {
		t.Errorf("ServiceMonitor namespaces %v lack %s", m.Spec.NamespaceSelector.MatchNames, namespace)
	}
	if len(m.Spec.Endpoints) == 0 {
		t.Fatal("ServiceMonitor has no endpoints")
	}
	for _, e := range m.Spec.Endpoints {
		if e.Path != "/metrics" {
			t.Errorf("ServiceMonitor path %q, want /metrics", e.Path)
		}
		// /metrics has a port of its own (--metrics-addr), not 7423.
		found := false
		for _, sp := range headless.Spec.Ports {
			found = found || (sp.Name == e.Port && sp.Port == w.metrics())
		}
		if !found {
			t.Errorf("ServiceMonitor port %q is not the headless Service's metrics port %d", e.Port, w.metrics())
		}
	}
}
