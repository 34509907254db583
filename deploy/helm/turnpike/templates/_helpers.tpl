{{/* The release's base name, cut to Kubernetes' 63 characters. */}}
{{- define "turnpike.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select one component's pods: call with (dict "root" $ "component" "web"). */}}
{{- define "turnpike.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "turnpike.labels" -}}
{{ include "turnpike.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "turnpike.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The settings every process reads, besides the Secret's. */}}
{{- define "turnpike.configData" -}}
{{- range $name, $value := .Values.config }}
{{ $name }}: {{ $value | toString | quote }}
{{- end }}
GATEWAY_USAGE_SINK: {{ ternary "redis" "database" .Values.usagewriter.enabled | quote }}
GATEWAY_DRAIN_SECONDS: {{ .Values.drainSeconds | toString | quote }}
{{- end -}}

{{- define "turnpike.envFrom" -}}
envFrom:
  - configMapRef:
      name: {{ include "turnpike.fullname" . }}
  - secretRef:
      name: {{ .Values.existingSecret }}
{{- end -}}

{{/* Pod-level settings shared by every component. */}}
{{- define "turnpike.podSpec" -}}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: tmp
    emptyDir: {}
{{- end -}}

{{/* Container-level settings shared by every component. */}}
{{- define "turnpike.container" -}}
image: {{ include "turnpike.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
{{- end -}}

{{/* Restart the pods when the settings change. */}}
{{- define "turnpike.podAnnotations" -}}
checksum/config: {{ include "turnpike.configData" . | sha256sum }}
{{- end -}}
