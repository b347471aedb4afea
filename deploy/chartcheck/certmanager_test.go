package chartcheck

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// certificate is cert-manager's Certificate (cert-manager.io/v1), with the
// fields of its spec that the chart may set, named and typed as in
// cert-manager's pkg/apis/certmanager/v1 (CertificateSpec). cert-manager's
// own module is not a dependency: it would bring in its controllers' whole
// tree. Strict decoding into this type fails on any other field, so a
// misspelt or misplaced field of the template fails as it does for the
// Kubernetes types; a field the chart starts to use needs adding here,
// checked against cert-manager's API.
type certificate struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              certificateSpec `json:"spec"`
}

type certificateSpec struct {
	SecretName     string                     `json:"secretName"`
	SecretTemplate *certificateSecretTemplate `json:"secretTemplate,omitempty"`
	CommonName     string                     `json:"commonName,omitempty"`
	Duration       *metav1.Duration           `json:"duration,omitempty"`
	RenewBefore    *metav1.Duration           `json:"renewBefore,omitempty"`
	DNSNames       []string                   `json:"dnsNames,omitempty"`
	IPAddresses    []string                   `json:"ipAddresses,omitempty"`
	URIs           []string                   `json:"uris,omitempty"`
	IssuerRef      issuerReference            `json:"issuerRef"`
	IsCA           bool                       `json:"isCA,omitempty"`
	Usages         []string                   `json:"usages,omitempty"`
	PrivateKey     *certificatePrivateKey     `json:"privateKey,omitempty"`
}

type certificateSecretTemplate struct {
	Annotations map[string]string `json:"annotations,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
}

// issuerReference is cert-manager's ObjectReference (pkg/apis/meta/v1).
type issuerReference struct {
	Name  string `json:"name"`
	Kind  string `json:"kind,omitempty"`
	Group string `json:"group,omitempty"`
}

type certificatePrivateKey struct {
	RotationPolicy string `json:"rotationPolicy,omitempty"`
	Encoding       string `json:"encoding,omitempty"`
	Algorithm      string `json:"algorithm,omitempty"`
	Size           int    `json:"size,omitempty"`
}
