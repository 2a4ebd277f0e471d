{{- define "vidfarm.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "vidfarm.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "vidfarm.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "vidfarm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "vidfarm.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "vidfarm.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The settings both roles share: the config file, then secrets as environment overrides. */}}
{{- define "vidfarm.env" -}}
- name: VIDFARM_CONFIG
  value: /etc/vidfarm/vidfarm.toml
{{- if .Values.redis.existingSecret }}
- name: VIDFARM_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: url
{{- end }}
{{- with .Values.store.s3.credentialsSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: AWS_SECRET_ACCESS_KEY
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "vidfarm.volumes" -}}
- name: config
  configMap:
    name: {{ include "vidfarm.fullname" . }}
- name: tmp
  emptyDir: {}
{{- with .Values.model.volume }}
- name: models
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .Values.redis.tls.secret }}
- name: redis-tls
  secret:
    secretName: {{ .Values.redis.tls.secret }}
{{- end }}
{{- end -}}

{{- define "vidfarm.volumeMounts" -}}
- name: config
  mountPath: /etc/vidfarm
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.model.volume }}
- name: models
  mountPath: {{ .Values.model.mountPath }}
  readOnly: true
{{- end }}
{{- if .Values.redis.tls.secret }}
- name: redis-tls
  mountPath: /etc/vidfarm-redis-tls
  readOnly: true
{{- end }}
{{- end -}}
