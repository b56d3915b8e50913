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
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{ with .Values.image.digest }}@{{ . }}{{ end }}
{{- end -}}

{{- define "acr.redisImage" -}}
{{- $i := .Values.redis.image -}}
{{ $i.repository }}:{{ $i.tag }}{{ with $i.digest }}@{{ . }}{{ end }}
{{- end -}}

{{/* Labels of the Ray pods (head and workers): what NetworkPolicies select and admit. */}}
{{- define "acr.rayPodLabels" -}}
{{ include "acr.selectorLabels" . }}
app.kubernetes.io/component: ray
{{- end -}}

{{- define "acr.redisPodLabels" -}}
{{ include "acr.selectorLabels" . }}
app.kubernetes.io/component: redis
acr.io/role: redis
{{- end -}}

{{/* The Secret and key holding the bundled Redis's password. */}}
{{- define "acr.redisSecretName" -}}
{{- default (printf "%s-redis" (include "acr.fullname" .)) .Values.redis.auth.existingSecret -}}
{{- end -}}

{{/*
Where the router's Redis password comes from: a dict with name and key, or nothing when
the Redis has no password (an external one without existingSecret).
*/}}
{{- define "acr.redisPasswordRef" -}}
{{- if .Values.redis.external.enabled -}}
{{- with .Values.redis.external.existingSecret -}}
name: {{ . }}
key: {{ $.Values.redis.external.passwordKey }}
{{- end -}}
{{- else -}}
name: {{ include "acr.redisSecretName" . }}
key: {{ .Values.redis.auth.passwordKey }}
{{- end -}}
{{- end -}}

{{/* A Kubernetes memory quantity (1Gi, 512Mi, 1G, 1073741824) in bytes. */}}
{{- define "acr.bytes" -}}
{{- $q := toString . -}}
{{- if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) -}}{{- $q = printf "%.0f" (float64 .) -}}{{- end -}}
{{- $num := regexFind "^[0-9]+(\\.[0-9]+)?" $q -}}
{{- $suffix := trimPrefix $num $q -}}
{{- $units := dict "" 1.0 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 -}}
{{- if or (not $num) (not (hasKey $units $suffix)) -}}
{{- fail (printf "cannot read the memory quantity %q (use e.g. 1Gi, 512Mi)" $q) -}}
{{- end -}}
{{- mulf (float64 $num) (get $units $suffix) | floor | int64 -}}
{{- end -}}

{{/* The bundled Redis's maxmemory: redis.maxmemory, or a share of the memory limit. */}}
{{- define "acr.redisMaxmemory" -}}
{{- if .Values.redis.maxmemory -}}
{{- .Values.redis.maxmemory -}}
{{- else -}}
{{- $limit := get (.Values.redis.resources.limits | default dict) "memory" -}}
{{- if not $limit -}}
{{- fail "the bundled Redis needs redis.resources.limits.memory or redis.maxmemory (its maxmemory)" -}}
{{- end -}}
{{- $bytes := include "acr.bytes" $limit | float64 -}}
{{- mulf $bytes (divf .Values.redis.maxmemoryPercent 100) | floor | int64 -}}
{{- end -}}
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
{{- /* No credentials in the URL: the password reaches the pods as ACR_REDIS_PASSWORD. */ -}}
{{- $port := ternary .Values.redis.external.port 6379 .Values.redis.external.enabled -}}
{{- $db := ternary .Values.redis.external.db 0 .Values.redis.external.enabled -}}
{{- $_ := set $redis "url" (printf "redis://%s:%v/%v" (include "acr.redisHost" . | urlquery) $port $db) -}}
{{- /* The outcome spool lives on the pod's emptyDir (the root filesystem is read-only). */ -}}
{{- $_ := set $redis "spool_dir" (include "acr.spoolDir" .) -}}
{{- $_ := set $cfg "redis" $redis -}}
{{- /* In the cluster the Serve proxy listens on 0.0.0.0:8000 whatever a local file said. */ -}}
{{- $server := dict -}}
{{- if hasKey $cfg "server" -}}{{- $server = get $cfg "server" -}}{{- end -}}
{{- $_ := set $server "host" "0.0.0.0" -}}
{{- $_ := set $server "port" 8000 -}}
{{- $_ := set $cfg "server" $server -}}
{{- $model := dict -}}
{{- if hasKey $cfg "model" -}}{{- $model = get $cfg "model" -}}{{- end -}}
{{- $backends := get $cfg "backends" | default list -}}
{{- /* Each transformers model (the one model, or each such backend of a pool) gets the
     resources and autoscaling its Serve deployment runs with. */ -}}
{{- range (ternary $backends (list $model) (gt (len $backends) 0)) -}}
{{- if eq (get . "kind" | default "transformers") "transformers" -}}
{{- $plan := include "acr.modelPlan" (dict "model" . "Values" $.Values) | fromYaml -}}
{{- $_ := set . "num_cpus" $plan.numCpus -}}
{{- $_ := set . "num_gpus" $plan.numGpus -}}
{{- $_ := set . "autoscaling" (dict "min_replicas" $plan.minReplicas "max_replicas" $plan.maxReplicas "target_ongoing_requests" $plan.targetOngoingRequests) -}}
{{- end -}}
{{- end -}}
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
# On SIGTERM (a pod deletion, a node drain) Ray drains the node first: Serve stops routing
# to its replicas, which finish their requests and flush the outcome spool.
- name: RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S
  value: {{ include "acr.drainSeconds" . | quote }}
{{- with include "acr.redisPasswordRef" . | fromYaml }}
- name: ACR_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .key }}
{{- end }}
{{- end -}}

