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

{{/*
The Secret holding the admin's client certificate (tls.crt, tls.key; a
kubernetes.io/tls Secret): auth.admin.existingSecret, else the chart's
<fullname>-admin where the chart can make one (generated TLS, cert-manager),
else "" (tls.existingSecret without auth.admin.existingSecret; insecure).
*/}}
{{- define "quorumq.adminSecret" -}}
{{- $source := include "quorumq.tlsSource" . -}}
{{- if eq $source "insecure" -}}
{{- else if .Values.auth.admin.existingSecret -}}
{{- .Values.auth.admin.existingSecret -}}
{{- else if or (eq $source "generated") (eq $source "certManager") -}}
{{- printf "%s-admin" (include "quorumq.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Whether the chart makes the admin certificate itself ("true" or ""). */}}
{{- define "quorumq.adminGenerated" -}}
{{- if and (not .Values.auth.admin.existingSecret) (ne (include "quorumq.tlsSource" .) "insecure") (include "quorumq.adminSecret" .) -}}
true
{{- end -}}
{{- end -}}

{{/*
Checks the auth values; renders nothing. Identities: 1 to 128 of letters,
digits and . _ - @ : (the server's rule); a client certificate's name
allows no @.
*/}}
{{- define "quorumq.checkAuth" -}}
{{- $source := include "quorumq.tlsSource" . -}}
{{- $auth := .Values.auth -}}
{{- $idRe := "^[A-Za-z0-9._@:-]{1,128}$" -}}
{{- range .Values.extraArgs -}}
{{- $flag := trimPrefix "-" (trimPrefix "-" (toString .)) -}}
{{- if or (hasPrefix "admin-identities" $flag) (hasPrefix "metrics-addr" $flag) -}}
{{- fail (printf "extraArgs: %s is set by the chart; use the values auth.adminIdentities and metrics.port instead" .) -}}
{{- end -}}
{{- end -}}
{{- range .Values.extraEnv -}}
{{- if or (eq .name "QUORUMQ_ADMIN_IDENTITIES") (eq .name "QUORUMQ_METRICS_ADDR") -}}
{{- fail (printf "extraEnv: %s is set by the chart's flags; use the values auth.adminIdentities and metrics.port instead" .name) -}}
{{- end -}}
{{- end -}}
{{- if not $auth.adminIdentities -}}
{{- fail "auth.adminIdentities is empty: name at least one identity (default admin); only an admin can grant anything" -}}
{{- end -}}
{{- range $auth.adminIdentities -}}
{{- if not (regexMatch $idRe (toString .)) -}}
{{- fail (printf "auth.adminIdentities: %q is no identity (1 to 128 letters, digits and . _ - @ :)" (toString .)) -}}
{{- end -}}
{{- end -}}
{{- if include "quorumq.adminGenerated" . -}}
{{- if not (regexMatch "^[A-Za-z0-9._:-]{1,128}$" (toString $auth.admin.name)) -}}
{{- fail (printf "auth.admin.name: %q is no client name (1 to 128 letters, digits and . _ - :)" (toString $auth.admin.name)) -}}
{{- end -}}
{{- if not (has (toString $auth.admin.name) $auth.adminIdentities) -}}
{{- fail (printf "auth.admin.name %q is not one of auth.adminIdentities %v: the chart's admin certificate would be no admin" (toString $auth.admin.name) $auth.adminIdentities) -}}
{{- end -}}
{{- if or (lt (int $auth.admin.days) 1) (gt (int $auth.admin.days) 3650) -}}
{{- fail (printf "auth.admin.days: %v, want 1 to 3650" $auth.admin.days) -}}
{{- end -}}
{{- end -}}
{{- $m := int .Values.metrics.port -}}
{{- if or (lt $m 1) (gt $m 65535) (has $m (list 7420 7421 7422 7423)) -}}
{{- fail (printf "metrics.port %v: want a port of its own (not 7420 to 7423)" .Values.metrics.port) -}}
{{- end -}}
{{- if $auth.grants -}}
{{- if eq $source "insecure" -}}
{{- fail "auth.grants with insecure: true: an insecure cluster checks no permissions; drop the grants or insecure" -}}
{{- end -}}
{{- if not (include "quorumq.adminSecret" .) -}}
{{- fail "auth.grants: the hook Job that makes them needs an admin credential, and with tls.existingSecret the chart cannot sign one: create a client certificate named admin (quorumq certs client --name admin) in a kubernetes.io/tls Secret and name it in auth.admin.existingSecret" -}}
{{- end -}}
{{- range $i, $g := $auth.grants -}}
{{- $where := printf "auth.grants[%d]" $i -}}
{{- if not (kindIs "map" $g) -}}
{{- fail (printf "%s: want {identity, permission, queue or prefix}" $where) -}}
{{- end -}}
{{- range $k, $_ := $g -}}
{{- if not (has $k (list "identity" "permission" "queue" "prefix" "allQueues")) -}}
{{- fail (printf "%s: unknown key %q (identity, permission, queue, prefix, allQueues)" $where $k) -}}
{{- end -}}
{{- end -}}
{{- if not (regexMatch $idRe (toString (index $g "identity" | default ""))) -}}
{{- fail (printf "%s: identity %q: want 1 to 128 letters, digits and . _ - @ :" $where (toString (index $g "identity" | default ""))) -}}
{{- end -}}
{{- $perm := toString (index $g "permission" | default "") -}}
{{- if not (has $perm (list "produce" "consume" "manage" "admin")) -}}
{{- fail (printf "%s: permission %q: want produce, consume, manage or admin" $where $perm) -}}
{{- end -}}
{{- $scopes := 0 -}}
{{- range $k := list "queue" "prefix" "allQueues" -}}
{{- if hasKey $g $k -}}
{{- $scopes = add1 $scopes -}}
{{- end -}}
{{- end -}}
{{- if eq $perm "admin" -}}
{{- if $scopes -}}
{{- fail (printf "%s: an admin grant names no queue, prefix or allQueues" $where) -}}
{{- end -}}
{{- else if ne (int $scopes) 1 -}}
{{- fail (printf "%s: %s names exactly one of queue (that queue), prefix (queues whose names start with it) or allQueues: true" $where $perm) -}}
{{- else if and (hasKey $g "queue") (not (toString $g.queue)) -}}
{{- fail (printf "%s: queue is empty" $where) -}}
{{- else if and (hasKey $g "prefix") (not (toString $g.prefix)) -}}
{{- fail (printf "%s: prefix is empty: for every queue, say allQueues: true" $where) -}}
{{- else if and (hasKey $g "allQueues") (not (eq (toString $g.allQueues) "true")) -}}
{{- fail (printf "%s: allQueues: %v: want true, or leave it out" $where $g.allQueues) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
