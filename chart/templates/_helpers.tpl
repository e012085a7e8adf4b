{{- define "varmor.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "varmor.labels" -}}
app.kubernetes.io/name: varmor
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "varmor.selector" -}}
app.kubernetes.io/name: varmor
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "varmor.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/*
"true" on Kubernetes >= 1.30, else empty. From 1.30 pods take securityContext.appArmorProfile,
ValidatingAdmissionPolicy is v1 and bound tokens carry the node claim. Before, the chart
writes the beta AppArmor annotation and varmor's validating webhook guards node reports.
*/}}
{{- define "varmor.since130" -}}
{{- if semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version }}true{{ end -}}
{{- end -}}

{{/* The accounts whose ArmorNode writes the node-report guard limits to their own node. */}}
{{- define "varmor.nodeReportAccounts" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "varmor.agentSA" . }},system:serviceaccount:{{ .Release.Namespace }}:{{ include "varmor.managerSA" . }}
{{- end -}}

{{/* The node-report guard runs in varmor's webhook: Kubernetes < 1.30 has no
ValidatingAdmissionPolicy (node-report-guard.yaml is the guard from 1.30). */}}
{{- define "varmor.webhookNodeGuard" -}}
{{- if and .Values.nodeReportGuard.enabled (not (include "varmor.since130" .)) }}true{{ end -}}
{{- end -}}

{{- define "varmor.certSecret" -}}
{{- .Values.certificates.secretName | default (printf "%s-webhook-tls" (include "varmor.fullname" .)) -}}
{{- end -}}

{{/* Arguments every role shares. */}}
{{- define "varmor.commonArgs" -}}
- --namespace={{ .Release.Namespace }}
- --log-level={{ .Values.logLevel }}
- --health-port={{ .Values.ports.health }}
- --metrics-port={{ .Values.ports.metrics }}
{{- end -}}

{{- define "varmor.webhookArgs" -}}
- --webhook-port={{ .Values.webhook.port }}
- --webhook-service={{ include "varmor.fullname" . }}-webhook
{{- with .Values.webhook.url }}
- --webhook-url={{ . }}
{{- end }}
{{- if .Values.webhook.clientCA }}
- --webhook-client-ca=/etc/varmor/webhook-client-ca/ca.crt
{{- end }}
- --webhook-config-name={{ include "varmor.fullname" . }}
- --webhook-failure-policy={{ .Values.webhook.failurePolicy }}
- --webhook-timeout-seconds={{ .Values.webhook.timeoutSeconds }}
- --apparmor-api={{ .Values.webhook.apparmorApi }}
- --cert-secret={{ include "varmor.certSecret" . }}
- --cert-mode={{ .Values.certificates.mode }}
- --cert-validity-days={{ .Values.certificates.validityDays }}
- --owner-cluster-role={{ include "varmor.fullname" . }}-leader
{{- if include "varmor.webhookNodeGuard" . }}
- --node-report-guard-accounts={{ include "varmor.nodeReportAccounts" . }}
{{- end }}
{{- end -}}

{{- define "varmor.leaderArgs" -}}
- --lease-name={{ include "varmor.fullname" . }}-leader
- --lease-duration={{ .Values.leaderElection.leaseDurationSeconds }}
- --renew-deadline={{ .Values.leaderElection.renewDeadlineSeconds }}
- --retry-period={{ .Values.leaderElection.retryPeriodSeconds }}
{{- end -}}

{{- define "varmor.agentArgs" -}}
- --node-name=$(NODE_NAME)
- --profile-dir=/host/apparmor.d
- --securityfs=/host/securityfs
- --audit-log=/host/audit/{{ base .Values.agent.auditLog }}
- --host-proc=/host/proc
{{- end -}}

{{- define "varmor.downwardEnv" -}}
- name: NODE_NAME
  valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: VARMOR_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
{{- include "varmor.apiServerEnv" . }}
{{- end -}}

{{- /* apiServer.host: explicit variables take precedence over the kubelet's Service ones */ -}}
{{- define "varmor.apiServerEnv" -}}
{{- with .Values.apiServer.host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ . | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ $.Values.apiServer.port | quote }}
{{- end }}
{{- end -}}

{{- define "varmor.hostNetwork" -}}
{{- if .Values.hostNetwork }}
hostNetwork: true
dnsPolicy: ClusterFirstWithHostNet
{{- end }}
{{- end -}}