{{/* How long a stopping replica may take: the longest request deadline
(router.server.max_request_timeout_ms, 120 s by default) and 10 s to flush the outcome
spool, as router.serving.app gives Serve. */}}
{{- define "acr.drainSeconds" -}}
{{- $server := get (.Values.router | default dict) "server" | default dict -}}
{{- $ms := get $server "max_request_timeout_ms" | default 120000 -}}
{{- add (div (add (int $ms) 999) 1000) 10 -}}
{{- end -}}

{{/* The pod's termination grace: the drain, and 20 s for Ray to stop its processes. */}}
{{- define "acr.terminationGraceSeconds" -}}
{{- add (include "acr.drainSeconds" . | int) 20 -}}
{{- end -}}

{{/* Where the router spools outcomes until Redis has them: an emptyDir, so a restarted
container (a killed process) replays them; a deleted pod loses what it could not flush. */}}
{{- define "acr.spoolDir" -}}/var/lib/acr/outcomes{{- end -}}

{{/* The writable paths of a read-only root filesystem (Ray's /tmp/ray is KubeRay's
`ray-logs` volume, which it shares with the autoscaler sidecar). */}}
{{- define "acr.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: ray-logs
  mountPath: /tmp/ray
- name: home
  mountPath: /home/ray
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
{{ include "acr.scratchMounts" . }}
- name: outcome-spool
  mountPath: {{ include "acr.spoolDir" . }}
{{- end -}}

{{- define "acr.volumes" -}}
- name: router-config
  configMap:
    name: {{ include "acr.fullname" . }}-config
- name: tmp
  emptyDir: {}
- name: ray-logs
  emptyDir: {}
- name: home
  emptyDir: {}
- name: outcome-spool
  emptyDir: {}
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
A transformers model's replicas: resources and autoscaling, one answer for serveConfigV2 and
the ConfigMap. Called with (dict "model" <its config: router.model or one of
router.backends> "Values" .Values); a field set in that config (the file tuned locally) wins
over values.serve.model. Fails on settings that cannot deploy.
*/}}
{{- define "acr.modelPlan" -}}
{{- $r := .model | default dict -}}
{{- $a := get $r "autoscaling" | default dict -}}
{{- $s := .Values.serve.model -}}
{{- $numCpus := ternary (get $r "num_cpus") $s.numCpus (hasKey $r "num_cpus") -}}
{{- $numGpus := ternary (get $r "num_gpus") $s.numGpus (hasKey $r "num_gpus") -}}
{{- $min := ternary (get $a "min_replicas") $s.minReplicas (hasKey $a "min_replicas") -}}
{{- $max := ternary (get $a "max_replicas") $s.maxReplicas (hasKey $a "max_replicas") -}}
{{- $target := ternary (get $a "target_ongoing_requests") $s.targetOngoingRequests (hasKey $a "target_ongoing_requests") -}}
{{- if lt (int $max) (int $min) -}}
{{- fail (printf "model replicas of %v: maxReplicas (%v) must be >= minReplicas (%v)" ($r.name | default "the model") $max $min) -}}
{{- end -}}
{{- if and (gt (float64 $numGpus) 0.0) (not .Values.workers.gpu.enabled) -}}
{{- fail (printf "model replicas of %v ask for %v GPU each: set workers.gpu.enabled=true (or numGpus 0)" ($r.name | default "the model") $numGpus) -}}
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
{{- if get (get (.Values.router | default dict) "redis" | default dict) "password" -}}
{{- fail "router.redis.password would put the password in a ConfigMap: use redis.auth.existingSecret (bundled Redis) or redis.external.existingSecret" -}}
{{- end -}}
{{- if and .Values.ray.auth.enabled (not (semverCompare ">=2.52.0-0" (toString .Values.rayVersion))) -}}
{{- fail (printf "ray.auth.enabled needs Ray 2.52 or newer (rayVersion is %v)" .Values.rayVersion) -}}
{{- end -}}
{{- if and (not .Values.ray.auth.enabled) (not .Values.networkPolicy.enabled) -}}
{{- fail "ray.auth.enabled=false and networkPolicy.enabled=false leave the Ray dashboard (job submission = code execution) open to every pod: keep one of them on" -}}
{{- end -}}
{{- end -}}

