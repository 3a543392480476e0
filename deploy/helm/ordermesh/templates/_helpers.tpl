{{/*
The roles this chart runs, role: workload. The workload name is also the Service and
ServiceAccount name, hence the mesh identity; it is fixed, not prefixed by the release.
Every per-role template ranges over this map (in key order, so output is stable).
*/}}
{{- define "ordermesh.roles" -}}
audit: audit-service
gateway: edge-gateway
order: order-service
payment: payment-service
user: user-service
{{- end }}

{{/* Release-scoped prefix for the chart's shared objects (ConfigMap, hook Job). */}}
{{- define "ordermesh.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "ordermesh.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Labels of every object; pass the root context or a role context (dict root role workload). */}}
{{- define "ordermesh.labels" -}}
{{- $root := .root | default . -}}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ $root.Chart.Name }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: ordermesh
{{- with .workload }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/* Selector of one role's pods; takes a role context. */}}
{{- define "ordermesh.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .workload }}
{{- end }}

{{/* Deep merge of .src into .dst (maps merge, anything else replaces; false and 0 win too). */}}
{{- define "ordermesh.merge" -}}
{{- $dst := .dst -}}
{{- range $k, $v := .src -}}
{{- if and (kindIs "map" $v) (kindIs "map" (get $dst $k)) -}}
{{- include "ordermesh.merge" (dict "dst" (get $dst $k) "src" $v) -}}
{{- else -}}
{{- $_ := set $dst $k $v -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/* One role's settings: `defaults` overridden by `roles.<role>`, as YAML (use fromYaml). */}}
{{- define "ordermesh.roleValues" -}}
{{- $cfg := deepCopy .root.Values.defaults -}}
{{- include "ordermesh.merge" (dict "dst" $cfg "src" (deepCopy (get .root.Values.roles .role | default dict))) -}}
{{- toYaml $cfg -}}
{{- end }}

{{/* "true" when the role runs on the embedded store: one replica, no HPA, no PDB. */}}
{{- define "ordermesh.singleReplica" -}}
{{- if and (eq .root.Values.store.backend "embedded") (ne .role "gateway") }}true{{ end -}}
{{- end }}

{{- define "ordermesh.tlsSecretName" -}}
{{- .cfg.tlsSecretName | default (printf "%s-%s-tls" .root.Release.Name .workload) -}}
{{- end }}

{{- define "ordermesh.jwtSecretName" -}}
{{- .Values.jwt.signingKey.secretName | default (printf "%s-jwt-signing-key" .Release.Name) -}}
{{- end }}
