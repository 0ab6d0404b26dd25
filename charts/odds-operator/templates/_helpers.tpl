{{- define "odds-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "odds-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "odds-operator.labels" -}}
{{ include "odds-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "odds-operator.serviceAccountName" -}}
{{- default (include "odds-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- /* The operator's /healthz /readyz /metrics port: odds_contracts::ports::OPS, the binary's
default HTTP_ADDR (charts/test.py checks the two agree). */ -}}
{{- define "odds-operator.opsPort" -}}
9000
{{- end -}}
