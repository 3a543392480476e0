{{/*
The roles this chart runs, role: workload. The workload name is also the Service and
ServiceAccount name, hence the mesh identity; it is fixed, not prefixed by the release.
Every per-role template ranges over this map (in key order, so output is stable).
*/}}
{{- define "ordermesh.roles" -}}
audit: audit-service
gateway: edge-gateway
notification: notification-service
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
{{ required "image.repository is empty: set it to the repository you pushed the ordermesh image to (e.g. --set image.repository=registry.example.com/ordermesh); the project publishes no image, see deploy/README.md" .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
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

{{/* The issuer of the mesh certificates: issuerRef, or the chart's bootstrapped mesh CA. */}}
{{- define "ordermesh.issuerRef" -}}
{{- if .Values.mtls.certManager.issuerRef.name -}}
{{- toYaml .Values.mtls.certManager.issuerRef -}}
{{- else -}}
name: {{ include "ordermesh.meshCAName" . }}
kind: Issuer
group: cert-manager.io
{{- end -}}
{{- end }}

{{/* Name of the bootstrapped mesh CA: its Certificate, Secret and CA Issuer. */}}
{{- define "ordermesh.meshCAName" -}}
{{- printf "%s-mesh-ca" (include "ordermesh.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{/* The headless Service of a gRPC role: one DNS record per ready pod. Takes a role context. */}}
{{- define "ordermesh.headlessName" -}}
{{- printf "%s-headless" .workload -}}
{{- end }}

{{/*
Refuses, at render time, values that cannot run, with the value to set. Rendered from
templates/validate.yaml; renders nothing.
*/}}
{{- define "ordermesh.validate" -}}
{{- $_ := include "ordermesh.image" . -}}
{{- if and .Values.metrics.serviceMonitor.enabled (eq .Values.mtls.mode "istio") -}}
{{- fail "metrics.serviceMonitor.enabled=true does not work with mtls.mode=istio: STRICT mTLS refuses Prometheus's plaintext scrapes of port 9090, and istio/admin-port.yaml denies edge-gateway's to every caller. Set metrics.serviceMonitor.enabled=false and keep metrics.scrapeAnnotations=true: Istio merges each role's metrics into its agent's endpoint (port 15020, /stats/prometheus), which Prometheus scrapes in plaintext (see deploy/README.md, Monitoring)" -}}
{{- end -}}
{{- if eq .Values.mtls.mode "builtin" -}}
{{- $missing := list -}}
{{- $owners := dict -}}
{{- range $role, $workload := include "ordermesh.roles" . | fromYaml -}}
{{- $ctx := dict "root" $ "role" $role "workload" $workload -}}
{{- $cfg := include "ordermesh.roleValues" $ctx | fromYaml -}}
{{- if and (not $.Values.mtls.certManager.enabled) (not $cfg.tlsSecretName) -}}
{{- $missing = append $missing $role -}}
{{- end -}}
{{- $secret := include "ordermesh.tlsSecretName" (merge (dict "cfg" $cfg) $ctx) -}}
{{- if hasKey $owners $secret -}}
{{- fail (printf "roles %s and %s both use the TLS Secret %q, but each role needs its own certificate (its URI SAN is the role's identity): set a different roles.<role>.tlsSecretName for each, and leave defaults.tlsSecretName empty" (get $owners $secret) $role $secret) -}}
{{- end -}}
{{- $_ := set $owners $secret $role -}}
{{- end -}}
{{- with $missing -}}
{{- fail (printf "mtls.mode=builtin needs a mesh certificate for every role, and nothing creates one: set mtls.certManager.enabled=true (cert-manager issues them; the default), or name each role's existing Secret (keys ca.crt, tls.crt, tls.key) in roles.<role>.tlsSecretName (missing for: %s), or run under Istio (-f values-istio.yaml, mtls.mode=istio)" (join ", " .)) -}}
{{- end -}}
{{- end -}}
{{- /* ORDERMESH_WEBHOOKS_ALLOW_PRIVATE lets webhooks reach http and private, loopback and
link-local addresses (the cluster, the cloud's metadata endpoint): for local runs of the binary
only, never in a cluster. */ -}}
{{- $envLists := list (list "defaults" .Values.defaults.extraEnv) -}}
{{- range $role, $override := .Values.roles -}}
{{- if $override -}}
{{- $envLists = append $envLists (list (printf "roles.%s" $role) $override.extraEnv) -}}
{{- end -}}
{{- end -}}
{{- range $envLists -}}
{{- $where := index . 0 -}}
{{- range (index . 1 | default list) -}}
{{- if eq (toString .name) "ORDERMESH_WEBHOOKS_ALLOW_PRIVATE" -}}
{{- fail (printf "%s.extraEnv sets ORDERMESH_WEBHOOKS_ALLOW_PRIVATE, which lets notification-service's webhooks reach private, loopback and link-local addresses (the cluster, the cloud's metadata endpoint) over http: it is for local runs of the binary only, never a deployment. Remove it; customers' endpoints must be public https URLs (see deploy/README.md, Webhooks)" $where) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $smtp := .Values.mail.smtp -}}
{{- if and (eq .Values.store.backend "dynamodb") (not $smtp.host) -}}
{{- fail "notification-service sends email, and with store.backend=dynamodb it refuses to start without a way to: set mail.smtp.host to your SMTP relay (and mail.smtp.port, mail.smtp.security, mail.smtp.username with mail.smtp.passwordSecret.name as it needs; see deploy/README.md, Email), or, for a demo, use store.backend=embedded (emails are then written as .eml files on the pod's emptyDir)" -}}
{{- end -}}
{{- if and $smtp.host (ne (not $smtp.username) (not $smtp.passwordSecret.name)) -}}
{{- fail (printf "the SMTP relay gets credentials only with both mail.smtp.username and mail.smtp.passwordSecret.name (the Secret holding its password, key mail.smtp.passwordSecret.key), and only %s is set: set both, or neither to send without authenticating" (ternary "mail.smtp.username" "mail.smtp.passwordSecret.name" (not (not $smtp.username)))) -}}
{{- end -}}
{{- end }}
