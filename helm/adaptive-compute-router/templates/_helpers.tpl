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
{{- if not (and .Values.redis.external.enabled .Values.redis.external.existingSecret) -}}
{{- $port := ternary .Values.redis.external.port 6379 .Values.redis.external.enabled -}}
{{- $db := ternary .Values.redis.external.db 0 .Values.redis.external.enabled -}}
{{- $_ := set $redis "url" (printf "redis://%s:%v/%v" (include "acr.redisHost" .) $port $db) -}}
{{- end -}}
{{- $_ := set $cfg "redis" $redis -}}
{{- /* In the cluster the Serve proxy listens on 0.0.0.0:8000 whatever a local file said. */ -}}
{{- $server := dict -}}
{{- if hasKey $cfg "server" -}}{{- $server = get $cfg "server" -}}{{- end -}}
{{- $_ := set $server "host" "0.0.0.0" -}}
{{- $_ := set $server "port" 8000 -}}
{{- $_ := set $cfg "server" $server -}}
{{- $plan := include "acr.modelPlan" . | fromYaml -}}
{{- $model := dict -}}
{{- if hasKey $cfg "model" -}}{{- $model = get $cfg "model" -}}{{- end -}}
{{- $_ := set $model "num_cpus" $plan.numCpus -}}
{{- $_ := set $model "num_gpus" $plan.numGpus -}}
{{- $_ := set $model "autoscaling" (dict "min_replicas" $plan.minReplicas "max_replicas" $plan.maxReplicas "target_ongoing_requests" $plan.targetOngoingRequests) -}}
{{- $_ := set $cfg "model" $model -}}
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

{{/*
The model replicas' resources and autoscaling, one answer for serveConfigV2 and the
ConfigMap: a field set in values.router.model (the config file tuned locally) wins over
values.serve.model. Fails on settings that cannot deploy.
*/}}
{{- define "acr.modelPlan" -}}
{{- $r := .Values.router.model | default dict -}}
{{- $a := get $r "autoscaling" | default dict -}}
{{- $s := .Values.serve.model -}}
{{- $numCpus := ternary (get $r "num_cpus") $s.numCpus (hasKey $r "num_cpus") -}}
{{- $numGpus := ternary (get $r "num_gpus") $s.numGpus (hasKey $r "num_gpus") -}}
{{- $min := ternary (get $a "min_replicas") $s.minReplicas (hasKey $a "min_replicas") -}}
{{- $max := ternary (get $a "max_replicas") $s.maxReplicas (hasKey $a "max_replicas") -}}
{{- $target := ternary (get $a "target_ongoing_requests") $s.targetOngoingRequests (hasKey $a "target_ongoing_requests") -}}
{{- if lt (int $max) (int $min) -}}
{{- fail (printf "model replicas: maxReplicas (%v) must be >= minReplicas (%v)" $max $min) -}}
{{- end -}}
{{- if and (gt (float64 $numGpus) 0.0) (not .Values.workers.gpu.enabled) -}}
{{- fail (printf "model replicas ask for %v GPU each: set workers.gpu.enabled=true (or numGpus 0)" $numGpus) -}}
{{- end -}}
numCpus: {{ $numCpus }}
numGpus: {{ $numGpus }}
minReplicas: {{ $min }}
maxReplicas: {{ $max }}
targetOngoingRequests: {{ $target }}
{{- end -}}

{{/* Settings that render but cannot work: fail with what to change. */}}
{{- define "acr.validate" -}}
{{- if and .Values.serve.verifier.enabled (not (get (.Values.router.verifier | default dict) "reward_model_path")) -}}
{{- fail "serve.verifier.enabled needs router.verifier.reward_model_path (a reward model checkpoint in the image)" -}}
{{- end -}}
{{- if and .Values.redis.external.enabled (not .Values.redis.external.host) -}}
{{- fail "redis.external.enabled needs redis.external.host" -}}
{{- end -}}
{{- if and (not .Values.workers.cpu.enabled) (not .Values.workers.gpu.enabled) -}}
{{- fail "enable at least one worker group (workers.cpu.enabled or workers.gpu.enabled)" -}}
{{- end -}}
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
      {{- $plan := include "acr.modelPlan" . | fromYaml }}
      - name: ModelReplica
        max_ongoing_requests: {{ .Values.serve.model.maxOngoingRequests }}
        {{- if gt (int $plan.maxReplicas) (int $plan.minReplicas) }}
        autoscaling_config:
          min_replicas: {{ $plan.minReplicas }}
          max_replicas: {{ $plan.maxReplicas }}
          target_ongoing_requests: {{ $plan.targetOngoingRequests }}
        {{- else }}
        num_replicas: {{ max 1 (int $plan.minReplicas) }}
        {{- end }}
        ray_actor_options:
          num_cpus: {{ $plan.numCpus }}
          num_gpus: {{ $plan.numGpus }}
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
