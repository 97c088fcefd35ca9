{{- define "llmuo.name" -}}{{ .Release.Name }}{{- end -}}
{{- define "llmuo.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}
{{- define "llmuo.issuer" -}}{{ .Values.operator.issuer | default (printf "https://%s-operator.%s.svc" .Release.Name .Release.Namespace) }}{{- end -}}
{{- define "llmuo.labels" -}}
app.kubernetes.io/name: llm-user-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}
