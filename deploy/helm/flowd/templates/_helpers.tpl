{{/* The name every object of a release starts with: the release's name. */}}
{{- define "flowd.fullname" -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "flowd.labels" -}}
app.kubernetes.io/name: flowd
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "flowd.selector" -}}
app.kubernetes.io/name: flowd
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Where a pod's peers reach it: the Service made for that pod. */}}
{{- define "flowd.peerHost" -}}
{{ .name }}.$(POD_NAMESPACE).svc.{{ .root.Values.clusterDomain }}
{{- end -}}

{{- define "flowd.scheme" -}}
{{ if .Values.tls.secret }}HTTPS{{ else }}HTTP{{ end }}
{{- end -}}
