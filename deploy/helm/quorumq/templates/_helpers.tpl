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
