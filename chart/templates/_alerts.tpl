{{/* An alert's labels: its severity and alerts.ruleLabels. (list $ severity) */}}
{{- define "varmor.alertLabels" -}}
{{- $root := index . 0 -}}
severity: {{ index . 1 }}
{{- with $root.Values.alerts.ruleLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* An alert's runbook: its section of docs/operations.md, and the URL when
alerts.runbookBaseUrl says where that document is published. (list $ anchor) */}}
{{- define "varmor.runbook" -}}
{{- $root := index . 0 -}}
{{- $anchor := index . 1 -}}
runbook: docs/operations.md#{{ $anchor }}
{{- with $root.Values.alerts.runbookBaseUrl }}
runbook_url: {{ printf "%s#%s" . $anchor }}
{{- end }}
{{- end -}}
