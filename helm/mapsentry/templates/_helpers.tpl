{{/* Chart name. */}}
{{- define "mapsentry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: <release>-mapsentry, or the release name when it contains the chart name. */}}
{{- define "mapsentry.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mapsentry.agent.fullname" -}}
{{- printf "%s-agent" (include "mapsentry.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mapsentry.collector.fullname" -}}
{{- printf "%s-collector" (include "mapsentry.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "mapsentry.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "mapsentry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mapsentry
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "agent"). */}}
{{- define "mapsentry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mapsentry.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "mapsentry.componentLabels" -}}
{{ include "mapsentry.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "mapsentry.agent.serviceAccountName" -}}
{{- if .Values.agent.serviceAccount.create }}
{{- default (include "mapsentry.agent.fullname" .) .Values.agent.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.agent.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mapsentry.collector.serviceAccountName" -}}
{{- if .Values.collector.serviceAccount.create }}
{{- default (include "mapsentry.collector.fullname" .) .Values.collector.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.collector.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: repository, then @digest or :tag (default appVersion). */}}
{{- define "mapsentry.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The collector URL the agents dial: agent.collectorURL, else this release's Service. */}}
{{- define "mapsentry.agent.collectorURL" -}}
{{- default (include "mapsentry.collector.url" .) .Values.agent.collectorURL }}
{{- end }}

{{/* This release's collector Service URL. */}}
{{- define "mapsentry.collector.url" -}}
{{- printf "%s://%s.%s.svc:%d" (ternary "https" "http" .Values.tls.enabled) (include "mapsentry.collector.fullname" .) .Release.Namespace (int .Values.collector.port) }}
{{- end }}

{{/* cert-manager issues the certificates. */}}
{{- define "mapsentry.certManager" -}}
{{- if and .Values.tls.enabled .Values.tls.certManager.enabled }}true{{- end }}
{{- end }}

{{/* Mutual TLS: a client CA is configured, or cert-manager issues the agents' client certificate. */}}
{{- define "mapsentry.mtls" -}}
{{- if include "mapsentry.certManager" . }}
{{- if .Values.tls.certManager.mutual }}true{{- end }}
{{- else if and .Values.tls.enabled .Values.tls.clientCA.secretName }}true{{- end }}
{{- end }}

{{/* The Secrets of the collector's server certificate, of the client CA and the agents' files:
     the values, or those the Certificates of certmanager.yaml write. */}}
{{- define "mapsentry.tls.serverSecret" -}}
{{- if include "mapsentry.certManager" . }}{{ include "mapsentry.collector.fullname" . }}-tls{{ else }}{{ .Values.tls.server.secretName }}{{ end }}
{{- end }}
{{- define "mapsentry.tls.agentSecret" -}}
{{- if include "mapsentry.certManager" . }}{{ include "mapsentry.agent.fullname" . }}-tls{{ else }}{{ .Values.tls.agent.secretName }}{{ end }}
{{- end }}
{{- define "mapsentry.tls.clientCASecret" -}}
{{- if include "mapsentry.certManager" . }}{{ include "mapsentry.collector.fullname" . }}-tls{{ else }}{{ .Values.tls.clientCA.secretName }}{{ end }}
{{- end }}
{{- define "mapsentry.tls.clientCAKey" -}}
{{- if include "mapsentry.certManager" . }}ca.crt{{ else }}{{ .Values.tls.clientCA.key }}{{ end }}
{{- end }}

{{/* The agents' priority class: agent.priorityClassName, else the one priorityclass.yaml creates. */}}
{{- define "mapsentry.agent.priorityClassName" -}}
{{- if .Values.agent.priorityClassName }}{{ .Values.agent.priorityClassName }}
{{- else if .Values.agent.priorityClass.create }}{{ include "mapsentry.agent.fullname" . }}
{{- end }}
{{- end }}

{{/* A component's affinity: (dict "ctx" $ "affinity" <its affinity value>), with the image's
     architectures (image.architectures) required: added to each of the given required node
     selector terms (terms are ORed, so each must hold it), or as the one term when none is given.
     Empty when both are empty. */}}
{{- define "mapsentry.affinity" -}}
{{- $affinity := deepCopy (.affinity | default dict) }}
{{- with .ctx.Values.image.architectures }}
{{- $arch := dict "key" "kubernetes.io/arch" "operator" "In" "values" . }}
{{- $node := get $affinity "nodeAffinity" | default dict }}
{{- $required := get $node "requiredDuringSchedulingIgnoredDuringExecution" | default dict }}
{{- $terms := list }}
{{- range (get $required "nodeSelectorTerms" | default list) }}
{{- $terms = append $terms (set (deepCopy .) "matchExpressions" (append (get . "matchExpressions" | default list) $arch)) }}
{{- end }}
{{- if not $terms }}
{{- $terms = list (dict "matchExpressions" (list $arch)) }}
{{- end }}
{{- $_ := set $required "nodeSelectorTerms" $terms }}
{{- $_ = set $node "requiredDuringSchedulingIgnoredDuringExecution" $required }}
{{- $_ = set $affinity "nodeAffinity" $node }}
{{- end }}
{{- if $affinity }}{{ toYaml $affinity }}{{ end }}
{{- end }}

{{/* Refuse combinations the schema cannot express. */}}
{{- define "mapsentry.validate" -}}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.enabled) }}
{{- fail "tls.certManager.enabled needs tls.enabled: the certificates are for the collector's TLS" }}
{{- end }}
{{- if and .Values.tls.enabled (not (include "mapsentry.certManager" .)) (not .Values.tls.server.secretName) }}
{{- fail "tls.enabled needs tls.server.secretName: the Secret (tls.crt, tls.key) with the collector's certificate" }}
{{- end }}
{{- if and .Values.tls.enabled (not (include "mapsentry.certManager" .)) .Values.agent.enabled (not .Values.tls.agent.secretName) }}
{{- fail "tls.enabled needs tls.agent.secretName: the Secret with ca.crt (and, for mutual TLS, tls.crt/tls.key) for the agents" }}
{{- end }}
{{- if and .Values.auth.tokens.secretName .Values.agent.enabled (not .Values.auth.agentToken.secretName) (not (include "mapsentry.mtls" .)) }}
{{- fail "auth.tokens.secretName needs auth.agentToken.secretName (an \"agent\": true token for the agents) unless agents use client certificates (tls.clientCA.secretName)" }}
{{- end }}
{{- if and .Values.collector.enabled .Values.collector.retentionLog.enabled .Values.collector.retentionLog.existingClaim (ne .Values.collector.strategy.type "Recreate") }}
{{- fail "collector.retentionLog.existingClaim needs collector.strategy.type: Recreate (a rolling update would start the new pod while the old one holds the volume)" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.collector.metrics.enabled) (not (and .Values.agent.enabled .Values.agent.metrics.service.enabled)) }}
{{- fail "serviceMonitor.enabled needs something to scrape: collector.metrics.enabled, or the agents' metrics Service (agent.metrics.service.enabled)" }}
{{- end }}
{{- if and .Values.agent.enabled (not .Values.collector.enabled) (not .Values.agent.collectorURL) }}
{{- fail "agent.enabled without collector.enabled needs agent.collectorURL: the collector the agents stream to" }}
{{- end }}
{{- end }}

{{/* `- --flag=N` for an optional integer value (empty: leave the flag out, the binary's default).
     Integers read from a values file arrive as float64; int64 prints them without an exponent. */}}
{{- define "mapsentry.optionalIntArg" -}}
{{- if ne (toString .value) "" -}}
- {{ .flag }}={{ int64 .value }}
{{- end -}}
{{- end -}}