{{- define "varmor.probes" -}}
readinessProbe:
  httpGet: {path: /readyz, port: health}
  periodSeconds: 5
livenessProbe:
  httpGet: {path: /healthz, port: health}
  periodSeconds: 20
  failureThreshold: 3
{{- end -}}

{{- define "varmor.agentVolumeMounts" -}}
- {name: securityfs, mountPath: /host/securityfs}
- {name: apparmor-d, mountPath: /host/apparmor.d}
- {name: audit, mountPath: /host/audit, readOnly: true}
- {name: host-proc, mountPath: /host/proc, readOnly: true}
{{- end -}}

{{- define "varmor.agentVolumes" -}}
- name: securityfs
  hostPath: {path: {{ .Values.agent.securityfs }}, type: Directory}
- name: apparmor-d
  hostPath: {path: {{ .Values.agent.profileDir }}, type: DirectoryOrCreate}
- name: audit
  hostPath: {path: {{ dir .Values.agent.auditLog }}, type: DirectoryOrCreate}
{{- /* the host's processes, for /proc/<pid>/cgroup: which pod an audit record came from */}}
- name: host-proc
  hostPath: {path: /proc, type: Directory}
{{- end -}}

{{/* The ServiceAccount that runs every role in one process (allinone) or webhook+leader (split). */}}
{{- define "varmor.managerSA" -}}
{{ include "varmor.fullname" . }}-manager
{{- end -}}

{{- define "varmor.agentSA" -}}
{{ include "varmor.fullname" . }}-agent
{{- end -}}

{{/*
A process that loads AppArmor policy. Not privileged: loading, replacing and removing
profiles needs CAP_MAC_ADMIN and euid 0 (apparmor_parser refuses other users, and
securityfs's load files are root-only), nothing else (docs/security.md). Unconfined: a
task that can replace profiles can replace whatever confines it, so an AppArmor profile
on the agent would add nothing (before 1.30: the pod annotation varmor.agentAppArmorAnnotation,
else the runtime's default profile would deny the securityfs writes). Files it needs are root-owned (profile dir, securityfs,
audit.log): no DAC override capability.
*/}}
{{- define "varmor.agentSecurityContext" -}}
privileged: false
runAsUser: 0
runAsGroup: 0
runAsNonRoot: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
  add: [MAC_ADMIN]
{{- if include "varmor.since130" . }}
appArmorProfile: {type: Unconfined}
{{- end }}
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "varmor.agentAppArmorAnnotation" -}}
{{- if not (include "varmor.since130" .) }}
container.apparmor.security.beta.kubernetes.io/varmor: unconfined
{{- end }}
{{- end -}}

{{/* Webhook, leader and cleanup: no root, no capabilities, nothing writable but /tmp. */}}
{{- define "varmor.restrictedSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
{{- end -}}

{{/* Node affinity for leaderEligibleNodes: `in` selects the matching nodes (every label
matches), otherwise the complement (some label differs or is absent). */}}
{{- define "varmor.leaderAffinity" -}}
{{- $sel := .selector -}}
nodeAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    nodeSelectorTerms:
      {{- if .in }}
      - matchExpressions:
          {{- range $k, $v := $sel }}
          - {key: {{ $k | quote }}, operator: In, values: [{{ $v | quote }}]}
          {{- end }}
      {{- else }}
      {{- range $k, $v := $sel }}
      - matchExpressions: [{key: {{ $k | quote }}, operator: NotIn, values: [{{ $v | quote }}]}]
      - matchExpressions: [{key: {{ $k | quote }}, operator: DoesNotExist}]
      {{- end }}
      {{- end }}
{{- end -}}

{{- /* webhook.clientCA: the CA file the webhook checks the API server's certificate with */ -}}
{{- define "varmor.webhookClientCAMount" -}}
{{- if .Values.webhook.clientCA }}
- {name: webhook-client-ca, mountPath: /etc/varmor/webhook-client-ca, readOnly: true}
{{- end }}
{{- end -}}

{{- define "varmor.webhookClientCAVolume" -}}
{{- if .Values.webhook.clientCA }}
- name: webhook-client-ca
  configMap: {name: {{ include "varmor.fullname" . }}-webhook-client-ca}
{{- end }}
{{- end -}}
