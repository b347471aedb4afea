{{/* The chart's name, or nameOverride. */}}
{{- define "quorumq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release's full name: the StatefulSet and the client Service. At most 52
characters, so that "<fullname>-headless" and the pods' names fit in 63.
*/}}
{{- define "quorumq.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The headless Service: pod DNS names and the --join address. */}}
{{- define "quorumq.headless" -}}
{{- printf "%s-headless" (include "quorumq.fullname" .) -}}
{{- end -}}

{{/* Labels that select this release's pods. Never change them: a
StatefulSet's selector is immutable. */}}
{{- define "quorumq.selectorLabels" -}}
app.kubernetes.io/name: {{ include "quorumq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "quorumq.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "quorumq.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: quorumq
{{- end -}}

{{/* The container image. */}}
{{- define "quorumq.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* --bootstrap-expect: bootstrapExpect, else replicas. */}}
{{- define "quorumq.bootstrapExpect" -}}
{{- if .Values.bootstrapExpect -}}
{{- .Values.bootstrapExpect | int -}}
{{- else -}}
{{- .Values.replicas | int -}}
{{- end -}}
{{- end -}}

{{/* The gossip address every pod joins: the headless Service's DNS name,
which resolves to every pod, ready or not. */}}
{{- define "quorumq.join" -}}
{{- printf "%s.%s.svc.%s:7422" (include "quorumq.headless" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/*
Where the pods' TLS certificate and gossip key come from: "insecure" (none:
--insecure), "certManager", "existingSecret" or "generated". Fails on values
that contradict each other or that the server would refuse.
*/}}
{{- define "quorumq.tlsSource" -}}
{{- $tls := .Values.tls -}}
{{- $issuer := $tls.certManager.issuerRef.name -}}
{{- range .Values.extraArgs -}}
{{- $flag := trimPrefix "-" (trimPrefix "-" (toString .)) -}}
{{- if or (hasPrefix "insecure" $flag) (hasPrefix "tls-" $flag) (hasPrefix "gossip-key" $flag) -}}
{{- fail (printf "extraArgs: %s is set by the chart; use the values insecure, tls.* and gossip.existingSecret instead" .) -}}
{{- end -}}
{{- end -}}
{{- range .Values.extraEnv -}}
{{- if or (eq .name "QUORUMQ_INSECURE") (hasPrefix "QUORUMQ_TLS_" .name) (hasPrefix "QUORUMQ_GOSSIP_KEY" .name) -}}
{{- fail (printf "extraEnv: %s is set by the chart's flags; use the values insecure, tls.* and gossip.existingSecret instead" .name) -}}
{{- end -}}
{{- end -}}
{{- if .Values.insecure -}}
{{- if $tls.enabled -}}
{{- fail "insecure: true runs the nodes without TLS and without gossip encryption (--insecure), but tls.enabled is true: set tls.enabled=false as well, or drop insecure" -}}
{{- end -}}
{{- if or $tls.existingSecret $issuer .Values.gossip.existingSecret -}}
{{- fail "insecure: true uses no certificate and no gossip key, but tls.existingSecret, tls.certManager.issuerRef.name or gossip.existingSecret is set: unset it, or drop insecure" -}}
{{- end -}}
insecure
{{- else if not $tls.enabled -}}
{{- fail "tls.enabled: false: the quorumq server refuses to start without TLS and gossip encryption unless it is given --insecure. Keep tls.enabled=true (the chart then generates a CA and a certificate, unless tls.existingSecret or tls.certManager.issuerRef.name names another source), or, for a throwaway cluster, set insecure=true as well" -}}
{{- else if and $tls.existingSecret $issuer -}}
{{- fail "tls.existingSecret and tls.certManager.issuerRef.name are both set: name one source of the certificate" -}}
{{- else if $issuer -}}
certManager
{{- else if $tls.existingSecret -}}
existingSecret
{{- else -}}
generated
{{- end -}}
{{- end -}}

{{/* The Secret the pods mount at /etc/quorumq/tls (ca.crt, tls.crt, tls.key). */}}
{{- define "quorumq.tlsSecret" -}}
{{- $source := include "quorumq.tlsSource" . -}}
{{- if eq $source "certManager" -}}
{{- printf "%s-issued-tls" (include "quorumq.fullname" .) -}}
{{- else if eq $source "existingSecret" -}}
{{- .Values.tls.existingSecret -}}
{{- else -}}
{{- printf "%s-tls" (include "quorumq.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The Secret the pods mount at /etc/quorumq/gossip (key). */}}
{{- define "quorumq.gossipSecret" -}}
{{- .Values.gossip.existingSecret | default (printf "%s-gossip" (include "quorumq.fullname" .)) -}}
{{- end -}}

{{/* The pods' names, <fullname>-0 ... <fullname>-(replicas-1), as JSON. */}}
{{- define "quorumq.podNames" -}}
{{- $full := include "quorumq.fullname" . -}}
{{- $pods := list -}}
{{- range $i := until (int .Values.replicas) -}}
{{- $pods = append $pods (printf "%s-%d" $full $i) -}}
{{- end -}}
{{- toJson $pods -}}
{{- end -}}

{{/*
The DNS names of the release's certificate, as JSON: for every pod its DNS
name (<pod>.<headless>.<namespace>.svc.<clusterDomain>) and its node id in
the DNS form the server reads (<pod>.node.quorumq).
*/}}
{{- define "quorumq.tlsDNSNames" -}}
{{- $headless := include "quorumq.headless" . -}}
{{- $names := list -}}
{{- range $pod := include "quorumq.podNames" . | fromJsonArray -}}
{{- $names = append $names (printf "%s.%s.%s.svc.%s" $pod $headless $.Release.Namespace $.Values.clusterDomain) -}}
{{- $names = append $names (printf "%s.node.quorumq" $pod) -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}