{{/* The Serve config KubeRay deploys (serveConfigV2). */}}
{{- define "acr.serveConfig" -}}
applications:
  - name: {{ .Values.serve.appName }}
    import_path: router.serving.app:app_builder
    route_prefix: /
    {{- /* The live sections (router.live_config) are the ingress's user_config: a change to
         them alone is applied in place by every running ingress replica; the rest is the
         application's args, whose change rebuilds the application as a rolling update. */}}
    {{- $cfg := include "acr.routerConfig" . | fromYaml }}
    args:
      config:
        {{- omit $cfg "policy" "strategies" "limits" | toYaml | nindent 8 }}
    deployments:
      - name: RouterIngress
        num_replicas: {{ .Values.serve.ingress.replicas }}
        ray_actor_options:
          num_cpus: {{ .Values.serve.ingress.numCpus }}
        user_config:
          {{- pick $cfg "policy" "strategies" "limits" | toYaml | nindent 10 }}
      {{- $backends := get (.Values.router | default dict) "backends" | default list }}
      {{- range $backends }}
      {{- if eq (get . "kind" | default "transformers") "transformers" }}
      {{- include "acr.replicaDeployment" (dict "name" (printf "ModelReplica-%s" .name) "model" . "Values" $.Values) | nindent 6 }}
      {{- end }}
      {{- end }}
      {{- $model := .Values.router.model | default dict }}
      {{- if and (not $backends) (eq (get $model "kind" | default "transformers") "transformers") }}
      {{- include "acr.replicaDeployment" (dict "name" "ModelReplica" "model" $model "Values" .Values) | nindent 6 }}
      {{- end }}
      {{- if .Values.serve.verifier.enabled }}
      - name: RewardModelReplica
        num_replicas: {{ .Values.serve.verifier.replicas }}
        ray_actor_options:
          num_cpus: {{ .Values.serve.verifier.numCpus }}
          num_gpus: {{ .Values.serve.verifier.numGpus }}
      {{- end }}
{{- end -}}

{{/* One transformers model's Serve deployment: (dict "name" "model" "Values"). */}}
{{- define "acr.replicaDeployment" -}}
{{- $plan := include "acr.modelPlan" (dict "model" .model "Values" .Values) | fromYaml -}}
- name: {{ .name }}
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
      {{- toYaml . | nindent 6 }}
    {{- end }}
{{- end -}}

{{/*
checkov (Kubernetes policy scanner) exceptions of the Ray pods, each with its reason; the
pods KubeRay creates carry them, so a scan of the live cluster reads the same. A reason
must not contain "=".
*/}}
{{- define "acr.rayCheckovSkips" -}}
checkov.io/skip1: {{ "CKV_K8S_8=KubeRay injects the liveness probe (raylet and GCS health) into every Ray container" | quote }}
checkov.io/skip2: {{ "CKV_K8S_9=KubeRay injects the readiness probe (raylet and GCS health; Serve proxy health on workers)" | quote }}
{{- if or (include "acr.redisPasswordRef" .) .Values.ray.auth.enabled }}
checkov.io/skip3: {{ "CKV_K8S_35=secrets reach Ray pods only as secretKeyRef env vars that their readers take from the environment: ACR_REDIS_PASSWORD (the router) and RAY_AUTH_TOKEN (injected by KubeRay)" | quote }}
{{- end }}
{{- if lt (int (.Values.securityContext.runAsUser | default 0)) 10000 }}
checkov.io/skip4: {{ printf "CKV_K8S_40=runAsUser (%v) is the uid of the image user of the project's Dockerfile; a uid of 10000 or more needs the image to change with it" .Values.securityContext.runAsUser | quote }}
{{- end }}
{{- if not .Values.image.digest }}
checkov.io/skip5: {{ "CKV_K8S_43=the image is built from the project's Dockerfile so the chart cannot know its digest; set image.digest to pin it" | quote }}
{{- end }}
{{- end -}}
