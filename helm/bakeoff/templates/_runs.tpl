{{/* The pod template of a run trigger: `bakeoff run /specs/<name>.yaml --host $KFP_HOST`.
     Usage: include "bakeoff.runPod" (dict "ctx" $ "run" $run "hash" $hash) */}}
{{- define "bakeoff.runPod" -}}
{{- $ := .ctx -}}
metadata:
  labels:
    {{- include "bakeoff.labels" $ | nindent 4 }}
    app.kubernetes.io/component: trigger
    bakeoff.io/run: {{ .run.name }}
  annotations:
    checksum/spec: {{ .hash | quote }}
spec:
  restartPolicy: Never
  serviceAccountName: {{ include "bakeoff.serviceAccountName" $ }}
  # Talks to the KFP API, never to the Kubernetes API.
  automountServiceAccountToken: false
  securityContext:
    {{- include "bakeoff.podSecurityContext" $ | nindent 4 }}
  {{- with include "bakeoff.imagePullSecrets" $ }}{{ . | trim | nindent 2 }}{{ end }}
  containers:
    - name: run
      image: {{ include "bakeoff.image" $ }}
      imagePullPolicy: {{ $.Values.image.pullPolicy }}
      command: [python, -m, bakeoff.cli]
      args: [run, "/specs/{{ .run.name }}.yaml", --host, "$(KFP_HOST)"]
      env:
        {{- include "bakeoff.kfpEnv" $ | nindent 8 }}
        - name: BAKEOFF_GPU_POOL
          value: /etc/bakeoff/gpu-pool/resources.yaml
      envFrom:
        - configMapRef:
            name: {{ printf "%s-s3" (include "bakeoff.fullname" $) | trunc 63 | trimSuffix "-" }}
      securityContext:
        {{- include "bakeoff.containerSecurityContext" $ | nindent 8 }}
      resources:
        {{- toYaml $.Values.jobResources | nindent 8 }}
      volumeMounts:
        {{- include "bakeoff.scratchMounts" $ | nindent 8 }}
        - {name: specs, mountPath: /specs, readOnly: true}
        - {name: gpu-pool, mountPath: /etc/bakeoff/gpu-pool, readOnly: true}
        {{- with include "bakeoff.kfpTokenMount" $ }}{{ . | trim | nindent 8 }}{{ end }}
  volumes:
    {{- include "bakeoff.scratchVolumes" $ | nindent 4 }}
    - name: specs
      configMap:
        name: {{ default (printf "%s-runs" (include "bakeoff.fullname" $) | trunc 63 | trimSuffix "-") .run.existingConfigMap }}
        items:
          - {key: "{{ .run.name }}.yaml", path: "{{ .run.name }}.yaml"}
    - name: gpu-pool
      configMap:
        name: {{ printf "%s-gpu-pool" (include "bakeoff.fullname" $) | trunc 63 | trimSuffix "-" }}
    {{- with include "bakeoff.kfpTokenVolume" $ }}{{ . | trim | nindent 4 }}{{ end }}
{{- end -}}
