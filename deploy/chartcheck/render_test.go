package chartcheck

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"sigs.k8s.io/yaml"
)

const (
	chartDir  = "../helm/quorumq"
	namespace = "queues"
	// The oldest Kubernetes the chart claims (Chart.yaml kubeVersion) and a
	// current one.
	oldKube = "v1.25.0"
	newKube = "v1.35.0"
)

// release is one rendering of the chart, every object decoded strictly.
type release struct {
	name     string // release name
	sts      []*appsv1.StatefulSet
	services []*corev1.Service
	pdbs     []*policyv1.PodDisruptionBudget
	netpols  []*networkingv1.NetworkPolicy
	monitors []*monitoringv1.ServiceMonitor
	secrets  []*corev1.Secret
	certs    []*certificate  // cert-manager Certificates
	jobs     []*batchv1.Job  // Helm hook Jobs
	objects  []metav1.Object // all of the above
	notes    string
}

// loadChart loads the chart from its directory, as `helm install ./dir`.
func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	return ch
}

// render renders the chart as `helm install --dry-run` would for a release
// named name in namespace with the given values (YAML, merged over
// values.yaml) on Kubernetes kubeVersion, and decodes the result. Templates
// run in strict mode: a reference to a value that does not exist fails.
// There is no cluster: `lookup` finds nothing, as on a first install.
func render(t *testing.T, name, values, kubeVersion string) (*release, error) {
	t.Helper()
	return renderIn(t, name, values, kubeVersion, nil)
}

// upgrade renders the chart as `helm upgrade` would for a release whose
// namespace holds the Secrets existing: `lookup` finds them. Helm renders
// an upgrade without strict mode.
func upgrade(t *testing.T, name, values string, existing []*corev1.Secret) (*release, error) {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	objs := make([]runtime.Object, len(existing))
	for i, s := range existing {
		objs[i] = s.DeepCopy()
	}
	return renderIn(t, name, values, newKube, &fakeCluster{dynamicfake.NewSimpleDynamicClient(scheme, objs...)})
}

// fakeCluster answers the chart's lookups (engine.ClientProvider) from a
// fake dynamic client. The chart looks up Secrets only.
type fakeCluster struct {
	client *dynamicfake.FakeDynamicClient
}

func (f *fakeCluster) GetClientFor(apiVersion, kind string) (dynamic.NamespaceableResourceInterface, bool, error) {
	if apiVersion != "v1" || kind != "Secret" {
		return nil, false, fmt.Errorf("lookup of %s %s: the fake cluster knows only v1 Secrets", apiVersion, kind)
	}
	return f.client.Resource(schema.GroupVersionResource{Version: "v1", Resource: "secrets"}), true, nil
}

func renderIn(t *testing.T, name, values, kubeVersion string, cluster engine.ClientProvider) (*release, error) {
	t.Helper()
	ch := loadChart(t)
	vals, err := chartutil.ReadValues([]byte(values))
	if err != nil {
		t.Fatalf("values: %v", err)
	}
	kv, err := chartutil.ParseKubeVersion(kubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	caps := chartutil.DefaultCapabilities.Copy()
	caps.KubeVersion = *kv
	if !chartutil.IsCompatibleRange(ch.Metadata.KubeVersion, kv.String()) {
		return nil, fmt.Errorf("chart requires kubeVersion %s, not %s", ch.Metadata.KubeVersion, kv)
	}
	opts := chartutil.ReleaseOptions{Name: name, Namespace: namespace, Revision: 1, IsInstall: true}
	if cluster != nil {
		opts = chartutil.ReleaseOptions{Name: name, Namespace: namespace, Revision: 2, IsUpgrade: true}
	}
	top, err := chartutil.ToRenderValues(ch, vals, opts, caps)
	if err != nil {
		return nil, err
	}
	var files map[string]string
	if cluster == nil {
		files, err = engine.Engine{Strict: true}.Render(ch, top)
	} else {
		files, err = engine.RenderWithClientProvider(ch, top, cluster)
	}
	if err != nil {
		return nil, err
	}
	r := &release{name: name}
	names := make([]string, 0, len(files))
	for f := range files {
		names = append(names, f)
	}
	sort.Strings(names)
	for _, f := range names {
		if strings.HasSuffix(f, "NOTES.txt") {
			r.notes = files[f]
			continue
		}
		docs := releaseutil.SplitManifests(files[f])
		keys := make([]string, 0, len(docs))
		for k := range docs {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if strings.TrimSpace(docs[k]) == "" {
				continue
			}
			if err := r.decode(f, []byte(docs[k])); err != nil {
				t.Errorf("%s: %v\n%s", f, err, docs[k])
			}
		}
	}
	return r, nil
}

// decode decodes one manifest strictly (unknown or duplicate fields fail)
// into the API type of its apiVersion and kind.
func (r *release) decode(file string, doc []byte) error {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return err
	}
	var obj metav1.Object
	switch gvk := tm.APIVersion + " " + tm.Kind; gvk {
	case "apps/v1 StatefulSet":
		o := &appsv1.StatefulSet{}
		r.sts, obj = append(r.sts, o), o
	case "v1 Service":
		o := &corev1.Service{}
		r.services, obj = append(r.services, o), o
	case "policy/v1 PodDisruptionBudget":
		o := &policyv1.PodDisruptionBudget{}
		r.pdbs, obj = append(r.pdbs, o), o
	case "networking.k8s.io/v1 NetworkPolicy":
		o := &networkingv1.NetworkPolicy{}
		r.netpols, obj = append(r.netpols, o), o
	case "monitoring.coreos.com/v1 ServiceMonitor":
		o := &monitoringv1.ServiceMonitor{}
		r.monitors, obj = append(r.monitors, o), o
	case "v1 Secret":
		o := &corev1.Secret{}
		r.secrets, obj = append(r.secrets, o), o
	case "batch/v1 Job":
		o := &batchv1.Job{}
		r.jobs, obj = append(r.jobs, o), o
	case "cert-manager.io/v1 Certificate":
		o := &certificate{}
		r.certs, obj = append(r.certs, o), o
	default:
		return fmt.Errorf("unexpected object %q (add it to decode and to the checks)", gvk)
	}
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return fmt.Errorf("%s %s: strict decode: %w", tm.Kind, file, err)
	}
	r.objects = append(r.objects, obj)
	return nil
}

// lintChart runs Helm's linter (`helm lint --strict`: warnings fail too)
// with the given values.
func lintChart(t *testing.T, values, kubeVersion string) {
	t.Helper()
	vals, err := chartutil.ReadValues([]byte(values))
	if err != nil {
		t.Fatalf("values: %v", err)
	}
	kv, err := chartutil.ParseKubeVersion(kubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	l := lint.AllWithKubeVersion(chartDir, vals, namespace, kv)
	for _, m := range l.Messages {
		if m.Severity >= support.WarningSev {
			t.Errorf("helm lint: %s", m)
		} else {
			t.Logf("helm lint: %s", m)
		}
	}
}
