{{/* Chart name, cut to 63 characters (a DNS label). */}}
{{- define "acr.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: release-chart unless overridden, cut to 63 characters. */}}
{{- define "acr.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "acr.labels" -}}
app.kubernetes.io/name: {{ include "acr.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "acr.selectorLabels" -}}
app.kubernetes.io/name: {{ include "acr.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "acr.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "acr.redisHost" -}}
{{- if .Values.redis.external.enabled -}}
{{- required "redis.external.host is required when redis.external.enabled" .Values.redis.external.host -}}
{{- else -}}
{{- printf "%s-redis" (include "acr.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The router config: values.router with the Redis URL the chart knows. */}}
{{- define "acr.routerConfig" -}}
{{- $cfg := deepCopy .Values.router -}}
{{- $redis := dict -}}
{{- if hasKey $cfg "redis" -}}{{- $redis = get $cfg "redis" -}}{{- end -}}
{{- if not .Values.redis.external.existingSecret -}}
{{- $port := ternary .Values.redis.external.port 6379 .Values.redis.external.enabled -}}
{{- $db := ternary .Values.redis.external.db 0 .Values.redis.external.enabled -}}
{{- $_ := set $redis "url" (printf "redis://%s:%v/%v" (include "acr.redisHost" .) $port $db) -}}
{{- end -}}
{{- $_ := set $cfg "redis" $redis -}}
{{- if or .Values.apiKeys.keys .Values.apiKeys.existingSecret -}}
{{- $auth := dict -}}
{{- if hasKey $cfg "auth" -}}{{- $auth = get $cfg "auth" -}}{{- end -}}
{{- $_ := set $auth "api_keys_file" "/etc/acr/keys/api-keys" -}}
{{- $_ := set $cfg "auth" $auth -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Env, volumes and mounts every Ray pod gets. */}}
{{- define "acr.podEnv" -}}
- name: ACR_CONFIG_PATH
  value: /etc/acr/config.yaml
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
{{- if and .Values.redis.external.enabled .Values.redis.external.existingSecret }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.existingSecret }}
      key: {{ .Values.redis.external.passwordKey }}
- name: ACR_REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:%v/%v" .Values.redis.external.host .Values.redis.external.port .Values.redis.external.db | quote }}
{{- end }}
{{- end -}}

{{- define "acr.volumeMounts" -}}
- name: router-config
  mountPath: /etc/acr/config.yaml
  subPath: config.yaml
  readOnly: true
{{- if or .Values.apiKeys.keys .Values.apiKeys.existingSecret }}
- name: api-keys
  mountPath: /etc/acr/keys
  readOnly: true
{{- end }}
{{- end -}}

{{- define "acr.volumes" -}}
- name: router-config
  configMap:
    name: {{ include "acr.fullname" . }}-config
{{- if or .Values.apiKeys.keys .Values.apiKeys.existingSecret }}
- name: api-keys
  secret:
    secretName: {{ default (printf "%s-api-keys" (include "acr.fullname" .)) .Values.apiKeys.existingSecret }}
    items:
      - key: {{ .Values.apiKeys.keysKey }}
        path: api-keys
{{- end }}
{{- end -}}

{{/* The Serve config KubeRay deploys (serveConfigV2). */}}
{{- define "acr.serveConfig" -}}
applications:
  - name: {{ .Values.serve.appName }}
    import_path: router.app:app_builder
    route_prefix: /
    args:
      config_path: /etc/acr/config.yaml
    deployments:
      - name: RouterIngress
        num_replicas: {{ .Values.serve.ingress.replicas }}
        ray_actor_options:
          num_cpus: {{ .Values.serve.ingress.numCpus }}
      - name: ModelReplica
        max_ongoing_requests: {{ .Values.serve.model.maxOngoingRequests }}
        {{- if gt (int .Values.serve.model.maxReplicas) (int .Values.serve.model.minReplicas) }}
        autoscaling_config:
          min_replicas: {{ .Values.serve.model.minReplicas }}
          max_replicas: {{ .Values.serve.model.maxReplicas }}
          target_ongoing_requests: {{ .Values.serve.model.targetOngoingRequests }}
        {{- else }}
        num_replicas: {{ .Values.serve.model.minReplicas }}
        {{- end }}
        ray_actor_options:
          num_cpus: {{ .Values.serve.model.numCpus }}
          num_gpus: {{ .Values.serve.model.numGpus }}
          {{- with .Values.serve.model.resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
      {{- if .Values.serve.verifier.enabled }}
      - name: VerifierReplica
        num_replicas: {{ .Values.serve.verifier.replicas }}
        ray_actor_options:
          num_cpus: {{ .Values.serve.verifier.numCpus }}
          num_gpus: {{ .Values.serve.verifier.numGpus }}
      {{- end }}
{{- end -}}
