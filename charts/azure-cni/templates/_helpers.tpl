{{/*
Names and labels shared by every template.
*/}}

{{- define "azure-cni.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object name; the release name when it already names the chart. */}}
{{- define "azure-cni.fullname" -}}
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

{{- define "azure-cni.operatorName" -}}
{{- printf "%s-operator" (include "azure-cni.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "azure-cni.agentName" -}}
{{- printf "%s-agent" (include "azure-cni.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "azure-cni.configName" -}}
{{- printf "%s-config" (include "azure-cni.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret the operator's service principal variables come from. */}}
{{- define "azure-cni.credentialSecretName" -}}
{{- with .Values.credentials.servicePrincipal.existingSecret }}
{{- . }}
{{- else }}
{{- printf "%s-azure-credentials" (include "azure-cni.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "azure-cni.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "azure-cni.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: azure-cni
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component ("operator" or "agent"): never change on upgrade. */}}
{{- define "azure-cni.selectorLabels" -}}
app.kubernetes.io/name: {{ include "azure-cni.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "azure-cni.image" -}}
{{- $image := .Values.image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* The settings file: exactly the six settings sections of the values, nothing else. */}}
{{- define "azure-cni.settings" -}}
{{- $v := .Values }}
{{- toYaml (dict "pool" $v.pool "azure" $v.azure "operator" $v.operator "agent" $v.agent "snat" $v.snat "podNetworking" $v.podNetworking) }}
{{- end }}

{{/* The service account user name the API server gives the agent's tokens. */}}
{{- define "azure-cni.agentUser" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "azure-cni.agentName" .) }}
{{- end }}

{{/* True when something scrapes the processes, so the agents must serve on the node's address. */}}
{{- define "azure-cni.scraped" -}}
{{- $m := .Values.monitoring }}
{{- if or $m.service.enabled $m.serviceMonitor.enabled $m.scrapeAnnotations.enabled }}true{{ end }}
{{- end }}

{{/* prometheus.io/* annotations of a pod template; PORT is its metrics port. */}}
{{- define "azure-cni.scrapeAnnotations" -}}
{{- if .root.Values.monitoring.scrapeAnnotations.enabled }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/*
Security contexts: the safe settings of each component, with the admin's
<component>.podSecurityContext / securityContext merged over them (values.schema.json accepts
only settings that keep them as safe), and the settings that make them safe set again last.
*/}}
{{- define "azure-cni.operatorPodSecurityContext" -}}
{{- $safe := dict "runAsNonRoot" true "runAsUser" 65532 "runAsGroup" 65532 "seccompProfile" (dict "type" "RuntimeDefault") }}
{{- $merged := mergeOverwrite $safe (deepCopy .Values.operatorDeployment.podSecurityContext) }}
{{- toYaml (set $merged "runAsNonRoot" true) }}
{{- end }}

{{- define "azure-cni.operatorSecurityContext" -}}
{{- $merged := deepCopy .Values.operatorDeployment.securityContext }}
{{- $_ := set $merged "allowPrivilegeEscalation" false }}
{{- $_ = set $merged "readOnlyRootFilesystem" true }}
{{- $_ = set $merged "privileged" false }}
{{- toYaml (set $merged "capabilities" (dict "drop" (list "ALL"))) }}
{{- end }}

{{- define "azure-cni.agentPodSecurityContext" -}}
{{- toYaml (mergeOverwrite (dict "seccompProfile" (dict "type" "RuntimeDefault")) (deepCopy .Values.agentDaemonSet.podSecurityContext)) }}
{{- end }}

{{- define "azure-cni.agentSecurityContext" -}}
{{- $merged := deepCopy .Values.agentDaemonSet.securityContext }}
{{- range $key, $value := dict "runAsUser" 0 "runAsGroup" 0 "runAsNonRoot" false "privileged" false "allowPrivilegeEscalation" false "readOnlyRootFilesystem" true }}
{{- $_ := set $merged $key $value }}
{{- end }}
{{- toYaml (set $merged "capabilities" (dict "drop" (list "ALL") "add" (list "NET_ADMIN" "NET_RAW" "SYS_ADMIN"))) }}
{{- end }}

{{/*
The operator's environment, mounts, volumes and placement: its Deployment and the preflight
(the Helm test, which runs with the operator's identity) share them.
*/}}
{{- define "azure-cni.operatorEnv" -}}
# the leader Lease lives in the pod's namespace and names the pod that holds it; Events name
# the pod that reported them (reportingInstance: in the host network the host name would be
# the node's)
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- if eq .Values.azure.credential "servicePrincipal" }}
{{- $secret := include "azure-cni.credentialSecretName" . }}
{{- range $var := list "AZURE_TENANT_ID" "AZURE_CLIENT_ID" "AZURE_CLIENT_SECRET" }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $var }}
{{- end }}
{{- end }}
{{- with .Values.operatorDeployment.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "azure-cni.operatorVolumeMounts" -}}
- name: config
  mountPath: /etc/azure-cni
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- with .Values.operatorDeployment.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "azure-cni.operatorVolumes" -}}
- name: config
  configMap:
    name: {{ include "azure-cni.configName" . }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- with .Values.operatorDeployment.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "azure-cni.operatorPlacement" -}}
{{- $d := .Values.operatorDeployment }}
{{- with $d.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $d.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $d.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
