{{/* Egress rules the NetworkPolicies share. */}}

{{- define "bakeoff.egress.dns" -}}
- to:
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: kube-system}
  ports:
    {{- range .Values.networkPolicy.dnsPorts }}
    - {protocol: UDP, port: {{ . }}}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
{{- end -}}

{{- define "bakeoff.egress.kfp" -}}
- to:
    - namespaceSelector:
        matchLabels: {kubernetes.io/metadata.name: {{ .Values.kfp.egress.namespace }}}
  ports:
    {{- range .Values.kfp.egress.ports }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
{{- end -}}

{{- define "bakeoff.egress.s3" -}}
{{- if include "bakeoff.minio.enabled" . }}
- to:
    - podSelector:
        matchLabels:
          {{- include "bakeoff.selectorLabels" . | nindent 10 }}
          app.kubernetes.io/component: minio
  ports:
    - {protocol: TCP, port: {{ .Values.minio.port }}}
{{- else if .Values.s3.egress.to }}
- to:
    {{- toYaml .Values.s3.egress.to | nindent 4 }}
  ports:
    {{- range .Values.s3.egress.ports }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
{{- end }}
{{- end -}}
