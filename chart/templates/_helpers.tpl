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
- --webhook-config-name={{ include "varmor.fullname" . }}
- --webhook-failure-policy={{ .Values.webhook.failurePolicy }}
- --webhook-timeout-seconds={{ .Values.webhook.timeoutSeconds }}
- --cert-secret={{ include "varmor.certSecret" . }}
- --cert-mode={{ .Values.certificates.mode }}
- --cert-validity-days={{ .Values.certificates.validityDays }}
- --owner-cluster-role={{ include "varmor.fullname" . }}-manager
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
{{- end -}}

{{- define "varmor.downwardEnv" -}}
- name: NODE_NAME
  valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: VARMOR_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
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
{{- end -}}

{{- define "varmor.agentVolumes" -}}
- name: securityfs
  hostPath: {path: {{ .Values.agent.securityfs }}, type: Directory}
- name: apparmor-d
  hostPath: {path: {{ .Values.agent.profileDir }}, type: DirectoryOrCreate}
- name: audit
  hostPath: {path: {{ dir .Values.agent.auditLog }}, type: DirectoryOrCreate}
{{- end -}}
